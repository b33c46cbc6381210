"""Launch-option sweep of the FP4 MoE paths on a GPU (a device-session script, not a test):
one JSON row per (case, options) with the CUDA-graph time, GB/s, fraction of HBM peak and the
error against the torch reference. Decode: batch-1 pairs (6 experts of V4-Flash); prefill:
2048 tokens over 256 experts. From the repository root:

    for i in 0 1 2 3 4 5 6 7; do python3 docs/perf/sweep_moe.py --warm $i/8 & done; wait
    python3 docs/perf/sweep_moe.py > sweep.jsonl

(the first line compiles every variant in 8 processes side by side into Triton's cache)."""

from __future__ import annotations

import itertools
import json
import sys
import time

import torch

from model import bench_kernels as bk

PEAK_HBM = bk.PEAKS["H200"][0]


def row(name: str, tokens: int, **tiles: int) -> dict:
    case = bk._moe_case(name, tokens, "cuda", torch.bfloat16, **tiles)
    out = {"case": name, "options": tiles, "split_k": case.shape.get("split_k")}
    try:
        err = bk._error(bk._first(case.triton()), bk._first(case.reference()))
        seconds = bk._time_graph(case.triton)
    except Exception as e:  # a row per failure; the sweep goes on
        return {**out, "error": " ".join(f"{type(e).__name__}: {e}".split())[:200]}
    return {**out, "graph_ms": seconds * 1e3, "gbps": case.bytes / seconds / 1e9,
            "hbm_fraction": case.bytes / seconds / PEAK_HBM,
            "bf16_peak_fraction": case.flops / seconds / bk.PEAKS["H200"][1], **err}


def variants() -> list[tuple[str, int, dict]]:
    decode = [("moe_fp4_decode", 1, dict(block_n=n, block_k=k, num_warps=w, split_k=s))
              for n, k, w, s in itertools.product((16, 32, 64), (64, 128, 256), (2, 4, 8),
                                                  (1, 2, 4))
              if n * k // 2 <= 8192 and not (n == 64 and w == 2)]
    return decode + [("moe_fp4_prefill_2048", 2048, dict(block_m=m)) for m in (16, 32, 64, 128)]


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    todo = variants()
    if argv[:1] == ["--warm"]:   # compile only: this process's share of the variants
        shard, shards = (int(x) for x in argv[1].split("/"))
        for name, tokens, tiles in todo[shard::shards]:
            try:
                bk._moe_case(name, tokens, "cuda", torch.bfloat16, **tiles).triton()
            except Exception as e:
                print(f"sweep_moe: {name} {tiles}: {type(e).__name__}: {e}", file=sys.stderr)
        torch.cuda.synchronize()
        return 0
    for name, tokens, tiles in todo:
        print(json.dumps(row(name, tokens, **tiles)), flush=True)
    print(f"sweep_moe: {len(todo)} rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
