"""Norm → RoPE → the cache's row format in one launch (model/kernels/cache_rows.py): the Triton
kernel (interpreter) vs the composed torch ops, for the three places the model uses it."""

from __future__ import annotations

import math

import pytest
import torch
from row_checks import assert_same_rows

from model.kernels.cache_rows import (
    RowFormat,
    norm_rope_rows_reference,
    norm_rope_rows_triton,
)
from model.kernels.kv_fp8 import KVLayout
from model.op_audit import OpAudit


def _angles(t, rope, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.arange(t).float().view(-1, 1) * 3 + 40) * torch.rand(rope // 2, generator=g)


CASES = {   # shape, norm (eps), weight, rope dims, format
    "attention queries": ((2, 3, 4, 64), 1e-6, False, 32, RowFormat(torch.float32)),
    "kv rows, packed FP8": ((1, 5, 128), 1e-6, True, 64,
                            RowFormat(torch.float32, True, KVLayout(128, 64), rope_dim=64)),
    "kv rows, FP8 values": ((2, 2, 96), 1e-6, True, 32,
                            RowFormat(torch.float32, True, None, rope_dim=32)),
    "kv rows, dequant": ((1, 3, 128), 1e-6, True, 64, RowFormat(torch.float32, rope_dim=64)),
    "indexer queries, rotated FP4 values": ((1, 2, 4, 128), None, False, 64,
                                            RowFormat(torch.float32, True, rotate=True)),
    "indexer queries, dequant": ((1, 2, 4, 128), None, False, 64,
                                 RowFormat(torch.float32, rotate=True)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_norm_rope_rows_match_the_composed_ops(name):
    shape, eps, weighted, rope, fmt = CASES[name]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=g) * 3
    weight = torch.rand(shape[-1], generator=g) + 0.5 if weighted else None
    angles = _angles(shape[1], rope)
    want = norm_rope_rows_reference(x, weight, eps, angles, fmt)
    got = norm_rope_rows_triton(x, weight, eps, angles, fmt)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_same_rows(got, want, fmt)


def test_bf16_rows_round_where_the_composed_ops_round():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(1, 4, 8, 128, generator=g) * 3).bfloat16()
    angles = _angles(4, 64)
    fmt = RowFormat(torch.bfloat16)
    got = norm_rope_rows_triton(x, None, 1e-6, angles, fmt)
    want = norm_rope_rows_reference(x, None, 1e-6, angles, fmt)
    assert got.dtype == torch.bfloat16
    # the same roundings, sums in another order: equal but for a rare last-bit flip
    assert (got != want).float().mean() < 0.01
    assert torch.allclose(got.float(), want.float(), atol=0.02, rtol=0.01)


@pytest.mark.parametrize("name", ["attention queries", "kv rows, packed FP8",
                                  "indexer queries, rotated FP4 values"])
def test_norm_rope_rows_read_a_column_slice_in_place(name):
    """The stacked projections' outputs are column slices of one wider tensor: read where they
    lie (one launch, no copy), the same rows as from a contiguous copy."""
    shape, eps, weighted, rope, fmt = CASES[name]
    g = torch.Generator().manual_seed(4)
    width = math.prod(shape[2:])
    wide = torch.randn(shape[0], shape[1], width + 40, generator=g) * 3
    x = wide[..., 24:24 + width].unflatten(-1, shape[2:])
    weight = torch.rand(shape[-1], generator=g) + 0.5 if weighted else None
    angles = _angles(shape[1], rope)
    norm_rope_rows_triton(x, weight, eps, angles, fmt)   # (the rotation matrix is made once)
    with OpAudit() as audit:
        got = norm_rope_rows_triton(x, weight, eps, angles, fmt)
    assert audit.launches() == 1
    assert_same_rows(got, norm_rope_rows_reference(x.contiguous(), weight, eps, angles, fmt), fmt)
