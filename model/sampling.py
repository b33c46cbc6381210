"""Sampling parameters (defaults from the checkpoint's generation_config.json) and the sampler:
temperature, top-p (nucleus) and a seeded Gumbel-max draw, with an optional allowed-token mask
(grammar-constrained decoding)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

EOS_ID = 1
TOOL_CALLS_END = "</｜DSML｜tool_calls>"


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    max_new_tokens: int = 256
    stop_ids: tuple[int, ...] = (EOS_ID,)
    stop_strings: tuple[str, ...] = (TOOL_CALLS_END,)  # stop once the text ends with one

    def validated(self) -> SamplingParams:
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be ≥ 0, got {self.max_new_tokens}")
        return self

    def with_(self, **changes: object) -> SamplingParams:
        """A copy with the given fields changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None}).validated()


def generation_defaults(checkpoint_dir: str | Path) -> SamplingParams:
    """SamplingParams from generation_config.json (temperature, top_p, eos); the reference
    defaults (T=1.0, top_p=1.0) when the file is missing or unreadable."""
    path = Path(checkpoint_dir) / "generation_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return SamplingParams()
    eos = data.get("eos_token_id", EOS_ID)
    eos_ids = tuple(eos) if isinstance(eos, list) else (int(eos),)
    temperature = float(data.get("temperature", 1.0)) if data.get("do_sample", True) else 0.0
    return SamplingParams(temperature=temperature, top_p=float(data.get("top_p", 1.0)),
                          stop_ids=eos_ids).validated()


def sample_token(logits: torch.Tensor, temperature: float, top_p: float,
                 gen: torch.Generator | None, allowed: torch.Tensor | None = None) -> int:
    """One token id from fp32 ``logits`` [vocab]: greedy when temperature is 0, else
    softmax(logits / T), restricted to the top-p nucleus, drawn by an exponential race."""
    logits = logits.float().cpu()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        outside = (sorted_p.cumsum(0) - sorted_p) >= top_p
        sorted_p[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    race = torch.empty_like(probs).exponential_(1.0, generator=gen)
    return int((probs / race).argmax())
