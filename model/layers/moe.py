"""Mixture of experts (fact sheet §2.6): hash routing on the first layers, sqrtsoftplus + bias
top-k elsewhere, FP4 routed experts, clamped SwiGLU, one shared expert.

What runs where: the routed experts of a layer are one ``ops.moe_fp4`` call over the layer's
``ExpertBank`` (built once after loading, sharing the ``Expert`` buffers' memory: zero-copy
offsets into the mapped checkpoint on CPU, one stacked copy the experts point into on CUDA).
Triton (CUDA, or ``V4CODER_KERNELS=triton`` under the interpreter): the fused align → grouped
W4A16 gate/up + SwiGLU → grouped down → combine. Reference (CPU): a loop over the experts that
received tokens, each dequantised per use, bit-identical to ``Expert.forward`` — measured on the
toy ``small`` preset (fp32, 2 shared CPU cores, old loop vs bank in one process): see
docs/PERF.md. The shared expert is an FP8 ``Expert`` (``Linear``: ``ops.fp8_linear`` in native
numerics on Triton, dequantised per use otherwise). Expert offload (model/offload.py) and the
expert-parallel MoE (model/parallel.py: a bank of the rank's experts only, others → slot −1)
reuse these pieces.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import ModelConfig
from model.kernels import ops
from model.kernels.expert_bank import ExpertBank
from model.kernels.router import gate_scores
from model.layers.indexer import topk_margin
from model.layers.linear import Linear, Numerics, StackedLinear


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
        """x [n, dim], input_ids [n] → (weights [n, k] fp32, expert indices [n, k]).

        One ``ops.route`` call (fused Triton kernel on CUDA, ``router.route_reference`` — the
        torch math — elsewhere). With ``margins`` a list, score-routed layers first record the
        top-k boundary gap of the biased scores (reference math; diagnostics only)."""
        if self.margins is not None and not self.hash_routed:
            biased = gate_scores(x, self.weight, self.score_func) + self.bias.float()
            self.margins.append(topk_margin(biased, self.topk))
        return ops.route(x, self.weight, self.bias, input_ids,
                         self.tid2eid if self.hash_routed else None, self.topk,
                         self.score_func, self.route_scale)


class Expert(nn.Module):
    """SwiGLU expert with the gate clamped to ≤ limit and the up projection to ±limit.
    ``stacked`` (the shared expert): w1 and w3 run as one GEMM once ``stack_projections`` has
    run (routed experts are stacked by their ``ExpertBank``, or move through the offload cache)."""

    def __init__(self, dim: int, inter_dim: int, fmt: str, swiglu_limit: float,
                 stacked: bool = False) -> None:
        super().__init__()
        self.w1 = Linear(dim, inter_dim, fmt=fmt)
        self.w2 = Linear(inter_dim, dim, fmt=fmt)
        self.w3 = Linear(dim, inter_dim, fmt=fmt)
        self.w13 = StackedLinear(self.w1, self.w3)
        self.limit, self.stacked = swiglu_limit, stacked

    def stack_projections(self) -> None:
        if self.stacked:
            self.w13.stack()

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        gate, up = self.w13(x)
        if weights is None:   # the activation as w2's input (inside its FP8 GEMM on Triton)
            return self.w2(gate, glu=(up, self.limit))
        return self.w2(ops.swiglu(gate, up, self.limit, weights, x.dtype))


class MoE(nn.Module):
    """Gate + routed experts (one ``ops.moe_fp4`` call over the layer's ``ExpertBank``) + the
    shared expert. The ``Expert`` modules keep the checkpoint names and buffers; the bank is
    built from them once after loading (``stack_experts``) and shares their memory."""

    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.dim, self.n_experts = cfg.dim, cfg.n_routed_experts
        self.limit = cfg.swiglu_limit
        self.gate = Gate(cfg, hash_routed=layer_id < cfg.n_hash_layers)
        self.experts = nn.ModuleList(
            Expert(cfg.dim, cfg.moe_inter_dim, "fp4", cfg.swiglu_limit)
            for _ in range(cfg.n_routed_experts))
        self.shared_experts = Expert(cfg.dim, cfg.moe_inter_dim, "fp8", cfg.swiglu_limit,
                                     stacked=True)
        self.numerics = Numerics()
        self.bank: ExpertBank | None = None

    def held_experts(self) -> dict[int, nn.Module]:
        """{global id: expert} of the routed experts this module holds weights for."""
        return dict(enumerate(self.experts))

    def stack_experts(self) -> ExpertBank:
        """Build (once) the bank the fused op reads; called by ``Transformer.prepare``."""
        if self.bank is None:
            self.bank = ExpertBank.from_experts(self.held_experts(), self.n_experts)
        return self.bank

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.dim)
        weights, indices = self.gate(x, input_ids.reshape(-1))
        bank = self.stack_experts()
        # Σ over the chosen experts + the shared expert, summed in fp32 by the combine
        y = ops.moe_fp4(x, weights, bank.slots(indices), bank, self.limit,
                        quantize_input=self.numerics.native, dtype=self.numerics.dtype,
                        add=self.shared_experts(x))
        return y.to(x.dtype).view(shape)
