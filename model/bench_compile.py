"""``v4coder bench compile``: every Triton kernel compiled for an H100/H200 (sm_90) on this
machine, no GPU needed, with what each asks of an SM.

    bench_compile() -> list[dict]   # one JSON-able object per compiled kernel, then a summary

It drives the wrappers of ``bench kernels`` (V4-Flash shapes, bf16 inputs, the launches a GPU
run makes) inside ``CompileOnly`` (model/kernels/cross_compile.py): each launch is compiled by
Triton's GPU compiler and ``ptxas``, not run. A row per distinct kernel specialization: its
constexprs, warps, registers per thread, stack / local bytes (spills), shared memory, the
occupancy those allow and how many times its grid fills an H200's 132 SMs at that occupancy
(``waves``: a launch of 1.2 waves runs two rounds of programs, about as long as one of 2), the
tensor-core instruction its dots became (``wgmma``, or the
slower ``mma.sync``), how its warps share each dot's tile (``dots``,
``cross_compile.dot_layouts``: ``replicated`` > 1 means warps computing the same MMAs), its
global loads by width (``global_loads``: one-byte loads of a uint8 tile mean the compiler
could not prove the addresses aligned and contiguous), and its loops in the SASS (``loops``,
``cross_compile.sass_loops``: each loop body's instructions a warp, barriers, loads, MMAs —
the counts docs/PERF.md reasons with), how the program that finishes a split launch waits
for memory (``finish``, ``cross_compile.finish_waits``: the loads each wait is for — a long
list of ones is a chain of trips to L2), and where it waits for the launch before it (``grid``,
``cross_compile.grid_wait``; with ``--pdl`` every launch overlaps the one before it, and a
kernel that touches global memory before that wait is a failure). A kernel asking for more
shared memory than a block may have counts as a failure: it compiles but cannot launch; so does
one whose loops issue tensor-core MMAs with no asynchronous load (``pipelined``: its loads
wait at every step, as ``wo_b``'s did until session 18). The
summary says which launched kernels no case reached; the exit status is 1 when any kernel
failed. The interpreter (CI's
correctness check) accepts code the compiler rejects — a global that is not a constexpr, an
unsupported op — so this is the check that a GPU session will not start with a compile error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

CHILD_ENV = "V4CODER_COMPILE_CHILD"


def bench_compile(arch: int = 90, full: bool = True,
                  on_row: Callable[[dict], None] | None = None, pdl: bool = False) -> list[dict]:
    """``pdl``: every launch as a launch that overlaps the one before it (``launch.pdl``)."""
    import torch
    import triton

    from model import bench_kernels
    from model.kernels.cross_compile import (
        CompileOnly,
        finish_waits,
        grid_wait,
        launched_kernels,
        pipelined,
        sass,
        sass_loops,
        usage,
    )
    from model.kernels.launch import overlapping
    from model.kernels.residency import occupancy, waves

    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    t0 = time.perf_counter()
    failures = 0
    torch.manual_seed(0)
    with CompileOnly(arch) as cc, overlapping(pdl):
        for build in bench_kernels.cases(full, "cpu", torch.bfloat16):
            case_name = build.args[0]
            before = len(cc.compiled)
            try:
                build().triton()
            except Exception as exc:   # a compile error: report it, go on with the next case
                failures += 1
                emit({"bench": "compile", "case": case_name, "error": _first_line(exc)})
            for c in cc.compiled[before:]:
                use = usage(c.cubin)
                code = sass(c.cubin)
                grid = grid_wait(code)
                if c.launch_pdl and grid["wait"] != "first":
                    failures += 1   # overlaps the launch before it without waiting for it
                loops = sass_loops(code)
                if not pipelined(c.loads, loops):
                    failures += 1   # its MMA loop waits for every step's loads
                shared = max(c.shared, use["static_shared"])
                occupied = occupancy(use["regs"], c.num_warps, shared)
                if occupied["blocks_per_sm"] == 0:
                    failures += 1   # compiles, but asks for more shared memory than a block has
                emit({"bench": "compile", "case": case_name, "kernel": c.kernel,
                      "arch": f"sm_{arch}", "num_warps": c.num_warps, "num_stages": c.num_stages,
                      "constexprs": c.constexprs, "regs": use["regs"],
                      "stack_bytes": use["stack_bytes"], "local_bytes": use["local_bytes"],
                      "shared_bytes": shared, "mma": c.mma, "global_loads": c.loads,
                      **occupied, "programs": c.programs,
                      "waves": waves(c.programs, occupied["blocks_per_sm"]),
                      "dots": c.dots, "loops": loops, "pipelined": pipelined(c.loads, loops),
                      "finish": finish_waits(code),
                      "grid": {"launch_pdl": c.launch_pdl, **grid},
                      "compile_s": round(c.seconds, 2)})
    reached = {c.kernel for c in cc.compiled}
    launched = launched_kernels()
    emit({"bench": "compile", "summary": True, "arch": f"sm_{arch}",
          "triton": triton.__version__, "kernels_launched": len(launched),
          "kernels_compiled": len(reached & set(launched)),
          "not_reached": sorted(set(launched) - reached), "failures": failures,
          "specializations": len(cc.compiled), "seconds": round(time.perf_counter() - t0, 1)})
    return rows


def _first_line(exc: BaseException) -> str:
    """The innermost cause's message, one line (a compile error chains down to the reason)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="v4coder bench compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability ×10 "
                        "(90: H100/H200)")
    parser.add_argument("--reduced", action="store_true",
                        help="the CPU bench's reduced shapes instead of V4-Flash's")
    parser.add_argument("--pdl", action="store_true",
                        help="every launch overlapping the one before it (programmatic "
                             "dependent launch, V4CODER_PDL=1): each kernel must wait for it "
                             "before it touches global memory (row field grid.wait)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1" and not os.environ.get(CHILD_ENV):
        # the interpreter replaces the compiler at import: compile in a child without it
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env[CHILD_ENV] = "1"
        argv = sys.argv[1:] if argv is None else argv
        return subprocess.run([sys.executable, "-m", "model.bench_compile", *argv],
                              env=env).returncode
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("v4coder bench compile: TRITON_INTERPRET=1 is set; the compiler is needed",
              file=sys.stderr)
        return 2
    rows = bench_compile(args.arch, not args.reduced,
                         on_row=lambda row: print(json.dumps(row), flush=True), pdl=args.pdl)
    return 1 if rows[-1]["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
