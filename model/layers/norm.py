"""RMSNorm with an fp32 weight (checkpoint stores BF16; reference keeps fp32)."""

from __future__ import annotations

import torch
from torch import nn

from model.kernels import ops


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.register_buffer("weight", torch.empty(dim, dtype=torch.bfloat16, device="meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)
