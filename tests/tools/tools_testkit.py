"""Helpers shared by the tools tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

TEST_IDENTITY = ("-c", "user.name=Test Person", "-c", "user.email=test@example.invalid")


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` as the test author; return stdout."""
    proc = subprocess.run(["git", *TEST_IDENTITY, *args], cwd=repo, capture_output=True,
                          text=True, check=True)
    return proc.stdout


def write(repo: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def tree_snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file (ignored ones too) and symlink under root except .git: name -> content."""
    snap: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) == root and d == ".git")]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                snap[rel] = "symlink -> " + os.readlink(path)
            elif path.is_file():
                snap[rel] = path.read_bytes()
    return snap


def git_state(repo: Path) -> dict[str, str]:
    """HEAD, branches, stash and the exact bytes of the real index."""
    index = repo / ".git" / "index"
    return {
        "head": subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=repo,
                               capture_output=True, text=True).stdout,
        "head_commit": subprocess.run(["git", "rev-parse", "-q", "--verify", "HEAD"], cwd=repo,
                                      capture_output=True, text=True).stdout,
        "branches": git(repo, "for-each-ref", "refs/heads", "refs/stash"),
        "index": hashlib.sha256(index.read_bytes()).hexdigest() if index.exists() else "none",
    }
