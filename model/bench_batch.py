"""``v4coder bench batch``: what continuous batching buys, measured in one run.

    bench_batch() -> dict   # one JSON-able object

The same ``requests`` requests (``prompt_tokens`` each, distinct prompts, greedy,
``new_tokens`` each) go through the Batcher twice: ``max_batch = 1`` (one at a time, what serve
did before) and ``max_batch = requests``. Reported:

* ``throughput_ratio`` = generated tokens/s batched / one at a time;
* ``step_ratio`` = time of one decode step with every request in it / with one request (ideal
  1.0 where a step is bound by reading the weights — a GPU at batch-1 decode; > 1 where the
  per-token compute dominates — a CPU running fp32 toys);
* that the batched run produced exactly the one-at-a-time tokens (greedy): ``same_tokens``;
* ``graphs``: the batched run and the decode steps again with decode steps as graph pieces
  (model/decode_graphs.py): captured CUDA graphs on a GPU; on a CPU the ``emulate`` mode (the
  same pieces eagerly plus static-buffer copies: a cost, not a gain), its tokens checked too;
* ``overlapping``: the graph pieces captured again with every Triton launch overlapping the one
  before it (programmatic dependent launch, ``launch.pdl``; Hopper on): the batched run's tokens
  (the same as one at a time?) and the decode steps' times against the plain pieces'. Where no
  Triton kernel runs (a CPU) it changes nothing.

On the toy checkpoint on a CPU absolute times mean little; the ratios come from the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import torch

from model.batcher import Batcher
from model.bench_cli import random_ids, toy_bench_main
from model.decode_graphs import DecodeGraphs
from model.engine import Engine, EngineConfig, load_tokenizer
from model.generate import load_model
from model.kernels.launch import overlapping
from model.sampling import SamplingParams, generation_defaults


def _serve_all(engine: Engine, max_batch: int, prompts: list[list[int]],
               params: SamplingParams) -> tuple[float, list[list[int]], Batcher]:
    """All prompts submitted at once, read by one thread each. → (seconds, tokens, batcher)."""
    batcher = Batcher(engine, max_batch)
    out: list[list[int]] = [[] for _ in prompts]
    sync = torch.cuda.synchronize if engine.lm.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    gens = [batcher.submit(p, params) for p in prompts]

    def read(i: int) -> None:
        out[i] = [e.token_id for e in gens[i]]

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(gens))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sync()
    seconds = time.perf_counter() - t0
    batcher.close()
    return seconds, out, batcher


def _decode_step_s(engine: Engine, prompts: list[list[int]], steps: int) -> float:
    """Median seconds of a decode step (one token each) over these sequences, after prefill."""
    seqs = [engine.prefill(p)[0] for p in prompts]
    sync = torch.cuda.synchronize if engine.lm.device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(steps):
            sync()
            t0 = time.perf_counter()
            engine.forward_batch(seqs, [[3 + i]] * len(seqs))
            sync()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bench_batch(checkpoint: str | Path | None = None, requests: int = 8,
                prompt_tokens: int = 256, new_tokens: int = 32, preset: str = "small",
                device: str = "cpu") -> dict:
    with tempfile.TemporaryDirectory(prefix="v4coder-bench-") as tmp:
        if checkpoint is None:
            from model.toy import write_toy_checkpoint
            checkpoint = write_toy_checkpoint(Path(tmp) / "toy", seed=0, preset=preset)
        lm = load_model(checkpoint, dtype="float32", device=device, progress=False)
        engine = Engine(lm, EngineConfig(prefix_cache=False), load_tokenizer(checkpoint),
                        generation_defaults(checkpoint))
        engine.warm_up(prompt_tokens)
        params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens, stop_ids=())
        prompts = [random_ids(prompt_tokens, seed=100 + i) for i in range(requests)]
        one_s, one_tokens, _ = _serve_all(engine, 1, prompts, params)
        all_s, all_tokens, batched = _serve_all(engine, requests, prompts, params)
        step_one = _decode_step_s(engine, prompts[:1], 9)
        step_all = _decode_step_s(engine, prompts, 9)
        # the same with decode steps as graph pieces (model/decode_graphs.py)
        engine.graphs = DecodeGraphs(lm.model)
        capture_s = engine.graphs.prepare(range(1, requests + 1))   # as serve does at start
        graph_s, graph_tokens, _ = _serve_all(engine, requests, prompts, params)
        graph_one = _decode_step_s(engine, prompts[:1], 9)
        graph_all = _decode_step_s(engine, prompts, 9)
        graphs = engine.graphs
        with overlapping():   # captured with the launch attribute, replayed with it
            engine.graphs = DecodeGraphs(lm.model)
            engine.graphs.prepare(range(1, requests + 1))
            over_s, over_tokens, _ = _serve_all(engine, requests, prompts, params)
            over_one = _decode_step_s(engine, prompts[:1], 9)
            over_all = _decode_step_s(engine, prompts, 9)
    generated = sum(map(len, all_tokens))
    c = batched.counters
    return {
        "bench": "batch", "device": str(lm.device), "checkpoint": str(checkpoint),
        "threads": torch.get_num_threads(), "requests": requests,
        "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
        "one_at_a_time_s": round(one_s, 3), "batched_s": round(all_s, 3),
        "one_at_a_time_tokens_per_s": round(generated / one_s, 2),
        "batched_tokens_per_s": round(generated / all_s, 2),
        "throughput_ratio": round(one_s / all_s, 3),
        "decode_step_1_s": round(step_one, 5), f"decode_step_{requests}_s": round(step_all, 5),
        "step_ratio": round(step_all / step_one, 3),
        "batched_steps": c.steps, "max_batch_seen": c.max_batch_seen,
        "same_tokens": one_tokens == all_tokens,
        "graphs": {"mode": graphs.mode, "disabled": graphs.disabled,
                   "capture_s": round(capture_s, 3),
                   "batched_s": round(graph_s, 3),
                   "batched_tokens_per_s": round(generated / graph_s, 2),
                   "throughput_vs_batched": round(all_s / graph_s, 3),
                   "decode_step_1_s": round(graph_one, 5),
                   f"decode_step_{requests}_s": round(graph_all, 5),
                   "step_speedup_1": round(step_one / graph_one, 3),
                   f"step_speedup_{requests}": round(step_all / graph_all, 3),
                   "same_tokens": graph_tokens == one_tokens},
        "overlapping": {"batched_s": round(over_s, 3),
                        "decode_step_1_s": round(over_one, 5),
                        f"decode_step_{requests}_s": round(over_all, 5),
                        "step_speedup_1": round(graph_one / over_one, 3),
                        f"step_speedup_{requests}": round(graph_all / over_all, 3),
                        "same_tokens": over_tokens == one_tokens},
    }


def main(argv: list[str] | None = None) -> int:
    """``v4coder bench batch [--requests N] [--prompt N] [--new-tokens N] ...`` → one JSON line."""
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--requests", type=int, default=8)
        p.add_argument("--prompt", type=int, default=256, dest="prompt_tokens")
        p.add_argument("--new-tokens", type=int, default=32)

    return toy_bench_main(
        "v4coder bench batch", __doc__, argv, "small", options,
        lambda a: None if min(a.requests, a.prompt_tokens, a.new_tokens) >= 1
        else "--requests, --prompt and --new-tokens must be ≥ 1",
        lambda a: bench_batch(a.checkpoint, a.requests, a.prompt_tokens, a.new_tokens,
                              preset=a.preset, device=a.device))

if __name__ == "__main__":
    raise SystemExit(main())
