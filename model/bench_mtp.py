"""``v4coder bench mtp``: what MTP speculative decoding costs and what it would buy, one run.

    bench_mtp() -> dict   # one JSON-able object

Greedy decode of ``new_tokens`` after a ``prompt_tokens`` prompt, plain and with the MTP
speculator (model/mtp.py), from the same engine. Reported:

* ``same_tokens``: speculation changed nothing (it must not: the main model decides);
* the measured acceptance rate (a random toy's MTP block guesses ≈ never right);
* the pieces of a speculation cycle, each timed: a draft (one position of the MTP block,
  through its window cache) and the verify forward, 2 tokens after an accepted draft, 3 after
  a rejected one (the rejected position is redone from the snapshot); relative to one plain
  decode step t1 a cycle costs c(a) = (draft + a·t2 + (1 − a)·t3) / t1 and yields 1 + a tokens,
  so ``speedup_at[a] = (1 + a) / c(a)`` and ``break_even_acceptance`` solves it for 1.
  ``predicted_speedup_at_measured`` checks the model against ``measured_speedup``. On a GPU at
  batch 1 a 2- or 3-token forward costs about a 1-token one (each reads every weight once), so
  c ≈ 1 + draft for the attention and dense weights — but not for the routed experts: every
  token of a verify forward picks its own experts, so a 3-token forward reads up to 3× the
  expert bytes of a 1-token step (timed here with distinct tokens for that reason). A CPU
  running a toy in fp32 pays for every token anyway.

Speculation stays off by default (``serve --mtp``) until real weights show an acceptance rate
above the break-even on the machine that serves.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from model.bench_cli import random_ids, toy_bench_main
from model.cache import LayerCache
from model.engine import Engine, EngineConfig, load_tokenizer
from model.generate import load_model
from model.mtp import MTPSpeculator, main_forward, mtp_logits, snapshot
from model.sampling import SamplingParams, generation_defaults


def _median_s(fn, repeats: int, sync) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench_mtp(checkpoint: str | Path | None = None, prompt_tokens: int = 512,
              new_tokens: int = 32, preset: str = "small", device: str = "cpu") -> dict:
    with tempfile.TemporaryDirectory(prefix="v4coder-bench-") as tmp:
        if checkpoint is None:
            from model.toy import write_toy_checkpoint
            checkpoint = write_toy_checkpoint(Path(tmp) / "toy", seed=0, preset=preset)
        lm = load_model(checkpoint, dtype="float32", device=device, progress=False,
                        with_mtp=True)
        engine = Engine(lm, EngineConfig(prefix_cache=False), load_tokenizer(checkpoint),
                        generation_defaults(checkpoint))
        sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
        params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens, stop_ids=())
        prompt = random_ids(prompt_tokens, seed=5)
        engine.warm_up(prompt_tokens)

        def decode() -> tuple[list[int], float]:
            gen = engine.generate(prompt, params)
            first = next(iter_ := iter(gen))
            sync()
            t0 = time.perf_counter()
            rest = [e.token_id for e in iter_]
            sync()
            return [first.token_id, *rest], (time.perf_counter() - t0) / max(1, len(rest))

        plain_tokens, plain_s = decode()
        engine.speculator = MTPSpeculator(engine)
        mtp_tokens, mtp_s = decode()
        stepper = engine.speculator.last
        engine.speculator = None

        # the pieces of one cycle, at the end of the prompt
        seq, _ = engine.prefill(prompt)
        model, window = lm.model, lm.config.window_size

        def forward(n: int, run=None) -> None:  # noqa: ANN001
            snap_tokens, snap_cache = list(seq.tokens), snapshot(seq.cache)
            engine.forward(seq, random_ids(n, seed=n), run=run)   # distinct tokens: distinct experts
            seq.tokens[:], seq.cache = snap_tokens, snap_cache

        @torch.inference_mode()
        def verify(n: int) -> None:   # the speculator's forward: logits and residual streams
            forward(n, run=lambda ids, cache: main_forward(model, ids, cache))

        step_1 = _median_s(lambda: forward(1), 7, sync)
        step_2 = _median_s(lambda: verify(2), 7, sync)
        step_3 = _median_s(lambda: verify(3), 7, sync)
        # a draft in steady state: one position through a full window cache
        hidden = torch.zeros(window, lm.config.hc_mult, lm.config.dim, device=lm.device,
                             dtype=model.numerics.dtype)
        window_cache = LayerCache()
        with torch.inference_mode():
            mtp_logits(model, hidden[:-1], [7] * (window - 1), 0, window_cache)

        @torch.inference_mode()
        def one_draft() -> None:
            mtp_logits(model, hidden[-1:], [7], window - 1, dataclasses.replace(window_cache))

        draft = _median_s(one_draft, 7, sync)
    acceptance = stepper.accepted / max(1, stepper.drafted)
    # a cycle starts with a draft; after an accepted draft its verify forward holds 2 tokens
    # (the sampled one + the draft), after a rejected one 3 (the redone position too)
    def cycle_cost(a: float) -> float:
        return (draft + a * step_2 + (1 - a) * step_3) / step_1

    break_even = (draft + step_3 - step_1) / (step_1 - step_2 + step_3)
    return {
        "bench": "mtp", "device": str(lm.device), "checkpoint": str(checkpoint),
        "threads": torch.get_num_threads(), "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens, "same_tokens": plain_tokens == mtp_tokens,
        "plain_s_per_token": round(plain_s, 5), "mtp_s_per_token": round(mtp_s, 5),
        "measured_speedup": round(plain_s / mtp_s, 3),
        "drafted": stepper.drafted, "accepted": stepper.accepted,
        "acceptance": round(acceptance, 3),
        "forwards": stepper.forwards,
        "step_1_token_s": round(step_1, 5), "verify_2_tokens_s": round(step_2, 5),
        "verify_3_tokens_s": round(step_3, 5), "draft_s": round(draft, 5),
        "predicted_speedup_at_measured": round((1 + acceptance) / cycle_cost(acceptance), 3),
        # 0: speculation pays at any acceptance (a cycle at a = 0 costs no more than a step)
        "break_even_acceptance": round(max(0.0, min(1.0, break_even)), 3),
        "speedup_at": {str(a): round((1 + a) / cycle_cost(a), 3) for a in (0.5, 0.8, 0.9)},
    }


def main(argv: list[str] | None = None) -> int:
    """``v4coder bench mtp [--prompt N] [--new-tokens N] ...`` → one JSON line."""
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--prompt", type=int, default=512, dest="prompt_tokens")
        p.add_argument("--new-tokens", type=int, default=32)

    return toy_bench_main(
        "v4coder bench mtp", __doc__, argv, "small", options,
        lambda a: None if a.prompt_tokens >= 1 and a.new_tokens >= 2
        else "need --prompt ≥ 1 and --new-tokens ≥ 2",
        lambda a: bench_mtp(a.checkpoint, a.prompt_tokens, a.new_tokens, preset=a.preset,
                            device=a.device))

if __name__ == "__main__":
    raise SystemExit(main())
