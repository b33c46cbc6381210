"""``v4coder bench offload``: expert offload on a toy checkpoint with an artificial device
budget. One run measures fully resident and offloaded inference over the same tokens and prints
one JSON object: expert-cache hit rate, bytes moved per token (prefill and decode), prefetch
accuracy, and the largest logit difference to fully resident inference (expected 0).

    python -m model.bench_offload --budget-fraction 0.25 --prompt-tokens 64 --decode-tokens 32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from model.generate import load_model
from model.offload import OffloadTransform
from model.toy import PRESETS


def _ids(n: int, seed: int, vocab: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (n,), generator=gen).tolist()


def _expert_bytes(lm: Any) -> int:
    cache = lm.model.layers[0].ffn.cache
    return sum(cache.expert_bytes(k) for k in cache.host)


def bench_offload(checkpoint: str | Path | None = None, preset: str = "tiny",
                  budget_fraction: float = 0.25, prompt_tokens: int = 64,
                  decode_tokens: int = 32, seed: int = 0, host: str = "pinned") -> dict[str, Any]:
    """Run resident vs offloaded inference on the same tokens; return the measurements."""
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is None:
            from model.toy import write_toy_checkpoint

            checkpoint = write_toy_checkpoint(Path(tmp) / "toy", seed=seed, preset=preset)
        resident = load_model(checkpoint, progress=False)
        vocab = resident.config.vocab_size
        prompt, decode = _ids(prompt_tokens, seed, vocab), _ids(decode_tokens, seed + 1, vocab)
        probe = OffloadTransform(budget_bytes=1 << 62, host=host)
        total = _expert_bytes(load_model(checkpoint, progress=False, transforms=[probe]))
        budget = int(total * budget_fraction)
        transform = OffloadTransform(budget_bytes=budget, host=host)
        offl = load_model(checkpoint, progress=False, transforms=[transform])
        cache = transform.cache
        assert cache is not None

        out: dict[str, Any] = {"preset": preset, "expert_bytes_total": total,
                               "device_budget_bytes": budget, "budget_fraction": budget_fraction,
                               "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens}
        diffs, times = [], {"resident": 0.0, "offloaded": 0.0}
        caches = {"resident": resident.new_cache(), "offloaded": offl.new_cache()}
        for phase, chunks in (("prefill", [prompt]), ("decode", [[t] for t in decode])):
            before = cache.stats.as_dict()
            for chunk in chunks:
                logits = {}
                for name, lm in (("resident", resident), ("offloaded", offl)):
                    start = time.perf_counter()
                    logits[name] = lm.logits(chunk, caches[name])
                    times[name] += time.perf_counter() - start
                diffs.append(float((logits["resident"] - logits["offloaded"]).abs().max()))
            after = cache.stats.as_dict()
            delta = {k: after[k] - before[k] for k in ("lookups", "hits", "bytes_moved", "tokens",
                                                       "prefetched", "prefetch_used", "evictions")}
            delta["hit_rate"] = round(delta["hits"] / max(delta["lookups"], 1), 4)
            delta["bytes_moved_per_token"] = round(delta["bytes_moved"] / max(delta["tokens"], 1), 1)
            out[phase] = delta
        stats = cache.stats.as_dict()
        out.update(hit_rate=stats["hit_rate"], bytes_moved_per_token=stats["bytes_moved_per_token"],
                   prefetch_accuracy=round(stats["prefetch_used"] / max(stats["prefetched"], 1), 4),
                   resident_expert_bytes=cache.used_bytes,
                   max_abs_logit_diff=max(diffs),
                   offloaded_over_resident_time=round(times["offloaded"] / times["resident"], 3))
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="v4coder bench offload", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--preset", choices=tuple(PRESETS), default="tiny")
    p.add_argument("--budget-fraction", type=float, default=0.25)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--host", choices=("pinned", "mmap"), default="pinned")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 0 < args.budget_fraction <= 1:
        print("error: --budget-fraction must be in (0, 1]", file=sys.stderr)
        return 2
    result = bench_offload(args.checkpoint, args.preset, args.budget_fraction, args.prompt_tokens,
                           args.decode_tokens, args.seed, args.host)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
