"""Compressor pooling + RMSNorm + RoPE + the cache insert in every row format: the Triton kernel
(interpreter) vs the composed torch ops."""

from __future__ import annotations

import pytest
import torch
from row_checks import assert_same_rows

from model.kernels import ops
from model.kernels.cache_rows import RowFormat
from model.kernels.compressor import (
    HeadColumns,
    PoolColumns,
    compress_insert_reference,
    compress_insert_triton,
    pool_inputs_reference,
    pool_inputs_triton,
)
from model.kernels.fp4_keys import IndexKeyLayout
from model.kernels.kv_fp8 import KVLayout
from model.op_audit import OpAudit


def _pooled(b, rows, d, overlap, ratio, seed=0, prev=True):
    """A sequence's open-block rows [b, rows, 2, coff·d] and a previous block (CSA)."""
    g = torch.Generator().manual_seed(seed)
    coff = 2 if overlap else 1
    pooled = torch.randn(b, rows, 2, coff * d, generator=g)
    pooled[:, :, 1] *= 3   # gate logits spread enough that the softmax is not flat
    if not (overlap and prev):
        return pooled, None, None
    return (pooled, torch.randn(b, ratio, coff * d, generator=g),
            torch.randn(b, ratio, coff * d, generator=g) * 3)


def _norm_and_angles(d, rope, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    weight = torch.rand(d, generator=g) + 0.5
    angles = (torch.arange(n).float().view(-1, 1) * 4 + 3) * torch.rand(rope // 2, generator=g)
    return weight, angles


FORMATS = {
    "float": lambda d, rope: RowFormat(torch.float32, rope_dim=rope),
    "kv_packed": lambda d, rope: RowFormat(torch.float32, True, KVLayout(d, rope), False, rope),
    "kv_float": lambda d, rope: RowFormat(torch.float32, True, None, False, rope),
    "keys_packed": lambda d, rope: RowFormat(torch.float32, True, IndexKeyLayout(d), True, rope),
    "keys_float": lambda d, rope: RowFormat(torch.float32, True, None, True, rope),
}


SHAPES = [  # b, rows, n_blocks, ratio, overlap, prev, d, rope
    (1, 9, 2, 4, True, True, 128, 64),     # CSA: 2 blocks + 1 open row, overlap from the state
    (2, 4, 1, 4, True, False, 64, 32),     # CSA, the sequence's first block (half padded)
    (1, 33, 2, 16, False, False, 96, 32),  # HCA: 16 rows per block, d not a power of two
    (1, 8, 1, 8, False, False, 64, 64),    # HCA, RoPE over every dim
]
# indexer keys come from the CSA (ratio 4) layers' indexer compressor only
CASES = [(name, *shape) for name in FORMATS for shape in SHAPES
         if shape[4] or not name.startswith("keys")]


@pytest.mark.parametrize("fmt_name,b,rows,n_blocks,ratio,overlap,prev,d,rope", CASES)
def test_compress_insert_matches_the_composed_ops(fmt_name, b, rows, n_blocks, ratio, overlap,
                                                  prev, d, rope):
    fmt = FORMATS[fmt_name](d, rope)
    pooled, prev_kv, prev_score = _pooled(b, rows, d, overlap, ratio, prev=prev)
    weight, angles = _norm_and_angles(d, rope, n_blocks)
    args = (pooled, n_blocks, ratio, overlap, prev_kv, prev_score, weight, 1e-6, angles, fmt)
    want = compress_insert_reference(*args)
    got = compress_insert_triton(*args, block_w=4)
    assert got.shape == want.shape == (b, n_blocks, fmt.row_width(d)) and got.dtype == want.dtype
    assert_same_rows(got, want, fmt)


@pytest.mark.parametrize("fmt_name", ["float", "kv_packed", "keys_packed"])
def test_compress_insert_writes_only_its_rows_of_the_store(fmt_name):
    d, rope, ratio = 64, 32, 4
    fmt = FORMATS[fmt_name](d, rope)
    pooled, prev_kv, prev_score = _pooled(1, 8, d, True, ratio)
    weight, angles = _norm_and_angles(d, rope, 2)
    store = torch.full((1, 7, fmt.row_width(d)), 77, dtype=fmt.row_dtype())
    args = (pooled, 2, ratio, True, prev_kv, prev_score, weight, 1e-6, angles, fmt)
    compress_insert_triton(*args, out=store[:, 3:5])
    assert_same_rows(store[:, 3:5], compress_insert_reference(*args), fmt)
    assert bool((store[:, :3] == 77).all()) and bool((store[:, 5:] == 77).all())


def test_the_dispatch_writes_the_reference_rows_into_out_on_the_cpu():
    d, rope = 64, 32
    fmt = FORMATS["kv_packed"](d, rope)
    pooled, prev_kv, prev_score = _pooled(1, 4, d, True, 4)
    weight, angles = _norm_and_angles(d, rope, 1)
    args = (pooled, 1, 4, True, prev_kv, prev_score, weight, 1e-6, angles, fmt)
    out = torch.zeros(1, 1, fmt.row_width(d), dtype=torch.uint8)
    assert ops.compress_insert(*args, out=out) is out
    assert torch.equal(out, compress_insert_reference(*args))


def test_bf16_entries_round_like_the_reference_up_to_one_rounding():
    """bf16: the kernel rounds once after RoPE, the reference after pooling, norm and RoPE."""
    d, rope = 128, 64
    fmt = RowFormat(torch.bfloat16, rope_dim=rope)
    pooled, prev_kv, prev_score = _pooled(1, 8, d, True, 4)
    weight, angles = _norm_and_angles(d, rope, 2)
    args = (pooled, 2, 4, True, prev_kv, prev_score, weight, 1e-6, angles, fmt)
    got, want = compress_insert_triton(*args), compress_insert_reference(*args)
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want.float(), atol=0.02, rtol=0.02)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("with_index", [True, False])
def test_pool_inputs_sum_the_partials_in_one_launch(splits, with_index):
    """Each compressor's kv and gate + ape[position % ratio] side by side, and the indexer's
    head weights rounded to bf16 then scaled, from S split-K partials of the stacked projection:
    widths that are not powers of two, positions past several blocks, one launch."""
    g = torch.Generator().manual_seed(3 + splits)
    parts = torch.randn(splits, 2, 5, 200, generator=g)
    positions = torch.tensor([3, 4, 5, 17, 1030])
    comps = [PoolColumns(0, 48, torch.randn(4, 48, generator=g))]
    heads = None
    if with_index:
        comps.append(PoolColumns(100, 140, torch.randn(4, 40, generator=g)))
        heads = HeadColumns(96, 4, 0.125, torch.bfloat16)
    with OpAudit() as audit:
        got = pool_inputs_triton(parts, comps, heads, positions, block=32)
    want = pool_inputs_reference(parts, comps, heads, positions)
    assert audit.launches() == 1
    assert [t.shape for t in got] == [t.shape for t in want]
    assert [t.shape for t in got][:1] == [(2, 5, 2, 48)]
    for a, w in zip(got, want, strict=True):
        assert torch.allclose(a, w, atol=1e-6, rtol=1e-6), (a - w).abs().max()
    if with_index:   # the head weights really were rounded to bf16 before the scale
        h = parts.sum(0)[..., 96:100]
        assert torch.equal(want[2], h.bfloat16().float() * 0.125)
        assert not torch.equal(want[2], h * 0.125)


def test_a_previous_block_in_another_dtype_or_layout_is_read_as_fp32():
    """The state's overlap block: a view of the last pooled block at decode, separate tensors
    (any float dtype) after a prefix-cache restore — the kernel reads either."""
    d, rope = 64, 32
    fmt = FORMATS["float"](d, rope)
    pooled, prev_kv, prev_score = _pooled(1, 4, d, True, 4)
    weight, angles = _norm_and_angles(d, rope, 1)
    want = compress_insert_reference(pooled, 1, 4, True, prev_kv, prev_score, weight, 1e-6,
                                     angles, fmt)
    block = torch.stack([prev_kv, prev_score], dim=2)            # views, as at decode
    for kv, score in ((block[:, :, 0], block[:, :, 1]), (prev_kv.double(), prev_score)):
        got = compress_insert_triton(pooled, 1, 4, True, kv, score, weight, 1e-6, angles, fmt)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt_name,overlap", [  # indexer keys: ratio-4 compressors only
    ("float", True), ("kv_packed", True), ("keys_packed", True), ("float", False),
    ("kv_packed", False)])
def test_a_decode_steps_closing_blocks_go_in_one_launch(fmt_name, overlap):
    """Several sequences' one closing block each (a first block without a previous one among
    them), each into its own store row at its own position: one launch, the rows of one
    launch per sequence."""
    from model.kernels.compressor import (
        BlockInsert,
        compress_insert_rows_reference,
        compress_insert_rows_triton,
    )

    d, rope, ratio = 64, 32, 4 if overlap else 8
    fmt = FORMATS[fmt_name](d, rope)
    weight, _ = _norm_and_angles(d, rope, 1)
    inv = 1.0 / 10000 ** (torch.arange(rope // 2).float() / (rope // 2))
    items, stores, want_items, want = [], [], [], []
    for seed, (prev, position) in enumerate([(True, 4 * 1000), (False, 0), (True, 4 * 77)]):
        pooled, prev_kv, prev_score = _pooled(1, ratio, d, overlap, ratio, seed=seed, prev=prev)
        for rows, chosen in ((stores, items), (want, want_items)):
            rows.append(torch.zeros(1, 5, fmt.row_width(d), dtype=fmt.row_dtype()))
            chosen.append(BlockInsert(pooled, prev_kv, prev_score, position,
                                      rows[-1][:, 2 + seed:3 + seed]))
    compress_insert_rows_reference(want_items, ratio, overlap, weight, 1e-6, inv, fmt)
    with OpAudit() as audit:
        compress_insert_rows_triton(items, ratio, overlap, weight, 1e-6, inv, fmt)
    assert dict(audit.triton) == {"_compress_insert_kernel": 1}
    for got, expected in zip(stores, want, strict=True):
        assert_same_rows(got, expected, fmt)
        assert (got != 0).any()
