"""Where a bench case's GPU time goes, kernel by kernel (a device-session script, not a test):
torch.profiler over 20 calls of each named `bench kernels` case (all when none is named), one
JSON row per case: device ms per call and, per kernel, (ms per call, launches per call).
From the repository root: python3 docs/perf/kernel_split.py [CASE ...] > split.jsonl"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from model import bench_kernels as bk

CALLS = 20


def split(case: bk.Case) -> dict:
    for _ in range(3):
        case.triton()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            case.triton()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name[:80]][0] += event.device_time / 1e3 / CALLS   # µs → ms per call
            kernels[event.name[:80]][1] += 1 / CALLS
    total = sum(ms for ms, _ in kernels.values())
    return {"kernel": case.name, "device_ms_per_call": round(total, 5),
            "kernels_ms_and_launches": {k: [round(ms, 5), round(n, 2)] for k, (ms, n) in
                                        sorted(kernels.items(), key=lambda kv: -kv[1][0])}}


def main(names: list[str]) -> int:
    builds = bk.cases(True, "cuda")
    for build in bk.select(builds, names) if names else builds:
        try:
            print(json.dumps(split(build())), flush=True)
        except Exception as e:   # a row per failure
            print(json.dumps(bk._error_row(bk.case_name(build), "cuda", e)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
