"""``v4coder`` with no subcommand: the interactive terminal UI (issue: Textual TUI)."""

from __future__ import annotations

import argparse
import sys


def tui_main(args: argparse.Namespace) -> int:
    print("v4coder: the interactive TUI is not built yet; use `v4coder run`, `v4coder demo` "
          "or `v4coder --help`", file=sys.stderr)
    return 2
