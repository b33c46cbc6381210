"""Attention for all layer kinds (fact sheet §2.3): shared-KV MQA over a sliding window plus,
on CSA layers, indexer-picked compressed rows and, on HCA layers, every closed compressed block;
per-head attention sink; inverse RoPE on the output; grouped low-rank output projection.

KV rows (fact sheet §2.8, §4): in ``native`` numerics the sliding-window rows and the main
compressed rows are held in the FP8 cache layout (uint8, ``model.cache.kv_layout(cfg)``: 584 B
per row for V4, vs 1024 B bf16 / 2048 B fp32) and attention reads them through
``ops.sparse_attn(..., layout=)``. Native numerics round each KV row to exactly the values the
layout stores (no-RoPE dims e4m3 × power-of-two 1×64 scales, RoPE dims bf16), so the packed
cache gives the same logits as float rows of those values (``pack_kv = False``; tests/model/
test_model_packed_kv.py). ``dequant`` numerics keep float rows in the compute dtype."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from model.cache import LayerCache, Span, kv_layout
from model.config import ModelConfig
from model.kernels import ops
from model.kernels.cache_rows import RowFormat
from model.kernels.compressor import BlockInsert, HeadColumns, PoolColumns
from model.kernels.gemm import SplitK
from model.kernels.kv_fp8 import KVLayout
from model.kernels.launch import counting
from model.kernels.sequence_rows import SequenceRows
from model.kernels.sparse_attn import WindowRows
from model.layers.compressor import Compressor
from model.layers.indexer import Indexer, IndexerInputs
from model.layers.linear import Linear, Numerics, StackedLinear
from model.layers.norm import RMSNorm
from model.layers.rope import RotaryEmbedding


@dataclass(frozen=True, slots=True)
class AttentionInputs:
    """What attention's per-token projections hand its cache side, for all T tokens of a
    forward: queries [b, T, heads, head_dim] (normed, RoPE'd by ``angles`` [T, rope/2], which
    also rotate the output back), new KV rows [b, T, head_dim] as the cache holds them (uint8
    packed rows in native numerics), the compressor's (kv, score) and the indexer's inputs
    (None on layers without them)."""
    q: torch.Tensor
    kv: torch.Tensor
    pooled: torch.Tensor | None
    index: IndexerInputs | None
    angles: torch.Tensor

    def tokens(self, lo: int, hi: int) -> AttentionInputs:
        """Tokens [lo, hi) of every input (views)."""
        return AttentionInputs(self.q[:, lo:hi], self.kv[:, lo:hi],
                               None if self.pooled is None else self.pooled[:, lo:hi],
                               None if self.index is None else self.index.span(lo, hi),
                               self.angles[lo:hi])


class Attention(nn.Module):
    """In three steps, which ``Block`` runs in order: ``project`` (per token, reads no cache),
    ``attend`` (each sequence over its own cache, which it advances) and ``output`` (per token).
    A decode step captures the first and the last in CUDA graphs (model/decode_graphs.py)."""

    def __init__(self, cfg: ModelConfig, ratio: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.rope_head_dim = cfg.n_heads, cfg.head_dim, cfg.rope_head_dim
        self.nope_head_dim = cfg.nope_head_dim
        self.window, self.ratio, self.eps = cfg.window_size, ratio, cfg.norm_eps
        self.n_groups, self.o_lora_rank = cfg.o_groups, cfg.o_lora_rank
        self.register_buffer("attn_sink", torch.empty(cfg.n_heads, dtype=torch.float32, device="meta"))
        self.wq_a = Linear(cfg.dim, cfg.q_lora_rank)
        self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
        self.wq_b = Linear(cfg.q_lora_rank, cfg.n_heads * cfg.head_dim)
        self.wkv = Linear(cfg.dim, cfg.head_dim)
        self.kv_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.wo_a = Linear(cfg.n_heads * cfg.head_dim // cfg.o_groups, cfg.o_groups * cfg.o_lora_rank)
        self.wo_b = Linear(cfg.o_groups * cfg.o_lora_rank, cfg.dim)
        self.compressor = Compressor(cfg, ratio, cfg.head_dim) if ratio else None
        self.indexer = Indexer(cfg, ratio) if ratio == 4 else None
        # siblings that read the same input run as one GEMM each (StackedLinear): the
        # projections of x, the query up-projections of qr, the pooling inputs of x
        self.x_proj = StackedLinear(self.wq_a, self.wkv)
        self.q_proj = StackedLinear(self.wq_b, *([self.indexer.wq_b] if self.indexer else []))
        self.pool_proj = StackedLinear(*(
            ([self.compressor.wkv, self.compressor.wgate] if self.compressor else [])
            + ([self.indexer.weights_proj, self.indexer.compressor.wkv,
                self.indexer.compressor.wgate] if self.indexer else [])))
        self.rope = RotaryEmbedding(cfg, compressed=bool(ratio))
        self.rope_flavour = "compressed" if ratio else "plain"
        self.scale = cfg.head_dim**-0.5
        self.numerics = Numerics()
        self.kv_layout = kv_layout(cfg)
        self.pack_kv = True  # native numerics: hold KV rows packed (False: float rows, same values)

    def stack_projections(self) -> None:
        """Stack each group of sibling projections (after loading, and again after a change to
        a member's weights: tensor parallelism's shard)."""
        for group in (self.x_proj, self.q_proj, self.pool_proj):
            group.stack()

    def cache_layout(self) -> KVLayout | None:
        """The FP8 layout the KV rows are held in, or None for float rows."""
        return self.kv_layout if self.numerics.native and self.pack_kv else None

    def angles(self, positions: torch.Tensor, memo: dict) -> torch.Tensor:
        """This layer's RoPE angles of ``positions``, once per flavour per forward (``memo``)."""
        return _memoized(memo, ("angles", self.rope_flavour), lambda: self.rope.angles(positions))

    def project(self, x: torch.Tensor, positions: torch.Tensor, angles: torch.Tensor
                ) -> AttentionInputs:
        """The per-token projections of x [b, T, dim] (any tokens at once: a ragged batch
        too): queries, new KV rows as the cache holds them, the compressor's and the indexer's
        inputs. Pure: reads no cache (a decode step captures it in a CUDA graph)."""
        qr, kv = self.x_proj(x)
        # q_norm, then attention's and the indexer's query up-projections (one FP8 GEMM whose
        # prologue is the norm, in native numerics on Triton)
        q, *index_q = self.q_proj(qr, norm=(self.q_norm.weight, self.q_norm.eps))
        q = q.unflatten(-1, (self.n_heads, self.head_dim))
        q = ops.norm_rope_rows(q, None, self.eps, angles, RowFormat(q.dtype))  # per head
        # kv → kv_norm → RoPE → the cache's row (packed FP8 in native numerics)
        kv = ops.norm_rope_rows(kv, self.kv_norm.weight, self.kv_norm.eps, angles, RowFormat(
            kv.dtype, self.numerics.native, self.cache_layout(), rope_dim=self.rope_head_dim))
        pooled = index = None
        if self.compressor is not None:
            pooled, *for_index = self._pool_inputs(x, positions)
            if self.indexer is not None:   # CSA: the compressed RoPE flavour, like attention's
                key_pooled, weights = for_index
                index = self.indexer.project(index_q[0], weights, key_pooled, angles)
        return AttentionInputs(q, kv, pooled, index, angles)

    def attend(self, inputs: AttentionInputs, spans: Sequence[Span], positions: torch.Tensor,
               memo: dict, out: torch.Tensor | None = None) -> torch.Tensor:
        """The cache side: each span's tokens over its own window, compressed and picked rows;
        the spans' caches advance. → attention output [b, T, heads, head_dim], its RoPE dims
        rotated back (the inverse RoPE: in the kernel that stores it, on Triton), stored in
        ``out`` when given (a decode graph's static buffer): each span's kernel writes its
        tokens' rows, so there is no concatenation and no copy. Consecutive one-token spans
        (the decode tokens of a batch's running sequences) attend in one launch per op for all
        of them (``_attend_decode``); a longer span (a prefill chunk) on its own."""
        layout = self.cache_layout()
        q, kv, pooled, index = inputs.q, inputs.kv, inputs.pooled, inputs.index
        out = torch.empty_like(q) if out is None else out
        batchable = q.shape[0] == 1 and (self.indexer is None or self.indexer.margins is None)
        lo = 0
        for group in _decode_runs(spans) if batchable else [[sp] for sp in spans]:
            if len(group) > 1:
                hi = lo + len(group)
                self._attend_decode(inputs.tokens(lo, hi), group, layout, memo, out[:, lo:hi])
                lo = hi
                continue
            sp = group[0]
            hi = lo + sp.length
            self._attend(
                q[:, lo:hi], kv[:, lo:hi],
                None if pooled is None else pooled[:, lo:hi],
                None if index is None else index.span(lo, hi),
                sp.start, positions[lo:hi], inputs.angles[lo:hi], sp.cache, layout, memo,
                out[:, lo:hi])
            lo = hi
        return out

    def _attend_decode(self, inputs: AttentionInputs, spans: Sequence[Span],
                       layout: KVLayout | None, memo: dict, out: torch.Tensor) -> None:
        """A decode step of several sequences (b = 1, token t = span t's one token): each cache
        advances (its window and compressors, per sequence), then the indexer's picks and
        attention run once for all of them, each token over its own sequence's rows where the
        caches hold them (model/kernels/sequence_rows.py)."""
        kv, pooled, index = inputs.kv, inputs.pooled, inputs.index
        # every sequence's window row and compressor inputs after its past ones: one launch
        joins, items = [], []
        for t, sp in enumerate(spans):
            _check_format(sp.cache.window, layout)
            news = [kv[:, t:t + 1]]
            joins.append(sp.cache.join_window(news[0], self.window))
            if pooled is not None:
                news.append(pooled[:, t:t + 1])
                joins.append(sp.cache.compressor.join_pending(news[-1], self.ratio))
            if index is not None:
                news.append(index.key_pooled[:, t:t + 1])
                joins.append(sp.cache.indexer.join_pending(news[-1], self.ratio))
            items += [(j.past, new, j.dest) for j, new in zip(joins[-len(news):], news,
                                                                strict=True)]
        ops.append_rows(items)
        per = len(joins) // len(spans)
        windows, stores, keys = [], [], []
        inserts: tuple[list[BlockInsert], list[BlockInsert]] = ([], [])
        for t, sp in enumerate(spans):
            window, rows, key_rows = self._advance(
                kv[:, t:t + 1], None if pooled is None else pooled[:, t:t + 1],
                None if index is None else index.span(t, t + 1), sp.start, sp.cache, layout,
                memo, (*(join.keys for join in joins[t * per:(t + 1) * per]),
                       *(None,) * (3 - per)), inserts)
            windows.append(window)
            stores.append(rows)
            keys.append(key_rows)
        # the blocks that closed (a sequence's every ratio-th step), one launch per compressor
        if self.compressor is not None:
            self.compressor.insert(inserts[0], layout)
        if self.indexer is not None:
            self.indexer.compressor.insert(inserts[1], self.indexer.cache_layout())
        counts = tuple(0 if rows is None else rows.shape[1] for rows in stores)
        rows = SequenceRows(tuple(windows), tuple(stores), counts, self.window,
                            tuple(keys) if self.indexer is not None else None)
        picks = None if self.indexer is None else self.indexer.pick_rows(index, rows)
        ops.sparse_attn_rows(inputs.q, rows, self.attn_sink, picks, self.scale, layout,
                             inputs.angles, out)

    def _pool_inputs(self, x: torch.Tensor, positions: torch.Tensor) -> list[torch.Tensor]:
        """What the compressors pool (fp32 [b, T, 2, coff·d] each: the main one, then the
        indexer's) and the indexer's scaled head weights [b, T, H], from one stacked projection
        of x whose split-K partials the pooling-inputs kernel sums (``ops.pool_inputs``)."""
        cols = [lo for lo, _ in self.pool_proj.bounds]
        compressors = [PoolColumns(cols[0], cols[1], self.compressor.ape)]
        heads = None
        if self.indexer is not None:
            compressors.append(PoolColumns(cols[3], cols[4], self.indexer.compressor.ape))
            proj = self.indexer.weights_proj
            heads = HeadColumns(cols[2], proj.out_features, self.indexer.weight_scale,
                                torch.float32 if proj.fp32_compute else proj.numerics.dtype)
        return ops.pool_inputs(self.pool_proj.partials(x), compressors, heads, positions)

    def output(self, o: torch.Tensor) -> torch.Tensor:
        """Attention output [b, T, heads, head_dim] (rotated back by ``attend``) → grouped
        low-rank output projection → [b, T, dim]. Pure, like ``project``."""
        b, t = o.shape[:2]
        # grouped output projection; wo_a runs unquantised (the reference keeps it in BF16).
        # At decode its GEMV's K splits stay unsummed: wo_b's FP8 GEMM sums them as it reads
        z = self.wo_a.grouped(o.reshape(b, t, self.n_groups, -1), self.n_groups, reduce=False)
        return self.wo_b(z if isinstance(z, SplitK) else z.flatten(2))

    def _all_visible_rows(self, positions: torch.Tensor, n: int) -> torch.Tensor:
        """HCA: [s, n] every compressed row each query may see (rows j < (position + 1) //
        ratio, else −1)."""
        visible = (positions + 1) // self.ratio
        cols = torch.arange(n, device=positions.device).view(1, -1)
        return torch.where(cols < visible.view(-1, 1), cols, -1)

    def _advance(self, kv: torch.Tensor, pooled: torch.Tensor | None,
                 index: IndexerInputs | None, start_pos: int, cache: LayerCache,
                 layout: KVLayout | None, memo: dict,
                 appended: tuple[torch.Tensor | None, ...] | None = None,
                 inserts: tuple[list[BlockInsert], list[BlockInsert]] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One sequence's s new tokens (their KV rows, the compressor's and the indexer's
        inputs) join its cache. → (its past window rows then the new ones, all its compressed
        rows, all its indexer keys; None on layers without them). ``appended``: the window's,
        the compressor's and the indexer's past rows then the new ones, made already
        (``ops.append_rows``: a decode step of several sequences); ``inserts``: where the main and
        the indexer's compressor defer a closing block's insert (``Compressor.forward``)."""
        past = cache.window
        _check_format(past, layout)
        n_past = 0 if past is None else past.shape[1]
        joined = appended or (None, None, None)
        # the window's rows live in its store (LayerCache.join_window): a decode step copies
        # its one new row there, never keeps a view of the caller's (a decode graph's) buffer
        keys = joined[0]
        if keys is None:
            keys = cache.join_window(kv, self.window).write(kv)
        if cache.tap is not None:
            cache.tap.append((keys, start_pos - n_past))
        cache.keep_window(keys, self.window)
        rows = key_rows = None
        if self.compressor is not None:
            main, of_keys = (None, None) if inserts is None else inserts
            rows = self.compressor(pooled, start_pos, cache.compressor, layout, memo, joined[1],
                                   main)
            if self.indexer is not None:
                key_rows = self.indexer.advance(index, start_pos, cache, memo, joined[2], of_keys)
        return keys, rows, key_rows

    def _attend(self, q: torch.Tensor, kv: torch.Tensor,
                pooled: torch.Tensor | None, index: IndexerInputs | None,
                start_pos: int, positions: torch.Tensor, angles: torch.Tensor, cache: LayerCache,
                layout: KVLayout | None, memo: dict, out: torch.Tensor) -> None:
        """One sequence's s new tokens (their projections: queries, KV rows, the compressor's
        and the indexer's inputs) over its window, compressed and picked rows; updates its
        cache. Attention output [b, s, heads, head_dim], rotated back by ``angles``, → ``out``."""
        b, s = q.shape[:2]
        device = q.device
        n_past = 0 if cache.window is None else cache.window.shape[1]
        keys, rows, key_rows = self._advance(kv, pooled, index, start_pos, cache, layout, memo)
        # the window's indices depend on start_pos only through which positions are < 0, so
        # past the first window every decode step of every sequence shares one table
        key = (self.window, min(start_pos, self.window - 1), s, n_past, device)
        indices = (_kept_window_indices(*key) if s <= KEPT_WINDOW_TABLE_TOKENS else
                   _memoized(memo, ("window", *key), lambda: window_indices(*key)))
        window = None
        if rows is None:
            rows = keys
        else:
            # compressed rows where the cache holds them, the window rows as a second source:
            # the kernel reads both in place (no copy of either into one tensor)
            window = WindowRows(keys, indices)
            n = rows.shape[1]
            # one query (a decode step) sees every closed block: no index tensor to build
            seen = s == 1 and n == (start_pos + 1) // self.ratio
            if self.indexer is not None:
                visible = (counting(n + 1, device)[n:] if seen else _memoized(
                    memo, ("visible rows", self.ratio, start_pos, s),
                    lambda: (positions + 1) // self.ratio))
                indices = self.indexer.pick(index, key_rows, visible)
            else:
                indices = (counting(n, device).view(1, n) if seen else _memoized(
                    memo, ("all visible rows", self.ratio, start_pos, s, n),
                    lambda: self._all_visible_rows(positions, n)))
        if indices.dim() == 2:
            indices = indices.unsqueeze(0).expand(b, -1, -1)
        ops.sparse_attn(q, rows, self.attn_sink, indices, self.scale, window, angles, out, layout)


def _decode_runs(spans: Sequence[Span]) -> list[list[Span]]:
    """The spans in order, in groups: each maximal run of one-token spans, and each longer
    span alone."""
    groups: list[list[Span]] = []
    for sp in spans:
        if sp.length == 1 and groups and groups[-1][-1].length == 1:
            groups[-1].append(sp)
        else:
            groups.append([sp])
    return groups


def _check_format(window: torch.Tensor | None, layout: KVLayout | None) -> None:
    if window is not None and (window.dtype == torch.uint8) != (layout is not None):
        raise ValueError("this cache holds KV rows in another format (packed FP8 vs float)")


KEPT_WINDOW_TABLE_TOKENS = 16   # window index tables of forwards this short outlive the forward


def window_indices(window: int, start_pos: int, s: int, n_past: int, device: torch.device
                   ) -> torch.Tensor:
    """[s, window] int32 indices of the window rows of queries start_pos.. into cat(the n_past
    past rows, the s new ones); −1 where the position is < 0. int32, as the indexer's picks
    are: the attention kernel's index arithmetic is then 32-bit (fewer instructions a tile)."""
    t = torch.arange(start_pos, start_pos + s, device=device, dtype=torch.int32).view(-1, 1)
    pos = t - window + 1 + torch.arange(window, device=device, dtype=torch.int32).view(1, -1)
    return torch.where(pos >= 0, pos - (start_pos - n_past), -1)


# decode and speculative steps (a few tokens) ask for the same few tables step after step:
# kept, read-only (at most 64 × 16 × window indices)
_kept_window_indices = functools.lru_cache(maxsize=64)(window_indices)


def step_positions(spans: Sequence[Span], device: torch.device, memo: dict) -> torch.Tensor:
    """The positions of a forward's tokens (every span's, one after another), once per forward."""
    return _memoized(memo, ("positions",), lambda: torch.cat(
        [torch.arange(sp.start, sp.start + sp.length, device=device) for sp in spans]))


def _memoized(memo: dict, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    if key not in memo:
        memo[key] = make()
    return memo[key]
