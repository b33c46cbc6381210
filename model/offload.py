"""Expert offload: everything but the routed experts stays on the device; routed experts live in
a host tier (pinned host copies, or views of the memory-mapped checkpoint) and are copied to the
device on demand through an ``ExpertCache`` with a byte budget.

* Eviction keeps the experts with the highest decayed use count (frequency), oldest use first
  among equals (recency); experts named in a hot profile are pinned and never evicted.
* Prefetch: at the end of layer L's MoE, the next layer's likely experts are loaded — exactly for
  hash-routed layers (token id → expert table), and for score-routed layers by applying the next
  layer's router to the current hidden state. On CUDA the copies run on a side stream.
* Experts stay FP4 on both tiers and run one by one through ``Expert.forward`` (the per-expert
  path: they arrive one at a time through the cache, so they are not banked for ``ops.moe_fp4``);
  on the reference backend that is what ``MoE.forward``'s ``ops.moe_fp4`` computes, in the same
  expert order, so logits equal fully resident inference.

On a CPU the "device" is the CPU too: a device copy is a ``clone`` and the budget is artificial,
which is how the tests check correctness, hit rate and bytes moved.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from model.layers.linear import Numerics
from model.layers.moe import Expert, MoE

PARTS = ("w1", "w2", "w3")
Key = tuple[int, int]  # (layer id, expert id)


@dataclass(slots=True)
class CacheStats:
    lookups: int = 0
    hits: int = 0
    prefetched: int = 0       # experts copied ahead of use
    prefetch_used: int = 0    # of those, later hit before eviction
    loads: int = 0            # copies to the device (misses + prefetches)
    bytes_moved: int = 0
    evictions: int = 0
    tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def as_dict(self) -> dict[str, float]:
        out = {k: getattr(self, k) for k in self.__slots__}
        out["hit_rate"] = round(self.hit_rate, 4)
        out["bytes_moved_per_token"] = round(self.bytes_moved / max(self.tokens, 1), 1)
        return out


@dataclass(slots=True)
class ExpertCache:
    budget_bytes: int
    device: torch.device
    dim: int
    inter_dim: int
    swiglu_limit: float
    numerics: Numerics = field(default_factory=Numerics)
    decay: float = 0.98
    host: dict[Key, dict[str, torch.Tensor]] = field(default_factory=dict)
    resident: dict[Key, Expert] = field(default_factory=dict)
    score: dict[Key, float] = field(default_factory=dict)
    last_use: dict[Key, int] = field(default_factory=dict)
    pinned: set[Key] = field(default_factory=set)
    unused_prefetch: set[Key] = field(default_factory=set)
    stats: CacheStats = field(default_factory=CacheStats)
    used_bytes: int = 0
    clock: int = 0
    boost: float = 1.0  # frequency weight of a use now; grows by 1/decay per token (aging)
    copy_stream: Any = None
    ready: dict[Key, Any] = field(default_factory=dict)  # CUDA events of in-flight prefetches

    def expert_bytes(self, key: Key) -> int:
        return sum(t.numel() * t.element_size() for t in self.host[key].values())

    def _copy_in(self, key: Key) -> Expert:
        expert = Expert(self.dim, self.inter_dim, "fp4", self.swiglu_limit)
        for name, tensor in self.host[key].items():
            part, leaf = name.split(".")
            lin = getattr(expert, part)
            copied = (tensor.clone() if self.device.type == "cpu"
                      else tensor.to(self.device, non_blocking=True))
            setattr(lin, leaf, copied)
            lin.numerics = self.numerics
        self.stats.loads += 1
        self.stats.bytes_moved += self.expert_bytes(key)
        return expert

    def _victim(self, protect: set[Key]) -> Key | None:
        candidates = [k for k in self.resident if k not in self.pinned and k not in protect]
        if not candidates:
            return None
        return min(candidates, key=lambda k: (self.score.get(k, 0.0), self.last_use.get(k, -1)))

    def _make_room(self, need: int, protect: set[Key], floor: float | None = None) -> bool:
        while self.used_bytes + need > self.budget_bytes:
            victim = self._victim(protect)
            if victim is None or (floor is not None and self.score.get(victim, 0.0) >= floor):
                return False
            del self.resident[victim]
            self.ready.pop(victim, None)
            self.unused_prefetch.discard(victim)
            self.used_bytes -= self.expert_bytes(victim)
            self.stats.evictions += 1
        return True

    def _admit(self, key: Key, protect: set[Key], floor: float | None = None) -> Expert | None:
        need = self.expert_bytes(key)
        if not self._make_room(need, protect, floor):
            return None
        expert = self._copy_in(key)
        self.resident[key] = expert
        self.used_bytes += need
        return expert

    def tick(self) -> None:
        """Age every frequency count by ``decay`` (once per forward): new uses weigh more."""
        self.boost /= self.decay
        if self.boost > 1e60:
            self.score = {k: v / self.boost for k, v in self.score.items()}
            self.boost = 1.0

    def get(self, key: Key, protect: set[Key]) -> Expert:
        """The device copy of expert ``key`` (loaded now on a miss; over budget it is used once
        and dropped). ``protect``: keys the current layer still needs."""
        self.clock += 1
        self.stats.lookups += 1
        self.score[key] = self.score.get(key, 0.0) + self.boost
        self.last_use[key] = self.clock
        expert = self.resident.get(key)
        if expert is not None:
            self.stats.hits += 1
            if key in self.unused_prefetch:
                self.unused_prefetch.discard(key)
                self.stats.prefetch_used += 1
            event = self.ready.pop(key, None)
            if event is not None:  # prefetched on the side stream: wait, and keep it alive there
                current = torch.cuda.current_stream()
                current.wait_event(event)
                for part in PARTS:
                    lin = getattr(expert, part)
                    lin.weight.record_stream(current)
                    lin.scale.record_stream(current)
            return expert
        admitted = self._admit(key, protect)
        return admitted if admitted is not None else self._copy_in(key)

    def prefetch(self, keys: Iterable[Key]) -> None:
        """Load likely experts, evicting only experts used less than the candidate."""
        for key in keys:
            if key in self.resident or key not in self.host:
                continue
            stream = self.copy_stream
            if stream is None and self.device.type == "cuda":
                stream = self.copy_stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                admitted = self._admit(key, set(), floor=self.score.get(key, 0.0))
                if admitted is not None and stream is not None:
                    self.ready[key] = torch.cuda.Event()
                    self.ready[key].record(stream)
            if admitted is None:
                return
            self.stats.prefetched += 1
            self.unused_prefetch.add(key)

    def pin(self, keys: Iterable[Key]) -> None:
        """Make experts permanently resident (a hot profile), within the budget."""
        for key in keys:
            if key in self.host and key not in self.resident:
                if self._admit(key, set()) is None:
                    break
            if key in self.resident:
                self.pinned.add(key)

    def hot_profile(self, top: int) -> dict[int, list[int]]:
        """The ``top`` most used experts of every layer, for ``OffloadTransform(hot=...)``."""
        layers: dict[int, list[Key]] = {}
        for key in sorted(self.score, key=lambda k: -self.score[k]):
            layers.setdefault(key[0], []).append(key)
        return {layer: [e for _, e in keys[:top]] for layer, keys in layers.items()}


class OffloadedMoE(nn.Module):
    """``MoE`` whose routed experts come from an ``ExpertCache``; gate and shared expert resident."""

    def __init__(self, moe: MoE, layer_id: int, cache: ExpertCache, first: bool) -> None:
        super().__init__()
        self.dim, self.n_experts, self.layer_id = moe.dim, moe.n_experts, layer_id
        self.gate, self.shared_experts = moe.gate, moe.shared_experts
        self.cache, self.first = cache, first
        self.next: tuple[nn.Module, int] | None = None  # (next layer's gate, its layer id)
        self.prefetch_limit = moe.gate.topk * 2

    def _predict_next(self, x: torch.Tensor, input_ids: torch.Tensor) -> list[Key]:
        if self.next is None:
            return []
        gate, layer = self.next
        _, indices = gate(x, input_ids)
        counts = torch.bincount(indices.flatten(), minlength=self.n_experts)
        ranked = [int(e) for e in counts.argsort(descending=True) if counts[e] > 0]
        return [(layer, e) for e in ranked[: self.prefetch_limit]]

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.dim)
        ids = input_ids.reshape(-1)
        weights, indices = self.gate(x, ids)
        if self.first:
            self.cache.stats.tokens += x.shape[0]
            self.cache.tick()
        y = torch.zeros_like(x, dtype=torch.float32)
        counts = torch.bincount(indices.flatten(), minlength=self.n_experts).tolist()
        needed = {(self.layer_id, e) for e, c in enumerate(counts) if c}
        for e, count in enumerate(counts):
            if count == 0:
                continue
            expert = self.cache.get((self.layer_id, e), protect=needed)
            rows, slot = torch.where(indices == e)
            y.index_add_(0, rows, expert(x[rows], weights[rows, slot, None]).float())
        self.cache.prefetch(self._predict_next(x, ids))
        y = y + self.shared_experts(x).float()
        return y.to(x.dtype).view(shape)


@dataclass(slots=True)
class OffloadTransform:
    """``load_model`` hook. ``budget_bytes``: device bytes for routed experts. ``host``: "pinned"
    (copies in page-locked host memory; plain RAM without CUDA) or "mmap" (checkpoint views,
    read from disk on demand). ``hot``: {layer: [expert, …]} pinned on the device."""

    budget_bytes: int
    host: str = "pinned"
    hot: dict[int, list[int]] | None = None
    cache: ExpertCache | None = None
    by_layer: dict[int, nn.ModuleList] = field(default_factory=dict)

    def before_load(self, model: nn.Module, ckpt: Any = None) -> None:
        if self.host not in ("pinned", "mmap"):
            raise ValueError(f"offload host tier must be 'pinned' or 'mmap', not {self.host!r}")
        blocks = list(model.layers)
        if any(not isinstance(b.ffn, MoE) for b in blocks):
            raise ValueError("--offload cannot be combined with --ep/--tp yet")
        cfg = model.cfg
        self.cache = ExpertCache(self.budget_bytes, torch.device("cpu"), cfg.dim, cfg.moe_inter_dim,
                                 cfg.swiglu_limit)
        self.by_layer = {b.layer_id: b.ffn.experts for b in blocks}
        prev = None
        for i, block in enumerate(blocks):
            block.ffn = OffloadedMoE(block.ffn, block.layer_id, self.cache, first=i == 0)
            if prev is not None:
                prev.next = (block.ffn.gate, block.layer_id)  # a tuple: not a submodule
            prev = block.ffn

    def after_prepare(self, model: nn.Module, ckpt: Any) -> None:
        cache = self.cache
        assert cache is not None
        cache.device = next(b for b in model.buffers() if not b.is_meta).device
        cache.numerics = model.numerics
        pin = cache.device.type == "cuda" and self.host == "pinned"
        for layer, experts in self.by_layer.items():
            for e, expert in enumerate(experts):
                tensors = {}
                for part in PARTS:
                    for leaf in ("weight", "scale"):
                        buf = getattr(getattr(expert, part), leaf)
                        t = ckpt.get(f"layers.{layer}.ffn.experts.{e}.{part}.{leaf}",
                                     tuple(buf.shape), buf.dtype)
                        if self.host == "pinned":
                            t = t.pin_memory() if pin else t.clone()
                        tensors[f"{part}.{leaf}"] = t
                cache.host[(layer, e)] = tensors
        self.by_layer = {}
        if self.hot:
            cache.pin((layer, e) for layer, es in self.hot.items() for e in es)


def offloaded(model: nn.Module) -> ExpertCache | None:
    """The expert cache of an offloaded model (None when fully resident)."""
    for module in model.modules():
        if isinstance(module, OffloadedMoE):
            return module.cache
    return None


__all__ = ["CacheStats", "ExpertCache", "OffloadedMoE", "OffloadTransform", "offloaded"]
