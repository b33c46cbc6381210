"""`v4coder bench kernels [--full-size]`: every Triton kernel against its torch reference at
V4-Flash shapes, one JSON object per kernel (time, bytes moved, GB/s, FLOP/s, max error, and on a
GPU the fraction of the device's peak). Method and targets: docs/PERF.md.

On a GPU both paths run at V4-Flash shapes (batch-1 decode at 128K context for attention and the
indexer, expert shapes for the FP4 GEMM); the whole run takes well under 5 minutes. Without a GPU
only the reference path runs (the Triton interpreter is a correctness tool, not a timer), on
reduced shapes unless ``--full-size``.

On a GPU each row has two Triton timings: ``time_ms`` (CUDA events around each Python call, so
host overhead included: launch, argument checks, allocations) and ``graph_ms`` (per call, with
``GRAPH_COPIES`` calls captured into one CUDA graph, as the engine's decode graphs run them), with
``graph_gbps`` and, on a known GPU, ``graph_hbm_fraction`` / ``graph_bf16_peak_fraction``. A case
whose call cannot be captured gets ``graph_ms: null`` and a one-line ``graph_error``. GPU rows
also count the call's kernel ``launches`` and, from an empty kernel's graph-replay time
(``graph_node_us``), its ``launch_floor_ms``: what launch latency alone costs that call however
fast its kernels get. CPU rows have none of these fields.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial

import torch

from model.cache import window_capacity
from model.kernels import (
    append_rows,
    cache_rows,
    compressor,
    fp4_keys,
    gemm,
    gemv,
    indexer,
    kv_fp8,
    mhc,
    moe,
    quant,
    sequence_rows,
    sparse_attn,
)
from model.kernels.choices import one_line
from model.kernels.expert_bank import ExpertBank
from model.kernels.launch import overlapping

# H200 SXM (runtime-anchors §4): 4.8 TB/s HBM3e, 989.5 TFLOP/s dense bf16
PEAKS = {"H200": (4.8e12, 989.5e12), "H100": (3.35e12, 989.5e12)}
CONTEXT = 131072       # tokens of context for the decode cases
PREFILL_CONTEXT = 32768  # tokens of context at the end of the indexer's prefill chunk
HEADS, HEAD_DIM, WINDOW, TOPK = 64, 512, 128, 512
ROPE_DIM = 64            # the trailing RoPE dims of a V4 KV row / query head
IDX_HEADS, IDX_DIM = 64, 128
GRAPH_COPIES = 10  # calls captured into one CUDA graph (amortises the graph launch)


@dataclass(slots=True)
class Case:
    name: str
    shape: dict
    bytes: float
    flops: float
    reference: Callable[[], object]
    triton: Callable[[], object]
    target: str


def _rand(*shape: int, dtype: torch.dtype, device: str, std: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, device=device) * std).to(dtype)


def _attn_case(name: str, s: int, n_comp: int, k_comp: int, fp8: bool, dev: str,
               dtype: torch.dtype, target: str, **tiles: int) -> Case:
    """Each of ``s`` queries over its window (WINDOW rows, a separate source as the model
    passes it: ``sparse_attn.WindowRows``) ∪ k_comp of n_comp compressed rows; the output's
    RoPE dims rotated back in the kernel that stores it (``unrope``), as the model asks.
    ``tiles``: launch options of the Triton path (block_h, dv_parts, num_warps, fp8_pairs,
    qk_split, rows_m, ahead, upconvert)."""
    q = _rand(1, s, HEADS, HEAD_DIM, dtype=dtype, device=dev)
    kv = _rand(1, n_comp, HEAD_DIM, dtype=dtype, device=dev)
    sink = torch.randn(HEADS, device=dev)
    # the window: WINDOW − 1 past rows and the s new ones, query i sees rows i .. i + WINDOW − 1
    win_rows = _rand(1, WINDOW - 1 + s, HEAD_DIM, dtype=dtype, device=dev)
    # int32 indices, as the model passes them (``window_indices``, the indexer's picks)
    win_idx = (torch.arange(s, device=dev, dtype=torch.int32).view(-1, 1)
               + torch.arange(WINDOW, device=dev, dtype=torch.int32).view(1, -1))
    idx = torch.randperm(n_comp, device=dev)[:k_comp].int().expand(1, s, k_comp).contiguous()
    angles = torch.rand(s, ROPE_DIM // 2, device=dev) * 6.0
    k = WINDOW + k_comp
    scale = HEAD_DIM**-0.5
    row_bytes = kv_fp8.V4_KV_LAYOUT.row_bytes if fp8 else HEAD_DIM * kv.element_size()
    qo_bytes = 2 * s * HEADS * HEAD_DIM * q.element_size()
    shape = {"tokens": s, "heads": HEADS, "head_dim": HEAD_DIM, "rows_per_query": k,
             "cache_rows": WINDOW + n_comp, "kv": "fp8-584B" if fp8 else
             str(dtype).removeprefix("torch."), **tiles}
    if fp8:
        cache = kv_fp8.pack_kv_fp8(kv)
        window = sparse_attn.WindowRows(kv_fp8.pack_kv_fp8(win_rows), win_idx)
        return Case(name, shape, s * k * row_bytes + qo_bytes, 4.0 * s * HEADS * HEAD_DIM * k,
                    lambda: sparse_attn.sparse_attn_fp8_reference(
                        q, cache, sink, idx, scale, kv_fp8.V4_KV_LAYOUT, window, angles),
                    lambda: sparse_attn.sparse_attn_triton(q, cache, sink, idx, scale,
                                                           layout=kv_fp8.V4_KV_LAYOUT,
                                                           window=window, unrope=angles,
                                                           **tiles),
                    target)
    window = sparse_attn.WindowRows(win_rows, win_idx)
    # prefill tokens share most rows (reads are cached); count each distinct row once
    distinct = k if s == 1 else min(WINDOW + n_comp, k + s)
    return Case(name, shape, distinct * row_bytes + qo_bytes, 4.0 * s * HEADS * HEAD_DIM * k,
                lambda: sparse_attn.sparse_attn_reference(q, kv, sink, idx, scale, window, angles),
                lambda: sparse_attn.sparse_attn_triton(q, kv, sink, idx, scale, window=window,
                                                       unrope=angles, **tiles), target)


def _batch_case(name: str, seqs: int, n_comp: int, dev: str, dtype: torch.dtype,
                select: str = "fused", pairs: bool = False) -> Case:
    """A decode step of ``seqs`` sequences on a CSA layer in one launch per op (native numerics'
    rows: FP8 KV, FP4 indexer keys; model/kernels/sequence_rows.py): each token's indexer
    scores and pick over its own n_comp keys (the pick as ``select`` says), then attention over
    its own window ∪ top-k rows (``pairs``: the keys decoded two codes a register). Bytes: every
    sequence's keys, the rows its token reads, q and o."""
    layout = kv_fp8.V4_KV_LAYOUT
    windows = tuple(kv_fp8.pack_kv_fp8(_rand(1, WINDOW, HEAD_DIM, dtype=dtype, device=dev))
                    for _ in range(seqs))
    stores = tuple(kv_fp8.pack_kv_fp8(_rand(1, n_comp, HEAD_DIM, dtype=dtype, device=dev))
                   for _ in range(seqs))
    keys = tuple(fp4_keys.pack_index_keys(_rand(1, n_comp, IDX_DIM, dtype=dtype, device=dev),
                                          fp4_keys.IndexKeyLayout(IDX_DIM))
                 for _ in range(seqs))
    rows = sequence_rows.SequenceRows(windows, stores, (n_comp,) * seqs, WINDOW, keys)
    _ = rows.table   # made now (a host → device copy), not inside a graph capture
    q = _rand(1, seqs, HEADS, HEAD_DIM, dtype=dtype, device=dev)
    iq = _rand(1, seqs, IDX_HEADS, IDX_DIM, dtype=dtype, device=dev)
    w = torch.randn(1, seqs, IDX_HEADS, device=dev) * IDX_HEADS**-0.5
    sink = torch.randn(HEADS, device=dev)
    angles = torch.rand(seqs, ROPE_DIM // 2, device=dev) * 6.0
    scale = HEAD_DIM**-0.5

    def step(attn, topk):
        picks = topk(iq, w, rows, TOPK)
        return attn(q, rows, sink, picks, scale, layout, angles)

    key_bytes = fp4_keys.IndexKeyLayout(IDX_DIM).row_bytes
    nbytes = seqs * (n_comp * key_bytes + (WINDOW + TOPK) * layout.row_bytes
                     + 2 * HEADS * HEAD_DIM * q.element_size())
    flops = seqs * (2.0 * IDX_HEADS * IDX_DIM * n_comp + 4.0 * HEADS * HEAD_DIM * (WINDOW + TOPK))
    shape = {"sequences": seqs, "keys": n_comp, "topk": TOPK, "window": WINDOW,
             "kv": "fp8-584B", "keys_format": "fp4-68B", "select": select, "pairs": pairs}
    return Case(name, shape, nbytes, flops,
                lambda: step(sequence_rows.sparse_attn_rows_reference,
                             sequence_rows.indexer_topk_rows_reference),
                lambda: step(sequence_rows.sparse_attn_rows_triton,
                             partial(sequence_rows.indexer_topk_rows_triton,
                                     select=select, pairs=pairs)),
                "none set (a batch's decode step: per-sequence launches before)")


def _append_case(name: str, seqs: int, dev: str, dtype: torch.dtype) -> Case:
    """A CSA layer's cache appends at a decode step of ``seqs`` sequences (append_rows.py):
    each one's window gains its new FP8 row right past its WINDOW − 1 rows in its store
    (``LayerCache.join_window``), and its two compressors' open blocks their new row of fp32
    pooling inputs right past their 3 (``CompressorState.join_pending``): in place, one row
    each (the steps that start a fresh store, one in WINDOW // 2 for the window and one a
    block for the compressors, are not this case). Bytes: read and written once each."""
    row = kv_fp8.V4_KV_LAYOUT.row_bytes
    items = []
    for _ in range(seqs):
        store = torch.randint(0, 256, (1, window_capacity(WINDOW), row), dtype=torch.uint8,
                              device=dev)
        items.append((None, torch.randint(0, 256, (1, 1, row), dtype=torch.uint8, device=dev),
                      store[:, WINDOW - 1:WINDOW]))
        for width in (2 * HEAD_DIM, 2 * IDX_DIM):   # the overlapping halves: coff = 2
            block = torch.randn(1, 4, 2, width, device=dev)
            items.append((None, torch.randn(1, 1, 2, width, device=dev), block[:, 3:4]))
    nbytes = 2.0 * sum((0 if p is None else p.numel() * p.element_size())
                       + m.numel() * m.element_size() for p, m, *_ in items)
    shape = {"sequences": seqs, "items": len(items), "window_rows": WINDOW - 1}
    return Case(name, shape, nbytes, 0.0, lambda: append_rows.append_rows_reference(items),
                lambda: append_rows.append_rows_triton(items),
                "none set (a batch's decode step: a launch per sequence and buffer before)")


def _indexer_case(name: str, s: int, n: int, dev: str, dtype: torch.dtype,
                  causal: bool = False, packed: bool = False, path: str = "scores",
                  select: str = "fused", pairs: bool = False, upconvert: bool = False
                  ) -> Case:
    """``s`` queries against ``n`` compressed keys (ratio 4). ``causal``: the queries are the last
    ``s`` positions of a 4·n context, query t sees (pos + 1) // 4 keys (a prefill chunk); else
    every query sees all n (decode). ``packed``: the keys are native numerics' FP4 cache rows
    (68 B each, fp4_keys.py) instead of ``dtype`` rows, decoded two codes a register when
    ``pairs`` (``fp4_keys.load_key_pairs``), or up-converted to ``dtype`` first when
    ``upconvert`` (its launch timed with the scores'). Bytes: q, weights, keys and picks, each
    once (the prefill path's fp32 score scratch, 8 bytes per query·key written and read, is not
    counted)."""
    q = _rand(1, s, IDX_HEADS, IDX_DIM, dtype=dtype, device=dev)
    w = torch.randn(1, s, IDX_HEADS, device=dev) * IDX_HEADS**-0.5
    keys = _rand(1, n, IDX_DIM, dtype=dtype, device=dev)
    if packed:
        keys = fp4_keys.pack_index_keys(keys, fp4_keys.IndexKeyLayout(IDX_DIM))
    pos = torch.arange(4 * n - s, 4 * n, device=dev).clamp(min=0)
    visible = ((pos + 1) // 4 if causal else torch.full_like(pos, n)).to(torch.int32)
    shape = {"queries": s, "keys": n, "heads": IDX_HEADS, "dim": IDX_DIM, "topk": TOPK,
             "causal": causal, "path": path, "select": select, "pairs": pairs,
             "upconvert": upconvert,
             "keys_format": "fp4-68B" if packed else str(dtype).removeprefix("torch.")}
    key_bytes = keys.shape[-1] * keys.element_size()
    nbytes = (n * key_bytes + s * IDX_HEADS * (IDX_DIM * q.element_size() + 4) + s * TOPK * 8)
    flops = 2.0 * IDX_HEADS * IDX_DIM * float(visible.sum())
    return Case(name, shape, nbytes, flops,
                lambda: indexer.indexer_topk_reference(q, w, keys, visible, TOPK),
                lambda: indexer.indexer_topk_triton(q, w, keys, visible, TOPK, path=path,
                                                    causal=causal, select=select,
                                                    pairs=pairs, upconvert=upconvert),
                "with sparse_attn_decode_csa: >= 60% of HBM bandwidth" if not causal
                else ">= 40% of dense bf16 peak (tensor-core bound)")


def _csa_pair_case(name: str, n_comp: int, native: bool, dev: str, dtype: torch.dtype) -> Case:
    """Target 1 as one call: a CSA layer's decode step from the query to attention's output —
    the indexer's top-TOPK of ``n_comp`` compressed keys, then sparse attention over the window
    ∪ those picks — each with its wrapper's defaults (the scores kernel picks: two kernels in
    all). ``native``: the native cache's FP4 indexer keys and FP8 KV rows, else bf16 ones.
    Bytes: both halves' (``_indexer_case``'s and ``_attn_case``'s counts)."""
    qi = _rand(1, 1, IDX_HEADS, IDX_DIM, dtype=dtype, device=dev)
    w = torch.randn(1, 1, IDX_HEADS, device=dev) * IDX_HEADS**-0.5
    keys = _rand(1, n_comp, IDX_DIM, dtype=dtype, device=dev)
    if native:
        keys = fp4_keys.pack_index_keys(keys, fp4_keys.IndexKeyLayout(IDX_DIM))
    visible = torch.full((1,), n_comp, dtype=torch.int32, device=dev)
    q = _rand(1, 1, HEADS, HEAD_DIM, dtype=dtype, device=dev)
    kv = _rand(1, n_comp, HEAD_DIM, dtype=dtype, device=dev)
    win_rows = _rand(1, WINDOW, HEAD_DIM, dtype=dtype, device=dev)
    sink = torch.randn(HEADS, device=dev)
    angles = torch.rand(1, ROPE_DIM // 2, device=dev) * 6.0
    layout = kv_fp8.V4_KV_LAYOUT if native else None
    if native:
        kv, win_rows = kv_fp8.pack_kv_fp8(kv), kv_fp8.pack_kv_fp8(win_rows)
    window = sparse_attn.WindowRows(win_rows, torch.arange(WINDOW, device=dev).view(1, -1))
    scale = HEAD_DIM**-0.5

    def reference() -> object:
        picks = indexer.indexer_topk_reference(qi, w, keys, visible, TOPK)
        if native:
            return sparse_attn.sparse_attn_fp8_reference(q, kv, sink, picks, scale, layout,
                                                         window, angles)
        return sparse_attn.sparse_attn_reference(q, kv, sink, picks, scale, window, angles)

    def triton_call() -> object:
        picks = indexer.indexer_topk_triton(qi, w, keys, visible, TOPK, causal=False)
        return sparse_attn.sparse_attn_triton(q, kv, sink, picks, scale, layout=layout,
                                              window=window, unrope=angles)

    row_bytes = layout.row_bytes if native else HEAD_DIM * kv.element_size()
    nbytes = (keys.shape[1] * keys.shape[2] * keys.element_size()
              + IDX_HEADS * (IDX_DIM * qi.element_size() + 4) + TOPK * 8
              + (WINDOW + TOPK) * row_bytes + 2 * HEADS * HEAD_DIM * q.element_size())
    flops = 2.0 * IDX_HEADS * IDX_DIM * n_comp + 4.0 * HEADS * HEAD_DIM * (WINDOW + TOPK)
    shape = {"keys": n_comp, "topk": TOPK, "window": WINDOW, "heads": HEADS,
             "head_dim": HEAD_DIM, "cache": "fp4 keys, fp8-584B rows" if native else
             str(dtype).removeprefix("torch.")}
    return Case(name, shape, nbytes, flops, reference, triton_call, ">= 60% of HBM bandwidth")


def _overlapped(name: str, build: Callable[..., Case], *args: object, **kwargs: object) -> Case:
    """``build``'s case with its Triton call's launches overlapping the launch before each
    (programmatic dependent launch, ``launch.pdl``), in its graph the previous copy's last."""
    case = build(name, *args, **kwargs)
    call = case.triton

    def overlapping_call() -> object:
        with overlapping():
            return call()
    return dataclasses.replace(case, shape={**case.shape, "pdl": True}, triton=overlapping_call)


def _attn_output_case(name: str, n_comp: int, dev: str, dtype: torch.dtype, groups: int = 8,
                      rank: int = 1024, dim: int = 4096) -> Case:
    """A decode step's attention and its output projection, as ``Attention.attend`` and
    ``output`` run them: sparse attention over the window ∪ TOPK of ``n_comp`` FP8 rows (the
    native cache), then ``wo_a`` (FP8 [groups·rank, heads·head_dim / groups], the grouped GEMV,
    its K splits left unsummed) and ``wo_b`` (FP8 [dim, groups·rank], the FP8 GEMM summing
    them as it reads). Two weight streams (2 × 32 MB at V4-Flash) after a latency-bound kernel:
    what a GEMV's weight asked into L2 before its wait (``launch.grid_entry_prefetching``)
    saves when its launch overlaps the one before (the ``_pdl`` row)."""
    attn = _attn_case(name, 1, n_comp, TOPK, True, dev, dtype, "")
    k_a = HEADS * HEAD_DIM // groups
    wo_a, wo_a_s = quant.quant_fp8_block(torch.randn(groups * rank, k_a, device=dev) * k_a**-0.5)
    wo_b, wo_b_s = quant.quant_fp8_block(torch.randn(dim, groups * rank, device=dev)
                                         * (groups * rank)**-0.5)
    dense_a = quant.dequant_fp8_block(wo_a, wo_a_s).view(groups, rank, k_a)

    def reference() -> torch.Tensor:
        o, _ = attn.reference()
        z = torch.einsum("gk,gnk->gn", o.float().reshape(groups, k_a), dense_a)
        return gemm.fp8_gemm_reference(z.reshape(1, groups * rank).to(dtype), wo_b, wo_b_s)

    def triton_call() -> torch.Tensor:
        o, _ = attn.triton()
        z = gemv.gemv_triton(o.reshape(1, groups, k_a), wo_a, wo_a_s, groups, reduce=False)
        return gemm.fp8_gemm_triton(z, wo_b, wo_b_s)

    weights = wo_a.numel() + wo_a_s.numel() + wo_b.numel() + wo_b_s.numel()
    shape = {**attn.shape, "wo_a": [groups * rank, k_a], "wo_b": [dim, groups * rank],
             "weights": "fp8"}
    return Case(name, shape, attn.bytes + weights, attn.flops + 2.0 * weights, reference,
                triton_call, "none set (report only: the _pdl row's ratio)")


def _fp4_case(name: str, m: int, n: int, k: int, dev: str, dtype: torch.dtype,
              mma: bool = False, rounds: bool = True) -> Case:
    """``mma``: up to 16 rows on tensor cores (``gemm._fp4_gemm_mma_kernel``); ``rounds=False``:
    K split until about TARGET_PROGRAMS programs, not by the compiled kernel's residency
    (``split_k`` then is the old rule's count; with ``rounds`` ``bench compile`` gives the
    grid)."""
    packed, scale = quant.quant_fp4(torch.randn(n, k, device=dev) * k**-0.5)
    x = _rand(m, k, dtype=dtype, device=dev)
    nbytes = n * k // 2 + n * k // 32 + (m * k + m * n) * x.element_size()
    split_k = (gemm.fp4_mma_plan(m, n, k) if mma else gemm.fp4_gemm_plan(m, n, k))[-2]
    return Case(name, {"m": m, "n": n, "k": k, "split_k": split_k, "mma": mma,
                       "rounds": rounds}, nbytes,
                2.0 * m * n * k, lambda: gemm.fp4_gemm_reference(x, packed, scale),
                lambda: gemm.fp4_gemm_triton(x, packed, scale, mma=mma, rounds=rounds),
                ">= 60% of HBM bandwidth")


def _fp8_case(name: str, m: int, n: int, k: int, dev: str, dtype: torch.dtype,
              prologue: str = "", k_splits: bool = True, block_n: int | None = None,
              rounds: bool = True, one_row: bool = True) -> Case:
    """``prologue``: "swiglu" — the shared expert's down projection, its activation computed
    from gate and up as the GEMM reads them; "norm" — attention's query up-projections (its and
    the indexer's, stacked) with q_norm as the prologue; "splitk" — attention's ``wo_b``
    summing ``wo_a``'s grouped GEMV partials (3 K splits × 8 groups) as it reads them.
    ``k_splits``: the GEMM's own K over more programs at decode (``gemm.fp8_k_splits``; off:
    the ``_whole_k`` rows, one program a tile); ``block_n``: the decode tile's rows
    (``gemm._blocks``); ``rounds=False``: the splits of the old rule, about TARGET_PROGRAMS
    programs (``k_splits`` is that count; with ``rounds`` ``bench compile`` gives the grid);
    ``one_row=False``: a one-row decode's activation side on all 16 rows of the MMA tile."""
    w, ws = quant.quant_fp8_block(torch.randn(n, k, device=dev) * k**-0.5)
    x = _rand(m, k, dtype=dtype, device=dev)
    glu = (_rand(m, k, dtype=dtype, device=dev), 10.0) if prologue == "swiglu" else None
    norm = (torch.rand(k, device=dev) + 0.5, 1e-6) if prologue == "norm" else None
    reads = m * k * (2 if glu else 1) + m * n
    if prologue == "splitk":
        parts = torch.randn(3, 8, m, k // 8, device=dev)
        x = gemm.SplitK(parts, (m,), dtype)
        reads = m * n + parts.numel() * 2        # fp32 partials: 2 × a bf16 value each
    splits = gemm.fp8_k_splits(m, n, k, block_n)[0] if k_splits else 1
    return Case(name, {"m": m, "n": n, "k": k, "prologue": prologue or None, "k_splits": splits,
                       "block_n": gemm._blocks(m, n, block_n)[1], "rounds": rounds,
                       "one_row": one_row and m == 1},
                n * k + ws.numel() + reads * dtype.itemsize,
                2.0 * m * n * k,
                lambda: gemm.fp8_gemm_reference(x.sum() if prologue == "splitk" else x, w, ws,
                                                glu, norm),
                lambda: gemm.fp8_gemm_triton(x, w, ws, glu, norm, k_splits, block_n, rounds,
                                             one_row),
                "none set (report only)")


def _moe_case(name: str, t: int, dev: str, dtype: torch.dtype, n_exp: int = 256,
              topk: int = 6, dim: int = 4096, inter: int = 2048, native: bool = False,
              **tiles: int | bool | str) -> Case:
    """Routed experts of one layer; only the experts actually hit are stored (weights read once).
    ``native``: with the FP8 quantisation of x and h (native numerics: inside the GEMV and its
    epilogue at decode). ``tiles``: launch options of the Triton path (block_m of the grouped
    GEMM; block_n / block_k / num_warps / ahead / mma / finish of the decode)."""
    used = min(n_exp, t * topk)
    stacks = []
    for out_f, in_f in ((inter, dim), (inter, dim), (dim, inter)):  # one expert, copied
        packed, scale = quant.quant_fp4(torch.randn(out_f, in_f, device=dev) * in_f**-0.5)
        stacks += [packed.unsqueeze(0).repeat(used, 1, 1), scale.unsqueeze(0).repeat(used, 1, 1)]
    bank = ExpertBank.from_stacked(*stacks)
    x = _rand(t, dim, dtype=dtype, device=dev)
    idx = torch.stack([torch.randperm(used, device=dev)[:topk] for _ in range(t)])
    w = torch.rand(t, topk, device=dev)
    nbytes = used * 3 * dim * inter * (0.5 + 1 / 32) + 2 * t * dim * x.element_size()
    shape = {"tokens": t, "experts_hit": used, "topk": topk, "dim": dim, "inter": inter,
             "path": "grouped", "native": native, **tiles}
    if t * topk <= moe.DECODE_MAX_PAIRS:  # per-pair split-K: K splits of gate/up and of down
        (up, _), (down, _) = moe.decode_plan(
            t * topk, dim, inter, tiles.get("block_k", moe.DECODE_BLOCK_K),
            tiles.get("split_k"), tiles.get("block_n", moe.DECODE_BLOCK_N))
        shape.update(path="decode", split_k=[up, down])
    return Case(name, shape, nbytes, 6.0 * t * topk * dim * inter,
                lambda: moe.moe_fp4_reference(x, w, idx, bank, 10.0, quantize_input=native),
                lambda: moe.moe_fp4_triton(x, w, idx, bank, 10.0, quantize_input=native,
                                           **tiles),
                ">= 60% of HBM bandwidth")


def _mhc_case(name: str, t: int, dev: str, dtype: torch.dtype, hc: int = 4,
              dim: int = 4096, finish: str = "fused") -> Case:
    """mHC pre with the block's RMSNorm after it, as the model runs it (``finish``:
    ``hc_pre_triton``'s, at decode)."""
    from model.kernels.norm_rope import rms_norm_reference
    x = _rand(1, t, hc, dim, dtype=dtype, device=dev)
    fn = torch.randn((2 + hc) * hc, hc * dim, device=dev) * 0.01
    scale, base = torch.rand(3, device=dev), torch.randn((2 + hc) * hc, device=dev)
    norm = ((torch.rand(dim, device=dev) + 0.5).to(torch.bfloat16), 1e-6)
    nbytes = 2 * t * hc * dim * x.element_size() + fn.numel() * 4 + t * dim * x.element_size()
    path = "decode" if t <= mhc.DECODE_MAX_TOKENS else "prefill"

    def reference():
        y, post, comb = mhc.hc_pre_reference(x, fn, scale, base, 20, 1e-6, 1e-6)
        return rms_norm_reference(y, *norm), post, comb

    return Case(name, {"tokens": t, "hc": hc, "dim": dim, "path": path, "norm": True}, nbytes,
                2.0 * t * fn.numel() + 3.0 * t * hc * dim, reference,
                lambda: mhc.hc_pre_triton(x, fn, scale, base, 20, 1e-6, 1e-6, finish=finish,
                                          norm=norm),
                "none set (latency-bound)")


def _compressor_case(name: str, n: int, ratio: int, dev: str, d: int = 512,
                     index_keys: bool = False) -> Case:
    """The compressor fused with the cache insert, in the native cache format: n blocks of a
    chunk's rows → packed FP8 KV rows (d = 512), or rotated FP4 indexer keys (d = 128)."""
    overlap = ratio == 4
    pooled = torch.randn(1, n * ratio, 2, (2 if overlap else 1) * d, device=dev)
    prev = [torch.randn(1, ratio, pooled.shape[-1], device=dev) for _ in range(2)] if overlap \
        else [None, None]
    weight = torch.rand(d, device=dev) + 0.5
    angles = torch.rand(n, 32, device=dev)
    layout = fp4_keys.IndexKeyLayout(d) if index_keys else kv_fp8.KVLayout(d, 64)
    fmt = cache_rows.RowFormat(torch.bfloat16, True, layout, index_keys, 64)
    args = (pooled, n, ratio, overlap, *prev, weight, 1e-6, angles, fmt)
    return Case(name, {"entries": n, "ratio": ratio, "dim": d, "format": type(layout).__name__},
                pooled.numel() * 4 + n * layout.row_bytes, 5.0 * pooled.numel() + 2 * n * d * d
                * index_keys,
                lambda: compressor.compress_insert_reference(*args),
                lambda: compressor.compress_insert_triton(*args),
                "none set (report only)")


def _insert_rows_case(name: str, seqs: int, dev: str, d: int = 512,
                      index_keys: bool = False) -> Case:
    """A decode step's closing blocks of ``seqs`` sequences in one launch (compress_insert in
    TABLE mode: each its own pooled rows, previous block, position and store row)."""
    width = 2 * d
    weight = torch.rand(d, device=dev) + 0.5
    inv = 1.0 / 160000 ** (torch.arange(32, device=dev).float() / 32)
    layout = fp4_keys.IndexKeyLayout(d) if index_keys else kv_fp8.KVLayout(d, 64)
    fmt = cache_rows.RowFormat(torch.bfloat16, True, layout, index_keys, 64)
    store = torch.zeros(1, seqs, layout.row_bytes, dtype=torch.uint8, device=dev)
    items = []
    for t in range(seqs):
        pooled = torch.randn(1, 2 * 4, 2, width, device=dev)   # the previous block, then this
        items.append(compressor.BlockInsert(pooled[:, 4:], pooled[:, :4, 0], pooled[:, :4, 1],
                                            4 * (1000 + 97 * t), store[:, t:t + 1]))
    args = (4, True, weight, 1e-6, inv, fmt)
    return Case(name, {"sequences": seqs, "dim": d, "format": type(layout).__name__},
                seqs * (8 * 2 * width * 4 + layout.row_bytes), 5.0 * seqs * 8 * width,
                lambda: compressor.compress_insert_rows_reference(items, *args) or store.clone(),
                lambda: compressor.compress_insert_rows_triton(items, *args) or store.clone(),
                "none set (a batch's decode step: a launch per closing sequence before)")


def _router_case(name: str, t: int, dev: str, dtype: torch.dtype, n_exp: int = 256,
                 dim: int = 4096, topk: int = 6, split: bool | None = None) -> Case:
    """MoE router (score-routed layer): the bf16 gate weight dominates the bytes at decode. On a
    GPU the expert picks of both paths are compared once here (shape: index_agreement).
    ``split``: ``route_triton``'s (None: by the token count)."""
    from model.kernels import router
    x = _rand(t, dim, dtype=dtype, device=dev)
    weight = _rand(n_exp, dim, dtype=torch.bfloat16, device=dev, std=dim**-0.5)
    bias = torch.randn(n_exp, device=dev) * 0.1
    ids = torch.zeros(t, dtype=torch.long, device=dev)
    args = (x, weight, bias, ids, None, topk, "sqrtsoftplus", 1.5)
    splits = split if split is not None else t < router.SPLIT_BELOW_TOKENS
    shape: dict = {"tokens": t, "experts": n_exp, "dim": dim, "topk": topk,
                   "path": "split" if splits else "fused"}
    if dev == "cuda":
        same = router.route_triton(*args, split=split)[1] == router.route_reference(*args)[1]
        shape["index_agreement"] = same.float().mean().item()
    nbytes = n_exp * dim * 2 + t * dim * x.element_size() + n_exp * 4 + t * topk * 12
    return Case(name, shape, nbytes, 2.0 * t * n_exp * dim,
                lambda: router.route_reference(*args),
                lambda: router.route_triton(*args, split=split), "none set (report only)")


def _rms_norm_case(name: str, rows: int, dev: str, dtype: torch.dtype, dim: int = 4096) -> Case:
    """RMSNorm over ``rows`` rows of ``dim`` (fp32 weight): one launch vs the torch ops."""
    from model.kernels import norm_rope
    x = _rand(rows, dim, dtype=dtype, device=dev)
    w = torch.rand(dim, device=dev) + 0.5
    return Case(name, {"rows": rows, "dim": dim}, 2 * x.numel() * x.element_size() + dim * 4,
                4.0 * x.numel(), lambda: norm_rope.rms_norm_reference(x, w, 1e-6),
                lambda: norm_rope.rms_norm_triton(x, w, 1e-6), "none set (latency-bound)")


NORM_CHAIN = 32   # launches in the norm chain case


def _norm_chain_case(name: str, dev: str, dtype: torch.dtype, dim: int = 4096) -> Case:
    """NORM_CHAIN RMSNorms of one decode token's row, each reading the one before's output: a
    chain of the smallest kernels a decode step has, where the time is the launches' own (the
    per-launch floor, ``graph_ms`` / NORM_CHAIN), and what overlapping them buys (its ``_pdl``
    row). Without a weight: a weight would scale each value by its power NORM_CHAIN."""
    from model.kernels import norm_rope
    x = _rand(1, dim, dtype=dtype, device=dev)

    def chain(norm: Callable[..., torch.Tensor]) -> torch.Tensor:
        y = x
        for _ in range(NORM_CHAIN):
            y = norm(y, None, 1e-6)
        return y
    return Case(name, {"rows": 1, "dim": dim, "launches": NORM_CHAIN},
                NORM_CHAIN * 2 * x.numel() * x.element_size(),
                NORM_CHAIN * 4.0 * x.numel(), lambda: chain(norm_rope.rms_norm_reference),
                lambda: chain(norm_rope.rms_norm_triton), "none set (report only)")


def _rope_case(name: str, tokens: int, dev: str, dtype: torch.dtype, heads: int = HEADS,
               d: int = HEAD_DIM, rope: int = 64) -> Case:
    """Interleaved RoPE on the trailing ``rope`` dims of x [1, tokens, heads, d]."""
    from model.kernels import norm_rope
    x = _rand(1, tokens, heads, d, dtype=dtype, device=dev)
    angles = torch.rand(tokens, rope // 2, device=dev) * 100
    return Case(name, {"tokens": tokens, "heads": heads, "dim": d, "rope_dims": rope},
                2 * x.numel() * x.element_size() + angles.numel() * 4,
                6.0 * tokens * heads * rope, lambda: norm_rope.apply_rope_reference(x, angles),
                lambda: norm_rope.apply_rope_triton(x, angles), "none set (latency-bound)")


def _norm_rope_rows_case(name: str, tokens: int, dev: str, dtype: torch.dtype, what: str
                         ) -> Case:
    """One launch from a projection to the rows attention reads (cache_rows.py): ``queries``
    (per-head RMSNorm + RoPE, 64 × 512), ``kv`` (kv_norm + RoPE + the packed FP8 row) or
    ``index_queries`` (RoPE + rotation + FP4 values, 64 × 128)."""
    heads, d = {"queries": (HEADS, HEAD_DIM), "kv": (0, HEAD_DIM),
                "index_queries": (IDX_HEADS, IDX_DIM)}[what]
    x = _rand(1, tokens, *((heads,) if heads else ()), d, dtype=dtype, device=dev)
    weight = torch.rand(d, device=dev) + 0.5 if what == "kv" else None
    eps = None if what == "index_queries" else 1e-6
    angles = torch.rand(tokens, 32, device=dev) * 100
    fmt = {"queries": cache_rows.RowFormat(dtype),
           "kv": cache_rows.RowFormat(dtype, True, kv_fp8.KVLayout(d, 64), rope_dim=64),
           "index_queries": cache_rows.RowFormat(dtype, True, rotate=True)}[what]
    out_bytes = x.numel() // d * fmt.row_width(d) * (1 if fmt.layout else x.element_size())
    return Case(name, {"tokens": tokens, "heads": heads or 1, "dim": d, "format": what},
                x.numel() * x.element_size() + out_bytes,
                10.0 * x.numel() + 2.0 * x.numel() * d * fmt.rotate,
                lambda: cache_rows.norm_rope_rows_reference(x, weight, eps, angles, fmt),
                lambda: cache_rows.norm_rope_rows_triton(x, weight, eps, angles, fmt),
                "none set (latency-bound)")


def _swiglu_case(name: str, tokens: int, dev: str, dtype: torch.dtype, inter: int = 2048
                 ) -> Case:
    """The shared expert's clamped SwiGLU (gate, up halves of [tokens, 2·inter])."""
    both = _rand(tokens, 2 * inter, dtype=dtype, device=dev, std=4.0)
    gate, up = both[:, :inter], both[:, inter:]
    return Case(name, {"tokens": tokens, "inter": inter},
                3 * tokens * inter * both.element_size(), 6.0 * tokens * inter,
                lambda: gemm.swiglu_reference(gate, up, 10.0, None, dtype),
                lambda: moe.swiglu_triton(gate, up, 10.0, None, dtype), "none set (latency-bound)")


def _pool_inputs_case(name: str, tokens: int, dev: str, splits: int = 12) -> Case:
    """A CSA layer's pooling inputs from its stacked projection's split-K partials (V4-Flash
    widths: two compressors, 1024 and 256 wide, and 64 head weights; 12 splits, what the decode
    GEMV makes of 2,624 × 4,096): sum, ape, head-weight scale, one launch."""
    from model.kernels.compressor import HeadColumns, PoolColumns
    n = 2 * 1024 + 64 + 2 * 256
    parts = torch.randn(splits, 1, tokens, n, device=dev)
    comps = [PoolColumns(0, 1024, torch.randn(4, 1024, device=dev)),
             PoolColumns(2112, 2368, torch.randn(4, 256, device=dev))]
    heads = HeadColumns(2048, 64, 0.01, torch.bfloat16)
    positions = torch.arange(1000, 1000 + tokens, device=dev)
    return Case(name, {"tokens": tokens, "columns": n, "splits": splits},
                parts.numel() * 4 + tokens * (2 * 1024 + 2 * 256 + 64) * 4, parts.numel(),
                lambda: compressor.pool_inputs_reference(parts, comps, heads, positions),
                lambda: compressor.pool_inputs_triton(parts, comps, heads, positions),
                "none set (latency-bound)")


def _gemv_case(name: str, n: int, k: int, dev: str, dtype: torch.dtype, fp8: bool,
               groups: int = 1, mma: bool = False, ahead: bool = False,
               wide: bool = False, rounds: bool = True) -> Case:
    """Decode GEMV with the weight as mapped (one token): FP8 e4m3 + 128×128 scales (wq_b) or
    bf16 with one input vector per group (wo_a: 8 groups; the LM head: 1). ``mma``: on tensor
    cores (``gemv._gemv_mma_kernel``); ``ahead``: each weight tile loaded a step ahead;
    ``wide``: tiles of twice the rows; ``rounds=False``: K split until about TARGET_PROGRAMS
    programs, not by the compiled kernel's residency."""
    x = _rand(1, groups, k, dtype=dtype, device=dev) if groups > 1 else _rand(1, k, dtype=dtype,
                                                                             device=dev)
    if fp8:
        w, ws = quant.quant_fp8_block(torch.randn(groups * n, k, device=dev) * k**-0.5)
        dense = quant.dequant_fp8_block(w, ws)
    else:
        w, ws = _rand(groups * n, k, dtype=torch.bfloat16, device=dev, std=k**-0.5), None
        dense = w.float()

    def reference() -> torch.Tensor:
        xs = x.float().reshape(groups, k)
        return torch.einsum("gk,gnk->gn", xs, dense.view(groups, n, k)).reshape(
            *x.shape[:-1], n)

    nbytes = w.numel() * w.element_size() + (0 if ws is None else ws.numel()) + x.numel() * 2
    return Case(name, {"n": n, "k": k, "groups": groups, "weight": "fp8" if fp8 else "bf16",
                       "mma": mma, "ahead": ahead, "wide": wide, "rounds": rounds},
                nbytes, 2.0 * groups * n * k, reference,
                lambda: gemv.gemv_triton(x, w, ws, groups, mma=mma, ahead=ahead, wide=wide,
                                         rounds=rounds),
                "none set (report only)")


def _act_quant_case(name: str, rows: int, dev: str, dtype: torch.dtype, dim: int = 4096
                    ) -> Case:
    """Activation fake-quantisation in native numerics: FP8 1×128 (before an FP8 linear where
    no kernel quantises its own input: the prefill paths)."""
    from model.kernels import quant_triton
    x = _rand(rows, dim, dtype=dtype, device=dev)
    return Case(name, {"rows": rows, "dim": dim, "format": "fp8"},
                2 * x.numel() * x.element_size(), 3.0 * x.numel(),
                lambda: quant.fp8_fake_quant(x, 128),
                lambda: quant_triton.fp8_fake_quant_triton(x, 128), "none set (latency-bound)")


def _mhc_post_case(name: str, t: int, dev: str, dtype: torch.dtype, hc: int = 4,
                   dim: int = 4096) -> Case:
    """mHC post: the block's output spread over the 4 residual streams, plus their mixing."""
    y = _rand(1, t, dim, dtype=dtype, device=dev)
    residual = _rand(1, t, hc, dim, dtype=dtype, device=dev)
    post, comb = torch.rand(1, t, hc, device=dev), torch.rand(1, t, hc, hc, device=dev)
    return Case(name, {"tokens": t, "hc": hc, "dim": dim},
                (y.numel() + 2 * residual.numel()) * y.element_size(),
                2.0 * t * hc * dim * (hc + 1),
                lambda: mhc.hc_post_reference(y, residual, post, comb),
                lambda: mhc.hc_post_triton(y, residual, post, comb), "none set (latency-bound)")


def _mhc_post_pre_case(name: str, t: int, dev: str, dtype: torch.dtype, hc: int = 4,
                       dim: int = 4096, finish: str = "fused") -> Case:
    """mHC post of one site fused with the next site's pre and the block's RMSNorm after it (1
    launch at decode instead of 4; ``finish="kernel"``: 3): against the reference post, pre,
    norm."""
    from model.kernels.norm_rope import rms_norm_reference
    y = _rand(1, t, dim, dtype=dtype, device=dev)
    residual = _rand(1, t, hc, dim, dtype=dtype, device=dev)
    post, comb = torch.rand(1, t, hc, device=dev), torch.rand(1, t, hc, hc, device=dev)
    fn = torch.randn((2 + hc) * hc, hc * dim, device=dev) * 0.01
    scale, base = torch.rand(3, device=dev), torch.randn((2 + hc) * hc, device=dev)
    size = y.element_size()
    nbytes = (y.numel() + 3 * residual.numel()) * size + fn.numel() * 4 + t * dim * size

    norm = ((torch.rand(dim, device=dev) + 0.5).to(torch.bfloat16), 1e-6)

    def reference():
        x = mhc.hc_post_reference(y, residual, post, comb)
        h, post2, comb2 = mhc.hc_pre_reference(x, fn, scale, base, 20, 1e-6, 1e-6)
        return x, rms_norm_reference(h, *norm), post2, comb2

    return Case(name, {"tokens": t, "hc": hc, "dim": dim, "norm": True}, nbytes,
                2.0 * t * hc * dim * (hc + 1) + 2.0 * t * fn.numel(), reference,
                lambda: mhc.hc_post_pre_triton(y, residual, post, comb, fn, scale, base, 20,
                                               1e-6, 1e-6, finish=finish, norm=norm),
                "none set (latency-bound)")


def _gemv_cases(full: bool, dev: str, dtype: torch.dtype) -> list[partial[Case]]:
    """The decode GEMV (dequant numerics) at three weights — wq_b (FP8), wo_a (bf16, 8
    groups), the LM head (bf16, 129,280 × 4,096, 1.06 GB a decoded token, computed in fp32 as
    the model does: the MMA path splits x into three bf16 columns) — each plain and in the
    launch choices' forms: on tensor cores (``mma``), each weight tile loaded a step ahead
    (``ahead``: the FMA kernel's loop is not pipelined), tiles of twice the rows (``wide``:
    fewer rounds of the SMs, more bytes in flight an SM), K split by the old rule (``target``:
    about TARGET_PROGRAMS programs, not by the kernel's residency: wo_a's 1,024 at 6 an SM
    are two rounds where 768 are one)."""
    weights = {"fp8_wq_b": (32768 if full else 4096, 1024, dtype, True, {}),
               "bf16_wo_a": (1024, 4096 if full else 1024, dtype, False, {"groups": 8}),
               "bf16_lm_head": (129280 if full else 4096, 4096, torch.float32, False, {})}
    forms = {"": {}, "_mma": {"mma": True}, "_ahead": {"ahead": True}, "_wide": {"wide": True},
             "_target": {"rounds": False}}
    return [partial(_gemv_case, f"gemv_{name}_decode{suffix}", n, k, dev, x_dtype, fp8,
                    **shape, **form)
            for suffix, form in forms.items()
            for name, (n, k, x_dtype, fp8, shape) in weights.items()]


def cases(full: bool, dev: str, dtype: torch.dtype | None = None) -> list[partial[Case]]:
    """Case builders (inputs are made just before each case runs and freed after it).
    ``dtype``: of the inputs (default bf16 on a GPU, fp32 on a CPU); GPU-sized prefills come
    with a GPU or with bf16 inputs (what ``bench compile`` compiles for)."""
    dtype = dtype or (torch.bfloat16 if dev == "cuda" else torch.float32)
    ctx = CONTEXT if full else 8192
    gpu = dev == "cuda" or dtype == torch.bfloat16
    prefill = 1024 if gpu else 16
    hbm = ">= 60% of HBM bandwidth (with the indexer)"
    moe_dims = {} if full else {"n_exp": 16, "dim": 1024, "inter": 512}
    idx_prefill = (2048, PREFILL_CONTEXT // 4) if full else (64, 2048)  # (queries, keys)
    none = "none set (report only)"
    p = partial
    return [
        p(_attn_case, "sparse_attn_decode_csa", 1, ctx // 4, TOPK, False, dev, dtype, hbm),
        p(_attn_case, "sparse_attn_decode_csa_fp8", 1, ctx // 4, TOPK, True, dev, dtype, hbm),
        # flash-decoding's combine as a kernel of its own (the default merges in the forward)
        p(_attn_case, "sparse_attn_decode_csa_combine_kernel", 1, ctx // 4, TOPK, False, dev,
          dtype, hbm, combine="kernel"),
        p(_attn_case, "sparse_attn_decode_csa_fp8_combine_kernel", 1, ctx // 4, TOPK, True, dev,
          dtype, hbm, combine="kernel"),
        # output columns in 4 slices: 4× the programs, each merging a quarter of the columns
        p(_attn_case, "sparse_attn_decode_csa_dv4", 1, ctx // 4, TOPK, False, dev, dtype, hbm,
          dv_parts=4),
        p(_attn_case, "sparse_attn_decode_csa_fp8_dv4", 1, ctx // 4, TOPK, True, dev, dtype, hbm,
          dv_parts=4),
        # and in 8 splits of 80 rows (the default merged split reads at least 128: 5 splits),
        # the fastest shape of session 12's H200 sweep (docs/perf/sweep.py attn_decode)
        p(_attn_case, "sparse_attn_decode_csa_dv4_s8", 1, ctx // 4, TOPK, False, dev, dtype,
          hbm, dv_parts=4, n_splits=8),
        p(_attn_case, "sparse_attn_decode_csa_fp8_dv4_s8", 1, ctx // 4, TOPK, True, dev, dtype,
          hbm, dv_parts=4, n_splits=8),
        # FP8 rows decoded by bit placement, two values a register (model/kernels/fp8_pairs.py)
        p(_attn_case, "sparse_attn_decode_csa_fp8_pairs", 1, ctx // 4, TOPK, True, dev, dtype,
          hbm, fp8_pairs=True),
        p(_attn_case, "sparse_attn_decode_csa_fp8_combine_kernel_pairs", 1, ctx // 4, TOPK, True,
          dev, dtype, hbm, combine="kernel", fp8_pairs=True),
        p(_attn_case, "sparse_attn_decode_csa_fp8_dv4_s8_pairs", 1, ctx // 4, TOPK, True, dev,
          dtype, hbm, dv_parts=4, n_splits=8, fp8_pairs=True),
        # and the scores as a dot batched over 4 slices of the head dim, a slice a warp
        p(_attn_case, "sparse_attn_decode_csa_fp8_pairs_qk4", 1, ctx // 4, TOPK, True, dev,
          dtype, hbm, fp8_pairs=True, qk_split=4),
        p(_attn_case, "sparse_attn_decode_csa_fp8_dv4_s8_pairs_qk4", 1, ctx // 4, TOPK, True,
          dev, dtype, hbm, dv_parts=4, n_splits=8, fp8_pairs=True, qk_split=4),
        p(_attn_case, "sparse_attn_decode_hca", 1, ctx // 128, ctx // 128, False, dev, dtype,
          none),
        # HCA over the native cache's FP8 rows (every one of the 1,024 compressed rows), cast
        # and by placement with the batched scores: FP8 decode's choices also serve HCA layers
        p(_attn_case, "sparse_attn_decode_hca_fp8", 1, ctx // 128, ctx // 128, True, dev, dtype,
          none),
        p(_attn_case, "sparse_attn_decode_hca_fp8_pairs_qk4", 1, ctx // 128, ctx // 128, True,
          dev, dtype, none, fp8_pairs=True, qk_split=4),
        p(_attn_case, "sparse_attn_prefill_csa", prefill, ctx // 4, TOPK, False, dev, dtype,
          ">= 40% of dense bf16 peak"),
        p(_attn_case, "sparse_attn_prefill_csa_fp8", prefill, ctx // 4, TOPK, True, dev, dtype,
          "none set (the native cache's prefill path)"),
        # 64-head tiles (Hopper warp-group MMA), output columns split so they fit in registers
        p(_attn_case, "sparse_attn_prefill_csa_h64", prefill, ctx // 4, TOPK, False, dev, dtype,
          ">= 40% of dense bf16 peak", block_h=64, dv_parts=2),
        p(_attn_case, "sparse_attn_prefill_csa_fp8_h64", prefill, ctx // 4, TOPK, True, dev,
          dtype, "none set (the native cache's prefill path)", block_h=64, dv_parts=4),
        # the same tiles at 8 warps: fewer registers a thread, no spills on triton 3.6
        p(_attn_case, "sparse_attn_prefill_csa_h64_w8", prefill, ctx // 4, TOPK, False, dev,
          dtype, ">= 40% of dense bf16 peak", block_h=64, dv_parts=2, num_warps=8),
        # 64-head tiles over 32 or 64 rows a step: wider warp-group MMAs (8 warps: 236–237
        # registers, 32 B of stack on triton 3.6, where 4 warps spill 104–168 B)
        p(_attn_case, "sparse_attn_prefill_csa_h64_n32_w8", prefill, ctx // 4, TOPK, False, dev,
          dtype, ">= 40% of dense bf16 peak", block_h=64, dv_parts=2, block_n=32, num_warps=8),
        p(_attn_case, "sparse_attn_prefill_csa_h64_dv4_n64_w8", prefill, ctx // 4, TOPK, False,
          dev, dtype, ">= 40% of dense bf16 peak", block_h=64, dv_parts=4, block_n=64,
          num_warps=8),
        # all 512 output columns a program over 8 warps (two warp groups, 128 accumulator
        # registers a thread): the scores once a row tile, where column slices recompute them
        p(_attn_case, "sparse_attn_prefill_csa_h64_dv1_n16_w8", prefill, ctx // 4, TOPK, False,
          dev, dtype, ">= 40% of dense bf16 peak", block_h=64, dv_parts=1, num_warps=8),
        p(_attn_case, "sparse_attn_prefill_csa_h64_dv1_n32_w8", prefill, ctx // 4, TOPK, False,
          dev, dtype, ">= 40% of dense bf16 peak", block_h=64, dv_parts=1, block_n=32,
          num_warps=8),
        # the table's tile with each step's next scores issued before its softmax (the MMAs
        # overlap the exps: FlashAttention-3's pipelining within a warp group)
        p(_attn_case, "sparse_attn_prefill_csa_h64_ahead", prefill, ctx // 4, TOPK, False, dev,
          dtype, ">= 40% of dense bf16 peak", block_h=64, dv_parts=2, ahead=True),
        # the same tile with the rows on the MMAs' M side (scores kv · qᵀ, output kvᵀ · p):
        # n = 64 warp-group MMAs where heads on M make them n = 16–32 (docs/PERF.md, "Prefill
        # attention: the next scores under the softmax", part 3)
        p(_attn_case, "sparse_attn_prefill_csa_h64_dv1_n64_w8_rows", prefill, ctx // 4, TOPK,
          False, dev, dtype, ">= 40% of dense bf16 peak", block_h=64, dv_parts=1, block_n=64,
          num_warps=8, rows_m=True),
        # an HCA layer's prefill with the table's bf16 tile: a query's window ∪ every one of
        # the 1,024 compressed rows, 1,152 rows where a CSA query reads 640 (no target: what
        # the HCA half of a prefill costs)
        p(_attn_case, "sparse_attn_prefill_hca_h64", prefill, ctx // 128, ctx // 128, False,
          dev, dtype, none, block_h=64, dv_parts=2),
        # the FP8 rows up-converted once (32 MiB of bf16 at 128K), then the bf16 rows' 64-head
        # tile: each row decoded once a chunk, not once a query, head block and column slice
        p(_attn_case, "sparse_attn_prefill_csa_fp8_upconvert", prefill, ctx // 4, TOPK, True,
          dev, dtype, "none set (the native cache's prefill path)", block_h=64, dv_parts=2,
          upconvert=True),
        p(_attn_case, "sparse_attn_prefill_csa_fp8_upconvert_ahead", prefill, ctx // 4, TOPK,
          True, dev, dtype, "none set (the native cache's prefill path)", block_h=64,
          dv_parts=2, upconvert=True, ahead=True),
        p(_attn_case, "sparse_attn_prefill_csa_fp8_w8", prefill, ctx // 4, TOPK, True, dev,
          dtype, "none set (the native cache's prefill path)", num_warps=8),
        p(_attn_case, "sparse_attn_prefill_csa_fp8_pairs", prefill, ctx // 4, TOPK, True, dev,
          dtype, "none set (the native cache's prefill path)", fp8_pairs=True),
        p(_attn_case, "sparse_attn_prefill_csa_fp8_pairs_qk4", prefill, ctx // 4, TOPK, True,
          dev, dtype, "none set (the native cache's prefill path)", fp8_pairs=True,
          qk_split=4),
        p(_attn_case, "sparse_attn_prefill_csa_fp8_h64_pairs", prefill, ctx // 4, TOPK, True,
          dev, dtype, "none set (the native cache's prefill path)", block_h=64, dv_parts=4,
          fp8_pairs=True),
        # target 1 as one call: indexer top-k then attention over its picks (two kernels), bf16
        # and the native cache; and each launch overlapping the one before it (launch.pdl)
        p(_csa_pair_case, "csa_decode_pair", ctx // 4, False, dev, dtype),
        p(_overlapped, "csa_decode_pair_pdl", _csa_pair_case, ctx // 4, False, dev, dtype),
        p(_csa_pair_case, "csa_decode_pair_native", ctx // 4, True, dev, dtype),
        p(_overlapped, "csa_decode_pair_native_pdl", _csa_pair_case, ctx // 4, True, dev, dtype),
        # attention, then its output projection's two weight streams: what prefetching a
        # weight before the grid's wait saves (launch.grid_entry_prefetching)
        p(_attn_output_case, "attn_output_decode", ctx // 4, dev, dtype),
        p(_overlapped, "attn_output_decode_pdl", _attn_output_case, ctx // 4, dev, dtype),
        p(_indexer_case, "indexer_topk_decode", 1, ctx // 4, dev, dtype),
        p(_indexer_case, "indexer_topk_decode_merge", 1, ctx // 4, dev, dtype, path="merge"),
        # the scores kernel's last program picking by four passes over the row instead of from
        # the digits its programs counted; in a kernel of its own (topk_select), or with
        # torch.topk (≈ 15 kernels a row on a GPU)
        p(_indexer_case, "indexer_topk_decode_passes", 1, ctx // 4, dev, dtype,
          select="fused_passes"),
        # the pick in two launches of (query, 1024-key slice) programs (topk_select.pick_counted)
        p(_indexer_case, "indexer_topk_decode_parallel", 1, ctx // 4, dev, dtype,
          select="parallel"),
        p(_indexer_case, "indexer_topk_decode_select_kernel", 1, ctx // 4, dev, dtype,
          select="triton"),
        p(_indexer_case, "indexer_topk_decode_torch_select", 1, ctx // 4, dev, dtype,
          select="torch"),
        p(_indexer_case, "indexer_topk_prefill", *idx_prefill, dev, dtype, causal=True),
        # the prefill's pick by four passes over each row (before session 22's counts), or in
        # a kernel of its own
        p(_indexer_case, "indexer_topk_prefill_passes", *idx_prefill, dev, dtype, causal=True,
          select="fused_passes"),
        p(_indexer_case, "indexer_topk_prefill_select_kernel", *idx_prefill, dev, dtype,
          causal=True, select="triton"),
        p(_indexer_case, "indexer_topk_decode_fp4", 1, ctx // 4, dev, dtype, packed=True),
        p(_indexer_case, "indexer_topk_prefill_fp4", *idx_prefill, dev, dtype, causal=True,
          packed=True),
        p(_indexer_case, "indexer_topk_prefill_fp4_passes", *idx_prefill, dev, dtype,
          causal=True, packed=True, select="fused_passes"),
        p(_indexer_case, "indexer_topk_prefill_fp4_select_kernel", *idx_prefill, dev, dtype,
          causal=True, packed=True, select="triton"),
        p(_indexer_case, "indexer_topk_decode_fp4_merge", 1, ctx // 4, dev, dtype, packed=True,
          path="merge"),
        p(_indexer_case, "indexer_topk_decode_fp4_passes", 1, ctx // 4, dev, dtype,
          packed=True, select="fused_passes"),
        p(_indexer_case, "indexer_topk_decode_fp4_parallel", 1, ctx // 4, dev, dtype,
          packed=True, select="parallel"),
        p(_indexer_case, "indexer_topk_decode_fp4_select_kernel", 1, ctx // 4, dev, dtype,
          packed=True, select="triton"),
        p(_indexer_case, "indexer_topk_decode_fp4_torch_select", 1, ctx // 4, dev, dtype,
          packed=True, select="torch"),
        p(_indexer_case, "indexer_topk_decode_fp4_pairs", 1, ctx // 4, dev, dtype, packed=True,
          pairs=True),
        p(_indexer_case, "indexer_topk_decode_fp4_parallel_pairs", 1, ctx // 4, dev, dtype,
          packed=True, select="parallel", pairs=True),
        p(_indexer_case, "indexer_topk_prefill_fp4_pairs", *idx_prefill, dev, dtype,
          causal=True, packed=True, pairs=True),
        # the FP4 keys up-converted to bf16 once, then the bf16 keys' kernel (two programs an
        # SM, 427 instructions a key tile, where the FP4 decode takes one and 1,305)
        p(_indexer_case, "indexer_topk_prefill_fp4_upconvert", *idx_prefill, dev, dtype,
          causal=True, packed=True, upconvert=True),
        p(_batch_case, "indexer_attn_decode_csa_batch8", 8, ctx // 4, dev, dtype),
        p(_batch_case, "indexer_attn_decode_csa_batch8_parallel", 8, ctx // 4, dev, dtype,
          "parallel"),
        p(_batch_case, "indexer_attn_decode_csa_batch8_torch_select", 8, ctx // 4, dev, dtype,
          "torch"),
        p(_batch_case, "indexer_attn_decode_csa_batch8_parallel_pairs", 8, ctx // 4, dev, dtype,
          "parallel", pairs=True),
        p(_append_case, "append_rows_decode_csa_batch8", 8, dev, dtype),
        p(_insert_rows_case, "compress_insert_decode_batch8", 8, dev),
        p(_fp4_case, "fp4_expert_gemm_w13_decode", 1, 2048, 4096, dev, dtype),
        p(_fp4_case, "fp4_expert_gemm_w2_decode", 1, 4096, 2048, dev, dtype),
        p(_fp4_case, "fp4_expert_gemm_w13_decode_mma", 1, 2048, 4096, dev, dtype, True),
        p(_fp4_case, "fp4_expert_gemm_w2_decode_mma", 1, 4096, 2048, dev, dtype, True),
        # K split by the old rule, not the compiled kernel's residency (the w13 MMA's 512
        # programs at 3 an SM were 1.29 rounds)
        p(_fp4_case, "fp4_expert_gemm_w13_decode_target", 1, 2048, 4096, dev, dtype,
          rounds=False),
        p(_fp4_case, "fp4_expert_gemm_w13_decode_mma_target", 1, 2048, 4096, dev, dtype, True,
          rounds=False),
        p(_fp4_case, "fp4_expert_gemm_w13_prefill", 256 if gpu else 16, 2048, 4096, dev, dtype),
        p(_fp8_case, "fp8_gemm_wq_b_decode", 1, 32768 if full else 4096, 1024, dev, dtype),
        p(_fp8_case, "fp8_gemm_wo_b_prefill", 512 if gpu else 16, 4096, 8192, dev, dtype),
        p(_fp8_case, "fp8_gemm_shared_w2_swiglu_decode", 1, 4096, 2048, dev, dtype, "swiglu"),
        p(_fp8_case, "fp8_gemm_q_proj_norm_decode", 1, 40960 if full else 8192, 1024, dev, dtype,
          "norm"),
        # 1,280 tiles of 32 rows, two rounds of the SMs (at full size the default is 640 of 64)
        p(_fp8_case, "fp8_gemm_q_proj_norm_decode_n32", 1, 40960 if full else 8192, 1024, dev,
          dtype, "norm", block_n=32),
        p(_fp8_case, "fp8_gemm_wo_b_splitk_decode", 1, 4096 if full else 1024, 8192, dev, dtype,
          "splitk"),
        # one program a tile over all of K (before session 18; the fp8_gemm_decode choice)
        p(_fp8_case, "fp8_gemm_shared_w2_swiglu_decode_whole_k", 1, 4096, 2048, dev, dtype,
          "swiglu", k_splits=False),
        p(_fp8_case, "fp8_gemm_wo_b_splitk_decode_whole_k", 1, 4096 if full else 1024, 8192, dev,
          dtype, "splitk", k_splits=False),
        # the old rule's splits, about 1,024 programs (before session 20): wo_b's at 6 an SM and
        # w2's at 7 take two rounds of the SMs where the residency's take one
        p(_fp8_case, "fp8_gemm_shared_w2_swiglu_decode_target", 1, 4096, 2048, dev, dtype,
          "swiglu", rounds=False),
        p(_fp8_case, "fp8_gemm_wo_b_splitk_decode_target", 1, 4096 if full else 1024, 8192, dev,
          dtype, "splitk", rounds=False),
        # a one-row decode's activation side on all 16 rows of the MMA tile (before session 20)
        p(_fp8_case, "fp8_gemm_wo_b_splitk_decode_16_rows", 1, 4096 if full else 1024, 8192,
          dev, dtype, "splitk", one_row=False),
        p(_fp8_case, "fp8_gemm_shared_w2_swiglu_decode_16_rows", 1, 4096, 2048, dev, dtype,
          "swiglu", one_row=False),
        p(_fp8_case, "fp8_gemm_q_proj_norm_decode_16_rows", 1, 40960 if full else 8192, 1024,
          dev, dtype, "norm", one_row=False),
        # attention's wq_a and wkv stacked: 48 tiles of 32 K blocks (report only)
        p(_fp8_case, "fp8_gemm_x_proj_decode", 1, 1536, 4096, dev, dtype),
        p(_fp8_case, "fp8_gemm_x_proj_decode_whole_k", 1, 1536, 4096, dev, dtype,
          k_splits=False),
        p(_moe_case, "moe_fp4_decode", 1, dev, dtype, **moe_dims),
        # its four kernels, each launched to overlap the one before it (launch.pdl)
        p(_overlapped, "moe_fp4_decode_pdl", _moe_case, 1, dev, dtype, **moe_dims),
        p(_moe_case, "moe_fp4_decode_native", 1, dev, dtype, **moe_dims, native=True),
        # decode GEMV tiles with more programs / warps in flight (launch choices)
        p(_moe_case, "moe_fp4_decode_n16_w8", 1, dev, dtype, **moe_dims, block_n=16,
          num_warps=8),
        p(_moe_case, "moe_fp4_decode_k64_w8", 1, dev, dtype, **moe_dims, block_k=64,
          num_warps=8),
        p(_moe_case, "moe_fp4_decode_native_n16_w8", 1, dev, dtype, **moe_dims, native=True,
          block_n=16, num_warps=8),
        # the GEMV asking for the next tile's bytes before its own arithmetic
        p(_moe_case, "moe_fp4_decode_ahead", 1, dev, dtype, **moe_dims, ahead=True),
        p(_moe_case, "moe_fp4_decode_native_ahead", 1, dev, dtype, **moe_dims, native=True,
          ahead=True),
        # the decode GEMVs on tensor cores: 2 bf16 weights decoded a register
        p(_moe_case, "moe_fp4_decode_mma", 1, dev, dtype, **moe_dims, mma=True, block_n=128),
        p(_moe_case, "moe_fp4_decode_mma_n64", 1, dev, dtype, **moe_dims, mma=True, block_n=64),
        # the SwiGLU epilogue and the combine in launches of their own (before session 19; now
        # the GEMVs' last programs run them)
        p(_moe_case, "moe_fp4_decode_finish_kernel", 1, dev, dtype, **moe_dims,
          finish="kernel"),
        p(_moe_case, "moe_fp4_decode_native_finish_kernel", 1, dev, dtype, **moe_dims,
          native=True, finish="kernel"),
        # the K splits of the old rule, not each GEMV's compiled residency
        p(_moe_case, "moe_fp4_decode_target", 1, dev, dtype, **moe_dims, rounds=False),
        p(_moe_case, "moe_fp4_decode_native_target", 1, dev, dtype, **moe_dims, native=True,
          rounds=False),
        p(_moe_case, "moe_fp4_decode_native_mma", 1, dev, dtype, **moe_dims, native=True,
          mma=True, block_n=128),
        p(_moe_case, "moe_fp4_prefill", 256 if gpu else 4, dev, dtype, **moe_dims),
        # 64-row expert tiles (Hopper warp-group MMA) for a 2048-token chunk (≈ 48 rows/expert)
        p(_moe_case, "moe_fp4_prefill_2048", 2048 if gpu else 4, dev, dtype, **moe_dims),
        p(_moe_case, "moe_fp4_prefill_m64", 2048 if gpu else 4, dev, dtype, **moe_dims,
          block_m=64),
        # the grouped GEMM's tiles from the tensor-core decoder (2 bf16 weights a register)
        p(_moe_case, "moe_fp4_prefill_mma", 2048 if gpu else 4, dev, dtype, **moe_dims,
          mma=True),
        p(_moe_case, "moe_fp4_prefill_m64_mma", 2048 if gpu else 4, dev, dtype, **moe_dims,
          block_m=64, mma=True),
        # wider weight tiles: the decoder's per-step work over more rows (SASS: 5.8 → 3.7
        # instructions a weight at 128 rows)
        p(_moe_case, "moe_fp4_prefill_mma_n128", 2048 if gpu else 4, dev, dtype, **moe_dims,
          mma=True, group_n=128),
        p(_moe_case, "moe_fp4_prefill_m64_mma_n64", 2048 if gpu else 4, dev, dtype, **moe_dims,
          block_m=64, mma=True, group_n=64),
        p(_mhc_case, "mhc_pre_decode", 1, dev, dtype),
        # the finish in a launch of its own (launch choice)
        p(_mhc_case, "mhc_pre_decode_finish_kernel", 1, dev, dtype, finish="kernel"),
        p(_mhc_case, "mhc_pre_prefill", 2048 if gpu or full else 128, dev, dtype),
        p(_compressor_case, "compressor_csa_prefill", 512 if gpu else 64, 4, dev),
        p(_compressor_case, "compressor_csa_decode", 1, 4, dev),
        p(_compressor_case, "compressor_hca_prefill", 16 if gpu else 4, 128, dev),
        p(_compressor_case, "compressor_index_prefill", 512 if gpu else 64, 4, dev, d=128,
          index_keys=True),
        p(_router_case, "router_decode", 1, dev, dtype),
        # one program per token streaming all 2 MB (launch choice)
        p(_router_case, "router_decode_fused", 1, dev, dtype, split=False),
        p(_router_case, "router_prefill", 2048 if full else 64, dev, dtype),
        p(_rms_norm_case, "rms_norm_decode", 1, dev, dtype),
        # the per-launch floor of a chain of tiny kernels, and with each launch overlapping the
        # one before it (launch.pdl)
        p(_norm_chain_case, "norm_chain_decode", dev, dtype),
        p(_overlapped, "norm_chain_decode_pdl", _norm_chain_case, dev, dtype),
        p(_rms_norm_case, "rms_norm_prefill", 2048 if gpu or full else 256, dev, dtype),
        p(_rope_case, "rope_decode", 1, dev, dtype),
        p(_norm_rope_rows_case, "norm_rope_queries_decode", 1, dev, dtype, "queries"),
        p(_norm_rope_rows_case, "norm_rope_kv_fp8_decode", 1, dev, dtype, "kv"),
        p(_norm_rope_rows_case, "norm_rope_kv_fp8_prefill", 2048 if gpu else 64, dev, dtype, "kv"),
        p(_norm_rope_rows_case, "rope_rotate_index_queries_decode", 1, dev, dtype,
          "index_queries"),
        p(_swiglu_case, "swiglu_shared_decode", 1, dev, dtype),
        p(_pool_inputs_case, "pool_inputs_csa_decode", 1, dev),
        *_gemv_cases(full, dev, dtype),
        p(_act_quant_case, "fp8_act_quant_decode", 1, dev, dtype),
        p(_mhc_post_case, "mhc_post_decode", 1, dev, dtype),
        p(_mhc_post_pre_case, "mhc_post_pre_decode", 1, dev, dtype),
        p(_mhc_post_pre_case, "mhc_post_pre_decode_finish_kernel", 1, dev, dtype,
          finish="kernel"),
    ]


def case_name(build: partial[Case]) -> str:
    """A builder's case name (the row's ``kernel``) without building the case."""
    return build.args[0]


def select(builds: list[partial[Case]], names: Collection[str]) -> list[partial[Case]]:
    """The builders of the cases named ``names``, in bench order; a name that is no case is a
    ValueError (kernel choices name their rows: model/kernels/choices.py)."""
    unknown = sorted(set(names) - {case_name(b) for b in builds})
    if unknown:
        raise ValueError(f"no `bench kernels` case named {', '.join(unknown)}")
    return [b for b in builds if case_name(b) in names]


def _time(fn: Callable[[], object], dev: str, budget_s: float = 0.3) -> float:
    """Median seconds per call (CUDA events on a GPU), after one warm-up call."""
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    least = 3 if dev == "cuda" else 2
    while len(times) < least or (time.perf_counter() < deadline and len(times) < 200):
        if dev == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _time_graph(fn: Callable[[], object], copies: int = GRAPH_COPIES) -> float:
    """Median seconds per call with ``copies`` calls captured into one CUDA graph and replayed.

    ``_time`` measures a Python call, so a small decode kernel's time is mostly host overhead (on
    the H200 sparse attention decode took 0.177 ms per call for 0.024 ms of kernel). The engine
    runs decode steps as CUDA graphs, where that overhead is gone: this is the time that counts
    there. Several copies in one graph spread the graph's own launch over them. Raises what the
    capture raises (e.g. a call that syncs with the host), with the current stream restored.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):  # exited (stream restored) even when capture_end raises
        graph.capture_begin()
        try:
            for _ in range(copies):
                fn()
        except Exception:
            with contextlib.suppress(Exception):
                graph.capture_end()  # leave capture mode; report the call's own error
            raise
        graph.capture_end()
    return _time(graph.replay, "cuda") / copies


def kernel_launches(fn: Callable[[], object]) -> int:
    """Kernels one call launches: torch ops that launch one plus Triton launches
    (model/op_audit.py); the same count on any machine."""
    from model.op_audit import OpAudit

    with OpAudit() as audit:
        fn()
    return audit.launches()


def _graph_node_s(nodes: int = 200) -> float:
    """Seconds the GPU spends per kernel replayed from a CUDA graph when the kernel does nothing
    (a one-element add, ``nodes`` of them in one graph). × a call's ``launches`` = the time no
    tuning of that call's kernels gets below: the floor batch-1 decode rows are read against."""
    x = torch.zeros(1, device="cuda")
    return _time_graph(lambda: x.add_(1), copies=nodes)


def _fractions(case: Case, seconds: float, peaks: tuple[float, float] | None) -> dict:
    """Fractions of the device's peak HBM bandwidth and dense bf16 FLOP/s at ``seconds`` per call
    (none without known peaks)."""
    if peaks is None:
        return {}
    return {"hbm_fraction": case.bytes / seconds / peaks[0],
            "bf16_peak_fraction": case.flops / seconds / peaks[1]}


def _graph_fields(case: Case, peaks: tuple[float, float] | None) -> dict:
    """The ``graph_*`` fields of a GPU row; a capture that fails is reported, not raised."""
    try:
        graph_s = _time_graph(case.triton)
    except Exception as e:  # any failure: the row says so and the bench goes on
        error = one_line(e)[:200]
        return {"graph_ms": None, "graph_error": error}
    finally:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return {"graph_ms": graph_s * 1e3, "graph_gbps": case.bytes / graph_s / 1e9,
            **{f"graph_{k}": v for k, v in _fractions(case, graph_s, peaks).items()}}


def _first(x: object) -> torch.Tensor:
    """The output compared: a tuple's first; a list's tensors one after another, as values when
    all are floats, else as their bytes (``bytes_equal_fraction``: packed rows)."""
    if isinstance(x, list):
        if all(t.is_floating_point() for t in x):
            return torch.cat([t.reshape(-1).float() for t in x])
        return torch.cat([t.reshape(-1).view(torch.uint8) for t in x])
    return x[0] if isinstance(x, tuple) else x  # type: ignore[index,return-value]


def _error(got: torch.Tensor, want: torch.Tensor) -> dict:
    if got.dtype == torch.uint8:   # packed rows (FP8 / FP4 codes, scale bytes, bf16 halves): a
        # one-step rounding difference moves a byte arbitrarily far, so count equal bytes
        return {"bytes_equal_fraction": (got == want).float().mean().item()}
    if got.dtype in (torch.int32, torch.int64):  # top-k picks: fraction of the same rows chosen
        same = sum(len(set(a) & set(b)) for a, b in zip(got.flatten(0, -2).tolist(),
                                                        want.flatten(0, -2).tolist(), strict=True))
        return {"topk_recall": same / max(1, want.numel())}
    diff = (got.float() - want.float()).abs().max().item()
    return {"max_abs_err": diff, "max_rel_err": diff / max(want.float().abs().max().item(), 1e-30)}


def run_case(case: Case, dev: str, peaks: tuple[float, float] | None) -> dict:
    ref_s = _time(case.reference, dev)
    row: dict = {"kernel": case.name, "device": dev, "shape": case.shape, "bytes": case.bytes,
                 "flops": case.flops, "reference_ms": ref_s * 1e3, "target": case.target}
    if dev != "cuda":
        row.update(backend="reference", note="CPU: no GPU here, reference path only; "
                   "Triton kernels are checked under TRITON_INTERPRET=1 by tests/kernels",
                   achieved_gbps=case.bytes / ref_s / 1e9, achieved_tflops=case.flops / ref_s / 1e12)
        return row
    tri_s = _time(case.triton, dev)
    row.update(backend="triton", time_ms=tri_s * 1e3, speedup_vs_reference=ref_s / tri_s,
               achieved_gbps=case.bytes / tri_s / 1e9, achieved_tflops=case.flops / tri_s / 1e12)
    row.update(_error(_first(case.triton()), _first(case.reference())))
    row.update(_fractions(case, tri_s, peaks))
    row["launches"] = kernel_launches(case.triton)
    row.update(_graph_fields(case, peaks))
    return row


class DeviceLost(RuntimeError):
    """A case left the GPU unusable (e.g. an illegal address): later cases in this process would
    only repeat the error, so the run stops; ``--start`` resumes after the case in a new one."""


def _error_row(name: str, dev: str, exc: BaseException) -> dict:
    return {"kernel": name, "device": dev, "error": one_line(exc)[:300]}


def _device_usable() -> bool:
    try:
        torch.cuda.synchronize()
        torch.empty(1, device="cuda").add_(1).item()
    except Exception:
        return False
    return True


def bench_kernels(full_size: bool, on_row: Callable[[dict], None] | None = None,
                  names: Collection[str] | None = None, start: int = 0) -> list[dict]:
    """One dict per kernel (also passed to ``on_row`` as soon as it is measured); ``names``:
    only those cases (``bench choices --measure``); ``start``: from that case on (a run resumed
    after a case lost the device). A case that raises gets a row with its one-line ``error``;
    if the GPU is unusable after it, DeviceLost is raised after that row."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    builds = cases(full_size or dev == "cuda", dev)
    if names is not None:
        builds = select(builds, names)
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    peaks = next((p for key, p in PEAKS.items() if key in name), None)
    torch.manual_seed(0)
    node_s = None
    if dev == "cuda":
        try:
            node_s = _graph_node_s()
        except Exception as e:  # no floor then; the rows still run
            print(f"v4coder bench kernels: no graph-node calibration ({one_line(e)})",
                  file=sys.stderr)
    rows = []
    for build in builds[start:]:
        try:
            row = run_case(build(), dev, peaks)
        except Exception as e:  # the row says so; the bench goes on while the device works
            row = _error_row(case_name(build), dev, e)
        if dev == "cuda":
            if "error" not in row:
                torch.cuda.empty_cache()
            if node_s is not None and row.get("graph_ms"):
                row["graph_node_us"] = node_s * 1e6
                row["launch_floor_ms"] = row["launches"] * node_s * 1e3
        row["device_name"] = name
        rows.append(row)
        if on_row is not None:
            on_row(row)
        if "error" in row and dev == "cuda" and not _device_usable():
            raise DeviceLost(f"the GPU is unusable after {row['kernel']}: {row['error']}")
    return rows


def warm(shard: int, shards: int) -> int:
    """Run every ``shards``-th case's Triton path once, from case ``shard``, untimed: ``shards``
    such processes side by side fill Triton's compile cache (TRITON_CACHE_DIR) for the timed run,
    which then loads each kernel instead of compiling it. One line per case: ``warm NAME SECONDS``
    or ``warm-failed NAME ERROR``. Returns how many failed."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    failed = 0
    for build in cases(True, dev)[shard::shards]:
        t0 = time.perf_counter()
        try:
            build().triton()
            if dev == "cuda":
                torch.cuda.synchronize()
            print(f"warm {case_name(build)} {time.perf_counter() - t0:.1f}", flush=True)
        except Exception as e:
            failed += 1
            print(f"warm-failed {case_name(build)} {one_line(e)[:300]}", flush=True)
            if dev == "cuda" and not _device_usable():
                return failed + 1
    return failed


def _case_index(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a case index (0, 1, ...)")
    return int(text)


def _shard(text: str) -> tuple[int, int]:
    try:
        shard, shards = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N") from None
    if not 0 <= shard < shards:
        raise argparse.ArgumentTypeError(f"{text!r}: I must be in 0..N-1")
    return shard, shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="v4coder bench kernels", description=__doc__)
    parser.add_argument("--full-size", action="store_true",
                        help="V4-Flash shapes (128K context) even without a GPU (slow on CPU)")
    parser.add_argument("--start", type=_case_index, default=0, metavar="N",
                        help="from case N on (0-based): resume after a case that lost the GPU")
    parser.add_argument("--warm", type=_shard, metavar="I/N",
                        help="no timing: run cases I, I+N, ... once each to fill Triton's "
                        "compile cache (N such processes in parallel before the timed run)")
    args = parser.parse_args(argv)
    if args.warm:
        return 1 if warm(*args.warm) else 0
    try:
        bench_kernels(args.full_size, on_row=lambda row: print(json.dumps(row), flush=True),
                      start=args.start)
    except DeviceLost as e:
        print(f"v4coder bench kernels: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
