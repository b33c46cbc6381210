"""How prefill work grows with context, by arithmetic over a config (no weights needed).

    prefill_flops(cfg, n) -> PrefillFlops   # multiply-adds ×2 of a cold prefill of n tokens

Per token and layer a V4 forward does work that does not depend on the context (every Linear:
attention projections, compressors, indexer projection, the routed + shared experts; the sparse
attention over the window ∪ top-k CSA rows once the context exceeds them) and work that grows
with the position t (the lightning indexer scores t/4 compressed keys on CSA layers; HCA layers
attend to all t/ratio closed rows). Summed over a prefill, the first is linear in n and the second
quadratic, so the ratio prefill(4n) / prefill(n) lies between 4 and 16 depending on their
proportions — which are set by the widths. ``bench engine`` prints this prediction for the
checkpoint it measures and for V4-Flash, beside the measured ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.config import ModelConfig


@dataclass(frozen=True, slots=True)
class PrefillFlops:
    tokens: int
    linear: float      # every Linear (incl. active experts) — linear in n
    attention: float   # sparse attention over the gathered rows (window ∪ CSA top-k ∪ HCA rows)
    indexer: float     # lightning-indexer scores over the compressed keys — quadratic in n

    @property
    def total(self) -> float:
        return self.linear + self.attention + self.indexer


def _linear_params(module: torch.nn.Module) -> int:
    from model.layers.linear import Linear

    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, Linear))


def prefill_flops(cfg: ModelConfig, n: int) -> PrefillFlops:
    """FLOPs (2 per multiply-add) of a cold prefill of ``n`` tokens, summed over layers."""
    from model.layers.attention import Attention

    t = torch.arange(1, n + 1, dtype=torch.float64)  # tokens visible to each query (itself incl.)
    window = t.clamp(max=cfg.window_size)
    experts = (cfg.n_activated_experts + cfg.n_shared_experts) * 3 * cfg.dim * cfg.moe_inter_dim
    mix = (2 + cfg.hc_mult) * cfg.hc_mult
    per_layer_params: dict[int, int] = {}
    linear = attention = indexer = 0.0
    for ratio in cfg.compress_ratios[: cfg.n_layers]:
        if ratio not in per_layer_params:
            per_layer_params[ratio] = _linear_params(Attention(cfg, ratio))
        params = per_layer_params[ratio] + experts + 2 * mix * cfg.hc_mult * cfg.dim
        linear += 2.0 * params * n
        rows = window.clone()
        if ratio == 4:
            closed = torch.div(t, ratio, rounding_mode="floor")
            rows += closed.clamp(max=cfg.index_topk)
            indexer += float(2 * cfg.index_n_heads * cfg.index_head_dim * closed.sum())
        elif ratio:
            rows += torch.div(t, ratio, rounding_mode="floor")
        attention += float(4 * cfg.n_heads * cfg.head_dim * rows.sum())  # q·k and p·v
    return PrefillFlops(n, linear, attention, indexer)


def predicted_ratio(cfg: ModelConfig, long_tokens: int, short_tokens: int) -> float:
    return prefill_flops(cfg, long_tokens).total / prefill_flops(cfg, short_tokens).total
