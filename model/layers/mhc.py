"""Manifold-constrained hyper-connections (mHC): the 4-stream residual (fact sheet §2.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.config import ModelConfig
from model.kernels import ops
from model.layers.norm import RMSNorm


def _fp32(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, dtype=torch.float32, device="meta")


@dataclass(frozen=True, slots=True)
class PendingPost:
    """Residual streams one mHC post short: new X = post · y + combᵀ · residual. A block hands
    the next its output this way, so that the next block's first pre runs fused with this post
    (``HyperConnection.post_pre``: one kernel fewer per block boundary at decode); ``streams``
    applies the post where the streams themselves are needed (the head, the MTP block)."""
    y: torch.Tensor
    residual: torch.Tensor
    post: torch.Tensor
    comb: torch.Tensor


def streams(x: torch.Tensor | PendingPost) -> torch.Tensor:
    """The residual streams [b, s, hc, d] (a pending post applied)."""
    return x if isinstance(x, torch.Tensor) else HyperConnection.post(
        x.y, x.residual, x.post, x.comb)


class HyperConnection(nn.Module):
    """One mHC site (around attention or around the FFN). Tensors live on the Block under the
    official names ``hc_{site}_fn/base/scale``; this module holds them by reference."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.hc, self.iters, self.eps, self.norm_eps = (
            cfg.hc_mult, cfg.hc_sinkhorn_iters, cfg.hc_eps, cfg.norm_eps)

    def pre(self, x: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor,
            norm: RMSNorm | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [b, s, hc, d] → (collapsed [b, s, d], post [b, s, hc], comb [b, s, hc, hc]); with
        ``norm`` the collapsed output comes back through it (the block's attn_norm / ffn_norm,
        which only the collapse feeds: on the kernels at decode, the same launch)."""
        return ops.hc_pre(x, fn, scale, base, self.iters, self.eps, self.norm_eps,
                          _norm_args(norm))

    def post_pre(self, pending: PendingPost, fn: torch.Tensor, scale: torch.Tensor,
                 base: torch.Tensor, norm: RMSNorm | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The post of one site, then this site's pre: → (new streams X, then ``pre``'s three)."""
        return ops.hc_post_pre(pending.y, pending.residual, pending.post, pending.comb, fn, scale,
                               base, self.iters, self.eps, self.norm_eps, _norm_args(norm))

    @staticmethod
    def post(y: torch.Tensor, residual: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
             ) -> torch.Tensor:
        """new X_j = post_j · y + Σ_i comb[i, j] · X_i."""
        return ops.hc_post(y, residual, post, comb)


def _norm_args(norm: RMSNorm | None) -> tuple[torch.Tensor, float] | None:
    return None if norm is None else (norm.weight, norm.eps)


class HyperHead(nn.Module):
    """Final collapse of the streams before the output norm (no post / comb, no Sinkhorn)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.eps, self.norm_eps = cfg.hc_eps, cfg.norm_eps

    def forward(self, x: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor,
                base: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        flat = x.flatten(2).float()
        rsqrt = torch.rsqrt(flat.square().mean(-1, keepdim=True) + self.norm_eps)
        mixes = torch.nn.functional.linear(flat, fn.float()) * rsqrt
        pre = torch.sigmoid(mixes * scale.float() + base.float()) + self.eps
        return (pre.unsqueeze(-1) * x.float()).sum(dim=2).to(dtype)


__all__ = ["HyperConnection", "HyperHead", "PendingPost", "streams", "_fp32"]
