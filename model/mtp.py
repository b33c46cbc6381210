"""MTP speculative decoding with the checkpoint's multi-token-prediction block (fact sheet §2.7).
Off by default (``Engine.from_checkpoint(..., mtp=True)`` / ``v4coder serve --mtp``).

Each decode step feeds the sampled token plus one draft: the MTP block reads the main model's
residual streams at position p−1 and the embedding of token p, and proposes token p+1. The main
model verifies both in one forward. The engine samples every token from the main model's
logits, so a draft is accepted exactly when the sampled token equals it — the output is the
non-speculative output (greedy: identical tokens), only the number of forwards changes. On a
miss the cache rolls back to a snapshot (cache tensors are replaced, and a compressed-row store
is only written past its row count, so a shallow copy with the counts is a snapshot) and the
step is redone with the right token and a new draft.

The MTP block attends over a sliding window only (compress ratio 0). It keeps its own window
cache and runs each position once, when that position's hidden state and next token are final
(accepted), so a draft costs one position of the block, and a rejected draft needs no rollback
of it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from model.cache import LayerCache, SequenceCache, Span
from model.layers.mhc import streams
from model.transformer import Block, Transformer

if TYPE_CHECKING:
    from model.engine import Engine, Sequence_


def snapshot(cache: SequenceCache) -> SequenceCache:
    layers = [LayerCache(window=lc.window,
                         compressor=dataclasses.replace(lc.compressor, tap=None),
                         indexer=dataclasses.replace(lc.indexer, tap=None))
              for lc in cache.layers]
    return SequenceCache(layers, cache.length)


def main_forward(model: Transformer, ids: list[int], cache: SequenceCache
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Transformer.forward that also returns the residual streams: (logits [s, V] fp32,
    hidden [s, hc, dim]) for the tokens ``ids`` continuing ``cache``."""
    x = torch.tensor([ids], dtype=torch.long, device=model.head.weight.device)
    h = model.residual_streams(x, [cache], [len(ids)])
    return model.logits(h)[0], h[0]


def mtp_logits(model: Transformer, hidden: torch.Tensor, next_ids: list[int], start_pos: int,
               cache: LayerCache | None = None) -> torch.Tensor:
    """MTP block over consecutive positions start_pos.. (hidden [n, hc, dim] of those positions,
    next_ids = the token after each) → logits [n, V] for the token two ahead. ``cache`` holds
    the block's sliding window over earlier positions (None: start from nothing)."""
    blk = model.mtp[0]
    ids = torch.tensor([next_ids], dtype=torch.long, device=hidden.device)
    e = blk.enorm(model.embed(ids).to(model.numerics.dtype))
    x = blk.e_proj(e).unsqueeze(2) + blk.h_proj(blk.hnorm(hidden.unsqueeze(0)))
    cache = cache if cache is not None else LayerCache()
    x = streams(Block.forward(blk, x, ids, [Span(start_pos, len(next_ids), cache)]))
    y = blk.norm(model.hc_head(x, blk.hc_head_fn, blk.hc_head_scale, blk.hc_head_base))
    return model.head(y.float())[0]


@dataclass(slots=True)
class MTPStepper:
    """``token → logits of the next position`` for one sequence, speculating one token ahead."""

    engine: Engine
    seq: Sequence_
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)  # position → residual streams
    draft: int | None = None
    draft_logits: torch.Tensor | None = None
    snap: SequenceCache | None = None
    snap_len: int = 0
    verify_prefix: list[int] = field(default_factory=list)
    mtp_cache: LayerCache | None = None   # the MTP block's sliding window (positions < mtp_next)
    mtp_next: int = 0
    drafted: int = 0
    accepted: int = 0
    forwards: int = 0

    def __call__(self, token: int) -> torch.Tensor:
        if self.draft is not None:
            draft, logits = self.draft, self.draft_logits
            self.draft = None
            if token == draft:
                self.accepted += 1
                return logits
            if self.engine.step_hook is not None:   # other ranks roll back with us
                self.engine.step_hook.rollback(self.seq.slot)
            self.seq.cache = self.snap
            del self.seq.tokens[self.snap_len:]
            toks = self.verify_prefix + [token]
        else:
            toks = [token]
        model = self.engine.lm.model
        pos = len(self.seq.tokens) + len(toks) - 1          # position of ``token``
        if pos - 1 not in self.hidden:                       # nothing to draft from yet
            logits, hidden = self._forward(toks)
            return logits[-1]
        # the MTP block's own window cache advances over positions whose hidden state and
        # next token are final (< pos), so it never needs a rollback
        fresh = self.mtp_cache is None or self.mtp_next not in self.hidden
        if fresh:
            lo = pos - 1
            while lo - 1 in self.hidden and pos - lo < self.window():
                lo -= 1
            self.mtp_cache, self.mtp_next = LayerCache(), lo
        lo = self.mtp_next
        after = self.seq.tokens + toks
        hook = self.engine.step_hook                # under --ep/--tp other ranks run in step
        if hook is not None:
            hook.draft(self.seq.slot, lo, after[lo + 1:pos + 1], fresh)
        draft = int(mtp_logits(model, torch.stack([self.hidden[i] for i in range(lo, pos)]),
                               after[lo + 1:pos + 1], lo, self.mtp_cache)[-1].argmax())
        self.mtp_next = pos
        self.drafted += 1
        if hook is not None:
            hook.snapshot(self.seq.slot)
        self.snap, self.snap_len = snapshot(self.seq.cache), len(self.seq.tokens)
        logits, _ = self._forward(toks + [draft])
        self.draft, self.draft_logits, self.verify_prefix = draft, logits[-1], toks
        return logits[-2]

    def _forward(self, toks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        start = len(self.seq.tokens)
        logits, hidden = self.engine.forward(
            self.seq, toks, run=lambda ids, cache: main_forward(self.engine.lm.model, ids, cache))
        self.forwards += 1
        for i in range(len(toks)):
            self.hidden[start + i] = hidden[i]
        for stale in [p for p in self.hidden if p < start + len(toks) - 2 * self.window()]:
            del self.hidden[stale]
        return logits, hidden

    def window(self) -> int:
        return self.engine.lm.model.cfg.window_size


@dataclass(slots=True)
class MTPSpeculator:
    engine: Engine
    last: MTPStepper | None = None       # the latest stepper (acceptance counters)

    def __post_init__(self) -> None:
        if not len(self.engine.lm.model.mtp):
            raise ValueError("MTP speculative decoding needs the model loaded with with_mtp=True")

    def stepper(self, seq: Sequence_) -> MTPStepper:
        self.last = MTPStepper(self.engine, seq)
        return self.last
