"""Which files a repository holds: git's view (honours .gitignore) or a plain walk."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from tools.gitutil import run_git, split_z

# Skipped by the plain walk used outside git repositories.
_WALK_SKIP_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv",
                             "venv", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox"})


def repo_files(repo: Path, base: Path) -> list[str]:
    """Repo-relative posix paths of the files under ``base`` (a resolved dir in ``repo``).

    In a git work tree: tracked plus untracked-but-not-ignored files that exist on disk.
    Elsewhere: a walk that skips VCS and virtualenv/cache directories. Sorted, never .git.
    """
    root = Path(os.path.realpath(repo))
    rel_base = os.path.relpath(base, root)
    proc = run_git(root, "ls-files", "--cached", "--others", "--exclude-standard", "-z",
                   "--", rel_base, check=False)
    if proc.returncode == 0:
        names = {name for name in split_z(proc.stdout)
                 if os.path.isfile(root / name) or os.path.islink(root / name)}
        return sorted(n for n in names if not n.startswith(".git/") and n != ".git")
    return _walk(root, base)


def _walk(root: Path, base: Path) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _WALK_SKIP_DIRS)
        for name in filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(found)


@lru_cache(maxsize=128)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a glob (``*``, ``**``, ``?``, ``[...]``, ``{a,b}``) into a path regex."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := pattern.find("]", i + 1)) != -1:
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
            continue
        elif char == "{" and (end := pattern.find("}", i + 1)) != -1:
            options = pattern[i + 1:end].split(",")
            out.append("(?:" + "|".join(glob_regex(o).pattern[:-2] for o in options) + ")")
            i = end + 1
            continue
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out) + r"\Z")


def matches_glob(rel_path: str, pattern: str) -> bool:
    """A pattern without '/' matches the file name at any depth; otherwise the whole path."""
    pattern = pattern.strip().removeprefix("./")
    if "/" not in pattern:
        return glob_regex(pattern).match(rel_path.rsplit("/", 1)[-1]) is not None
    return glob_regex(pattern).match(rel_path) is not None
