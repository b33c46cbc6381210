"""Norm → RoPE → the cache's row format in one launch (model/kernels/cache_rows.py): the Triton
kernel (interpreter) vs the composed torch ops, for the three places the model uses it."""

from __future__ import annotations

import math

import pytest
import torch
from row_checks import assert_same_rows, wide_values

from model.kernels import fp4_keys, kv_fp8, ops
from model.kernels.cache_rows import (
    RowFormat,
    norm_rope_rows_reference,
    norm_rope_rows_triton,
)
from model.kernels.fp4_keys import IndexKeyLayout
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


KV_LAYOUTS = [KVLayout(), KVLayout(128, 64, 64), KVLayout(200, 40, 64)]


@pytest.mark.parametrize("layout", KV_LAYOUTS, ids=["v4", "toy", "partial-block"])
@pytest.mark.parametrize("shape", [(5,), (2, 3), (2, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_packed_kv_row_is_the_layouts_bytes(layout, shape, dtype):
    """Without norm and RoPE the kernel writes exactly ``kv_fp8.pack_kv_fp8``'s bytes: e4m3
    codes, bf16 RoPE bytes, ue8m0 scales and zero padding, over ~20 decades of values (zero,
    all-negative and signed-zero rows; a partial scale block)."""
    kv = wide_values((*shape, layout.head_dim), seed=len(shape)).to(dtype)
    fmt = RowFormat(dtype, True, layout, rope_dim=layout.rope_dim)
    got = norm_rope_rows_triton(kv, None, None, None, fmt)
    assert torch.equal(got, kv_fp8.pack_kv_fp8(kv, layout))
    assert torch.equal(norm_rope_rows_reference(kv, None, None, None, fmt), got)


def test_a_packed_kv_row_from_a_strided_view_rounds_rope_dims_to_even():
    layout = KVLayout(128, 64, 64)
    big = wide_values((3, 2 * layout.head_dim), seed=3)
    big[:, -64:] = 1.0 + torch.arange(64) * 2.0**-9  # bf16 ties in the RoPE dims
    kv = big[:, layout.head_dim:]                     # a strided view
    got = norm_rope_rows_triton(kv, None, None, None, RowFormat(torch.float32, True, layout,
                                                                rope_dim=64))
    assert torch.equal(got, kv_fp8.pack_kv_fp8(kv, layout))
    assert not got[:, layout.scale_offset + layout.n_scales:].any()


@pytest.mark.parametrize("dim", [128, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_packed_key_row_is_the_layouts_bytes_of_the_rotated_key(dim, dtype):
    """Keys: the Hadamard rotation, then exactly ``fp4_keys.pack_index_keys``'s bytes (e2m1
    nibbles, ue8m0 scales); a rounding boundary may move by one step (the rotation's sums)."""
    keys = wide_values((2, 3, dim), seed=dim).to(dtype)
    fmt = RowFormat(dtype, True, IndexKeyLayout(dim), rotate=True)
    got = norm_rope_rows_triton(keys, None, None, None, fmt)
    assert got.shape == (2, 3, IndexKeyLayout(dim).row_bytes) and got.dtype == torch.uint8
    assert_same_rows(got, fp4_keys.pack_index_keys(ops.hadamard(keys), IndexKeyLayout(dim)),
                     fmt)
