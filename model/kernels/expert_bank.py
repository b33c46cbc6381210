"""The routed FP4 experts of one MoE layer as the fused MoE op reads them (``ops.moe_fp4``).

An ``ExpertBank`` holds, for each of the six expert tensors (w1 / w3 / w2 weight and scale), one
base byte tensor plus the byte offset of every local expert ("slot") in it, and a global → slot
map (−1: the expert is held by another rank, or not at all). Slots are in ascending global
expert order, so the per-slot reference sums in the same order as a loop over experts.

No expert is copied when it can be avoided:

- zero copy: when every expert's tensor of a part is a contiguous view of one storage — the
  memory-mapped checkpoint shard, where a layer's experts lie in one file (model/checkpoint.py
  maps a shard as one uint8 tensor) — the bank is that storage plus offsets. Memory and RSS are
  unchanged by building the bank, and an expert-parallel rank addresses only its own experts.
- stacked: otherwise (CUDA, where each tensor was copied to the device on its own; a dtype cast
  at load) the part is copied once into one [L, rows, cols] tensor and every expert's Linear
  buffer is re-pointed to its slot of it, so the separate copies are freed: no doubling beyond
  the transient copy of one part of one layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

PART_NAMES = ("w1", "w3", "w2")


@dataclass(frozen=True, slots=True)
class PartBank:
    """One expert tensor (e.g. w1.weight) of every slot: bytes at ``base[starts[i]:]``."""

    base: torch.Tensor           # uint8, 1-D: one storage holding every slot's bytes
    offsets: torch.Tensor        # int64 [L] byte offset of each slot, on base.device
    starts: tuple[int, ...]      # the same offsets on the host
    shape: tuple[int, int]
    dtype: torch.dtype
    aligned: bool = field(init=False)   # every slot's bytes start on a 16-byte boundary

    def __post_init__(self) -> None:   # once per bank, not per kernel call
        base = self.base.data_ptr()
        object.__setattr__(self, "aligned", all((base + s) % 16 == 0 for s in self.starts))

    @property
    def slot_bytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    def slot(self, i: int) -> torch.Tensor:
        lo = self.starts[i]
        return self.base[lo : lo + self.slot_bytes].view(self.dtype).view(self.shape)

    @classmethod
    def over(cls, base: torch.Tensor, starts: list[int], shape: tuple[int, int],
             dtype: torch.dtype) -> PartBank:
        offsets = torch.tensor(starts, dtype=torch.int64, device=base.device)
        return cls(base, offsets, tuple(starts), shape, dtype)

    @classmethod
    def of(cls, tensors: list[torch.Tensor]) -> tuple[PartBank, bool]:
        """(bank, copied): zero copy when all tensors are contiguous views of one storage."""
        first = tensors[0]
        shape, dtype = (first.shape[0], first.shape[1]), first.dtype
        storage = first.untyped_storage()
        shared = all(t.untyped_storage().data_ptr() == storage.data_ptr()
                     and t.is_contiguous() and t.device == first.device for t in tensors)
        if shared:
            base = torch.empty(0, dtype=torch.uint8, device=first.device).set_(storage)
            starts = [t.storage_offset() * dtype.itemsize for t in tensors]
            return cls.over(base, starts, shape, dtype), False
        stacked = torch.stack(tensors)
        per = stacked[0].numel() * dtype.itemsize
        base = stacked.view(-1).view(torch.uint8)
        return cls.over(base, [i * per for i in range(len(tensors))], shape, dtype), True


@dataclass(frozen=True, slots=True)
class ExpertBank:
    """w1, w3: [inter, dim/2] int8 + [inter, dim/32] ue8m0 per slot; w2: [dim, inter/2] + scale."""

    w1: PartBank
    s1: PartBank
    w3: PartBank
    s3: PartBank
    w2: PartBank
    s2: PartBank
    slot_of: torch.Tensor        # int64 [n_experts]: global expert → slot, −1 = not held here
    experts: tuple[int, ...]     # the global id of each slot, ascending
    zero_copy: bool

    @property
    def n_slots(self) -> int:
        return len(self.experts)

    def parts(self) -> tuple[PartBank, ...]:
        return self.w1, self.s1, self.w3, self.s3, self.w2, self.s2

    def slots(self, indices: torch.Tensor) -> torch.Tensor:
        """Global expert indices [T, k] (−1 = none) → slots [T, k] (−1 = none or not here).
        A bank of every expert in order (no expert parallelism) maps each id to itself: the
        indices as they are (no launches)."""
        if self.experts == tuple(range(self.slot_of.shape[0])):
            return indices
        return torch.where(indices >= 0, self.slot_of[indices.clamp(min=0)], -1)

    @classmethod
    def from_experts(cls, experts: Mapping[int, nn.Module], n_experts: int) -> ExpertBank:
        """Bank the FP4 ``Expert`` modules held here ({global id: expert}). Copied parts are
        re-pointed into the bank so no second copy of an expert stays alive."""
        ids = sorted(experts)
        parts, zero_copy = [], True
        for name in PART_NAMES:
            for leaf in ("weight", "scale"):
                linears = [getattr(experts[e], name) for e in ids]
                part, copied = PartBank.of([getattr(lin, leaf) for lin in linears])
                if copied:
                    zero_copy = False
                    for i, lin in enumerate(linears):
                        setattr(lin, leaf, part.slot(i))
                parts.append(part)
        device = parts[0].base.device
        slot_of = torch.full((n_experts,), -1, dtype=torch.int64, device=device)
        slot_of[torch.tensor(ids, dtype=torch.int64, device=device)] = torch.arange(
            len(ids), device=device)
        return cls(*parts, slot_of=slot_of, experts=tuple(ids), zero_copy=zero_copy)

    @classmethod
    def from_stacked(cls, w1: torch.Tensor, s1: torch.Tensor, w3: torch.Tensor,
                     s3: torch.Tensor, w2: torch.Tensor, s2: torch.Tensor) -> ExpertBank:
        """A bank over stacked [E, rows, cols] tensors (slot e = expert e), e.g. in tests."""
        parts = [PartBank.of(list(t.unbind(0)))[0] for t in (w1, s1, w3, s3, w2, s2)]
        n = w1.shape[0]
        slot_of = torch.arange(n, dtype=torch.int64, device=w1.device)
        return cls(*parts, slot_of=slot_of, experts=tuple(range(n)), zero_copy=True)


__all__ = ["ExpertBank", "PartBank"]
