"""``v4coder pack`` and ``v4coder bench pack`` entry points (wired up by app/cli.py).

``v4coder pack --repo DIR [--budget N] [--question Q] [--stats] [--no-cache]`` prints one
JSON object (the pack's stats; with ``--text`` the packed prefix instead). Bad input gives
one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.context.pack import DEFAULT_BUDGET, pack_repository


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, exit 2, no usage dump
        raise _BadInput(message)


class _BadInput(Exception):
    pass


def _parser(prog: str) -> _Parser:
    p = _Parser(prog=prog, add_help=True)
    p.add_argument("--repo", required=True, help="repository directory")
    p.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="token budget")
    p.add_argument("--question", default=None, help="question or issue text used for ranking")
    p.add_argument("--stats", action="store_true", help="print the stats JSON (the default)")
    p.add_argument("--text", action="store_true", help="print the packed text instead")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    return p


def pack_main(argv: list[str]) -> int:
    """``v4coder pack``: returns the process exit status."""
    try:
        args = _parser("v4coder pack").parse_args(argv)
        repo = Path(args.repo)
        if not repo.is_dir():
            raise _BadInput(f"--repo {args.repo}: not a directory")
        if args.budget <= 0:
            raise _BadInput(f"--budget {args.budget}: must be a positive number of tokens")
    except _BadInput as exc:
        print(f"v4coder pack: {exc}", file=sys.stderr)
        return 2
    try:
        packed = pack_repository(repo, args.budget, args.question, use_cache=not args.no_cache)
    except OSError as exc:
        print(f"v4coder pack: {exc}", file=sys.stderr)
        return 1
    if args.text:
        sys.stdout.write(packed.text)
    else:
        print(json.dumps(packed.stats(), ensure_ascii=False))
    return 0


def default_bench_paths() -> list[str]:
    """This Python's top-level stdlib modules, the whole stdlib, and numpy (from PyPI) if installed."""
    stdlib = Path(argparse.__file__).parent
    paths = [f"{stdlib}::*.py", str(stdlib)]
    try:
        import numpy

        paths.append(str(Path(numpy.__file__).parent))
    except ImportError:
        pass
    return paths


def bench_pack_main(argv: list[str]) -> int:
    """``v4coder bench pack [PATH[::GLOB] ...] [--budget N]``: one JSON object, exit 1 if a
    target is missed. Without paths: :func:`default_bench_paths`."""
    from agent.context.bench import bench_pack

    p = _Parser(prog="v4coder bench pack")
    p.add_argument("paths", nargs="*", help="directories, optionally DIR::GLOB")
    p.add_argument("--budget", type=int, default=DEFAULT_BUDGET)
    try:
        args = p.parse_args(argv)
        paths = args.paths or default_bench_paths()
        for spec in paths:
            if not Path(spec.partition("::")[0]).is_dir():
                raise _BadInput(f"{spec}: not a directory")
    except _BadInput as exc:
        print(f"v4coder bench pack: {exc}", file=sys.stderr)
        return 2
    result = bench_pack(paths, args.budget)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":  # python -m agent.context.cli --repo .
    raise SystemExit(pack_main(sys.argv[1:]))
