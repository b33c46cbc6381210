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

from model.cache import KV_QUANT_BLOCK, CompressorState
from model.config import ModelConfig
from model.kernels import ops
from model.kernels.fp4_keys import INDEX_KEY_BLOCK, IndexKeyLayout
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

    def project(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The per-token inputs of the pooling, for any tokens at once (a ragged batch too):
        x [b, T, dim], positions [T] → fp32 [b, T, 2, coff·head_dim]: the kv and the gate
        score with the position's ape, side by side (the open block's tail keeps them as one
        tensor: one concatenation per decode step, not two)."""
        return torch.stack([self.wkv(x), self.wgate(x) + self.ape.float()[positions % self.ratio]],
                           dim=2)

    def forward(self, pooled: torch.Tensor, start_pos: int, state: CompressorState,
                layout: KVLayout | IndexKeyLayout | None = None) -> torch.Tensor:
        """Consume one sequence's tokens [start_pos, start_pos+s) (their ``project``ions,
        [b, s, 2, coff·d]); return all its compressed rows [b, n, head_dim] (uint8
        [b, n, layout.row_bytes] when ``layout`` is given: native numerics only; a ``KVLayout``
        for the attention KV rows, an ``IndexKeyLayout`` when ``rotate``)."""
        b, s = pooled.shape[:2]
        ratio, d = self.ratio, self.head_dim
        device = pooled.device
        if state.pending is not None:
            pooled = torch.cat([state.pending, pooled], dim=1)
        else:   # the state keeps views of this: never of the caller's (a decode graph's) buffer
            pooled = pooled.clone()
        kv, score = pooled[:, :, 0], pooled[:, :, 1]
        if state.tap is not None:
            state.tap.append((kv, score, start_pos + s - kv.shape[1]))
        first_block = (start_pos + s - kv.shape[1]) // ratio
        n_blocks = kv.shape[1] // ratio
        cutoff = n_blocks * ratio
        # the tail and the overlap block are kept as copies once a chunk closes blocks: views
        # would keep the whole chunk's projections alive until the next forward
        state.pending = pooled[:, cutoff:] if n_blocks == 0 else pooled[:, cutoff:].clone()
        if n_blocks == 0:
            if state.rows is not None:
                return state.rows
            if layout is not None:
                return kv.new_zeros(b, 0, layout.row_bytes, dtype=torch.uint8)
            return kv.new_zeros(b, 0, d, dtype=self.numerics.dtype)
        kv = kv[:, :cutoff].unflatten(1, (n_blocks, ratio))
        score = score[:, :cutoff].unflatten(1, (n_blocks, ratio))
        if self.overlap:
            prev_kv = state.prev_kv if state.prev_kv is not None else kv.new_zeros(b, ratio, 2 * d)
            prev_score = (state.prev_score if state.prev_score is not None
                          else score.new_full((b, ratio, 2 * d), float("-inf")))
            state.prev_kv, state.prev_score = kv[:, -1].clone(), score[:, -1].clone()
            before_kv = torch.cat([prev_kv.unsqueeze(1), kv[:, :-1]], dim=1)[..., :d]
            before_score = torch.cat([prev_score.unsqueeze(1), score[:, :-1]], dim=1)[..., :d]
            kv = torch.cat([before_kv, kv[..., d:]], dim=2)          # [b, n, 2·ratio, d]
            score = torch.cat([before_score, score[..., d:]], dim=2)
        block_pos = (first_block + torch.arange(n_blocks, device=device)) * ratio
        # softmax-gated pooling → RMSNorm → RoPE at the block's first position, one fused op
        entries = ops.compress_pool(kv, score, self.norm.weight, self.norm.eps,
                                    self.rope.angles(block_pos), self.numerics.dtype)
        if self.numerics.native:
            if self.rotate and layout is not None:
                entries = ops.pack_index_keys(ops.hadamard(entries), layout)
            elif self.rotate:
                entries = ops.fp4_fake_quant(ops.hadamard(entries), INDEX_KEY_BLOCK)
            elif layout is not None:
                entries = ops.pack_kv_fp8(entries, layout)
            else:
                nope = self.head_dim - self.rope_head_dim
                rope = entries[..., nope:].to(torch.bfloat16).to(entries.dtype)
                entries = torch.cat([ops.fp8_fake_quant(entries[..., :nope], KV_QUANT_BLOCK),
                                     rope], dim=-1)
        return state.append(entries)
