"""``v4coder bench engine``: prefill scaling and prefix-cache time-to-first-token, one run.

    bench_engine() -> dict   # one JSON-able object

* ``prefill_ratio`` = cold prefill time of ``long_tokens`` / of ``short_tokens`` (issue 5
  target ≤ 5 for 32K/8K; linear is 4, dense attention 16);
* ``ttft_ratio`` = time to first token of a second agent turn (the first turn's prompt + its
  reply + ``new_tokens`` new ones, prefix cached) / the cold first turn's (target ≤ 0.10);
* the engine's counters for the second turn (computed vs reused prompt tokens);
* ``predicted_ratio``: the same ratio from the FLOPs the checkpoint's widths imply
  (model/prefill_cost.py), its cost split at ``long_tokens``, and V4-Flash's prediction.

The prefill ratio is a property of the model's proportions as much as of the engine: the indexer
(t/4 keys per query) and HCA (t/128 rows) grow with the context, the linears do not. The default
toy is the ``proportional`` preset, which keeps V4-Flash's per-token cost split (predicted 4.20
vs Flash 4.21); ``tiny`` has a 4096-wide indexer on a 64-wide model, so its prefill is 91%
indexer at 32K and its predicted ratio is 14.5. A measured ratio near the prediction means the
engine adds no super-linear work of its own.

On the toy checkpoint (fp32, CPU unless ``device`` says otherwise) absolute times mean little;
the ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from model.bench_cli import random_ids, toy_bench_main
from model.engine import Engine, EngineConfig, load_tokenizer
from model.generate import load_model
from model.planner import flash_config
from model.prefill_cost import predicted_ratio, prefill_flops
from model.sampling import SamplingParams, generation_defaults


def bench_engine(checkpoint: str | Path | None = None, long_tokens: int = 32768,
                 short_tokens: int = 8192, new_tokens: int = 64, reply_tokens: int = 8,
                 chunk_tokens: int = 2048, preset: str = "proportional", device: str = "cpu",
                 prefill_only: bool = False) -> dict:
    """``prefill_only`` skips the two-turn TTFT part (for very long prefills)."""
    with tempfile.TemporaryDirectory(prefix="v4coder-bench-") as tmp:
        if checkpoint is None:
            from model.toy import write_toy_checkpoint
            checkpoint = write_toy_checkpoint(Path(tmp) / "toy", seed=0, preset=preset)
        lm = load_model(checkpoint, dtype="float32", device=device, progress=False)
        engine = Engine(lm, EngineConfig(chunk_tokens=chunk_tokens, cache_bytes=8 << 30,
                                         prefix_cache=not prefill_only),
                        load_tokenizer(checkpoint), generation_defaults(checkpoint))
        greedy = SamplingParams(temperature=0.0, max_new_tokens=reply_tokens, stop_ids=())

        engine.warm_up(short_tokens)  # every path first: no JIT compile lands in a timing
        sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        engine.prefill(random_ids(short_tokens, seed=1))
        sync()
        short_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        seq, logits = engine.prefill(random_ids(long_tokens, seed=2))
        sync()
        long_s = time.perf_counter() - t0
        next_logits = engine.forward(seq, [int(logits.argmax())])   # and one decode step on
        finite = bool(torch.isfinite(logits).all() and torch.isfinite(next_logits).all())
        del seq

        turns = None if prefill_only else _two_turns(engine, long_tokens, new_tokens, greedy)
        peak_rss = _peak_rss_bytes()
    cfg = lm.config
    split = prefill_flops(cfg, long_tokens)
    return {
        "bench": "engine", "device": str(lm.device), "checkpoint": str(checkpoint),
        "threads": torch.get_num_threads(), "chunk_tokens": chunk_tokens,
        "short_tokens": short_tokens, "long_tokens": long_tokens,
        "prefill_short_s": round(short_s, 3), "prefill_long_s": round(long_s, 3),
        "prefill_ratio": round(long_s / short_s, 3), "prefill_ratio_target": 5.0,
        "predicted_ratio": round(predicted_ratio(cfg, long_tokens, short_tokens), 3),
        "flash_predicted_ratio": round(predicted_ratio(flash_config(), long_tokens, short_tokens), 3),
        "long_flops_split": {k: round(getattr(split, k) / split.total, 3)
                             for k in ("linear", "attention", "indexer")},
        "long_logits_finite": finite, "peak_rss_bytes": peak_rss,
        **(turns or {}),
    }


def _two_turns(engine: Engine, long_tokens: int, new_tokens: int, greedy: SamplingParams
               ) -> dict:
    """A cold first turn of ``long_tokens``, then a second turn over the cached prefix."""
    turn1_prompt = random_ids(long_tokens, seed=3)
    turn1 = engine.generate(turn1_prompt, greedy)
    reply = [e.token_id for e in turn1]
    turn2_prompt = turn1_prompt + reply + random_ids(new_tokens, seed=4)
    turn2 = engine.generate(turn2_prompt, greedy.with_(max_new_tokens=1))
    list(turn2)
    s1, s2 = turn1.stats, turn2.stats
    return {
        "turn1_ttft_s": round(s1.ttft_s, 3), "turn2_ttft_s": round(s2.ttft_s, 3),
        "ttft_ratio": round(s2.ttft_s / s1.ttft_s, 4), "ttft_ratio_target": 0.10,
        "turn2_prompt_tokens": s2.prompt_tokens, "turn2_reused_tokens": s2.reused_tokens,
        "turn2_computed_tokens": s2.computed_tokens,
        "prefix_cache_blocks": len(engine.prefix.blocks) if engine.prefix else 0,
        "prefix_cache_bytes": engine.prefix.used_bytes if engine.prefix else 0,
    }


def _peak_rss_bytes() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    """``v4coder bench engine [--long N] [--short N] [--checkpoint DIR] ...`` → one JSON line."""
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--long", type=int, default=32768, dest="long_tokens")
        p.add_argument("--short", type=int, default=8192, dest="short_tokens")
        p.add_argument("--new-tokens", type=int, default=64)
        p.add_argument("--chunk-tokens", type=int, default=2048)
        p.add_argument("--prefill-only", action="store_true",
                       help="only the two cold prefills (skip the two-turn TTFT part)")

    return toy_bench_main(
        "v4coder bench engine", __doc__, argv, "proportional", options,
        lambda a: None if 0 < a.short_tokens < a.long_tokens else "need 0 < --short < --long",
        lambda a: bench_engine(a.checkpoint, a.long_tokens, a.short_tokens, a.new_tokens,
                               chunk_tokens=a.chunk_tokens, preset=a.preset, device=a.device,
                               prefill_only=a.prefill_only))

if __name__ == "__main__":
    raise SystemExit(main())
