"""Diffs for edit_file / write_file calls, computed from the call's arguments and the file
as it is *before* the tool runs (the worker computes it while the loop is paused at the
tool_call event), plus the working-tree diff for /diff."""

from __future__ import annotations

import difflib
import subprocess
from pathlib import Path
from typing import Any

DIFF_TOOLS = ("edit_file", "write_file")


def _read(repo: Path, rel: str) -> str | None:
    try:
        path = (repo / rel).resolve()
        if not path.is_relative_to(repo.resolve()) or not path.is_file():
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _unified(rel: str, before: str, after: str, existed: bool) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True),
        fromfile=f"a/{rel}" if existed else "/dev/null", tofile=f"b/{rel}", n=3)
    out = []
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def call_diff(repo: Path, tool: str, args: dict[str, Any]) -> str:
    """The unified diff this call would make ("" when it can't be computed)."""
    rel = str(args.get("path") or "")
    if tool not in DIFF_TOOLS or not rel:
        return ""
    current = _read(repo, rel)
    if tool == "write_file":
        return _unified(rel, current or "", str(args.get("content") or ""), current is not None)
    old = str(args.get("old_string") or "")
    new = str(args.get("new_string") or "")
    if current is not None and old and old in current:
        after = current.replace(old, new) if args.get("replace_all") else current.replace(old, new, 1)
        return _unified(rel, current, after, True)
    # The exact text is not in the file (the tool may match it loosely): show the strings.
    return _unified(rel, old, new, True)


def working_tree_diff(repo: Path) -> str:
    """``git diff HEAD`` plus untracked files, as one unified diff."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                                  timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    has_head = bool(git("rev-parse", "-q", "--verify", "HEAD").strip())
    diff = git("diff", "HEAD") if has_head else git("diff")
    for rel in git("ls-files", "--others", "--exclude-standard").splitlines():
        text = _read(repo, rel)
        if text is not None:
            diff += _unified(rel, "", text, False)
    return diff


def diff_stats(diff: str) -> tuple[int, int]:
    added = sum(1 for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
    removed = sum(1 for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---"))
    return added, removed
