"""The patch a headless run produces: the starting commit vs the final working tree.

New files are included, the agent's scratch files are not (``SCRATCH_PATTERNS`` on any
path component of a file that did not exist at the start). The user's index is never
touched: the diff is built in a temporary index. ``check_applies`` proves the patch with
``git apply --check`` on a clean checkout of the starting commit (a temporary worktree).
"""

from __future__ import annotations

import fnmatch
import tempfile
from pathlib import Path

from tools.gitutil import git_out, run_git, split_z, temporary_index

SCRATCH_PATTERNS = (
    "repro*.py", "reproduce*", "scratch*", "tmp_*", "debug_*.py", "*.orig", "*.rej", "*.bak",
    "*.swp", "*.pyc", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
)


def is_scratch(path: str, patterns: tuple[str, ...] = SCRATCH_PATTERNS) -> bool:
    return any(fnmatch.fnmatch(part, pat) for part in path.split("/") for pat in patterns)


def working_tree_patch(repo: Path, base: str, extra_excludes: tuple[str, ...] = ()) -> str:
    patterns = SCRATCH_PATTERNS + extra_excludes
    with temporary_index(repo) as env:
        run_git(repo, "add", "-A", env=env)
        added = git_out(repo, "diff", "--cached", "--name-only", "--diff-filter=A", "-z", base, env=env)
        scratch = [p for p in split_z(added) if is_scratch(p, patterns)]
        for i in range(0, len(scratch), 200):
            run_git(repo, "rm", "--cached", "-q", "--ignore-unmatch", "--", *scratch[i:i + 200], env=env)
        return git_out(repo, "diff", "--cached", "--binary", base, env=env)


def check_applies(repo: Path, base: str, patch: str) -> tuple[bool, str]:
    """-> (ok, message). An empty patch applies trivially."""
    if not patch.strip():
        return True, "empty patch"
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "clean"
        run_git(repo, "worktree", "add", "--detach", "-q", str(tree), base)
        try:
            patch_file = Path(tmp) / "p.diff"
            patch_file.write_text(patch, encoding="utf-8", errors="surrogateescape")
            proc = run_git(tree, "apply", "--check", str(patch_file), check=False)
            return proc.returncode == 0, "applies cleanly" if proc.returncode == 0 else proc.stderr.strip()
        finally:
            run_git(repo, "worktree", "remove", "--force", str(tree), check=False)
            run_git(repo, "worktree", "prune", check=False)
