"""Sparse attention with sink: Triton (interpreter) vs the torch reference."""

from __future__ import annotations

import pytest
import torch
from spies import answers

from model.kernels import sparse_attn
from model.kernels.kv_fp8 import KVLayout, pack_kv_fp8, unpack_kv_fp8
from model.kernels.sparse_attn import (
    WindowRows,
    sparse_attn_fp8_reference,
    sparse_attn_reference,
    sparse_attn_triton,
)


def _inputs(b, s, h, d, n, k, pad_frac=0.25, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, s, h, d, generator=g)
    kv = torch.randn(b, n, d, generator=g)
    sink = torch.randn(h, generator=g)
    idx = torch.randint(0, max(n, 1), (b, s, k), generator=g)
    idx = torch.where(torch.rand(b, s, k, generator=g) < pad_frac, -1, idx)
    return q, kv, sink, idx


def _check(got, want, atol=2e-5):
    (o, lse), (o_ref, lse_ref) = got, want
    assert torch.allclose(o, o_ref, atol=atol, rtol=1e-4), (o - o_ref).abs().max()
    assert torch.allclose(lse, lse_ref, atol=atol, rtol=1e-4), (lse - lse_ref).abs().max()


@pytest.mark.parametrize(
    "b,s,h,d,n,k,splits",
    [
        (1, 3, 4, 64, 40, 24, 1),     # prefill, heads < block, k not a multiple of the block
        (2, 2, 20, 48, 33, 17, 1),    # ragged: 20 heads (2 head blocks), d not a power of two
        (1, 1, 16, 64, 70, 64, 3),    # decode, split over programs (block boundary: 64 = 4×16)
        (2, 1, 8, 32, 9, 40, 2),      # decode, k larger than the rows available (repeats + pads)
    ],
)
def test_sparse_attn_matches_reference(b, s, h, d, n, k, splits):
    q, kv, sink, idx = _inputs(b, s, h, d, n, k)
    scale = d**-0.5
    got = sparse_attn_triton(q, kv, sink, idx, scale, n_splits=splits)
    _check(got, sparse_attn_reference(q, kv, sink, idx, scale))


@pytest.mark.parametrize("splits,rows_m", [(1, False), (2, False), (1, True), (2, True)])
def test_the_running_max_rescales_only_past_the_slack_and_stays_exact(splits, rows_m):
    """Scores that grow from one 16-row tile to the next, by less than the rescale slack (2^8,
    log2 units: the accumulator keeps a stale max) and by far more (it rescales), and fall
    again: the output and lse are the reference's, split or not."""
    g = torch.Generator().manual_seed(5)
    d, h = 32, 4
    v = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    steps = torch.tensor([0.0, 3.0, 5.0, 40.0, 44.0, 120.0, 10.0, 125.0])   # score per tile
    kv = (steps.repeat_interleave(16)[:, None] * v + 0.3 * torch.randn(128, d, generator=g))
    q = v.expand(1, 1, h, d) * torch.tensor([1.0, 0.9, 0.5, -0.2]).view(1, 1, h, 1)
    idx = torch.arange(128).view(1, 1, 128)
    sink = torch.zeros(h)
    got = sparse_attn_triton(q, kv[None], sink, idx, 1.0, n_splits=splits, rows_m=rows_m)
    _check(got, sparse_attn_reference(q, kv[None], sink, idx, 1.0), atol=1e-4)


@pytest.mark.parametrize("combine", ["fused", "kernel"])
def test_the_merge_of_many_splits_rescales_between_lse_tiles(combine):
    """40 splits of 16 rows: the merge reads their lse in two tiles of 32 (the second's max
    far above the first's: the denominator is rescaled between them) and their partials in
    groups of 4 splits (the last group, and the padded tail, partly empty)."""
    g = torch.Generator().manual_seed(11)
    d, h, k = 32, 4, 630
    v = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    level = torch.where(torch.arange(k) < 32 * 16, 2.0, 30.0)   # the last splits score highest
    kv = level[:, None] * v + 0.5 * torch.randn(k, d, generator=g)
    q = v.expand(1, 1, h, d) * torch.tensor([1.0, 0.7, 0.3, -0.2]).view(1, 1, h, 1)
    idx = torch.arange(k).view(1, 1, k)   # slot order: splits 32–39 hold the high rows
    idx = torch.where(torch.rand(1, 1, k, generator=g) < 0.1, -1, idx)
    sink = torch.tensor([0.5, -1.0, 2.0, 0.0])
    got = sparse_attn_triton(q, kv[None], sink, idx, 0.5, n_splits=40, combine=combine)
    _check(got, sparse_attn_reference(q, kv[None], sink, idx, 0.5), atol=1e-4)


@pytest.mark.parametrize("splits", [1, 2])
def test_all_padding_gives_sink_only(splits):
    q, kv, sink, idx = _inputs(1, 2, 4, 32, 8, 32)
    idx[0, 1] = -1  # the second token sees nothing: output 0, lse = sink
    o, lse = sparse_attn_triton(q, kv, sink, idx, 0.2, n_splits=splits)
    assert torch.count_nonzero(o[0, 1]) == 0
    assert torch.allclose(lse[0, 1], sink)
    _check((o, lse), sparse_attn_reference(q, kv, sink, idx, 0.2))


def test_empty_index_set():
    q, kv, sink, idx = _inputs(1, 1, 4, 32, 8, 0)
    o, lse = sparse_attn_triton(q, kv, sink, idx, 0.2)
    assert o.shape == (1, 1, 4, 32) and torch.count_nonzero(o) == 0
    assert torch.allclose(lse[0, 0], sink)


@pytest.mark.parametrize("splits", [1, 2])
def test_fp8_cache_rows(splits):
    layout = KVLayout(head_dim=96, rope_dim=32, block=32)  # 2 scale blocks, 136-byte rows
    assert layout.row_bytes == 136
    q, kv, sink, idx = _inputs(2, 2, 4, 96, 21, 20, seed=3)
    kv = kv * torch.logspace(-2, 1, 96)  # blocks with very different scales
    cache = pack_kv_fp8(kv, layout)
    dense = unpack_kv_fp8(cache, layout)
    got = sparse_attn_triton(q, cache, sink, idx, 96**-0.5, layout=layout, n_splits=splits)
    _check(got, sparse_attn_reference(q, dense, sink, idx, 96**-0.5), atol=1e-4)


def test_fp8_rows_not_8_byte_aligned_load_their_scales_a_byte_at_a_time():
    """The kernels load a row's scale bytes as one 8-byte word (``scale_words``) only where the
    rows start 8-byte aligned; rows that do not (a buffer viewed from an odd byte) give the same
    output through the byte-per-dim loads."""
    from model.kernels.sparse_attn import scale_words

    layout = KVLayout(head_dim=96, rope_dim=32, block=32)
    q, kv, sink, idx = _inputs(1, 2, 4, 96, 21, 20, seed=4)
    cache = pack_kv_fp8(kv * torch.logspace(-2, 1, 96), layout)
    shifted = torch.empty(cache.numel() + 2, dtype=torch.uint8)[2:].view(cache.shape)
    shifted.copy_(cache)
    assert cache.data_ptr() % 8 == 0 and shifted.data_ptr() % 8 == 2
    assert scale_words(layout, True) and not scale_words(layout, False)
    assert not scale_words(KVLayout(head_dim=96, rope_dim=32, block=4), True)  # 16 scales
    want = sparse_attn_triton(q, cache, sink, idx, 96**-0.5, layout=layout)
    got = sparse_attn_triton(q, shifted, sink, idx, 96**-0.5, layout=layout)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    _check(got, sparse_attn_reference(q, unpack_kv_fp8(cache, layout), sink, idx, 96**-0.5),
           atol=1e-4)


@pytest.mark.parametrize("layout,b,s,h,n,k,splits,block_h,dv_parts,window", [
    (KVLayout(96, 32, 32), 2, 2, 4, 21, 20, 1, 16, 1, False),    # prefill, 2 scale blocks
    (KVLayout(96, 32, 32), 1, 1, 4, 40, 37, 3, 16, 1, True),     # decode split, with a window
    (KVLayout(128, 64, 64), 1, 3, 64, 50, 36, 1, 64, 4, False),  # column slices: RoPE in one
    (KVLayout(), 1, 1, 8, 24, 20, 2, 16, 2, True),               # V4's 584-byte rows
])
def test_fp8_rows_decoded_by_placement_are_the_cast_paths_rows(monkeypatch, layout, b, s, h, n,
                                                               k, splits, block_h, dv_parts,
                                                               window):
    """``fp8_pairs``: the rows decoded two codes a register, × 2^-60, and the 2^60 put back on
    the scores and the probabilities — exact, so the output is the cast path's to the bit.
    Values span 2^-30 .. 2^12 across scale blocks, and within a block down to e4m3's
    subnormal codes."""
    d = layout.head_dim
    q, kv, sink, idx = _inputs(b, s, h, d, n, k, seed=d + splits)
    kv = kv * torch.logspace(-9, 3.5, d) * torch.where(torch.rand(n, d) < 0.2, 1e-3, 1.0)
    cache = pack_kv_fp8(kv, layout)
    win = None
    if window:
        rows = pack_kv_fp8(torch.randn(b, 5, d) * torch.logspace(-2, 1, d), layout)
        win = WindowRows(rows, torch.tensor([[-1, 0, 3, 4, 2, -1]]).expand(s, -1))
    opts = dict(layout=layout, window=win, n_splits=splits, block_h=block_h, dv_parts=dv_parts)
    plain = sparse_attn_triton(q, cache, sink, idx, d**-0.5, **opts)
    decoded = answers(monkeypatch, sparse_attn, "fp8_row_pairs")
    got = sparse_attn_triton(q, cache, sink, idx, d**-0.5, fp8_pairs=True, **opts)
    assert decoded == [True]
    assert torch.equal(got[0], plain[0]) and torch.equal(got[1], plain[1])
    want = sparse_attn_fp8_reference(q, cache, sink, idx, d**-0.5, layout, win)
    assert (got[0] - want[0]).abs().max() <= 1e-5 * want[0].abs().max()   # values span 2^42
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-4)


def test_fp8_rows_the_placement_cannot_read_take_the_cast_path():
    """Rows off the 8-byte grid, codes not a multiple of 8, or a scale block not of 4: the cast
    path, the same output."""
    fp8_row_pairs = sparse_attn.fp8_row_pairs
    layout = KVLayout(head_dim=96, rope_dim=32, block=32)
    assert fp8_row_pairs(layout, True) and not fp8_row_pairs(layout, False)
    assert not fp8_row_pairs(KVLayout(head_dim=46, rope_dim=2, block=44), True)  # 44 codes
    assert not fp8_row_pairs(KVLayout(head_dim=96, rope_dim=32, block=10), True)
    q, kv, sink, idx = _inputs(1, 2, 4, 96, 21, 20, seed=5)
    cache = pack_kv_fp8(kv, layout)
    shifted = torch.empty(cache.numel() + 4, dtype=torch.uint8)[4:].view(cache.shape)
    shifted.copy_(cache)
    want = sparse_attn_triton(q, cache, sink, idx, 96**-0.5, layout=layout)
    got = sparse_attn_triton(q, shifted, sink, idx, 96**-0.5, layout=layout, fp8_pairs=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("fp8,b,s,h,d,n,k,splits,dv_parts,qk_split", [
    (False, 1, 1, 16, 64, 70, 64, 3, 1, 4),    # decode split over programs
    (False, 2, 2, 20, 48, 33, 17, 1, 2, 2),    # ragged heads, d not a power of two, 2 slices
    (False, 2, 2, 20, 48, 33, 17, 1, 2, 4),    # ... 16 dims a slice, the last one padding
    (True, 1, 3, 8, 128, 50, 36, 1, 1, 4),     # FP8 rows by placement, prefill
    (True, 1, 1, 16, 128, 40, 37, 2, 2, 8),    # ... decode split, 2 column slices
])
def test_scores_as_a_dot_batched_over_slices_of_the_head_dim(fp8, b, s, h, d, n, k, splits,
                                                            dv_parts, qk_split):
    """``qk_split``: q·k summed over slices of D (a batched dot, a slice a warp) — the one dot's
    scores up to the order of an fp32 sum."""
    q, kv, sink, idx = _inputs(b, s, h, d, n, k, seed=qk_split + d)
    layout = KVLayout(d, 32, 32) if fp8 else None
    rows = pack_kv_fp8(kv, layout) if fp8 else kv
    opts = dict(layout=layout, n_splits=splits, dv_parts=dv_parts, fp8_pairs=fp8)
    got = sparse_attn_triton(q, rows, sink, idx, d**-0.5, qk_split=qk_split, **opts)
    one = sparse_attn_triton(q, rows, sink, idx, d**-0.5, **opts)
    _check(got, one, atol=1e-5)
    _check(got, sparse_attn_reference(q, unpack_kv_fp8(rows, layout) if fp8 else kv, sink, idx,
                                      d**-0.5), atol=1e-4)


def test_the_head_dim_split_must_leave_16_dims_a_slice():
    q, kv, sink, idx = _inputs(1, 1, 4, 64, 8, 4)
    for bad in (0, 3, 8):   # 64 dims: 3 does not divide, 8 leaves 8
        with pytest.raises(ValueError, match="qk_split"):
            sparse_attn_triton(q, kv, sink, idx, 0.2, qk_split=bad)


def test_fp8_layout_is_584_bytes_and_lossless_for_fake_quant():
    from model.kernels import quant

    layout = KVLayout()
    assert (layout.row_bytes, layout.nope, layout.n_scales) == (584, 448, 7)
    kv = torch.randn(3, 512)
    fq = torch.cat([quant.fp8_fake_quant(kv[:, :448], 64), kv[:, 448:].bfloat16().float()], -1)
    assert torch.equal(unpack_kv_fp8(pack_kv_fp8(kv, layout), layout), fq)


@pytest.mark.parametrize(
    "b,s,h,d,n,k,splits,block_h,dv_parts,block_n",
    [
        (1, 3, 64, 64, 40, 24, 1, 64, 2, 16),   # prefill, one 64-head tile, output columns in 2
        (2, 2, 20, 64, 33, 17, 1, 64, 4, 16),   # 20 heads in a 64-head tile (masked), 4 slices
        (1, 1, 16, 64, 70, 64, 3, 16, 2, 16),   # decode split over programs × column slices
        (1, 2, 8, 48, 9, 40, 2, 16, 2, 16),     # d not a power of two (a slice is padding)
        (1, 3, 64, 64, 90, 70, 1, 64, 2, 32),   # 32 rows a step: 70 slots, a short last step
        (1, 2, 64, 64, 90, 70, 1, 64, 4, 64),   # 64 rows a step, 4 slices
    ],
)
def test_output_columns_split_over_programs(b, s, h, d, n, k, splits, block_h, dv_parts,
                                            block_n):
    q, kv, sink, idx = _inputs(b, s, h, d, n, k)
    scale = d**-0.5
    got = sparse_attn_triton(q, kv, sink, idx, scale, n_splits=splits, block_h=block_h,
                             dv_parts=dv_parts, block_n=block_n)
    _check(got, sparse_attn_reference(q, kv, sink, idx, scale))


@pytest.mark.parametrize("dv_parts", [2, 4])
def test_fp8_cache_rows_with_output_columns_split(dv_parts):
    layout = KVLayout(128, 64, 64)
    q, kv, sink, idx = _inputs(1, 3, 64, 128, 50, 36)
    cache = pack_kv_fp8(kv, layout)
    got = sparse_attn_triton(q, cache, sink, idx, 0.1, layout=layout, n_splits=1, block_h=64,
                             dv_parts=dv_parts)
    want = sparse_attn_reference(q, unpack_kv_fp8(cache, layout), sink, idx, 0.1)
    _check(got, want, atol=1e-4)


def test_output_column_split_must_divide_the_block():
    q, kv, sink, idx = _inputs(1, 1, 4, 32, 8, 4)
    with pytest.raises(ValueError, match="dv_parts"):
        sparse_attn_triton(q, kv, sink, idx, 0.2, dv_parts=3)


@pytest.mark.parametrize(
    "b,s,n,k,nw,w,shared,splits",
    [
        (1, 1, 50, 24, 20, 13, True, 3),   # decode: window slots straddle a 16-row tile, split
        (2, 3, 30, 17, 9, 9, False, 1),    # ragged prefill, per-sequence window indices
        (1, 2, 0, 0, 12, 12, True, 1),     # no compressed rows yet (an HCA layer's start)
        (2, 1, 40, 32, 7, 16, True, 2),    # more window slots than window rows (−1 / repeats)
    ],
)
@pytest.mark.parametrize("fp8", [False, True])
def test_window_rows_read_in_place(b, s, n, k, nw, w, shared, splits, fp8):
    """The window as a second source of rows equals one joined row tensor and index set, the
    window's rows shifted past the compressed ones, in either row format."""

    g = torch.Generator().manual_seed(7)
    d = 64
    q, kv, sink, idx = _inputs(b, s, 8, d, max(n, 1), k, seed=5)
    kv = kv[:, :n]
    rows = torch.randn(b, nw, d, generator=g)
    widx = torch.randint(0, nw, (s, w) if shared else (b, s, w), generator=g)
    widx = torch.where(torch.rand(widx.shape, generator=g) < 0.2, -1, widx)
    window = WindowRows(rows, widx)
    layout = KVLayout(head_dim=d, rope_dim=16, block=16) if fp8 else None
    if fp8:
        kv, rows = pack_kv_fp8(kv, layout), pack_kv_fp8(rows, layout)
        window = WindowRows(rows, widx)
    got = sparse_attn_triton(q, kv, sink, idx, 0.125, layout=layout, window=window,
                             n_splits=splits)
    joined_kv, joined_idx = window.joined(kv, idx)
    assert joined_idx.shape == (b, s, w + k)
    if fp8:
        want = sparse_attn_fp8_reference(q, joined_kv, sink, joined_idx, 0.125, layout)
        assert all(torch.equal(x, y) for x, y in zip(
            want, sparse_attn_fp8_reference(q, kv, sink, idx, 0.125, layout, window), strict=True))
    else:
        want = sparse_attn_reference(q, joined_kv, sink, joined_idx, 0.125)
    _check(got, want, atol=1e-4)


@pytest.mark.parametrize("splits,dv_parts,d,rope", [(1, 1, 64, 16), (3, 1, 64, 16),
                                                    (1, 2, 128, 32), (2, 1, 48, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_rotated_back_in_the_kernel_that_stores_it(splits, dv_parts, d, rope, dtype):
    """``unrope``: attention's inverse RoPE as the epilogue of the forward (one split) or of the
    decode combine (several) — equal to storing the output, then apply_rope(inverse=True), with
    the same bf16 rounding; d = 48 leaves masked columns in the tile."""
    from model.kernels.norm_rope import apply_rope_reference, apply_rope_triton
    from model.op_audit import OpAudit

    q, kv, sink, idx = _inputs(1, 3 if splits == 1 else 1, 8, d, 30, 24, seed=d + splits)
    q, kv = q.to(dtype), kv.to(dtype)
    angles = torch.rand(q.shape[1], rope // 2) * 6
    with OpAudit() as audit:
        got, lse = sparse_attn_triton(q, kv, sink, idx, 0.2, unrope=angles, n_splits=splits,
                                      dv_parts=dv_parts)
    assert audit.triton["_rope_kernel"] == 0
    plain, plain_lse = sparse_attn_triton(q, kv, sink, idx, 0.2, n_splits=splits,
                                          dv_parts=dv_parts)
    want = apply_rope_triton(plain, angles, inverse=True)
    assert got.dtype == dtype and torch.equal(lse, plain_lse)
    assert torch.allclose(got.float(), want.float(), atol=1e-6, rtol=1e-6), (got - want).abs().max()
    assert torch.equal(got[..., : d - rope], plain[..., : d - rope])   # no-RoPE dims untouched
    ref, _ = sparse_attn_reference(q, kv, sink, idx, 0.2, unrope=angles)
    ref_plain, _ = sparse_attn_reference(q, kv, sink, idx, 0.2)
    assert torch.equal(ref, apply_rope_reference(ref_plain, angles, inverse=True))
    assert torch.allclose(got.float(), ref.float(), atol=2e-2 if dtype == torch.bfloat16 else 2e-5)


def test_the_output_goes_where_the_caller_says():
    """``out``: the kernel stores o in the caller's tensor (a decode graph's static buffer, or a
    sequence's rows of the batch's output) — no copy when it is contiguous; a strided one gets
    the values too."""
    from model.op_audit import OpAudit

    q, kv, sink, idx = _inputs(1, 4, 8, 32, 20, 12, seed=9)
    want, _ = sparse_attn_triton(q, kv, sink, idx, 0.2)
    batch = torch.full((1, 7, 8, 32), float("nan"))
    rows = batch[:, 2:6]
    with OpAudit() as audit:
        got, _ = sparse_attn_triton(q, kv, sink, idx, 0.2, out=rows)
    assert got.data_ptr() == rows.data_ptr() and audit.torch_launches() == 0
    assert torch.equal(batch[:, 2:6], want) and batch[:, :2].isnan().all()
    strided = torch.empty(1, 8, 4, 32).transpose(1, 2)
    got, _ = sparse_attn_triton(q, kv, sink, idx, 0.2, out=strided)
    assert got is strided and torch.equal(strided, want)


@pytest.mark.parametrize(
    "b,s,h,d,splits,block_h,dv_parts,fp8,unrope",
    [
        (1, 1, 16, 64, 3, 16, 1, False, False),   # decode: 3 splits, one group a token
        (2, 1, 20, 64, 4, 16, 2, False, True),    # 2 head blocks × 2 column slices, unroped
        (1, 2, 8, 64, 2, 16, 4, True, True),      # FP8 rows, 4 column slices of 16
        (3, 1, 8, 48, 5, 16, 1, False, False),    # d not a power of two; more splits than tiles
        (1, 1, 16, 256, 3, 16, 1, False, True),   # 2 column blocks of 128 merged in turn
        (1, 1, 8, 200, 2, 16, 1, True, True),     # ... the second one part padding, FP8 rows
    ],
)
def test_the_last_split_program_merges_as_the_combine_kernel_does(b, s, h, d, splits, block_h,
                                                                   dv_parts, fp8, unrope):
    """combine="fused": flash-decoding's splits merged by the last of each group's programs in
    the forward's own launch — the combine kernel's values exactly, one launch, and the arrival
    counts back at zero for the next launch."""
    from model.kernels import launch
    from model.op_audit import OpAudit

    q, kv, sink, idx = _inputs(b, s, h, d, 60, 40, seed=splits)
    layout = KVLayout(d, 16, 16) if fp8 else None
    rows = pack_kv_fp8(kv, layout) if fp8 else kv
    angles = torch.rand(s, 8) * 6 if unrope else None
    args = (q, rows, sink, idx, 0.2)
    opts = dict(layout=layout, unrope=angles, n_splits=splits, block_h=block_h,
                dv_parts=dv_parts)
    apart = sparse_attn_triton(*args, combine="kernel", **opts)
    with OpAudit() as audit:
        fused = sparse_attn_triton(*args, **opts)
    assert dict(audit.triton) == {"_sparse_attn_fwd": 1}
    assert torch.equal(fused[0], apart[0]) and torch.equal(fused[1], apart[1])
    assert not launch.arrivals(1024, q.device).any()
    plain = unpack_kv_fp8(rows, layout) if fp8 else kv
    _check(fused, sparse_attn_reference(q, plain, sink, idx, 0.2, unrope=angles), atol=1e-4)
    with pytest.raises(ValueError, match="combine must be fused or kernel"):
        sparse_attn_triton(*args, combine="tree", **opts)


def test_a_merged_split_reads_at_least_128_rows():
    """Decode at V4-Flash shapes (640 slots, 4 head blocks of 16): 20 splits when a combine
    kernel merges them, 5 when the last split program does (its read: 5 partials, not 20)."""
    from model.kernels.sparse_attn import default_splits

    assert default_splits(1, 4, 640, 16) == 20
    assert default_splits(1, 4, 640, 16, merged=True) == 5
    assert default_splits(8, 4, 640, 16, merged=True) == 5      # a batch of 8: 8 splits apart
    assert default_splits(1, 4, 100, 16, merged=True) == 1      # one split: nothing to merge
    assert default_splits(64, 4, 640, 16, merged=True) == 1     # enough programs already


def _tile_inputs(fp8, b, s, h, d, n, k, window, unrope, seed):
    """A launch-choice test's inputs: float or FP8 rows, with a window source of 6 rows (−1
    slots at both ends) and RoPE angles when asked → (q, float kv, rows, sink, idx, options of
    ``sparse_attn_triton``), and its reference's (o, lse)."""
    q, kv, sink, idx = _inputs(b, s, h, d, n, k, seed=seed)
    layout = KVLayout(d, 32, 32) if fp8 else None
    rows = pack_kv_fp8(kv, layout) if fp8 else kv
    win = None
    if window:
        win_kv = torch.randn(b, 6, d) * 1.5
        win = WindowRows(pack_kv_fp8(win_kv, layout) if fp8 else win_kv,
                         torch.tensor([[-1, 0, 3, 5, 2, 4, -1]]).expand(s, -1))
    angles = torch.rand(s, 8) * 6 if unrope else None
    want = (sparse_attn_fp8_reference(q, rows, sink, idx, d**-0.5, layout, win, angles) if fp8
            else sparse_attn_reference(q, kv, sink, idx, d**-0.5, win, angles))
    return q, rows, sink, idx, dict(layout=layout, window=win, unrope=angles), want


@pytest.mark.parametrize(
    "fp8,b,s,h,d,n,k,splits,block_h,dv_parts,block_n,window,unrope",
    [
        (False, 1, 3, 64, 64, 90, 70, 1, 64, 1, 64, True, True),   # prefill: a short last step
        (False, 2, 2, 20, 48, 33, 17, 1, 32, 1, 16, False, False),  # ragged heads, d padded
        (False, 1, 2, 64, 64, 40, 37, 1, 64, 2, 32, True, False),   # 2 column slices
        (False, 1, 1, 16, 64, 70, 64, 3, 16, 1, 16, False, True),   # decode split, merged
        (True, 1, 3, 64, 128, 50, 36, 1, 64, 1, 32, True, True),    # FP8 rows, a window
        (True, 1, 2, 8, 128, 40, 37, 2, 16, 4, 16, False, False),   # ... split, 4 slices
    ],
)
def test_rows_on_the_mma_m_side_give_the_heads_on_m_output(fp8, b, s, h, d, n, k, splits,
                                                           block_h, dv_parts, block_n, window,
                                                           unrope):
    """``rows_m``: the scores as kv · qᵀ and the output as kvᵀ · p, the accumulator
    [columns, heads] and transposed once after the loops — the heads-on-M kernel's output and
    lse up to the order of fp32 sums, and the reference's, with padding (−1) slots, a window
    source, column slices, split rows and the output's RoPE dims rotated back."""
    q, rows, sink, idx, opts, want = _tile_inputs(fp8, b, s, h, d, n, k, window, unrope,
                                                  seed=d + h + splits)
    opts.update(n_splits=splits, block_h=block_h, dv_parts=dv_parts, block_n=block_n)
    got = sparse_attn_triton(q, rows, sink, idx, d**-0.5, rows_m=True, **opts)
    _check(got, sparse_attn_triton(q, rows, sink, idx, d**-0.5, **opts), atol=1e-5)
    _check(got, want, atol=1e-4)


@pytest.mark.parametrize(
    "fp8,b,s,h,d,n,k,splits,block_h,dv_parts,block_n,window,unrope",
    [
        (False, 1, 3, 64, 64, 90, 70, 1, 64, 2, 16, True, True),    # prefill: a short last step
        (False, 2, 2, 20, 48, 33, 17, 1, 16, 1, 16, False, False),  # ragged heads, d padded
        (False, 1, 1, 16, 64, 70, 64, 3, 16, 2, 16, True, True),    # decode split, merged
        (False, 1, 2, 8, 64, 30, 5, 1, 16, 1, 16, True, False),     # one compressed tile
        (True, 1, 3, 64, 128, 50, 36, 1, 64, 4, 32, True, True),    # FP8 rows, a window
    ],
)
@pytest.mark.parametrize("fp8_pairs", [False, True])
def test_scores_a_tile_ahead_give_the_same_output(fp8, b, s, h, d, n, k, splits, block_h,
                                                  dv_parts, block_n, window, unrope, fp8_pairs):
    """``ahead``: each loop issues its next row tile's scores before this tile's softmax, and
    loads the tile's output columns again — the tile-at-a-time kernel's output and lse to the
    bit (the same sums in the same order), and the reference's: a window loop and a compressed
    loop each with its own first tile, a short last tile, a padded next tile after the last."""
    q, rows, sink, idx, opts, want = _tile_inputs(fp8, b, s, h, d, n, k, window, unrope,
                                                  seed=d + h + splits + 7)
    opts.update(n_splits=splits, block_h=block_h, dv_parts=dv_parts, block_n=block_n,
                fp8_pairs=fp8_pairs)
    got = sparse_attn_triton(q, rows, sink, idx, d**-0.5, ahead=True, **opts)
    plain = sparse_attn_triton(q, rows, sink, idx, d**-0.5, **opts)
    assert torch.equal(got[0], plain[0]) and torch.equal(got[1], plain[1])
    _check(got, want, atol=1e-4)
    with pytest.raises(ValueError, match="ahead"):
        sparse_attn_triton(q, rows, sink, idx, d**-0.5, ahead=True, rows_m=True, **opts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_upconverted_rows_are_the_unpacked_rows_exactly(dtype):
    """``upconvert_rows``: e4m3 codes × their block's power-of-two scale and the bf16 RoPE dims,
    in one launch — ``unpack_kv_fp8``'s values to the bit, in fp32 and in bf16 (exact there
    too: 3 mantissa bits and a power of two), over scales 2^-9 .. 2^3.5, a batch of two, and
    row counts that do not fill the last program's block."""
    from model.op_audit import OpAudit

    layout = KVLayout(head_dim=96, rope_dim=32, block=32)
    g = torch.Generator().manual_seed(21)
    kv = torch.randn(2, 19, 96, generator=g) * torch.logspace(-9, 3.5, 96)
    cache = pack_kv_fp8(kv, layout)
    with OpAudit() as audit:
        got = sparse_attn.upconvert_rows(cache, layout, dtype)
    assert dict(audit.triton) == {"_upconvert_rows_kernel": 1}
    want = unpack_kv_fp8(cache, layout)
    assert got.dtype == dtype and torch.equal(got.float(), want)


@pytest.mark.parametrize("window,splits,block_h,dv_parts", [
    (True, 1, 64, 2),     # prefill over a window and the store, 64-head tiles in 2 slices
    (False, 2, 16, 1),    # split rows, merged
])
def test_a_prefill_over_upconverted_fp8_rows_is_the_fp8_kernels(monkeypatch, window, splits,
                                                                 block_h, dv_parts):
    """``upconvert``: the store's and the window's FP8 rows up-converted once, then the float
    rows' kernel — the FP8 kernel's output and lse to the bit (the same values, the same
    tiles); past ``UPCONVERT_MAX_BYTES`` the FP8 kernel reads the rows itself."""
    from model.op_audit import OpAudit

    layout = KVLayout(128, 32, 32)
    q, kv, sink, idx = _inputs(1, 3, 64, 128, 50, 36, seed=window + splits)
    cache = pack_kv_fp8(kv * torch.logspace(-3, 2, 128), layout)
    win = None
    if window:
        win = WindowRows(pack_kv_fp8(torch.randn(1, 6, 128), layout),
                         torch.tensor([[-1, 0, 3, 5, 2, 4, -1]]).expand(3, -1))
    opts = dict(layout=layout, window=win, n_splits=splits, block_h=block_h, dv_parts=dv_parts)
    with OpAudit() as audit:
        got = sparse_attn_triton(q, cache, sink, idx, 128**-0.5, upconvert=True, **opts)
    assert audit.triton["_upconvert_rows_kernel"] == (2 if window else 1)
    want = sparse_attn_triton(q, cache, sink, idx, 128**-0.5, **opts)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    _check(got, sparse_attn_fp8_reference(q, cache, sink, idx, 128**-0.5, layout, win),
           atol=1e-4)
    monkeypatch.setattr(sparse_attn, "UPCONVERT_MAX_BYTES", 50 * 128 * 4 - 1)   # one row short
    with OpAudit() as audit:
        direct = sparse_attn_triton(q, cache, sink, idx, 128**-0.5, upconvert=True, **opts)
    assert audit.triton["_upconvert_rows_kernel"] == 0
    assert torch.equal(direct[0], want[0]) and torch.equal(direct[1], want[1])
