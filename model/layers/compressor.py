"""Gated-pooling KV compressor (fact sheet §2.4): CSA (ratio 4, overlapping halves) and HCA
(ratio m', no overlap). Also used, at index_head_dim with a Hadamard rotation, by the indexer.

Native numerics round the main compressor's entries to what the FP8 cache layout holds (e4m3 per
1×64 block with power-of-two scales on the no-RoPE dims, RoPE dims bf16); given a ``layout`` the
entries are kept packed in it (uint8 rows, model/cache.py), else as float rows of those values.
The indexer's compressor (``rotate``) rounds its keys to FP4 per 1×32 after a Hadamard rotation
and, given an ``IndexKeyLayout``, keeps them packed the same way (model/kernels/fp4_keys.py)."""

from __future__ import annotations

import torch
from torch import nn

from model.cache import CompressorState
from model.config import ModelConfig
from model.kernels import ops
from model.kernels.cache_rows import RowFormat
from model.kernels.compressor import BlockInsert
from model.kernels.fp4_keys import IndexKeyLayout
from model.kernels.kv_fp8 import KVLayout
from model.layers.linear import Linear, Numerics
from model.layers.norm import RMSNorm
from model.layers.rope import RotaryEmbedding


class Compressor(nn.Module):
    def __init__(self, cfg: ModelConfig, ratio: int, head_dim: int, rotate: bool = False) -> None:
        super().__init__()
        self.ratio, self.head_dim, self.rotate = ratio, head_dim, rotate
        self.rope_head_dim = cfg.rope_head_dim
        self.overlap = ratio == 4
        coff = 2 if self.overlap else 1
        self.register_buffer("ape", torch.empty(ratio, coff * head_dim, dtype=torch.float32,
                                                device="meta"))
        self.wkv = Linear(cfg.dim, coff * head_dim, fmt="bf16", fp32_compute=True)
        self.wgate = Linear(cfg.dim, coff * head_dim, fmt="bf16", fp32_compute=True)
        self.norm = RMSNorm(head_dim, cfg.norm_eps)
        self.rope = RotaryEmbedding(cfg, compressed=True)
        self.numerics = Numerics()

    def forward(self, pooled: torch.Tensor, start_pos: int, state: CompressorState,
                layout: KVLayout | IndexKeyLayout | None = None, memo: dict | None = None,
                joined: torch.Tensor | None = None, inserts: list[BlockInsert] | None = None
                ) -> torch.Tensor:
        """Consume one sequence's tokens [start_pos, start_pos+s) (their ``project``ions,
        [b, s, 2, coff·d]); return all its compressed rows [b, n, head_dim] (uint8
        [b, n, layout.row_bytes] when ``layout`` is given: native numerics only; a ``KVLayout``
        for the attention KV rows, an ``IndexKeyLayout`` when ``rotate``). ``memo``: the
        forward's memo (the blocks' RoPE angles are the same in every compressor of a ratio).
        ``joined``: the open block's tail then ``pooled``, when the caller appended them
        already (a decode step of several sequences: ``ops.append_rows``, one launch).
        ``inserts``: a decode step's one closing block is not written here but added to the
        list, its row reserved (the caller writes a layer's in one launch: ``insert``)."""
        b, s = pooled.shape[:2]
        ratio, d = self.ratio, self.head_dim
        device = pooled.device
        if joined is None:   # the open block's rows then the new ones, in its store while
            # it has room (a decode step copies one row); the state keeps views of them, never
            # of the caller's (a decode graph's) buffer
            joined = state.join_pending(pooled, ratio).write(pooled)
        pooled = joined
        kv, score = pooled[:, :, 0], pooled[:, :, 1]
        if state.tap is not None:
            state.tap.append((kv, score, start_pos + s - kv.shape[1]))
        first_block = (start_pos + s - kv.shape[1]) // ratio
        n_blocks = kv.shape[1] // ratio
        cutoff = n_blocks * ratio
        # the tail is kept as a copy once a chunk closes blocks: a view would keep the whole
        # chunk's projections alive until the next forward (an empty tail: no copy, no launch)
        tail = pooled[:, cutoff:]
        if n_blocks:
            state.pending = tail.clone() if tail.shape[1] else pooled.new_empty(tail.shape)
        else:
            state.pending = tail
        fmt = RowFormat(self.numerics.dtype, self.numerics.native, layout, self.rotate,
                        self.rope_head_dim)
        if n_blocks == 0:
            if state.rows is not None:
                return state.rows
            return kv.new_empty(b, 0, fmt.row_width(d), dtype=fmt.row_dtype())
        # pooling → RMSNorm → RoPE at the block's first position → the cache's row format,
        # written into the store's next rows: one fused op
        store = state.reserve(state.count + n_blocks,
                              like=kv.new_empty(b, 0, fmt.row_width(d), dtype=fmt.row_dtype()))
        out = store[:, state.count:state.count + n_blocks]
        if inserts is not None and n_blocks == 1 and b == 1 and cutoff == pooled.shape[1]:
            inserts.append(BlockInsert(pooled, state.prev_kv, state.prev_score,
                                       first_block * ratio, out))
        else:
            memo = {} if memo is None else memo
            key = ("compressed block angles", ratio, first_block, n_blocks)
            if key not in memo:
                block_pos = (first_block + torch.arange(n_blocks, device=device)) * ratio
                memo[key] = self.rope.angles(block_pos)
            ops.compress_insert(pooled, n_blocks, ratio, self.overlap, state.prev_kv,
                                state.prev_score, self.norm.weight, self.norm.eps, memo[key],
                                fmt, out=out)
        state.count += n_blocks
        if self.overlap:   # the next chunk's first block pools this chunk's last one: views
            # when that block is all of ``pooled`` (a decode step), else copies (as the tail)
            last = pooled[:, cutoff - ratio:cutoff]
            if cutoff != pooled.shape[1] or n_blocks != 1:
                last = last.clone()
            state.prev_kv, state.prev_score = last[:, :, 0], last[:, :, 1]
        return state.rows

    def insert(self, inserts: list[BlockInsert],
               layout: KVLayout | IndexKeyLayout | None = None) -> None:
        """Write the blocks ``forward`` deferred (several sequences' at one decode step) into
        their store rows: one launch."""
        if inserts:
            fmt = RowFormat(self.numerics.dtype, self.numerics.native, layout, self.rotate,
                            self.rope_head_dim)
            ops.compress_insert_rows(inserts, self.ratio, self.overlap, self.norm.weight,
                                     self.norm.eps, self.rope.inverse_frequencies(
                                         inserts[0].pooled.device), fmt)
