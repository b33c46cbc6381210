"""Compute kernels. The model calls ``model.kernels.ops`` only; each op has a pure-torch reference."""
