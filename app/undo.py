"""``v4coder undo``: restore the working tree to the checkpoint taken before the last
mutating tool call (untracked files included). Your branches, index and stash are untouched."""

from __future__ import annotations

import sys
from pathlib import Path

from tools.base import ToolError
from tools.checkpoint import undo_last


def undo_main(repo: Path) -> int:
    try:
        sha = undo_last(repo)
    except ToolError as exc:
        print(f"v4coder: cannot undo: {exc}", file=sys.stderr)
        return 2
    if sha is None:
        print("v4coder: nothing to undo (no checkpoints in this repository)", file=sys.stderr)
        return 1
    print(f"v4coder: restored the working tree to checkpoint {sha[:12]}", file=sys.stderr)
    return 0
