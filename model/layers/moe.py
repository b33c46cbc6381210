"""Mixture of experts (fact sheet §2.6): hash routing on the first layers, sqrtsoftplus + bias
top-k elsewhere, FP4 routed experts (dequantised per use), clamped SwiGLU, one shared expert."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.layers.indexer import topk_margin
from model.layers.linear import Linear


class Gate(nn.Module):
    def __init__(self, cfg: ModelConfig, hash_routed: bool) -> None:
        super().__init__()
        self.topk, self.score_func, self.route_scale = (
            cfg.n_activated_experts, cfg.score_func, cfg.route_scale)
        self.hash_routed = hash_routed
        meta = {"device": "meta"}
        self.register_buffer("weight", torch.empty(cfg.n_routed_experts, cfg.dim,
                                                   dtype=torch.bfloat16, **meta))
        if hash_routed:
            self.register_buffer("tid2eid", torch.empty(cfg.vocab_size, cfg.n_activated_experts,
                                                        dtype=torch.int64, **meta))
            self.bias = None
        else:
            self.register_buffer("bias", torch.empty(cfg.n_routed_experts, dtype=torch.float32, **meta))
        self.margins: list[float] | None = None  # diagnostics: top-k boundary gaps when a list

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [n, dim], input_ids [n] → (weights [n, k] fp32, expert indices [n, k])."""
        logits = F.linear(x.float(), self.weight.float())
        if self.score_func == "softmax":
            scores = logits.softmax(dim=-1)
        elif self.score_func == "sigmoid":
            scores = logits.sigmoid()
        else:
            scores = F.softplus(logits).sqrt()
        if self.hash_routed:
            indices = self.tid2eid[input_ids].long()
        else:
            biased = scores + self.bias.float()
            indices = biased.topk(self.topk, dim=-1).indices
            if self.margins is not None:
                self.margins.append(topk_margin(biased, self.topk))
        weights = scores.gather(1, indices)
        if self.score_func != "softmax":
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.route_scale, indices


class Expert(nn.Module):
    """SwiGLU expert with the gate clamped to ≤ limit and the up projection to ±limit."""

    def __init__(self, dim: int, inter_dim: int, fmt: str, swiglu_limit: float) -> None:
        super().__init__()
        self.w1 = Linear(dim, inter_dim, fmt=fmt)
        self.w2 = Linear(inter_dim, dim, fmt=fmt)
        self.w3 = Linear(dim, inter_dim, fmt=fmt)
        self.limit = swiglu_limit

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        gate, up = self.w1(x).float(), self.w3(x).float()
        if self.limit > 0:
            up = up.clamp(-self.limit, self.limit)
            gate = gate.clamp(max=self.limit)
        h = F.silu(gate) * up
        if weights is not None:
            h = weights * h
        return self.w2(h.to(x.dtype))


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.dim, self.n_experts = cfg.dim, cfg.n_routed_experts
        self.gate = Gate(cfg, hash_routed=layer_id < cfg.n_hash_layers)
        self.experts = nn.ModuleList(
            Expert(cfg.dim, cfg.moe_inter_dim, "fp4", cfg.swiglu_limit)
            for _ in range(cfg.n_routed_experts))
        self.shared_experts = Expert(cfg.dim, cfg.moe_inter_dim, "fp8", cfg.swiglu_limit)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.dim)
        weights, indices = self.gate(x, input_ids.reshape(-1))
        y = torch.zeros_like(x, dtype=torch.float32)
        counts = torch.bincount(indices.flatten(), minlength=self.n_experts).tolist()
        for e, count in enumerate(counts):
            if count == 0:
                continue
            rows, slot = torch.where(indices == e)
            y.index_add_(0, rows, self.experts[e](x[rows], weights[rows, slot, None]).float())
        y = y + self.shared_experts(x).float()
        return y.to(x.dtype).view(shape)
