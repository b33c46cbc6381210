"""``v4coder bench model``: what the embedded runtime costs on a checkpoint, both residency modes
in one run (model/layers/linear.py): FP8-resident (weights stay as mapped, dequantised per use)
and dequantised once at load.

    bench_model() -> dict    # one JSON-able object
    python -m model.bench_model [--checkpoint DIR] [--preset tiny|small] [--dtype float32|bfloat16]

Per mode: ``load_s``; ``held_bytes`` = bytes of every tensor the model holds (unique storages),
split into ``owned_bytes`` (allocated by the process) and ``mapped_bytes`` (views of the
memory-mapped shards); ``resident_ratio`` = (owned + the whole file, as if every page were
touched) / checkpoint bytes — the issue-3 target is ≤ 1.3; ``rss_delta_bytes`` (informational:
process RSS growth over load + prefill + decode; mapped pages count once touched); ``decode_tok_s`` batch-1
greedy decode through the per-sequence cache after a short prompt (``decode_tok_s_median``: from
the median step, robust to other load on the machine); and whether the logits of both modes are
identical (``logits_max_abs_diff``).

Measured on 2 CPU cores, toy ``small``, float32 (file 161.9 MB): resident_ratio 1.00 vs 2.78,
held_ratio 0.99 vs 2.33, RSS growth / file 0.87 vs 2.31, load 0.06 s vs 0.17 s, median decode
16.9 vs 17.3 tok/s, logits identical (model/layers/linear.py has the other presets / dtypes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from model.generate import load_model
from model.toy import PRESETS, checkpoint_bytes


def mapped_ranges(checkpoint: str | Path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of the checkpoint's shard files (Linux)."""
    root = str(Path(checkpoint).resolve())
    ranges = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].strip().startswith(root + os.sep):
                    lo, hi = (int(v, 16) for v in parts[0].split("-"))
                    ranges.append((lo, hi))
    except OSError:
        pass
    return ranges


def _tensors(module: torch.nn.Module):
    for sub in module.modules():
        for value in vars(sub).values():
            if isinstance(value, torch.Tensor):
                yield value
        yield from sub._buffers.values()
        yield from sub._parameters.values()


def model_bytes(model: torch.nn.Module, checkpoint: str | Path) -> dict[str, int]:
    """Bytes held by ``model``'s tensors (unique storages): ``owned_bytes`` allocated by the
    process, ``mapped_bytes`` views of the checkpoint's memory-mapped shards."""
    ranges = mapped_ranges(checkpoint)
    seen: dict[int, tuple[int, bool]] = {}
    for t in _tensors(model):
        if t is None or t.is_meta:
            continue
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if storage.nbytes() == 0:
            continue
        mapped = t.device.type == "cpu" and any(lo <= ptr < hi for lo, hi in ranges)
        # a view of a mapping (one storage per shard): count only the tensor's own bytes
        key = t.data_ptr() if mapped else ptr
        if key in seen:
            continue
        seen[key] = (t.numel() * t.element_size() if mapped else storage.nbytes(), mapped)
    owned = sum(n for n, m in seen.values() if not m)
    mapped = sum(n for n, m in seen.values() if m)
    return {"owned_bytes": owned, "mapped_bytes": mapped}


def _rss() -> int:
    try:
        with open("/proc/self/statm", encoding="utf-8") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _prompt(n: int, seed: int = 0) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, 128000, (n,), generator=gen).tolist()


def measure(checkpoint: str | Path, fp8_resident: bool, dtype: str = "float32",
            prompt_tokens: int = 32, decode_tokens: int = 32) -> tuple[dict, torch.Tensor]:
    """One mode: (numbers, the prompt's logits for comparison)."""
    rss0 = _rss()
    t0 = time.perf_counter()
    lm = load_model(checkpoint, dtype=dtype, progress=False, fp8_resident=fp8_resident)
    load_s = time.perf_counter() - t0
    file_bytes = checkpoint_bytes(checkpoint)
    held = model_bytes(lm.model, checkpoint)
    prompt = _prompt(prompt_tokens)
    cache = lm.new_cache()
    t0 = time.perf_counter()
    logits = lm.logits(prompt, cache)
    prefill_s = time.perf_counter() - t0
    token = int(logits[-1].argmax())
    steps = []
    for _ in range(decode_tokens):
        t0 = time.perf_counter()
        token = int(lm.logits([token], cache, last_only=True).argmax())
        steps.append(time.perf_counter() - t0)
    decode_s = sum(steps)
    rss_delta = _rss() - rss0
    out = {
        "fp8_resident": fp8_resident, "load_s": round(load_s, 3), **held,
        "held_bytes": held["owned_bytes"] + held["mapped_bytes"],
        "resident_ratio": round((held["owned_bytes"] + file_bytes) / file_bytes, 3),
        "held_ratio": round((held["owned_bytes"] + held["mapped_bytes"]) / file_bytes, 3),
        "rss_delta_bytes": rss_delta,
        "prefill_tok_s": round(prompt_tokens / prefill_s, 1),
        "decode_tok_s": round(decode_tokens / decode_s, 2),
        "decode_tok_s_median": round(1.0 / statistics.median(steps), 2),  # robust to other load
    }
    del lm, cache
    return out, logits.float()


def bench_model(checkpoint: str | Path | None = None, preset: str = "small",
                dtype: str = "float32", prompt_tokens: int = 32, decode_tokens: int = 32) -> dict:
    """Both residency modes on ``checkpoint`` (a fresh toy of ``preset`` when None)."""
    with tempfile.TemporaryDirectory(prefix="v4coder-bench-model-") as tmp:
        if checkpoint is None:
            from model.toy import write_toy_checkpoint
            checkpoint = write_toy_checkpoint(Path(tmp) / "toy", seed=0, preset=preset)
        file_bytes = checkpoint_bytes(checkpoint)
        resident, a = measure(checkpoint, True, dtype, prompt_tokens, decode_tokens)
        once, b = measure(checkpoint, False, dtype, prompt_tokens, decode_tokens)
    diff = float((a - b).abs().max())
    return {
        "checkpoint": str(checkpoint), "preset": preset, "dtype": dtype,
        "threads": torch.get_num_threads(), "checkpoint_bytes": file_bytes,
        "fp8_resident": resident, "dequantised_once": once,
        "logits_max_abs_diff": diff, "logits_identical": diff == 0.0,
        "decode_speed_ratio": round(resident["decode_tok_s"] / once["decode_tok_s"], 3),
        "decode_speed_ratio_median": round(resident["decode_tok_s_median"]
                                           / once["decode_tok_s_median"], 3),
        "target_resident_ratio": 1.3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="v4coder bench model", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="checkpoint dir (default: a fresh toy)")
    parser.add_argument("--preset", default="small", choices=tuple(PRESETS))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--decode-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    result = bench_model(args.checkpoint, args.preset, args.dtype, args.prompt_tokens,
                         args.decode_tokens)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
