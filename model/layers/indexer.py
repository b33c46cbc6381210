"""Lightning indexer (CSA layers only, fact sheet §2.5): scores every compressed block for every
query and keeps the top-k.

Native numerics hold the compressed keys packed in the FP4 layout (uint8 rows,
``model.cache.index_key_layout(cfg)``: 68 B at index_head_dim 128) and the top-k reads them as
they are; the keys already are those FP4 values, so the picks equal those of float rows of the
same values (``pack_keys = False``; tests/model/test_model_packed_index.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.cache import LayerCache, index_key_layout
from model.config import ModelConfig
from model.kernels import ops
from model.kernels.cache_rows import RowFormat
from model.kernels.compressor import BlockInsert
from model.kernels.fp4_keys import IndexKeyLayout
from model.kernels.sequence_rows import SequenceRows
from model.layers.compressor import Compressor
from model.layers.linear import Linear, Numerics


def topk_margin(scores: torch.Tensor, k: int) -> float:
    """Smallest gap between the k-th and (k+1)-th finite score, relative to the largest |score|
    (inf when no row has more than k finite candidates). Ties make top-k ill-defined."""
    finite = torch.isfinite(scores)
    rows = finite.sum(-1) > k
    if k >= scores.shape[-1] or not rows.any():
        return float("inf")
    top = scores[rows].topk(k + 1, dim=-1).values
    scale = scores[finite].abs().max().clamp_min(1e-30)
    return float(((top[:, k - 1] - top[:, k]) / scale).min())


@dataclass(frozen=True, slots=True)
class IndexerInputs:
    """Per-token projections the indexer needs: queries [b, T, H, D] (rotated and FP4-rounded
    in native numerics), head weights [b, T, H] (scaled), its compressor's kv and gate score
    side by side ([b, T, 2, coff·D], ``Attention._pool_inputs``)."""
    q: torch.Tensor
    weights: torch.Tensor
    key_pooled: torch.Tensor

    def span(self, lo: int, hi: int) -> IndexerInputs:
        return IndexerInputs(*(t[:, lo:hi] for t in (self.q, self.weights, self.key_pooled)))


class Indexer(nn.Module):
    def __init__(self, cfg: ModelConfig, ratio: int = 4) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.topk = cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk
        self.ratio = ratio
        self.wq_b = Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, fmt="fp8")
        self.weights_proj = Linear(cfg.dim, self.n_heads, fmt="bf16")
        self.compressor = Compressor(cfg, ratio, self.head_dim, rotate=True)
        self.weight_scale = self.head_dim**-0.5 * self.n_heads**-0.5
        self.numerics = Numerics()
        self.margins: list[float] | None = None  # diagnostics: top-k boundary gaps when a list
        self.key_layout = index_key_layout(cfg)
        self.pack_keys = True  # native numerics: hold keys packed (False: float rows, same values)

    def cache_layout(self) -> IndexKeyLayout | None:
        """The FP4 layout the keys are held in, or None for float rows."""
        return self.key_layout if self.numerics.native and self.pack_keys else None

    def project(self, q: torch.Tensor, weights: torch.Tensor, key_pooled: torch.Tensor,
                angles: torch.Tensor) -> IndexerInputs:
        """The per-token inputs of the indexer, for any tokens at once (a ragged batch too),
        from what attention computed for it: ``wq_b`` of qr (stacked with attention's), the
        scaled head weights and its compressor's pooling inputs (``Attention._pool_inputs``).
        ``angles``: the compressed-RoPE angles of the tokens' positions — its CSA layer's
        attention uses the same flavour and computes them once per forward."""
        q = q.unflatten(-1, (self.n_heads, self.head_dim))
        # RoPE, then in native numerics the keys' rotation and FP4 values: one op
        q = ops.norm_rope_rows(q, None, None, angles,
                               RowFormat(q.dtype, self.numerics.native, rotate=True))
        return IndexerInputs(q, weights, key_pooled)

    def forward(self, inputs: IndexerInputs, start_pos: int, visible: torch.Tensor,
                cache: LayerCache, memo: dict | None = None) -> torch.Tensor:
        """One sequence's new tokens (their ``project``ions; ``visible`` [s]: how many
        compressed rows each may see, (position + 1) // ratio) → top-k compressed-row indices
        [b, s, k] per query (−1 = no pick); its keys join ``cache``. ``memo``: the forward's."""
        return self.pick(inputs, self.advance(inputs, start_pos, cache, memo), visible)

    def advance(self, inputs: IndexerInputs, start_pos: int, cache: LayerCache,
                memo: dict | None = None, joined: torch.Tensor | None = None,
                inserts: list[BlockInsert] | None = None) -> torch.Tensor:
        """One sequence's new tokens' keys join its cache → all its keys [b, n, ..]
        (``joined``, ``inserts``: as ``Compressor.forward`` takes them)."""
        layout = self.cache_layout()
        held = cache.indexer.rows
        if held is not None and (held.dtype == torch.uint8) != (layout is not None):
            raise ValueError("this cache holds indexer keys in another format (packed FP4 vs float)")
        return self.compressor(inputs.key_pooled, start_pos, cache.indexer, layout, memo,
                               joined, inserts)

    def pick(self, inputs: IndexerInputs, keys: torch.Tensor, visible: torch.Tensor
             ) -> torch.Tensor:
        """One sequence's queries' top-k of its ``keys`` (``forward`` without the advance)."""
        q, weights = inputs.q, inputs.weights
        b, s = q.shape[:2]
        n = keys.shape[1]
        k = min(self.topk, n)
        if k == 0:
            return torch.full((b, s, 0), -1, dtype=torch.long, device=q.device)
        if self.margins is None:  # fused scores + top-k (never builds the [s, n] scores)
            # one query (a decode step) sees every closed block: n = (position + 1) // ratio
            return ops.indexer_topk(q, weights, keys, visible, k, causal=s > 1)
        scores = ops.indexer_scores(q, weights, keys, visible)      # [b, s, n], −inf = future
        picks = scores.topk(k, dim=-1).indices
        self.margins.append(topk_margin(scores, k))
        return torch.where(picks >= visible.view(1, -1, 1), -1, picks)

    def pick_rows(self, inputs: IndexerInputs, rows: SequenceRows) -> torch.Tensor:
        """A decode step of several sequences (``rows.keys``: each one's keys, after
        ``advance``) → [1, T, k] picks, k = min(topk, the most keys any has); −1 = none."""
        return ops.indexer_topk_rows(inputs.q, inputs.weights, rows,
                                     min(self.topk, max(rows.counts)))
