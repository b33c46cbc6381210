"""Test-only helpers shared by the model tests (kept out of conftest so imports are unambiguous)."""

from __future__ import annotations

from pathlib import Path

import torch

from model.generate import LoadedModel, load_model
from model.toy import write_toy_checkpoint

MIN_MARGIN = 1e-5  # top-k decision gaps (relative) must be far above float32 noise (~1e-7)


def token_ids(n: int, seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, 129280, (n,), generator=gen).tolist()


def min_margin(lm: LoadedModel, ids: list[int]) -> float:
    lists = lm.model.probe_margins(True)
    try:
        lm.logits(ids)
    finally:
        lm.model.probe_margins(False)
    return min((min(v) for v in lists if v), default=float("inf"))


def screened_checkpoint(root: Path, preset: str, seeds: range, ids: list[int]
                        ) -> tuple[Path, LoadedModel, int]:
    """First seed whose every indexer / router top-k decision on ``ids`` has a clear margin."""
    for seed in seeds:
        path = write_toy_checkpoint(root / f"{preset}-{seed}", seed=seed, preset=preset)
        lm = load_model(path, progress=False)
        if min_margin(lm, ids) >= MIN_MARGIN:
            return path, lm, seed
    raise AssertionError(f"no seed in {seeds} free of top-k near-ties")


def run_chunks(lm: LoadedModel, ids: list[int], sizes: list[int]) -> tuple[torch.Tensor, object]:
    """Logits of ``ids`` fed in chunks of ``sizes`` (then the rest) through one cache."""
    cache, parts, start = lm.new_cache(), [], 0
    for size in sizes + [len(ids)]:
        if ids[start:start + size]:
            parts.append(lm.logits(ids[start:start + size], cache))
        start += size
    return torch.cat(parts), cache
