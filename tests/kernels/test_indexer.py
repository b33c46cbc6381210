"""Lightning indexer top-k: Triton (interpreter) vs the torch reference, the scores and merge paths."""

from __future__ import annotations

import pytest
import torch
from host_syncs import sync_ops
from spies import answers

from model.kernels import blocks, fp4_keys, indexer, ops
from model.kernels.fp4_keys import IndexKeyLayout, pack_index_keys
from model.kernels.indexer import (
    indexer_scores_reference,
    indexer_topk_reference,
    indexer_topk_triton,
)
from model.kernels.quant import fp4_fake_quant


def _inputs(b, s, h, d, n, start_pos, ratio=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, s, h, d, generator=g)
    w = torch.randn(b, s, h, generator=g) * h**-0.5
    keys = torch.randn(b, n, d, generator=g)
    visible = (torch.arange(start_pos, start_pos + s) + 1) // ratio
    return q, w, keys, visible


def _check(got, q, w, keys, visible, k):
    """Same picks as the reference, best first. Ties are real (a key whose dots are negative for
    every head scores exactly 0), so tied picks may differ; every untied pick must match."""
    want = indexer_topk_reference(q, w, keys, visible, k)
    assert got.shape == want.shape and got.dtype == torch.long
    assert torch.equal(got < 0, want < 0)  # same number of picks per query
    picks = got.flatten(0, 1).tolist()
    limits = visible.repeat(got.shape[0]).tolist()
    for row, limit in zip(picks, limits, strict=True):
        chosen = [j for j in row if j >= 0]
        assert len(set(chosen)) == len(chosen) and all(j < limit for j in chosen)
    scores = indexer_scores_reference(q, w, keys, visible)
    vals = torch.where(got >= 0, scores.gather(-1, got.clamp(min=0)), 0.0)
    want_vals = torch.where(want >= 0, scores.gather(-1, want.clamp(min=0)), 0.0)
    assert torch.allclose(vals, want_vals, atol=1e-5)  # the same scores, in the same order
    copies = ((scores.unsqueeze(-2) - want_vals.unsqueeze(-1)).abs() <= 1e-5).sum(-1)
    untied = (want >= 0) & (copies == 1)
    assert torch.equal(got[untied], want[untied])


@pytest.mark.parametrize(
    "b,s,h,d,n,start,k,chunks",
    [
        (1, 4, 8, 32, 40, 156, 8, 1),     # prefill rows: all 40 keys visible, 3 key tiles
        (2, 3, 12, 32, 50, 100, 16, 1),   # ragged heads (12), partial last tile (50 keys)
        (1, 1, 8, 64, 100, 399, 8, 3),    # decode: 100 keys (merge: over 3 programs)
        (1, 1, 4, 16, 70, 279, 32, 2),    # decode, k = 32 = two 16-key tiles per merge
    ],
)
@pytest.mark.parametrize("path", ["scores", "merge"])
def test_indexer_matches_reference(b, s, h, d, n, start, k, chunks, path):
    q, w, keys, visible = _inputs(b, s, h, d, n, start)
    got = indexer_topk_triton(q, w, keys, visible, k, n_chunks=chunks, block_n=16, path=path)
    _check(got, q, w, keys, visible, k)


def test_causal_visibility_and_k_larger_than_rows():
    # positions 0..9 with ratio 4: query t sees (t+1)//4 rows → 0, 0, 0, 1, 1, 1, 1, 2, 2, 2
    q, w, keys, visible = _inputs(1, 10, 4, 16, 2, 0)
    got = indexer_topk_triton(q, w, keys, visible, 8, block_n=16)
    assert (got[0, :3] == -1).all()
    assert torch.equal((got >= 0).sum(-1)[0], visible)
    _check(got, q, w, keys, visible, 8)


def test_k_larger_than_all_keys_and_single_token():
    q, w, keys, visible = _inputs(1, 1, 4, 16, 5, 40)
    got = indexer_topk_triton(q, w, keys, visible, 20)
    assert got.shape == (1, 1, 20) and (got[0, 0, 5:] == -1).all()
    assert sorted(got[0, 0, :5].tolist()) == [0, 1, 2, 3, 4]
    _check(got, q, w, keys, visible, 20)


# ---- scores path: block scores (Triton) + torch.topk ----------------------------------------


@pytest.mark.parametrize(
    "b,s,h,d,n,start,k,block_t,block_n",
    [
        (1, 37, 4, 16, 150, 560, 16, 4, 32),   # causal: visible 140..149, s and n off the blocks
        (2, 21, 8, 32, 300, 1100, 24, 2, 64),  # b=2, visible 275..280 of 300, k not a power of 2
        (1, 19, 6, 16, 90, 300, 8, 4, 16),     # ragged heads (6 of 8 dot rows per query)
        (2, 9, 4, 32, 48, 150, 8, None, None),  # default blocks: one program holds every query
    ],
)
def test_prefill_matches_reference(b, s, h, d, n, start, k, block_t, block_n):
    q, w, keys, visible = _inputs(b, s, h, d, n, start)
    assert visible.min() < visible.max() <= n  # visibility really varies per query
    got = indexer_topk_triton(q, w, keys, visible, k, path="scores", block_t=block_t,
                              block_n=block_n)
    _check(got, q, w, keys, visible, k)


def test_prefill_pads_with_minus_one_when_k_exceeds_visible_rows():
    # positions 0..22, ratio 4: query t sees (t+1)//4 rows = 0 (t < 3) … 5, fewer than k = 8
    q, w, keys, visible = _inputs(2, 23, 4, 16, 6, 0)
    got = indexer_topk_triton(q, w, keys, visible, 8, path="scores", block_t=4, block_n=16)
    assert (got[:, :3] == -1).all()
    assert torch.equal((got >= 0).sum(-1), visible.expand(2, -1))
    assert (got[..., 5:] == -1).all()
    _check(got, q, w, keys, visible, 8)


def test_prefill_k_larger_than_all_keys():
    q, w, keys, visible = _inputs(1, 12, 4, 16, 10, 60)  # all 10 keys visible to every query
    got = indexer_topk_triton(q, w, keys, visible, 32, path="scores", block_t=4, block_n=16)
    assert got.shape == (1, 12, 32) and (got[..., 10:] == -1).all()
    assert all(sorted(row[:10]) == list(range(10)) for row in got[0].tolist())
    _check(got, q, w, keys, visible, 32)


def test_scores_scratch_is_bounded_and_as_wide_as_the_keys(monkeypatch):
    """A tiny scratch bound forces several host blocks; each block's scratch is as wide as the
    keys (sized without reading ``visible`` on the host; the kernel skips invisible tiles)."""
    b, s, n = 2, 40, 120
    q, w, keys, visible = _inputs(b, s, 4, 16, n, 320)  # visible 80..89 of 120
    monkeypatch.setattr(indexer, "PREFILL_SCRATCH_BYTES", 4 * b * n * 8)  # 8 queries per block
    blocks = []
    real = indexer._launch_scores

    def recording(q_, w_, keys_, vis_, scores, lo, hi, *rest, **kw):
        blocks.append((lo, hi, tuple(scores.shape)))
        return real(q_, w_, keys_, vis_, scores, lo, hi, *rest, **kw)

    monkeypatch.setattr(indexer, "_launch_scores", recording)
    got = indexer_topk_triton(q, w, keys, visible, 16, path="scores", block_t=4, block_n=32)
    assert [(lo, hi) for lo, hi, _ in blocks] == [(i, i + 8) for i in range(0, s, 8)]
    for lo, hi, shape in blocks:
        assert shape == (b, hi - lo, n)
        assert 4 * b * (hi - lo) * shape[-1] <= indexer.PREFILL_SCRATCH_BYTES
    _check(got, q, w, keys, visible, 16)


def test_prefill_writes_minus_inf_past_each_blocks_last_visible_tile(monkeypatch):
    """Ratio 1: query t sees t + 1 keys, so early query blocks end many key tiles before the
    scratch does; those tiles are never scored and must still read as −inf, not as stale memory
    (the scratch is pre-filled with NaN here, which topk would rank first)."""
    q, w, keys, visible = _inputs(1, 40, 4, 16, 48, 0, ratio=1)
    real = indexer._launch_scores

    def stale(q_, w_, keys_, vis_, scores, *rest, **kw):
        scores.fill_(float("nan"))
        return real(q_, w_, keys_, vis_, scores, *rest, **kw)

    monkeypatch.setattr(indexer, "_launch_scores", stale)
    got = indexer_topk_triton(q, w, keys, visible, 8, path="scores", block_t=4, block_n=16)
    assert torch.equal((got >= 0).sum(-1)[0], visible.clamp(max=8))
    _check(got, q, w, keys, visible, 8)


@pytest.mark.parametrize("path", ["scores", "merge"])
def test_single_query_on_each_path(path):
    q, w, keys, visible = _inputs(1, 1, 8, 32, 70, 270)  # 68 of 70 keys visible
    got = indexer_topk_triton(q, w, keys, visible, 16, path=path, block_n=16)
    _check(got, q, w, keys, visible, 16)


def test_scores_and_merge_paths_agree():
    q, w, keys, visible = _inputs(2, 3, 8, 32, 60, 230)  # 57..58 of 60 keys visible
    pre = indexer_topk_triton(q, w, keys, visible, 16, path="scores", block_t=2, block_n=32)
    dec = indexer_topk_triton(q, w, keys, visible, 16, path="merge", n_chunks=2, block_n=16)
    assert (pre >= 0).all() and torch.equal(pre, dec)


@pytest.mark.parametrize("b,s,start", [(1, 1, 270), (2, 5, 200), (1, 40, 0)])
def test_default_path_is_scores_and_never_waits_for_the_device(monkeypatch, b, s, start):
    """Decode and prefill alike: no host sync (the scratch is as wide as the keys)."""
    real, taken = indexer._topk_scores, []
    monkeypatch.setattr(indexer, "_topk_scores",
                        lambda *a: taken.append(1) or real(*a))
    q, w, keys, visible = _inputs(b, s, 4, 16, 70, start)
    out = []
    assert sync_ops(monkeypatch, lambda: out.append(
        indexer_topk_triton(q, w, keys, visible, 8))) == []
    assert taken == [1]
    _check(out[0], q, w, keys, visible, 8)


def test_unknown_path_is_rejected():
    q, w, keys, visible = _inputs(1, 2, 4, 16, 8, 40)
    with pytest.raises(ValueError, match="scores or merge"):
        indexer_topk_triton(q, w, keys, visible, 4, path="dense")


# ---- packed FP4 keys (native numerics' cache rows) -------------------------------------------


def _packed_inputs(b, s, h, d, n, start_pos, ratio=4, seed=0):
    """Inputs whose keys are on the FP4 grid (as the native compressor makes them), per-key
    scales spread over 2^-12..2^12, some keys all zero; → (q, w, float keys, packed keys, vis)."""
    q, w, keys, visible = _inputs(b, s, h, d, n, start_pos, ratio, seed)
    g = torch.Generator().manual_seed(seed + 1)
    keys = keys * torch.exp2(torch.randint(-12, 13, (b, n, 1), generator=g).float())
    keys[:, ::7] = 0.0
    keys = fp4_fake_quant(keys, 32)
    return q, w, keys, pack_index_keys(keys, IndexKeyLayout(d)), visible


PACKED_CASES = [  # b, s, h, d, n, start, k
    (1, 1, 8, 64, 100, 399, 8),      # one decode query, 100 keys
    (2, 3, 4, 32, 50, 190, 16),      # b = 2, partial key tile
    (1, 37, 4, 32, 150, 560, 16),    # a prefill chunk, causal
    (2, 21, 6, 64, 90, 300, 24),     # ragged heads
    (1, 1, 4, 128, 70, 279, 16),     # V4's 68-byte rows: 4-byte aligned, loaded as vectors
]


@pytest.mark.parametrize("b,s,h,d,n,start,k,path",
                         [(*case, "scores") for case in PACKED_CASES]
                         + [(*case, "merge") for case in PACKED_CASES[:2]])  # interpreter: slow
def test_packed_keys_pick_what_float_keys_of_the_same_values_pick(b, s, h, d, n, start, k, path):
    q, w, keys, packed, visible = _packed_inputs(b, s, h, d, n, start)
    assert packed.dtype == torch.uint8 and packed.shape == (b, n, d // 2 + d // 32)
    want = indexer_topk_triton(q, w, keys, visible, k, path=path, block_n=16, n_chunks=2)
    got = indexer_topk_triton(q, w, packed, visible, k, path=path, block_n=16, n_chunks=2)
    assert torch.equal(got, want)  # bit-identical scores: even tied picks agree
    _check(got, q, w, keys, visible, k)


@pytest.mark.parametrize("s,d,n,start,k,select", [
    (1, 128, 300, 1199, 16, "fused"),        # a decode query, the pick from counted digits
    (1, 256, 100, 399, 8, "parallel"),       # two words of scales a row; the parallel pick
    (20, 128, 150, 560, 16, "fused"),        # a prefill chunk, causal
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp4_keys_decoded_as_register_pairs_pick_what_the_reference_picks(
        monkeypatch, s, d, n, start, k, select, dtype):
    """``pairs``: packed keys decoded two codes a register (``fp4_keys.load_key_pairs``, the FP4
    GEMMs' tensor-core decoder) against queries taken to its column order — the same values,
    summed in another order: the same picks but for ties. bf16 queries are the GPU's case
    (test_bf16_branches runs this again with bf16 computed as a GPU does it, and the decoder's
    inline PTX)."""
    q, w, keys, packed, visible = _packed_inputs(1, s, 4, d, n, start, seed=d)
    allowed = answers(monkeypatch, indexer, "key_pairs")
    got = indexer_topk_triton(q.to(dtype), w, packed, visible, k, block_n=16, select=select,
                              pairs=True)
    assert allowed and all(allowed)   # the pairs decoder read the keys
    _check(got, q.to(dtype).float(), w, keys, visible, k)
    row = packed.shape[-1]
    misaligned = torch.empty(n * row + 1, dtype=torch.uint8)[1:].view(1, n, row)
    misaligned.copy_(packed)   # rows off the 4-byte grid: the byte decoder reads them
    got = indexer_topk_triton(q.to(dtype), w, misaligned, visible, k, block_n=16, select=select,
                              pairs=True)
    assert allowed[-1] is False
    _check(got, q.to(dtype).float(), w, keys, visible, k)


@pytest.mark.parametrize("b,s,h,d,n,start,k", [PACKED_CASES[2], PACKED_CASES[3]])
def test_a_prefill_over_upconverted_keys_picks_what_packed_keys_pick(monkeypatch, b, s, h, d, n,
                                                                    start, k):
    """``upconvert``: the packed keys up-converted once, then the float keys' kernel — the
    packed kernel's picks exactly (the same values, the same sums); past
    ``KEYS_UPCONVERT_MAX_BYTES`` the packed kernel decodes the keys itself."""
    from model.op_audit import OpAudit

    q, w, keys, packed, visible = _packed_inputs(b, s, h, d, n, start, seed=s)
    want = indexer_topk_triton(q, w, packed, visible, k, block_n=16)
    with OpAudit() as audit:
        got = indexer_topk_triton(q, w, packed, visible, k, block_n=16, upconvert=True)
    assert audit.triton["_upconvert_keys_kernel"] == 1
    assert torch.equal(got, want)
    _check(got, q, w, keys, visible, k)
    monkeypatch.setattr(indexer, "KEYS_UPCONVERT_MAX_BYTES", b * n * d * 4 - 1)  # a key short
    with OpAudit() as audit:
        direct = indexer_topk_triton(q, w, packed, visible, k, block_n=16, upconvert=True)
    assert audit.triton["_upconvert_keys_kernel"] == 0 and torch.equal(direct, want)


@pytest.mark.parametrize("b,s,h,d,n,start,k", PACKED_CASES)
def test_reference_reads_packed_keys(b, s, h, d, n, start, k):
    q, w, keys, packed, visible = _packed_inputs(b, s, h, d, n, start, seed=3)
    assert torch.equal(indexer_topk_reference(q, w, packed, visible, k),
                       indexer_topk_reference(q, w, keys, visible, k))
    assert torch.equal(indexer_scores_reference(q, w, packed, visible),
                       indexer_scores_reference(q, w, keys, visible))


def test_reference_decodes_only_the_keys_each_query_block_sees(monkeypatch):
    """Ratio 1 (query t sees t + 1 keys) and a small block bound: every block of queries decodes
    the keys up to its own last visible row, never the whole store."""
    q, w, keys, packed, visible = _packed_inputs(1, 40, 4, 32, 48, 0, ratio=1)
    monkeypatch.setattr(blocks, "REFERENCE_BLOCK_ELEMENTS", 4 * 48 * 8)  # 8 queries a block
    decoded = []
    real = fp4_keys.unpack_index_keys

    def recording(rows, layout):
        decoded.append(rows.shape[1])
        return real(rows, layout)

    monkeypatch.setattr(fp4_keys, "unpack_index_keys", recording)
    got = indexer_topk_reference(q, w, packed, visible, 8)
    assert decoded == [8, 16, 24, 32, 40]
    monkeypatch.setattr(fp4_keys, "unpack_index_keys", real)
    assert torch.equal(got, indexer_topk_reference(q, w, keys, visible, 8))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_ops_dispatches_packed_keys_on_both_backends(monkeypatch, backend):
    monkeypatch.setenv(ops.BACKEND_ENV, backend)
    q, w, keys, packed, visible = _packed_inputs(1, 5, 4, 32, 30, 100)
    got = ops.indexer_topk(q, w, packed, visible, 8)
    assert torch.equal(got, ops.indexer_topk(q, w, keys, visible, 8))
    assert torch.equal(ops.indexer_scores(q, w, packed, visible),
                       ops.indexer_scores(q, w, keys, visible))


def test_decode_picks_need_no_mask_when_every_key_is_visible():
    """causal=False (a decode step: its query sees all n = (position + 1) // 4 keys) gives the
    same picks without masking them; a query that does not see every key would need it."""
    q, w, keys, visible = _inputs(2, 1, 8, 32, 100, 399)
    assert visible.tolist() == [100]
    got = indexer_topk_triton(q, w, keys, visible, 16, causal=False)
    assert torch.equal(got, indexer_topk_triton(q, w, keys, visible, 16))
    _check(got, q, w, keys, visible, 16)
    early = torch.tensor([10])   # only 10 of the 100 keys visible: unmasked picks would leak
    masked = indexer_topk_triton(q, w, keys, early, 16)
    assert (masked[..., 10:] == -1).all()
    assert (indexer_topk_triton(q, w, keys, early, 16, causal=False) >= 10).any()


@pytest.mark.parametrize(
    "b,s,n,start,k,block_t,block_n,causal",
    [
        (1, 1, 300, 1199, 16, None, 16, False),   # decode: 19 chunk programs, the last picks
        (2, 1, 90, 359, 40, None, 16, True),      # decode, k between tile sizes, b = 2
        (1, 37, 150, 560, 16, 4, 32, True),       # prefill: 4 queries a block, causal limits
        (2, 9, 48, 150, 64, 2, 16, True),         # k larger than every query's visible keys
    ],
)
def test_the_scores_kernel_picks_as_topk_select_and_torch_do(b, s, n, start, k, block_t,
                                                              block_n, causal):
    """select="fused" (the default): the last program of each query block to finish picks from
    the block's scores in the same launch — exactly topk_select's picks, and torch.topk's
    scores in the same order; the arrival counts are zero again after the launch."""
    from model.kernels import launch
    from model.op_audit import OpAudit

    q, w, keys, visible = _inputs(b, s, 4, 16, n, start)
    opts = dict(block_t=block_t, block_n=block_n, causal=causal)
    apart = indexer_topk_triton(q, w, keys, visible, k, select="triton", **opts)
    with OpAudit() as audit:
        fused = indexer_topk_triton(q, w, keys, visible, k, **opts)
    assert dict(audit.triton) == {"_indexer_scores_block": 1}
    assert torch.equal(fused, apart)
    # the parallel pick where the score programs count, the passes where they do not
    assert torch.equal(indexer_topk_triton(q, w, keys, visible, k, select="parallel", **opts),
                       apart)
    assert not launch.arrivals(1024, q.device).any()
    _check(fused, q, w, keys, visible, k)
    with pytest.raises(ValueError, match="select must be one of fused, fused_passes, parallel, "
                       "triton, torch"):
        indexer_topk_triton(q, w, keys, visible, k, select="heap")


def _scoring(values: torch.Tensor, h=4, d=16, queries=1):
    """Indexer inputs whose decode queries (all alike) score key j exactly max(values[j], 0):
    one head of weight 1 reads the keys' first dimension, the others weigh 0."""
    n = values.numel()
    q = torch.zeros(1, queries, h, d)
    q[0, :, 0, 0] = 1.0
    w = torch.zeros(1, queries, h)
    w[0, :, 0] = 1.0
    keys = torch.randn(1, n, d, generator=torch.Generator().manual_seed(5))
    keys[0, :, 0] = values
    return q, w, keys, torch.full((queries,), n)


def _low_bits(n):
    """Scores equal in their top 22 key bits: only the last digits tell them apart."""
    base = torch.full((n,), 1.0).view(torch.int32)
    return (base + torch.randperm(1024, generator=torch.Generator().manual_seed(2))
            .repeat(n // 1024)).view(torch.float32)


def _octaves(n):
    """Positive scores over 160 octaves: a tile's digits far below its top are common."""
    gen = torch.Generator().manual_seed(3)
    exponents = torch.randint(-80, 80, (n,), generator=gen).float()
    return torch.rand(n, generator=gen).add(1.0) * exponents.exp2()


@pytest.mark.parametrize("name,inputs,k,opts", [
    ("decode", lambda: _inputs(2, 1, 4, 16, 300, 1199), 40, {}),
    ("scores over 160 octaves", lambda: _scoring(_octaves(600)), 150, {}),
    ("two queries a program, 160 octaves", lambda: _scoring(_octaves(600), queries=2), 150,
     dict(block_t=2)),
    ("every key ties", lambda: _scoring(torch.full((300,), -1.0)), 16, {}),
    ("low bits differ", lambda: _scoring(_low_bits(2048)), 100, dict(block_n=128)),
    ("k past the keys", lambda: _scoring(torch.randn(200)), 256, dict(causal=False)),
    ("3 queries, 0 and 1 visible", lambda: _inputs(1, 3, 4, 16, 300, 2), 8, dict(block_t=2)),
])
def test_a_split_querys_programs_count_top_digits_and_the_pick_starts_from_them(
        monkeypatch, name, inputs, k, opts):
    """When a query's keys are split over at least COUNTED_MIN_CHUNKS programs (a decode
    step), each also counts its scores' top 12 key bits, and the pick splits the row once into
    the keys above the k-th's top digit and the candidates that share it, among which the
    other 20 bits are found — over the row instead when more share it than the candidate
    scratch holds. The fused pick's counts leave out digits more than 32 octaves below each
    tile's top, so a k-th that far below the best (the 160 octaves) takes four passes; the
    parallel pick's are whole. Counted with candidates, counted past the cap, and not counted
    (select="fused_passes": four 8-bit passes over the row) pick exactly alike, and the counts
    are zero again after."""
    from model.kernels import launch, topk_select
    from model.op_audit import OpAudit

    q, w, keys, visible = inputs()
    opts = dict(block_n=16) | opts
    got = indexer_topk_triton(q, w, keys, visible, k, **opts)
    kept = launch._ARRIVALS[q.device]   # the counts and histograms: zero between launches
    assert kept.numel() >= visible.numel() * topk_select.HIST_BINS.value and not kept.any()
    _check(got, q, w, keys, visible, k)
    with OpAudit() as audit:   # the parallel pick: two launches of (query, slice) programs
        assert torch.equal(indexer_topk_triton(q, w, keys, visible, k, select="parallel",
                                               **opts), got)
    assert dict(audit.triton) == {"_indexer_scores_block": 1, "_slice_counts": 1,
                                  "_slice_place": 1}
    assert not kept.any()
    monkeypatch.setattr(topk_select, "CANDIDATES", 3)
    assert torch.equal(indexer_topk_triton(q, w, keys, visible, k, **opts), got)
    assert torch.equal(indexer_topk_triton(q, w, keys, visible, k, select="fused_passes",
                                           **opts), got)
    assert not kept.any()


@pytest.mark.parametrize("b,s,n,start,k,block_t,block_n,one_chunk", [
    (1, 37, 150, 560, 16, 4, 32, False),     # 10 query programs, the keys in 5 chunks
    (2, 9, 300, 1100, 40, None, 64, False),  # one program holds every query, 5 chunks
    (1, 6, 2100, 8390, 64, 2, 128, True),    # one chunk: 9 count steps (256 keys) a row
])
def test_a_prefill_programs_count_their_own_long_rows(monkeypatch, b, s, n, start, k, block_t,
                                                      block_n, one_chunk):
    """Rows of at least PREFILL_COUNTED_KEYS keys (here 64; V4 at 16K context and past) are
    counted at prefill too, where a query's keys are in fewer than COUNTED_MIN_CHUNKS
    programs (a long prefill's in one or two; ``one_chunk``: one): each counts its stored rows'
    top digits PREFILL_COUNT_BLOCK keys at a time, and the pick starts from the counts, with a
    quarter of the row as its candidate scratch — exactly the picks of four passes over the
    row (``fused_passes``), of ``topk_select`` and of the parallel pick, past the candidate cap
    too; the counts are zero again after."""
    from spies import answers

    from model.kernels import indexer, launch, topk_select

    q, w, keys, visible = _inputs(b, s, 4, 16, n, start)
    opts = dict(block_t=block_t, block_n=block_n)
    if one_chunk:
        monkeypatch.setattr(indexer, "PREFILL_TARGET_PROGRAMS", 1)
    passes = indexer_topk_triton(q, w, keys, visible, k, select="fused_passes", **opts)
    monkeypatch.setattr(indexer, "PREFILL_COUNTED_KEYS", 64)
    caps = answers(monkeypatch, indexer, "_candidates")
    got = indexer_topk_triton(q, w, keys, visible, k, **opts)
    assert caps == [min(topk_select.CANDIDATES, n // 4)] * len(caps) and caps   # counted
    assert torch.equal(got, passes)
    assert torch.equal(got, indexer_topk_triton(q, w, keys, visible, k, select="triton",
                                                **opts))
    # counted rows and the parallel pick: its two launches start from every digit's count
    assert torch.equal(got, indexer_topk_triton(q, w, keys, visible, k, select="parallel",
                                                **opts))
    assert not launch._ARRIVALS[q.device].any()
    monkeypatch.setattr(topk_select, "CANDIDATES", 3)
    assert torch.equal(indexer_topk_triton(q, w, keys, visible, k, **opts), got)
    _check(got, q, w, keys, visible, k)
