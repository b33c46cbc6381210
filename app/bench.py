"""``v4coder bench WHAT``: measurements printed as one JSON object per line.

Comparisons are ratios measured in the same run; absolute times mean something only on
the machine they were measured on (quote GPU numbers from a GPU machine)."""

from __future__ import annotations

import argparse
import json
import sys


def _pack(args: argparse.Namespace) -> list[dict]:
    from agent.context.bench import bench_pack
    from agent.context.cli import default_bench_paths
    return [bench_pack(args.paths or default_bench_paths())]


def _tui(args: argparse.Namespace) -> list[dict]:
    from app.tui.bench import bench_tui
    return [bench_tui()]


BENCHES = {"pack": _pack, "tui": _tui}


def bench_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="v4coder bench", description=__doc__)
    parser.add_argument("what", choices=sorted(BENCHES))
    parser.add_argument("paths", nargs="*", help="(pack) directories to pack")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        results = BENCHES[args.what](args)
    except ImportError as exc:
        print(f"v4coder bench {args.what}: not available in this build ({exc.name})", file=sys.stderr)
        return 2
    for result in results:
        print(json.dumps(result))
    return 0
