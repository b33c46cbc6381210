"""Per-sequence decode state (fact sheet §2.4, §2.9): for every layer the sliding-window KV,
the compressor's not-yet-compressed tail (and, for CSA, the previous block's overlap half), the
compressed rows, and for CSA layers the indexer's own compressor state and compressed keys.

Feeding a sequence in any split of chunks (one prefill, token by token, or chunked prefill)
through the same ``SequenceCache`` gives the same logits as one full prefill.

Row format of the attention KV (``LayerCache.window`` and the main ``compressor.rows``):

- ``native`` numerics: packed FP8 rows, uint8 [b, n, layout.row_bytes] in the layout of
  ``kv_layout(cfg)`` (model/kernels/kv_fp8.py: e4m3 no-RoPE dims + bf16 RoPE dims + ue8m0
  scales; 584 B at V4's head_dim 512 / rope 64, 200 B at the toy's 128 / 64), read directly by
  ``ops.sparse_attn(..., layout=)``. Lossless: native numerics already round these rows to
  exactly what the layout holds (e4m3 × power-of-two per 1×64 block, RoPE dims bf16).
- ``dequant`` numerics: float rows [b, n, head_dim] in the compute dtype.

Row format of the indexer keys (``LayerCache.indexer`` rows, CSA layers):

- ``native`` numerics: packed FP4 rows, uint8 [b, n, layout.row_bytes] in the layout of
  ``index_key_layout(cfg)`` (model/kernels/fp4_keys.py: e2m1 codes two per byte + one ue8m0
  exponent per 1×32 block; 68 B at index_head_dim 128), read directly by ``ops.indexer_topk``.
  Lossless: the native indexer compressor already rounds its keys to those values.
- ``dequant`` numerics: float rows [b, n, index_head_dim] in the compute dtype.

The compressor tails (pending / previous block, kv and score) stay fp32 in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from model.config import ModelConfig
from model.kernels.append_rows import append_rows_reference
from model.kernels.fp4_keys import INDEX_KEY_BLOCK, IndexKeyLayout
from model.kernels.kv_fp8 import KV_QUANT_BLOCK, KVLayout


def kv_layout(cfg: ModelConfig) -> KVLayout:
    """The FP8 row layout of this config's attention KV rows (derived, never hard-coded)."""
    return KVLayout(cfg.head_dim, cfg.rope_head_dim, KV_QUANT_BLOCK)


def index_key_layout(cfg: ModelConfig) -> IndexKeyLayout:
    """The packed FP4 row layout of this config's indexer keys (from index_head_dim)."""
    return IndexKeyLayout(cfg.index_head_dim, INDEX_KEY_BLOCK)


# a store grows with at least this many rows of room: a decode step that closes a block would
# otherwise copy a young store's rows (or a prefill's, sized exactly) every few blocks (64 V4
# KV rows: 37 KB)
STORE_GROWTH_ROWS = 64


@dataclass(slots=True)
class CompressorState:
    # [b, r < ratio, 2, coff·d] fp32, tail of the open block: kv and gate logits (ape added)
    pending: torch.Tensor | None = None
    prev_kv: torch.Tensor | None = None        # [b, ratio, coff·d] last closed block (CSA overlap)
    prev_score: torch.Tensor | None = None
    # the compressed entries so far are store[:, :count] ([b, n, d], or packed uint8 rows); the
    # store has room to grow (appends are amortised, never a copy of every row per chunk).
    # Attention reads them where they are, beside the window's rows (sparse_attn.WindowRows)
    store: torch.Tensor | None = None
    count: int = 0
    # when a list, forward appends (kv, score, first position) of the open + new tokens
    # (the prefix cache reads block-boundary state from it); None = off
    tap: list[tuple[torch.Tensor, torch.Tensor, int]] | None = None
    # [b, ratio, 2, coff·d]: the open block's rows and room for the rest of it, written only
    # past ``pending``'s end (a shallow copy is a snapshot); a block that closes leaves its
    # rows there (the overlap's ``prev`` views) and the next block starts a fresh store
    pending_store: torch.Tensor | None = None

    def join_pending(self, new: torch.Tensor, ratio: int) -> RowsJoin:
        """Where new pooling inputs [b, s, 2, coff·d] go after the open block's (``join_rows``:
        in place in its store while the block is open, one row a decode step)."""
        join, self.pending_store = join_rows(self.pending, self.pending_store, new, ratio)
        return join

    @property
    def pending_kv(self) -> torch.Tensor | None:
        """[b, r, coff·d] view: the open block's kv rows."""
        return None if self.pending is None else self.pending[:, :, 0]

    @property
    def pending_score(self) -> torch.Tensor | None:
        """[b, r, coff·d] view: the open block's gate logits."""
        return None if self.pending is None else self.pending[:, :, 1]

    @property
    def rows(self) -> torch.Tensor | None:
        """[b, count, d] view of the compressed entries (None before the first)."""
        return None if self.store is None else self.store[:, : self.count]

    @rows.setter
    def rows(self, value: torch.Tensor | None) -> None:
        self.store, self.count = value, 0 if value is None else value.shape[1]

    def num_rows(self) -> int:
        return self.count

    def reserve(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        """The store, grown to ``rows`` plus a quarter (at least STORE_GROWTH_ROWS) if it holds
        fewer than ``rows`` rows; ``like`` [b, *, d] gives batch, row shape, dtype and device for
        a first store."""
        cap = 0 if self.store is None else self.store.shape[1]
        if rows > cap:
            grown = like.new_empty(like.shape[0], rows + max(rows // 4, STORE_GROWTH_ROWS),
                                   *like.shape[2:])
            if self.count:
                grown[:, : self.count] = self.store[:, : self.count]
            self.store = grown
        return self.store

    def append(self, entries: torch.Tensor) -> torch.Tensor:
        """Add [b, n, d] entries after the current ones. → the rows view."""
        n = entries.shape[1]
        store = self.reserve(self.count + n, entries)
        store[:, self.count : self.count + n] = entries
        self.count += n
        return self.rows


def window_capacity(window: int) -> int:
    """Rows of a window's store: the window − 1 it keeps, and room for half a window more, so
    that a decode step writes its one row in place and the kept rows move to a fresh store once
    every window // 2 steps (two rows a step on average, not the whole window)."""
    return window - 1 + max(1, window // 2)


@dataclass(frozen=True, slots=True)
class RowsJoin:
    """Where a step's new rows go after a cache's kept rows (a window, a compressor's open
    block): ``dest`` receives ``past`` (None: nothing to copy) then the new rows, after which
    ``keys`` are the kept rows followed by the new ones — what this step reads."""
    past: torch.Tensor | None
    dest: torch.Tensor
    keys: torch.Tensor

    def write(self, new: torch.Tensor) -> torch.Tensor:
        """The copies, with torch (``append_rows_reference``: one sequence's step; a batch's
        decode step makes them in one launch, ``ops.append_rows``) → ``keys``."""
        append_rows_reference([(self.past, new, self.dest)])
        return self.keys


def join_rows(past: torch.Tensor | None, store: torch.Tensor | None, new: torch.Tensor,
              capacity: int) -> tuple[RowsJoin, torch.Tensor | None]:
    """Where the new rows [b, s, ...] go after ``past`` (a view of ``store``, or not): right
    past them in the store when it has room (nothing else to copy), else a fresh store of
    ``capacity`` rows with the past rows first; past and new together longer than that (a
    prefill chunk), a tensor of their own and no store. → (the join, the store now)."""
    n, s = (0 if past is None else past.shape[1]), new.shape[1]
    end = _end_in(past, store)
    if end is not None and end + s <= store.shape[1]:
        return RowsJoin(None, store[:, end:end + s], store[:, end - n:end + s]), store
    past = past if n else None   # an empty past (a closed block's): nothing to copy
    if n + s <= capacity:
        store = new.new_empty(new.shape[0], capacity, *new.shape[2:])
        return RowsJoin(past, store[:, :n + s], store[:, :n + s]), store
    dest = new.new_empty(new.shape[0], n + s, *new.shape[2:])
    return RowsJoin(past, dest, dest), None


def _end_in(view: torch.Tensor | None, store: torch.Tensor | None) -> int | None:
    """The store's row right past ``view``'s, when the view is a run of the store's rows."""
    if store is None or view is None or view.stride() != store.stride() or (
            view.untyped_storage().data_ptr() != store.untyped_storage().data_ptr()):
        return None
    first, part = divmod(view.storage_offset() - store.storage_offset(), store.stride(1))
    if part or first < 0 or first + view.shape[1] > store.shape[1]:
        return None
    return first + view.shape[1]


@dataclass(slots=True)
class LayerCache:
    # most recent raw KV rows: [b, ≤ window-1, head_dim] float, or uint8 [.., row_bytes] packed;
    # a view of window_store
    window: torch.Tensor | None = None
    compressor: CompressorState = field(default_factory=CompressorState)
    indexer: CompressorState = field(default_factory=CompressorState)
    # when a list, attention appends (past window + new raw KV rows, first position); None = off
    tap: list[tuple[torch.Tensor, int]] | None = None
    # [b, window_capacity(window), ...]: the window's rows and room past them. Written only past
    # the window's end, so a shallow copy is a snapshot (as a compressor's store); a cache whose
    # window is not a view of it (a snapshot without it, a prefix-cache copy) starts a fresh one
    window_store: torch.Tensor | None = None

    def join_window(self, new: torch.Tensor, window: int) -> RowsJoin:
        """Where the new rows [b, s, ...] go after the window's (``join_rows``: in place in
        its store while it has room)."""
        join, self.window_store = join_rows(self.window, self.window_store, new,
                                            window_capacity(window))
        return join

    def keep_window(self, keys: torch.Tensor, window: int) -> None:
        """After the step: the window is the last window − 1 rows of ``keys`` — a view, in the
        store; a prefill chunk's keys (not in a store) leave a copy of them in a fresh one."""
        kept = keys[:, max(0, keys.shape[1] - (window - 1)):]
        if self.window_store is None:
            store = self.window_store = kept.new_empty(kept.shape[0], window_capacity(window),
                                                       *kept.shape[2:])
            store[:, :kept.shape[1]] = kept
            kept = store[:, :kept.shape[1]]
        self.window = kept



@dataclass(frozen=True, slots=True)
class Span:
    """One sequence's tokens in a (ragged) batch: ``length`` tokens at positions ``start``..,
    continuing that sequence's ``cache`` of this layer. A batch of sequences runs as one row of
    concatenated tokens; only attention looks at the spans, everything else is per token."""
    start: int
    length: int
    cache: LayerCache


@dataclass(slots=True)
class SequenceCache:
    layers: list[LayerCache]
    length: int = 0  # tokens consumed so far (= start position of the next chunk)

    @classmethod
    def empty(cls, n_layers: int) -> SequenceCache:
        return cls(layers=[LayerCache() for _ in range(n_layers)])

    def nbytes(self) -> int:
        """Bytes of the state itself (the rows held, not the stores' room to grow: at most a
        quarter more than the rows, or STORE_GROWTH_ROWS)."""
        total = 0
        for layer in self.layers:
            tensors = [layer.window]
            for st in (layer.compressor, layer.indexer):
                tensors += [st.pending, st.prev_kv, st.prev_score, st.rows]
            total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
        return total
