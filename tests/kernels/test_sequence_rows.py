"""A decode step of several sequences in one launch per op (TABLE mode, interpreter) against the
per-sequence references: each token over its own window, compressed rows and indexer keys."""

from __future__ import annotations

import pytest
import torch
from spies import answers

from model.kernels import fp4_keys, indexer, sparse_attn
from model.kernels.fp4_keys import IndexKeyLayout, pack_index_keys
from model.kernels.kv_fp8 import KVLayout, pack_kv_fp8
from model.kernels.quant import fp4_fake_quant
from model.kernels.sequence_rows import (
    SequenceRows,
    indexer_topk_rows_reference,
    indexer_topk_rows_triton,
    sparse_attn_rows_reference,
    sparse_attn_rows_triton,
    window_slots,
)
from model.op_audit import OpAudit

D, ROPE, W, H = 64, 16, 8, 8


def _rows(windows, counts, kind, fp8, seed=0, spare=5):
    """Each sequence's window rows (windows[t] of them) and compressed rows (counts[t], in a
    store with ``spare`` rows of room, as a cache's store has), float or packed FP8."""
    g = torch.Generator().manual_seed(seed)
    layout = KVLayout(head_dim=D, rope_dim=ROPE, block=16) if fp8 else None
    pack = (lambda x: pack_kv_fp8(x, layout)) if fp8 else (lambda x: x)
    wins = tuple(pack(torch.randn(1, nw, D, generator=g)) for nw in windows)
    stores = tuple(None if kind == "window" else pack(torch.randn(1, n + spare, D, generator=g))
                   for n in counts)
    return SequenceRows(wins, stores, tuple(counts if kind != "window" else [0] * len(windows)),
                        W), layout


def _queries(t, seed=1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, t, H, D, generator=g)
    sink = torch.randn(H, generator=g)
    angles = torch.rand(t, ROPE // 2, generator=g) * 6.0
    return q, sink, angles


def test_window_slots_are_the_last_rows_oldest_first():
    assert window_slots(4, 2, torch.device("cpu")).tolist() == [[[-1, -1, 0, 1]]]
    assert window_slots(4, 4, torch.device("cpu")).tolist() == [[[0, 1, 2, 3]]]


@pytest.mark.parametrize("kind", ["window", "all", "picks"])
@pytest.mark.parametrize("fp8,fp8_pairs,qk_split", [(False, False, 1), (True, False, 1),
                                                     (True, True, 4), (False, False, 2)])
@pytest.mark.parametrize("splits", [1, 3])
def test_one_launch_attends_every_sequence_over_its_own_rows(kind, fp8, fp8_pairs, qk_split,
                                                             splits, monkeypatch):
    """Young sequences (a window not yet full, no compressed rows) beside long ones; FP8 rows
    also decoded by placement (``fp8_pairs``), through the table's addresses; the scores also
    as a batched dot (``qk_split``)."""
    windows, counts = [1, W, 3, W], [0, 13, 2, 40]
    rows, layout = _rows(windows, counts, kind, fp8)
    q, sink, angles = _queries(len(windows))
    picks = None
    if kind == "picks":   # the indexer's: up to 12 of each sequence's rows, −1 padded
        g = torch.Generator().manual_seed(2)
        picks = torch.full((1, 4, 12), -1, dtype=torch.long)
        for t, n in enumerate(counts):
            picks[0, t, :min(12, n)] = torch.randperm(n, generator=g)[:12]
    want = sparse_attn_rows_reference(q, rows, sink, picks, 0.125, layout, angles)
    out = torch.full_like(q, float("nan"))
    decoded = answers(monkeypatch, sparse_attn, "fp8_row_pairs")
    with OpAudit() as audit:
        got = sparse_attn_rows_triton(q, rows, sink, picks, 0.125, layout, angles, out,
                                      n_splits=splits, fp8_pairs=fp8_pairs, qk_split=qk_split)
    assert got is out and decoded == ([True] if fp8_pairs else [])
    # split or not (a window of 8 slots is one 16-row tile), the forward merges its splits
    assert dict(audit.triton) == {"_sparse_attn_fwd": 1}
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()


def test_float_rows_the_kernel_cannot_read_go_one_token_at_a_time():
    """bf16 rows under the interpreter (which computes in fp32): no TABLE launch, a per-sequence
    launch a token, the same values as the reference in the queries' dtype."""
    rows, _ = _rows([2, W, 5], [3, 20, 0], "all", False)
    rows = SequenceRows(tuple(w.bfloat16() for w in rows.windows),
                        tuple(s.bfloat16() for s in rows.stores), rows.counts, W)
    q, sink, angles = _queries(3)
    q = q.bfloat16()
    want = sparse_attn_rows_reference(q, rows, sink, None, 0.125, None, angles)
    with OpAudit() as audit:
        got = sparse_attn_rows_triton(q, rows, sink, None, 0.125, None, angles)
    assert dict(audit.triton) == {"_sparse_attn_fwd": 3} and got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def _keys(counts, packed, seed=3, spare=3, d=32):
    g = torch.Generator().manual_seed(seed)
    keys = []
    for n in counts:
        k = fp4_fake_quant(torch.randn(1, n + spare, d, generator=g), 32)
        k[:, ::7] = 0.0
        keys.append(pack_index_keys(k, IndexKeyLayout(d)) if packed else k)
    return tuple(keys)


def _index_rows(counts, packed, seed, d=32):
    """Sequences with counts[t] indexer keys each (4 heads × d dims) and their queries."""
    rows = SequenceRows(tuple(torch.zeros(1, 1, D) for _ in counts),
                        tuple(torch.zeros(1, n + 1, D) for n in counts), tuple(counts), W,
                        _keys(counts, packed, d=d))
    g = torch.Generator().manual_seed(seed)
    return rows, torch.randn(1, len(counts), 4, d, generator=g), \
        torch.randn(1, len(counts), 4, generator=g) * 0.5


@pytest.mark.parametrize("packed,d,pairs", [(False, 32, False), (True, 32, False),
                                            (True, 128, False), (True, 128, True)])
def test_one_launch_scores_and_picks_for_every_sequence(monkeypatch, packed, d, pairs):
    """d = 128: V4's 68-byte key rows, which the kernel reads as 4-byte vectors, or decodes as
    register pairs (``pairs``: each sequence's rows through its own address)."""
    counts = [0, 5, 70, 33]
    rows, q, w = _index_rows(counts, packed, seed=4, d=d)
    want = indexer_topk_rows_reference(q, w, rows, 16)
    allowed = answers(monkeypatch, indexer, "key_pairs")
    with OpAudit() as audit:
        got = indexer_topk_rows_triton(q, w, rows, 16, block_n=16, pairs=pairs)
    assert allowed == ([True] if pairs else [])
    assert dict(audit.triton) == {"_indexer_scores_block": 1}   # its last programs pick
    assert torch.equal(got < 0, want < 0)
    assert (got[0, 0] == -1).all() and (got[0, 1, 5:] == -1).all()
    float_keys = tuple(fp4_keys.key_rows(k, k.shape[1], d) if packed else k
                       for k in rows.keys)
    for t, n in enumerate(counts):   # the same scores in the same order (ties may swap rows)
        scores = torch.einsum("hd,nd->hn", q[0, t], float_keys[t][0, :n]).relu()
        scores = (w[0, t].view(-1, 1) * scores).sum(0)
        mine, theirs = got[0, t][got[0, t] >= 0], want[0, t][want[0, t] >= 0]
        assert torch.allclose(scores[mine], scores[theirs], atol=1e-5)


def test_a_large_batch_scores_a_block_of_tokens_at_a_time(monkeypatch):
    """The scores scratch stays under the prefill's bound: here 2 tokens × 70 keys a block."""
    rows, q, w = _index_rows([0, 5, 70, 33], True, seed=5)
    whole = indexer_topk_rows_triton(q, w, rows, 16, block_n=16)
    monkeypatch.setattr(indexer, "PREFILL_SCRATCH_BYTES", 4 * 2 * 70)
    with OpAudit() as audit:
        got = indexer_topk_rows_triton(q, w, rows, 16, block_n=16)
    assert dict(audit.triton) == {"_indexer_scores_block": 2}
    assert torch.equal(got, whole)


def test_the_table_says_where_each_sequences_rows_are():
    rows, _ = _rows([2, 3], [4, 1], "all", False)
    table = rows.table
    assert table.dtype == torch.int64 and table.shape == (5, 2)
    assert table[0].tolist() == [s.data_ptr() for s in rows.stores]
    assert table[1].tolist() == [4, 1] and table[3].tolist() == [2, 3]
    assert table[4].tolist() == [0, 0]   # no indexer keys on this layer


@pytest.mark.parametrize("select,kernels", [
    ("fused_passes", {"_indexer_scores_block": 1}),
    ("parallel", {"_indexer_scores_block": 1, "_slice_counts": 1, "_slice_place": 1}),
    ("triton", {"_indexer_scores_block": 1, "_topk_select": 1}),
    ("torch", {"_indexer_scores_block": 1}),
])
def test_the_batched_pick_takes_the_decode_decisions_select(select, kernels):
    """select (a launch choice): the fused launch's pick by passes over the rows instead of
    from counted digits (the widest row's keys span 9 programs: counted by default), or the
    pick after the scores launch instead of in it — the same scores as the fused launch's picks
    (tied keys may swap: every 7th key is zero)."""
    counts = [0, 5, 140, 33]
    rows, q, w = _index_rows(counts, True, seed=6, d=128)
    fused = indexer_topk_rows_triton(q, w, rows, 16, block_n=16)
    with OpAudit() as audit:
        got = indexer_topk_rows_triton(q, w, rows, 16, block_n=16, select=select)
    assert dict(audit.triton) == kernels
    assert torch.equal(got < 0, fused < 0)
    for t, n in enumerate(counts):
        keys = fp4_keys.key_rows(rows.keys[t], n, 128)[0]
        scores = (w[0, t].view(-1, 1) * torch.einsum("hd,nd->hn", q[0, t], keys).relu()).sum(0)
        mine, theirs = got[0, t][got[0, t] >= 0], fused[0, t][fused[0, t] >= 0]
        assert torch.allclose(scores[mine].sort().values, scores[theirs].sort().values,
                              atol=1e-5)
    with pytest.raises(ValueError, match="select must be one of"):
        indexer_topk_rows_triton(q, w, rows, 16, select="heap")


def test_the_batched_attention_takes_the_decode_decisions_combine_and_slices():
    rows, layout = _rows([1, W, 3, W], [0, 13, 2, 40], "all", True)
    q, sink, angles = _queries(4)
    want = sparse_attn_rows_reference(q, rows, sink, None, 0.125, layout, angles)
    with OpAudit() as audit:
        got = sparse_attn_rows_triton(q, rows, sink, None, 0.125, layout, angles, n_splits=3,
                                      combine="kernel", dv_parts=2)
    assert dict(audit.triton) == {"_sparse_attn_fwd": 1, "_sparse_attn_combine": 1}
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()


def test_ops_hand_the_batched_decode_its_chosen_options(tmp_path, monkeypatch):
    """A choices table's decode decisions reach the batched path through ops; the indexer's
    merge path, which has no batched form, leaves the batch on the fused default."""
    import json

    from model.kernels import choices, ops

    table = tmp_path / "choices.json"
    monkeypatch.setenv(choices.CHOICES_ENV, str(table))
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    rows, layout = _rows([1, W, 3, W], [0, 13, 2, 40], "all", True)
    q, sink, angles = _queries(4)
    index_rows, iq, iw = _index_rows([0, 5, 70, 33], True, seed=7, d=128)
    for decode, index, kernels in [
        ({"combine": "kernel"}, {"select": "triton"},
         {"_sparse_attn_fwd": 1, "_sparse_attn_combine": 1, "_indexer_scores_block": 1,
          "_topk_select": 1}),
        ({}, {"path": "merge"}, {"_sparse_attn_fwd": 1, "_indexer_scores_block": 1}),
    ]:
        table.write_text(json.dumps({"choices": {
            "sparse_attn_decode_fp8": {"options": decode},
            "indexer_decode_fp4": {"options": index}}}))
        choices.clear_cache()
        with OpAudit() as audit:
            ops.sparse_attn_rows(q, rows, sink, None, 0.125, layout, angles)
            ops.indexer_topk_rows(iq, iw, index_rows, 16)
        assert dict(audit.triton) == kernels
    choices.clear_cache()


@pytest.mark.parametrize("tokens,splits", [(1, 8), (2, 4), (3, 3), (8, 1), (12, 1)])
def test_a_chosen_split_count_is_shared_by_the_batchs_tokens(tokens, splits, tmp_path,
                                                            monkeypatch):
    """The decode decision's 8 splits were measured for one token: a batch of T tokens takes
    ⌈8 / T⌉ a token (the programs measured), and the result is the reference's."""
    import json

    from model.kernels import choices, ops, sequence_rows

    table = tmp_path / "choices.json"
    table.write_text(json.dumps({"choices": {"sparse_attn_decode_fp8": {
        "options": {"dv_parts": 4, "n_splits": 8}}}}))
    monkeypatch.setenv(choices.CHOICES_ENV, str(table))
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    choices.clear_cache()
    seen, real = [], sequence_rows.sparse_attn_rows_triton
    monkeypatch.setattr(sequence_rows, "sparse_attn_rows_triton",
                        lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    windows = ([1, W, 3, W] * 3)[:tokens]
    counts = ([0, 13, 2, 40] * 3)[:tokens]
    rows, layout = _rows(windows, counts, "all", True)
    q, sink, angles = _queries(tokens)
    got = ops.sparse_attn_rows(q, rows, sink, None, 0.125, layout, angles)
    choices.clear_cache()
    assert seen == [{"dv_parts": 4, "n_splits": splits}]
    want = sparse_attn_rows_reference(q, rows, sink, None, 0.125, layout, angles)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
