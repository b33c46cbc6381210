"""The whole DeepSeek-V4 network, written like DeepSeek's reference model.py: one class per
sub-module, module paths equal to the official checkpoint tensor names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.cache import SequenceCache, Span
from model.config import ModelConfig
from model.layers.attention import Attention, AttentionInputs, step_positions
from model.layers.linear import Linear, Numerics
from model.layers.mhc import HyperConnection, HyperHead, PendingPost, streams
from model.layers.moe import MoE
from model.layers.norm import RMSNorm


def _fp32_meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, dtype=torch.float32, device="meta")


class Embedding(nn.Module):
    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.empty(vocab_size, dim, dtype=torch.bfloat16,
                                                   device="meta"))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


@dataclass(frozen=True, slots=True)
class BeforeAttention:
    """A block's state across attention's cache side: the residual streams it entered with,
    the mHC post / comb mixes and attention's projections (with their RoPE angles)."""
    residual: torch.Tensor
    post: torch.Tensor
    comb: torch.Tensor
    inputs: AttentionInputs


class Block(nn.Module):
    """X → hc_pre(attn) → attn_norm → attention → hc_post → hc_pre(ffn) → ffn_norm → MoE → hc_post.
    Each norm is applied by the hc_pre before it (``HyperConnection.pre``'s ``norm``: the
    collapse feeds nothing else).

    Each hc_post runs fused with the hc_pre after it (``HyperConnection.post_pre``): the one
    inside the block, and the block's last with the next block's first — a block returns its
    output as a ``PendingPost`` and takes one (or the streams themselves) as its input."""

    def __init__(self, cfg: ModelConfig, layer_id: int, ratio: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.attn = Attention(cfg, ratio)
        self.ffn = MoE(cfg, layer_id)
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        mix = (2 + cfg.hc_mult) * cfg.hc_mult
        for site in ("attn", "ffn"):
            self.register_buffer(f"hc_{site}_fn", _fp32_meta(mix, cfg.hc_dim))
            self.register_buffer(f"hc_{site}_base", _fp32_meta(mix))
            self.register_buffer(f"hc_{site}_scale", _fp32_meta(3))
        self.hc = HyperConnection(cfg)

    def forward(self, x: torch.Tensor | PendingPost, input_ids: torch.Tensor,
                spans: Sequence[Span], memo: dict | None = None) -> PendingPost:
        """x [b, T, hc, dim] (or the previous block's pending post) over the tokens of
        ``spans`` (one sequence, or a ragged batch of several with b = 1); input_ids [b, T].
        → this block's output streams, one post short (``model.layers.mhc.streams``)."""
        memo = {} if memo is None else memo
        positions = step_positions(spans, input_ids.device, memo)
        before = self.before_attention(x, positions, memo)
        o = self.attn.attend(before.inputs, spans, positions, memo)
        return self.after_attention(o, before, input_ids)

    def before_attention(self, x: torch.Tensor | PendingPost, positions: torch.Tensor,
                         memo: dict) -> BeforeAttention:
        """Everything up to attention's cache side (with the previous block's last post);
        reads no cache."""
        site = (self.hc_attn_fn, self.hc_attn_scale, self.hc_attn_base, self.attn_norm)
        if isinstance(x, PendingPost):
            x, h, post, comb = self.hc.post_pre(x, *site)
        else:
            h, post, comb = self.hc.pre(x, *site)
        angles = self.attn.angles(positions, memo)
        inputs = self.attn.project(h, positions, angles)   # h: attn_norm's output already
        return BeforeAttention(x, post, comb, inputs)

    def after_attention(self, o: torch.Tensor, before: BeforeAttention,
                        input_ids: torch.Tensor) -> PendingPost:
        """Everything after attention's cache side (its output projection, the FFN half);
        reads no cache. → the block's output streams [b, T, hc, dim], one post short."""
        h = self.attn.output(o)
        residual, h, post, comb = self.hc.post_pre(
            PendingPost(h, before.residual, before.post, before.comb), self.hc_ffn_fn,
            self.hc_ffn_scale, self.hc_ffn_base, self.ffn_norm)
        h = self.ffn(h, input_ids)   # h: ffn_norm's output already
        return PendingPost(h, residual, post, comb)


class MTPBlock(Block):
    """Multi-token-prediction block (depth 1). Weights are loaded; the engine issue runs it."""

    def __init__(self, cfg: ModelConfig, layer_id: int, ratio: int) -> None:
        super().__init__(cfg, layer_id, ratio)
        self.e_proj = Linear(cfg.dim, cfg.dim)
        self.h_proj = Linear(cfg.dim, cfg.dim)
        self.enorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.hnorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.register_buffer("hc_head_fn", _fp32_meta(cfg.hc_mult, cfg.hc_dim))
        self.register_buffer("hc_head_base", _fp32_meta(cfg.hc_mult))
        self.register_buffer("hc_head_scale", _fp32_meta(1))


class Transformer(nn.Module):
    """embed → 4 identical mHC streams → blocks → hc_head collapse → norm → head (fp32 logits)."""

    def __init__(self, cfg: ModelConfig, with_mtp: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(
            Block(cfg, i, cfg.compress_ratios[i]) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = Linear(cfg.dim, cfg.vocab_size, fmt="bf16", fp32_compute=True)
        self.register_buffer("hc_head_fn", _fp32_meta(cfg.hc_mult, cfg.hc_dim))
        self.register_buffer("hc_head_base", _fp32_meta(cfg.hc_mult))
        self.register_buffer("hc_head_scale", _fp32_meta(1))
        self.hc_head = HyperHead(cfg)
        ratios = cfg.mtp_ratios if with_mtp else ()
        self.mtp = nn.ModuleList(
            MTPBlock(cfg, cfg.n_layers + i, r) for i, r in enumerate(ratios))
        self.numerics = Numerics()

    def prepare(self, numerics: Numerics, resident: bool = True) -> None:
        """Called once after the weights are loaded: set numerics. ``resident`` keeps FP8/BF16
        linears and the BF16 embedding as mapped (dequantised / cast per use); otherwise they
        are converted once to the compute dtype (see model/layers/linear.py)."""
        self.numerics = numerics
        for module in self.modules():
            if hasattr(module, "numerics"):
                module.numerics = numerics
            if isinstance(module, Linear):
                module.prepare(numerics, resident=resident)
            elif isinstance(module, RMSNorm):
                module.weight = module.weight.float()
            if hasattr(module, "stack_experts"):  # routed experts → one ExpertBank per layer
                module.stack_experts()
        for module in self.modules():   # sibling projections → one GEMM each (StackedLinear)
            if hasattr(module, "stack_projections"):
                module.stack_projections()
        if not resident:
            self.embed.weight = self.embed.weight.to(numerics.dtype)

    def probe_margins(self, enabled: bool = True) -> list[list[float]]:
        """Start (or stop) recording top-k decision margins of every indexer and router;
        returns the lists being filled (for screening test weights against near-ties)."""
        lists = []
        for module in self.modules():
            if hasattr(module, "margins"):
                module.margins = [] if enabled else None
                if enabled:
                    lists.append(module.margins)
        return lists

    def new_cache(self) -> SequenceCache:
        return SequenceCache.empty(self.cfg.n_layers)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, cache: SequenceCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """input_ids [b, s] continuing ``cache`` (a fresh sequence when None) → fp32 logits
        [b, s, vocab] (or [b, vocab] with ``last_only``)."""
        cache = cache if cache is not None else self.new_cache()
        h = self.residual_streams(input_ids, [cache], [input_ids.shape[1]])
        if last_only:
            h = h[:, -1:]
        logits = self.logits(h)
        return logits[:, -1] if last_only else logits

    @torch.inference_mode()
    def forward_batch(self, token_ids: Sequence[Sequence[int]], caches: Sequence[SequenceCache]
                      ) -> torch.Tensor:
        """A ragged batch: sequence i's ``token_ids[i]`` (any number ≥ 1: a decode token or a
        prefill chunk) continuing ``caches[i]``, all in one forward — every weight is read once
        for the whole batch; attention runs per sequence. → fp32 logits [n_seqs, vocab] of each
        sequence's last token (the same values as one forward per sequence)."""
        lengths = [len(ids) for ids in token_ids]
        if not lengths or min(lengths) < 1:
            raise ValueError("every sequence of a batch needs at least one token")
        flat = [int(t) for ids in token_ids for t in ids]
        ids = torch.tensor([flat], dtype=torch.long, device=self.embed.weight.device)
        h = self.residual_streams(ids, caches, lengths)
        last = torch.tensor(lengths, device=h.device).cumsum(0) - 1
        return self.logits(h[:, last])[0]

    def residual_streams(self, input_ids: torch.Tensor, caches: Sequence[SequenceCache],
                         lengths: Sequence[int]) -> torch.Tensor:
        """embed → 4 streams → every block over the spans (sequence i: ``lengths[i]`` tokens
        continuing ``caches[i]``) → the residual streams [b, T, hc, dim]; caches advance."""
        h = self.embed(input_ids).to(self.numerics.dtype)
        h = h.unsqueeze(2).repeat(1, 1, self.cfg.hc_mult, 1)
        starts = [c.length for c in caches]
        memo: dict = {}   # what every layer computes alike (model/layers/attention.py)
        for i, layer in enumerate(self.layers):
            spans = [Span(start, n, c.layers[i])
                     for start, n, c in zip(starts, lengths, caches, strict=True)]
            h = layer(h, input_ids, spans, memo)
        for start, n, c in zip(starts, lengths, caches, strict=True):
            c.length = start + n
        return streams(h)

    def logits(self, h: torch.Tensor | PendingPost) -> torch.Tensor:
        """Residual streams [b, s, hc, dim] (or a block's pending post) → fp32 logits
        [b, s, vocab]."""
        h = self.norm(self.hc_head(streams(h), self.hc_head_fn, self.hc_head_scale, self.hc_head_base))
        return self.head(h.float())
