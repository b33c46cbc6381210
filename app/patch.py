"""The patch a headless run produces: the starting commit vs the final working tree.

New files are included, the agent's scratch files are not (``SCRATCH_PATTERNS`` on any
path component of a file that did not exist at the start). The user's index is never
touched: the diff is built in a temporary index. ``check_applies`` proves the patch with
``git apply --check`` on a clean checkout of the starting commit (a temporary worktree).
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import tempfile
from pathlib import Path

SCRATCH_PATTERNS = (
    "repro*.py", "reproduce*", "scratch*", "tmp_*", "debug_*.py", "*.orig", "*.rej", "*.bak",
    "*.swp", "*.pyc", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
)


class GitError(Exception):
    pass


def git(repo: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args[:3])} failed: {proc.stderr.strip().splitlines()[-1:] or ['?']}"[:300])
    return proc.stdout


def head_commit(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


def is_scratch(path: str, patterns: tuple[str, ...] = SCRATCH_PATTERNS) -> bool:
    return any(fnmatch.fnmatch(part, pat) for part in path.split("/") for pat in patterns)


def working_tree_patch(repo: Path, base: str, extra_excludes: tuple[str, ...] = ()) -> str:
    patterns = SCRATCH_PATTERNS + extra_excludes
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(repo, "read-tree", "HEAD", env=env)
        git(repo, "add", "-A", env=env)
        added = git(repo, "diff", "--cached", "--name-only", "--diff-filter=A", "-z", base, env=env)
        scratch = [p for p in added.split("\0") if p and is_scratch(p, patterns)]
        for i in range(0, len(scratch), 200):
            git(repo, "rm", "--cached", "-q", "--ignore-unmatch", "--", *scratch[i:i + 200], env=env)
        return git(repo, "diff", "--cached", "--binary", base, env=env)


def check_applies(repo: Path, base: str, patch: str) -> tuple[bool, str]:
    """-> (ok, message). An empty patch applies trivially."""
    if not patch.strip():
        return True, "empty patch"
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "clean"
        git(repo, "worktree", "add", "--detach", "-q", str(tree), base)
        try:
            patch_file = Path(tmp) / "p.diff"
            patch_file.write_text(patch, encoding="utf-8")
            proc = subprocess.run(["git", "-C", str(tree), "apply", "--check", str(patch_file)],
                                  capture_output=True, text=True)
            ok = proc.returncode == 0
            return ok, "applies cleanly" if ok else proc.stderr.strip()
        finally:
            git(repo, "worktree", "remove", "--force", str(tree), check=False)
            git(repo, "worktree", "prune", check=False)
