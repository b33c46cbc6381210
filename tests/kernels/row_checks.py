"""Comparing rows in the cache's formats (model/kernels/cache_rows.py): a kernel's against the
composed torch ops'; and the wide-range data the quantisation tests feed both."""

from __future__ import annotations

import torch

from model.kernels.fp4_keys import IndexKeyLayout, unpack_index_keys
from model.kernels.kv_fp8 import KVLayout, unpack_kv_fp8


def values(rows, fmt):
    """Stored rows → their float values (packed rows unpacked)."""
    if isinstance(fmt.layout, KVLayout):
        return unpack_kv_fp8(rows, fmt.layout)
    if isinstance(fmt.layout, IndexKeyLayout):
        return unpack_index_keys(rows, fmt.layout)
    return rows.float()


def assert_same_rows(got, want, fmt):
    """Float rows: close. Quantised rows: the same codes, except (fp32 sums in another order) at
    most a few values on a rounding boundary, each off by at most one step of its block."""
    if not fmt.native:
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
        return
    g, w = values(got, fmt), values(want, fmt)
    diff = (g - w).abs()
    off = diff > 0
    assert off.float().mean() <= 0.01, f"{int(off.sum())} of {off.numel()} values differ"
    step = w.abs().amax(-1, keepdim=True).expand_as(w) / 2   # ≥ one e2m1 / e4m3 step
    assert bool((diff <= step).all()), diff.max()
    if fmt.layout is not None and not off.any():
        assert torch.equal(got, want)   # every byte, padding and scales included


def wide_values(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Random data over ~20 decades: each last-dim column and each row at its own scale, with
    an all-zero row, an all-negative row, exact zeros and signed zeros sprinkled in."""
    gen = torch.Generator().manual_seed(seed)
    n = shape[-1]
    x = torch.randn(shape, generator=gen) * torch.logspace(-9, 4, n)
    rows = x.view(-1, n)
    rows *= torch.logspace(-6, 6, rows.shape[0]).unsqueeze(-1)  # rows of different scales
    rows[0] = 0.0                                   # all-zero row: scales from the amax floor
    if rows.shape[0] > 2:
        rows[1] = -rows[1].abs()                    # all negative
        rows[2, ::7] = 0.0
        rows[2, 1::7] = -0.0
    return x
