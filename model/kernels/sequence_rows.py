"""A decode step of several sequences: one launch for all of them, each query over its own rows.

A ragged batch runs as one row of tokens (b = 1). At a decode step token t is sequence t's one
new token, and its cache's rows are its own tensors: the window's rows (the past ones and the
new one), the compressed rows in their store and, on CSA layers, the indexer's keys in theirs.
Per-sequence launches cost the host one launch per sequence per op per layer. Here the rows stay
where they are and a table says where: ``SequenceRows.table`` (int64 [5, T]: each sequence's
compressed rows' address and count, window rows' address and count, indexer keys' address),
copied to the device once per layer. The kernels read it in their TABLE mode
(``sparse_attn._sparse_attn_fwd``, ``indexer._indexer_scores_block``), so attention and the
indexer's scores with its pick are one launch each, whatever the batch.

Token t's window slots are the last NW_t of the layer's W (its window rows, oldest first:
``window_slots``); its compressed slots are the indexer's picks (CSA) or all its N_t rows
(HCA); a sliding-window layer has none. The references run each sequence through the
per-sequence references, exactly as ``Attention`` did before: they are the contract.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton

from model.kernels import indexer as _indexer
from model.kernels import sparse_attn as _sparse_attn
from model.kernels.fp4_keys import key_rows_aligned
from model.kernels.kv_fp8 import KVLayout
from model.kernels.launch import address, counting, device_table
from model.kernels.sparse_attn import WindowRows


@dataclass(frozen=True)
class SequenceRows:
    """Per token t of a decode step: its window rows ``windows[t]`` [1, NW_t, row] (newest
    last; NW_t ≤ ``window``), its compressed rows ``stores[t]`` [1, ≥ counts[t], row] (None on
    a sliding-window layer) and, on CSA layers, its indexer keys ``keys[t]`` [1, ≥ counts[t],
    key row]. Rows are float [.., d] or packed (uint8), as the cache holds them."""
    windows: tuple[torch.Tensor, ...]
    stores: tuple[torch.Tensor | None, ...]
    counts: tuple[int, ...]
    window: int
    keys: tuple[torch.Tensor, ...] | None = None

    @functools.cached_property
    def table(self) -> torch.Tensor:
        """int64 [5, T] on the rows' device: compressed rows' address, their count, window
        rows' address, their count, indexer keys' address (0 where there are none). Made once
        (one host → device copy, which the host does not wait for), read by every TABLE-mode
        launch of the step's layer."""
        t = len(self.windows)
        stores = [address(s) for s in self.stores]
        keys = [address(k) for k in self.keys] if self.keys is not None else [0] * t
        rows = [stores, list(self.counts), [address(w) for w in self.windows],
                [w.shape[1] for w in self.windows], keys]
        return device_table(rows, self.windows[0].device)


@functools.lru_cache(maxsize=64)
def window_slots(window: int, rows: int, device: torch.device) -> torch.Tensor:
    """[1, 1, window]: a decode token's window slots as indices into its window's ``rows``
    rows — the last ``rows`` slots, oldest first, −1 before them. Kept (read-only): every
    sequence past its first window asks for the same one, step after step."""
    slots = torch.arange(window, device=device) - (window - rows)
    return torch.where(slots >= 0, slots, -1).view(1, 1, window)


# -- attention --------------------------------------------------------------------------------
def sparse_attn_rows_reference(q: torch.Tensor, rows: SequenceRows, sink: torch.Tensor,
                               picks: torch.Tensor | None, scale: float,
                               layout: KVLayout | None, unrope: torch.Tensor,
                               out: torch.Tensor | None = None) -> torch.Tensor:
    """q [1, T, h, d] → o [1, T, h, d] (into ``out`` when given): token t over its window slots
    and its compressed slots — ``picks`` [1, T, K] (−1 = none) or, None, all its rows — each
    sequence through ``sparse_attn(_fp8)_reference``, as the per-sequence path calls it."""
    def attend(q_t, kv, indices, window, angles, dest):
        if layout is None:
            o, _ = _sparse_attn.sparse_attn_reference(q_t, kv, sink, indices, scale, window,
                                                      angles)
        else:
            o, _ = _sparse_attn.sparse_attn_fp8_reference(q_t, kv, sink, indices, scale, layout,
                                                          window, angles)
        dest.copy_(o)

    return _each_token(q, rows, picks, unrope, out, attend)


def _each_token(q, rows, picks, unrope, out, attend) -> torch.Tensor:
    """``attend(q_t, kv, indices, window, angles, dest)`` for each token t over its own
    sources (``_token_sources``), its output into ``out``'s token t: the reference, and the
    Triton path's per-sequence fallback."""
    out = torch.empty_like(q) if out is None else out
    for t in range(q.shape[1]):
        kv, indices, window = _token_sources(rows, t, picks, q.device)
        attend(q[:, t:t + 1], kv, indices, window, unrope[t:t + 1], out[:, t:t + 1])
    return out


def _token_sources(rows: SequenceRows, t: int, picks: torch.Tensor | None,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, WindowRows | None]:
    """Token t's rows as the per-sequence attention takes them: (kv, indices [1, 1, k],
    window) — a sliding-window layer's window is its kv."""
    win = rows.windows[t]
    slots = window_slots(rows.window, win.shape[1], device)
    store = rows.stores[t]
    if store is None:
        return win, slots, None
    n = rows.counts[t]
    # the picks of a token's ≤ n rows: no −1 columns past them (the per-sequence call's k)
    indices = (picks[:, t:t + 1, :n] if picks is not None else
               counting(n, device).view(1, 1, n))
    return store[:, :n], indices, WindowRows(win, slots[0])


def sparse_attn_rows_triton(q: torch.Tensor, rows: SequenceRows, sink: torch.Tensor,
                            picks: torch.Tensor | None, scale: float,
                            layout: KVLayout | None, unrope: torch.Tensor,
                            out: torch.Tensor | None = None, n_splits: int | None = None,
                            block_n: int = 16, combine: str = "fused", dv_parts: int = 1,
                            fp8_pairs: bool = False, qk_split: int = 1) -> torch.Tensor:
    """Same contract as ``sparse_attn_rows_reference``: one launch (the forward, its splits
    merged in it) for every token, each reading its own rows through ``rows.table``. Float rows
    must be in the kernel's compute dtype (fp32 under the interpreter); when they are not, the
    tokens go one by one through ``sparse_attn_triton``. ``combine`` / ``dv_parts`` /
    ``fp8_pairs`` / ``qk_split``: as ``sparse_attn_triton``'s (launch choices)."""
    q, out_dtype = _sparse_attn._compute_queries(q)
    first = rows.windows[0]
    if layout is None and first.dtype != q.dtype:
        tiles = dict(combine=combine, dv_parts=dv_parts, fp8_pairs=fp8_pairs, qk_split=qk_split)
        return _each_token(q.to(out_dtype), rows, picks, unrope, out, functools.partial(
            _per_sequence_triton, sink, scale, layout, tiles))
    d = q.shape[-1]
    kv, kv16, _ = _sparse_attn._rows(first, q.dtype, layout, d)
    table = rows.table
    compressed = rows.stores[0] is not None
    if picks is None:   # all rows (HCA) or none (a sliding-window layer)
        k = max(rows.counts) if compressed else 0
        idx = table
    else:
        idx = _sparse_attn._index_tensor(picks)
        k = idx.shape[-1]
    sizes = (0, k, 0, rows.window, 0)
    aligned = all(t.data_ptr() % 16 == 0 for t in (*rows.windows, *rows.stores)
                  if t is not None)
    return _sparse_attn._launch(q, out_dtype, (kv, kv16, kv, kv16, idx, idx), sizes, sink,
                                scale, layout, unrope, out, table, compressed and picks is None,
                                n_splits, 16, block_n, dv_parts, 4, combine,
                                table_aligned=aligned, fp8_pairs=fp8_pairs,
                                qk_split=qk_split)[0]


def _per_sequence_triton(sink, scale, layout, tiles, q_t, kv, indices, window, angles,
                         dest) -> None:
    """One token through ``sparse_attn_triton`` with the launch options ``tiles`` (the fallback
    for rows TABLE mode cannot read as they are), stored in ``dest``."""
    _sparse_attn.sparse_attn_triton(q_t, kv, sink, indices, scale, layout, window, angles, dest,
                                    **tiles)


# -- the indexer's picks ----------------------------------------------------------------------
def indexer_topk_rows_reference(q: torch.Tensor, weights: torch.Tensor, rows: SequenceRows,
                                k: int) -> torch.Tensor:
    """q [1, T, H, D], weights [1, T, H] → int64 [1, T, k]: token t's best k of its
    sequence's counts[t] keys (every one visible: a decode step), best first, −1 = none."""
    return _each_sequence(q, weights, rows, k, _indexer.indexer_topk_reference)


def _each_sequence(q, weights, rows, k, topk) -> torch.Tensor:
    """Token t's picks by ``topk(q_t, weights_t, its keys, visible, k)``, one sequence at a
    time (the reference, and the Triton path's fallback)."""
    out = torch.full((1, q.shape[1], k), -1, dtype=torch.long, device=q.device)
    for t, n in enumerate(rows.counts):
        if n and k:
            visible = torch.full((1,), n, dtype=torch.long, device=q.device)
            out[:, t:t + 1] = topk(q[:, t:t + 1], weights[:, t:t + 1], rows.keys[t][:, :n],
                                   visible, k)
    return out


def indexer_topk_rows_triton(q: torch.Tensor, weights: torch.Tensor, rows: SequenceRows,
                             k: int, block_n: int = 128, select: str = "fused",
                             pairs: bool = False) -> torch.Tensor:
    """Same contract as ``indexer_topk_rows_reference``: one launch over every token's own keys
    (TABLE mode) that scores them and picks each row's best, up to its own count (PICK) — per
    block of tokens whose scores fit ``indexer.PREFILL_SCRATCH_BYTES``, one block unless the
    batch is large and the context long. Float keys in another dtype than the kernel's go one
    token at a time. ``select``: as ``indexer_topk_triton``'s — "fused" (the default), or the
    pick after the scores launch: ``topk_select`` ("triton") or torch.topk ("torch"); ``pairs``:
    packed keys decoded two codes a register (``indexer_topk_triton``'s)."""
    _indexer.check_select(select)
    t_count = q.shape[1]
    width = max(rows.counts)
    if k == 0 or width == 0:
        return torch.full((1, t_count, k), -1, dtype=torch.long, device=q.device)
    first = rows.keys[0]
    table = rows.table
    counts = table[1]
    qc, weights_c, keys, _, prec = _indexer._kernel_inputs(q, weights, first, counts)
    if first.dtype != torch.uint8 and first.dtype != qc.dtype:
        return _each_sequence(q, weights, rows, k, functools.partial(
            _indexer.indexer_topk_triton, causal=False))
    out = torch.empty((1, t_count, k), dtype=torch.long, device=q.device)   # the picks fill it
    block_n = max(16, triton.next_power_of_2(block_n))
    # the scratch of a block of tokens is bounded as the prefill's is (one block but for a
    # large batch at long context)
    rows_per_block = _indexer._prefill_query_rows(1, t_count, width, 1)
    aligned = all(key_rows_aligned(keys_t) for keys_t in rows.keys)
    scratch = torch.empty(min(t_count, rows_per_block) * width, dtype=torch.float32,
                          device=q.device)
    for lo in range(0, t_count, rows_per_block):
        hi = min(t_count, lo + rows_per_block)
        scores = scratch[: (hi - lo) * width].view(1, hi - lo, width)
        _indexer.scores_and_picks(qc, weights_c, keys, counts, scores, lo, hi, prec, 1,
                                  block_n, out, k, select, pairs=pairs, table=table[4],
                                  keys_aligned=aligned)
    return out
