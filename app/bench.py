"""``v4coder bench WHAT [options]``: measurements printed as JSON, one object per line.

Comparisons are ratios measured in the same run; absolute times mean something only on the
machine they were measured on (quote GPU numbers from a GPU machine, see docs/PERF.md).

    pack [PATH ...]          pack time vs raw tokenizer time, cached re-pack, prefix stability
    tui                      first paint, lag of a replayed 200 tokens/s stream
    kernels [--full-size]    each Triton kernel vs its torch reference
    compile [--arch 90]      each Triton kernel compiled for sm_90 here (no GPU): registers,
                             spills, shared memory, occupancy
    choices --from ROWS      kernel launch choices for a GPU from one `kernels` run's rows
    choices --measure        the same, measured on this GPU, into the user's cache
    engine                   chunked prefill scaling, time to first token with a cached prefix
    batch                    continuous batching: throughput and decode-step time vs one at a time
    mtp                      MTP speculation: acceptance, cost of a draft + verify cycle, break-even
    launches                 kernel launches and host syncs of one decode step (host overhead)
    offload                  expert-cache hit rate and bytes moved per token
    model                    load time, resident bytes / checkpoint bytes, decode tokens/s
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable


def _tui(argv: list[str]) -> int:
    from app.tui.bench import bench_tui
    if argv:
        print("v4coder bench tui: takes no options", file=sys.stderr)
        return 2
    print(json.dumps(bench_tui()))
    return 0


# name -> (module, function taking argv and returning an exit status)
ENTRY_POINTS = {
    "pack": ("agent.context.cli", "bench_pack_main"),
    "tui": ("app.bench", "_tui"),
    "kernels": ("model.bench_kernels", "main"),
    "compile": ("model.bench_compile", "main"),
    "choices": ("model.kernels.choices", "main"),
    "engine": ("model.bench_engine", "main"),
    "batch": ("model.bench_batch", "main"),
    "mtp": ("model.bench_mtp", "main"),
    "launches": ("model.bench_launches", "main"),
    "offload": ("model.bench_offload", "main"),
    "model": ("model.bench_model", "main"),
}
BENCHES = tuple(ENTRY_POINTS)


def _entry(name: str) -> Callable[[list[str]], int]:
    module, function = ENTRY_POINTS[name]
    return getattr(importlib.import_module(module), function)


def bench_main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    what, rest = argv[0], argv[1:]
    if what not in BENCHES:
        print(f"v4coder bench: unknown benchmark {what!r}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    try:
        entry = _entry(what)
    except ImportError as exc:
        print(f"v4coder bench {what}: not available in this build ({exc.name})", file=sys.stderr)
        return 2
    return entry(rest)
