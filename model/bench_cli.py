"""The command line every toy-checkpoint bench shares (``v4coder bench engine|batch|mtp``):
--checkpoint / --preset / --device / --threads, a bench's own options, one JSON line out, and
bad input as one line with exit status 2 (options) or 1 (checkpoint, config, run)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def random_ids(n: int, seed: int) -> list[int]:
    """``n`` token ids drawn from the vocabulary (past the special ids), reproducibly."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, 128000, (n,), generator=gen).tolist()


def toy_bench_main(prog: str, doc: str, argv: list[str] | None, default_preset: str,
                   add_options: Callable[[argparse.ArgumentParser], None],
                   check: Callable[[argparse.Namespace], str | None],
                   run: Callable[[argparse.Namespace], dict[str, Any]]) -> int:
    """``check(args)`` → a one-line complaint about the options, or None; ``run(args)`` → the
    bench's JSON-able result."""
    import torch

    from model.checkpoint import CheckpointError
    from model.config import ConfigError
    from model.toy import PRESETS

    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="default: a fresh toy checkpoint")
    p.add_argument("--preset", choices=tuple(PRESETS), default=default_preset)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    add_options(p)
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    complaint = check(args)
    if complaint:
        print(f"{prog}: {complaint}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = run(args)
    except (CheckpointError, ConfigError, ValueError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0
