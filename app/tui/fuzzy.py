"""Fuzzy file matching for the @-file picker: subsequence match, scored like an editor's."""

from __future__ import annotations

import subprocess
from pathlib import Path


def repo_file_list(repo: Path, limit: int = 50_000) -> list[str]:
    """Tracked and untracked-but-not-ignored files (``git ls-files``); empty outside git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=repo, capture_output=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    files = sorted({p for p in out.decode("utf-8", "replace").split("\0") if p})
    return files[:limit]


def fuzzy_score(query: str, candidate: str) -> int | None:
    """A score (higher is better) if every query character appears in order, else None."""
    if not query:
        return 0
    q = query.lower()
    c = candidate.lower()
    base = c.rfind("/") + 1
    score = 0
    pos = -1
    prev = -2
    for ch in q:
        pos = c.find(ch, pos + 1)
        if pos < 0:
            return None
        score += 1
        if pos == prev + 1:
            score += 5            # consecutive run
        if pos >= base:
            score += 3            # inside the file name
        if pos == 0 or c[pos - 1] in "/._-":
            score += 4            # start of a word
        prev = pos
    if q in c[base:]:
        score += 20
    return score * 100 - len(candidate)


def fuzzy_rank(query: str, candidates: list[str], limit: int = 20) -> list[str]:
    scored = []
    for cand in candidates:
        s = fuzzy_score(query, cand)
        if s is not None:
            scored.append((-s, cand))
    scored.sort()
    return [cand for _, cand in scored[:limit]]
