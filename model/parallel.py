"""Expert parallelism (EP) and tensor-parallel attention (TP) over torch.distributed.

Layout: ``world = tp × ep`` ranks, rank ``r`` = (replica ``r // tp``, tp rank ``r % tp``).

* Routed experts are sharded over **all** ranks (rank r owns experts ``[r·E/world, (r+1)·E/world)``;
  the EP degree equals the world size, as in vLLM where EP = TP × DP). Gate and shared expert are
  replicated.
* Attention heads (and output-projection groups) are split ``tp`` ways inside each group of
  ``tp`` consecutive ranks; the single shared KV head, compressor and indexer are replicated, and
  the row-parallel ``wo_b`` is summed with one all-reduce over the TP group.
* The ``ep`` replicas either run the same tokens (default) or, with ``dp_attention``, different
  sequences (data-parallel attention; MoE then always dispatches all-to-all).

MoE paths: decode (few replicated tokens) = every rank runs its local experts on all tokens, one
all-reduce sums the partial outputs; prefill = tokens split over the ranks that share them,
(token, expert) pairs exchanged with ``all_to_all_single`` (uneven splits, zero allowed), experts
run, results sent back and combined. NCCL on GPU, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from model.kernels import ops
from model.kernels.expert_bank import ExpertBank
from model.layers.moe import MoE


@dataclass(frozen=True, slots=True)
class ParallelLayout:
    tp: int = 1
    ep: int = 1
    dp_attention: bool = False

    @property
    def world(self) -> int:
        return self.tp * self.ep

    def check(self, n_heads: int, o_groups: int, n_experts: int) -> None:
        """Raise ValueError (one clear line) when the model cannot be split this way."""
        if self.tp < 1 or self.ep < 1:
            raise ValueError(f"--tp and --ep must be ≥ 1 (got tp={self.tp}, ep={self.ep})")
        if n_heads % self.tp or o_groups % self.tp:
            raise ValueError(f"--tp {self.tp} must divide the {n_heads} attention heads and "
                             f"the {o_groups} output groups")
        if n_experts % self.world:
            raise ValueError(f"tp×ep = {self.world} ranks must divide the {n_experts} routed experts")


@dataclass(slots=True)
class ParallelContext:
    """One rank's view of the layout and its process groups."""

    layout: ParallelLayout
    rank: int
    tp_group: Any = None      # ranks splitting the same attention heads (None when tp == 1)
    share_group: Any = None   # ranks holding the same tokens (world, or the TP group under DP)
    share_ranks: tuple[int, ...] = ()

    @property
    def world(self) -> int:
        return self.layout.world

    @property
    def tp_rank(self) -> int:
        return self.rank % self.layout.tp

    @property
    def replica(self) -> int:
        return self.rank // self.layout.tp


def init_parallel(layout: ParallelLayout, rank: int | None = None,
                  init_method: str | None = None, backend: str | None = None,
                  timeout_s: float = 120.0) -> ParallelContext:
    """Join the process group (env:// under torchrun) and build the TP / token-sharing groups."""
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method or "env://", rank=rank,
                                world_size=layout.world, timeout=timedelta(seconds=timeout_s))
    if dist.get_world_size() != layout.world:
        raise ValueError(f"{dist.get_world_size()} ranks started for tp×ep = {layout.world}")
    ctx = ParallelContext(layout, rank)
    tp = layout.tp
    for replica in range(layout.ep):  # every rank creates every group, in the same order
        ranks = list(range(replica * tp, (replica + 1) * tp))
        group = dist.new_group(ranks) if tp > 1 else None
        if replica == ctx.replica:
            ctx.tp_group = group
            if layout.dp_attention:
                ctx.share_group, ctx.share_ranks = group, tuple(ranks)
    if not layout.dp_attention:
        ctx.share_group, ctx.share_ranks = dist.group.WORLD, tuple(range(layout.world))
    return ctx


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_experts(rank: int, world: int, n_experts: int) -> range:
    per = n_experts // world
    return range(rank * per, (rank + 1) * per)


def token_slice(n: int, parts: int, index: int) -> slice:
    """The ``index``-th of ``parts`` near-equal contiguous slices of ``n`` rows (may be empty)."""
    base, extra = divmod(n, parts)
    lo = index * base + min(index, extra)
    return slice(lo, lo + base + (1 if index < extra else 0))


class _Absent(nn.Module):
    """Stands in for an expert owned by another rank (no weights, never called)."""


class ExpertParallelMoE(nn.Module):
    """The MoE of one rank: same gate / shared expert / module names as ``MoE``, only the
    local routed experts hold weights. ``mode``: "auto", "allreduce" or "a2a"."""

    def __init__(self, moe: MoE, ctx: ParallelContext, allreduce_max_tokens: int = 32) -> None:
        super().__init__()
        self.dim, self.n_experts, self.ctx = moe.dim, moe.n_experts, ctx
        self.gate, self.shared_experts = moe.gate, moe.shared_experts
        self.local = local_experts(ctx.rank, ctx.world, moe.n_experts)
        self.per_rank = len(self.local)
        self.experts = nn.ModuleList(
            moe.experts[e] if e in self.local else _Absent() for e in range(moe.n_experts))
        self.limit, self.numerics = moe.limit, moe.numerics
        self.bank: ExpertBank | None = None
        self.mode, self.allreduce_max_tokens = "auto", allreduce_max_tokens
        self.last_path = ""           # diagnostics: the path taken by the last call
        self.last_received_rows = 0   # (token, expert) rows this rank computed in the last call

    def stack_experts(self) -> ExpertBank:
        """The bank of this rank's experts only (others map to slot −1); see ``MoE``."""
        if self.bank is None:
            held = {e: self.experts[e] for e in self.local}
            self.bank = ExpertBank.from_experts(held, self.n_experts)
        return self.bank

    def _run_local(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor,
                   out: torch.Tensor) -> None:
        """out[i] += Σ local experts e chosen by row i: expert_e(x[i]) · weight (fp32)."""
        bank = self.stack_experts()
        slots = bank.slots(experts)
        out += ops.moe_fp4(x, weights, slots, bank, self.limit,
                           quantize_input=self.numerics.native, dtype=self.numerics.dtype)
        self.last_received_rows = int((slots >= 0).sum())

    def _allreduce_path(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor
                        ) -> torch.Tensor:
        y = torch.zeros_like(x, dtype=torch.float32)
        self._run_local(x, weights, indices, y)
        if self.ctx.world > 1:
            dist.all_reduce(y)
        return y

    def _a2a_path(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor
                  ) -> torch.Tensor:
        ctx, k = self.ctx, indices.shape[1]
        parts = len(ctx.share_ranks)
        mine = token_slice(x.shape[0], parts, ctx.share_ranks.index(ctx.rank))
        xs, ws, es = x[mine], weights[mine], indices[mine]
        token = torch.arange(xs.shape[0], device=x.device).repeat_interleave(k)
        dest = es.flatten() // self.per_rank
        order = torch.argsort(dest, stable=True)
        token, pair_e, pair_w = token[order], es.flatten()[order], ws.flatten()[order]
        # one payload per pair: the activation row, its routing weight, its expert id (exact in fp32)
        send = torch.cat([xs[token].float(), pair_w[:, None].float(), pair_e[:, None].float()], 1)
        send_counts = torch.bincount(dest, minlength=ctx.world)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts)
        in_splits, out_splits = send_counts.tolist(), recv_counts.tolist()
        recv = send.new_empty(sum(out_splits), send.shape[1])
        dist.all_to_all_single(recv, send, out_splits, in_splits)
        rows_x = recv[:, : self.dim].to(x.dtype)
        out = torch.zeros(recv.shape[0], self.dim, dtype=torch.float32, device=x.device)
        self._run_local(rows_x, recv[:, self.dim : self.dim + 1], recv[:, -1:].long(), out)
        back = out.new_empty(sum(in_splits), self.dim)
        dist.all_to_all_single(back, out, in_splits, out_splits)
        y_mine = torch.zeros(xs.shape[0], self.dim, dtype=torch.float32, device=x.device)
        y_mine.index_add_(0, token, back)
        if parts == 1:
            return y_mine
        y = torch.zeros(x.shape[0], self.dim, dtype=torch.float32, device=x.device)
        y[mine] = y_mine
        dist.all_reduce(y, group=ctx.share_group)  # reassemble the slices (zeros elsewhere)
        return y

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.dim)
        weights, indices = self.gate(x, input_ids.reshape(-1))
        path = self.mode
        if path == "auto":
            small = x.shape[0] <= self.allreduce_max_tokens
            path = "allreduce" if small and not self.ctx.layout.dp_attention else "a2a"
        if path == "allreduce" and self.ctx.layout.dp_attention:
            raise ValueError("data-parallel attention needs the all-to-all MoE path")
        self.last_path = path
        fn = self._allreduce_path if path == "allreduce" else self._a2a_path
        y = fn(x, weights, indices)
        y = y + self.shared_experts(x).float()
        return y.to(x.dtype).view(shape)


class _TensorParallelOutput(nn.Module):
    """Row-parallel projection: local partial product, summed over the TP group."""

    def __init__(self, inner: nn.Module, group: Any) -> None:
        super().__init__()
        self.inner, self.group = inner, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        dist.all_reduce(y, group=self.group)
        return y


def shard_attention(attn: nn.Module, tp: int, tp_rank: int, group: Any) -> None:
    """Keep this rank's heads and output groups of a prepared ``Attention`` (dense weights)."""
    heads, groups = attn.n_heads // tp, attn.n_groups // tp
    rows = slice(tp_rank * heads * attn.head_dim, (tp_rank + 1) * heads * attn.head_dim)
    # FP8-resident weights are dequantised here: TP slices need not fall on 128×128 blocks
    attn.wq_b.dense = attn.wq_b.dense_weight()[rows].contiguous()
    attn.attn_sink = attn.attn_sink[tp_rank * heads : (tp_rank + 1) * heads].contiguous()
    width = groups * attn.o_lora_rank
    attn.wo_a.dense = attn.wo_a.dense_weight()[tp_rank * width : (tp_rank + 1) * width].contiguous()
    attn.wo_b.dense = attn.wo_b.dense_weight()[:, tp_rank * width : (tp_rank + 1) * width
                                               ].contiguous()
    attn.n_heads, attn.n_groups = heads, groups
    attn.wo_b = _TensorParallelOutput(attn.wo_b, group)
    attn.stack_projections()   # wq_b changed: its group no longer stacks with the indexer's


@dataclass(slots=True)
class ParallelTransform:
    """``load_model`` hook: before loading, drop other ranks' experts (never read from disk);
    after ``prepare``, split attention heads over the TP group."""

    ctx: ParallelContext
    allreduce_max_tokens: int = 32

    def _blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.layers) + list(getattr(model, "mtp", []))

    def before_load(self, model: nn.Module, ckpt: Any = None) -> None:
        cfg = model.cfg
        self.ctx.layout.check(cfg.n_heads, cfg.o_groups, cfg.n_routed_experts)
        for block in self._blocks(model):
            block.ffn = ExpertParallelMoE(block.ffn, self.ctx, self.allreduce_max_tokens)

    def after_prepare(self, model: nn.Module, ckpt: Any = None) -> None:
        if self.ctx.layout.tp == 1:
            return
        for block in self._blocks(model):
            shard_attention(block.attn, self.ctx.layout.tp, self.ctx.tp_rank, self.ctx.tp_group)


def set_moe_mode(model: nn.Module, mode: str) -> None:
    """Force the MoE path of every EP layer ("auto", "allreduce", "a2a"), e.g. in tests."""
    for module in model.modules():
        if isinstance(module, ExpertParallelMoE):
            module.mode = mode


__all__ = ["ParallelLayout", "ParallelContext", "ParallelTransform", "ExpertParallelMoE",
           "init_parallel", "teardown", "local_experts", "token_slice", "shard_attention",
           "set_moe_mode"]
