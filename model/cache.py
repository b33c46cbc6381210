"""Per-sequence decode state (fact sheet §2.4, §2.9): for every layer the sliding-window KV,
the compressor's not-yet-compressed tail (and, for CSA, the previous block's overlap half), the
compressed rows, and for CSA layers the indexer's own compressor state and compressed keys.

Feeding a sequence in any split of chunks (one prefill, token by token, or chunked prefill)
through the same ``SequenceCache`` gives the same logits as one full prefill.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(slots=True)
class CompressorState:
    pending_kv: torch.Tensor | None = None     # [b, r < ratio, coff·d] fp32, tail of the open block
    pending_score: torch.Tensor | None = None  # same shape, gate logits with ape added
    prev_kv: torch.Tensor | None = None        # [b, ratio, coff·d] last closed block (CSA overlap)
    prev_score: torch.Tensor | None = None
    rows: torch.Tensor | None = None           # [b, n_entries, d] compressed entries so far
    # when a list, forward appends (kv, score, first position) of the open + new tokens
    # (the prefix cache reads block-boundary state from it); None = off
    tap: list[tuple[torch.Tensor, torch.Tensor, int]] | None = None

    def num_rows(self) -> int:
        return 0 if self.rows is None else self.rows.shape[1]


@dataclass(slots=True)
class LayerCache:
    window: torch.Tensor | None = None  # [b, ≤ window-1, head_dim] most recent raw KV rows
    compressor: CompressorState = field(default_factory=CompressorState)
    indexer: CompressorState = field(default_factory=CompressorState)
    # when a list, attention appends (past window + new raw KV rows, first position); None = off
    tap: list[tuple[torch.Tensor, int]] | None = None


@dataclass(slots=True)
class SequenceCache:
    layers: list[LayerCache]
    length: int = 0  # tokens consumed so far (= start position of the next chunk)

    @classmethod
    def empty(cls, n_layers: int) -> SequenceCache:
        return cls(layers=[LayerCache() for _ in range(n_layers)])

    def nbytes(self) -> int:
        total = 0
        for layer in self.layers:
            tensors = [layer.window]
            for st in (layer.compressor, layer.indexer):
                tensors += [st.pending_kv, st.pending_score, st.prev_kv, st.prev_score, st.rows]
            total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
        return total
