"""Citations in an answer: ``path:line`` or ``path:start-end``, each checked against the repo.

Extraction: a path-like token (letters, digits, ``_ . - /`` with at least one letter; a
leading ``./`` is dropped), a colon, a line number, optionally ``-``/``–`` and an end line.
The token must hold a ``/`` or a ``.`` — or be a known file of the repository, so bare names
such as ``Makefile:3`` count while ``Note:3`` does not. Known files are the packed paths when
the caller has them (then a bare file name that is the base name of exactly one packed path,
``pack.py:10``, is read as that path), else whatever regular file of that name the repository
holds. URLs (``scheme://host:port``) are not citations. A citation is valid when the path is
a file inside the repository (no escaping through ``..`` or links) and
``1 <= start <= end <= number of lines``. Duplicates are reported once, in order of first
appearance.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.context.render import line_count

_CITATION = re.compile(
    r"(?<![\w/.:\-])"                       # not the middle of a longer token or a URL
    r"(?:\./)?(?P<path>[\w.\-]+(?:/[\w.\-]+)*)"
    r":(?P<start>\d+)(?:\s?[-–]\s?(?P<end>\d+))?"
    r"(?![\w])"
)


@dataclass(slots=True, frozen=True)
class Citation:
    path: str
    start: int
    end: int
    valid: bool = False
    reason: str = ""  # why it is invalid ("" when valid)

    @property
    def label(self) -> str:
        return f"{self.path}:{self.start}" + (f"-{self.end}" if self.end != self.start else "")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "start": self.start, "end": self.end, "valid": self.valid}


def extract_citations(text: str, resolve: Callable[[str], str | None] | None = None
                      ) -> list[tuple[str, int, int]]:
    """(path, start, end) for each distinct citation in ``text``, in order.

    ``resolve(token)`` names the known file a token stands for (or None): with it, tokens
    without ``/`` or ``.`` count when they resolve, and every token is replaced by what it
    resolves to."""
    seen: set[tuple[str, int, int]] = set()
    out: list[tuple[str, int, int]] = []
    for m in _CITATION.finditer(text):
        path = m.group("path").rstrip(".")
        if not re.search(r"[A-Za-z]", path):
            continue
        known = resolve(path) if resolve is not None else None
        if known is not None:
            path = known
        elif not ("/" in path or "." in path):
            continue
        start = int(m.group("start"))
        end = int(m.group("end")) if m.group("end") else start
        item = (path, start, end)
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def check_citation(repo: Path, path: str, start: int, end: int,
                   _lines: dict[str, int | None] | None = None) -> Citation:
    """Does ``path:start-end`` name real lines of a file in ``repo``?"""
    root = repo.resolve()
    cache = _lines if _lines is not None else {}
    if path not in cache:
        target = (root / path).resolve()
        n: int | None = None
        if target.is_relative_to(root) and target.is_file():
            try:
                n = line_count(target.read_text(encoding="utf-8", errors="replace"))
            except OSError:
                n = None
        cache[path] = n
    n = cache[path]
    if n is None:
        return Citation(path, start, end, False, "no such file in the repository")
    if start < 1 or end < start:
        return Citation(path, start, end, False, "not a line range")
    if end > n:
        return Citation(path, start, end, False, f"the file has {n} lines")
    return Citation(path, start, end, True)


def known_path_resolver(paths: Collection[str]) -> Callable[[str], str | None]:
    """``token -> path``: a packed path itself, or the one packed path with that base name."""
    known = set(paths)
    by_base: dict[str, list[str]] = {}
    for p in known:
        by_base.setdefault(p.rsplit("/", 1)[-1], []).append(p)

    def resolve(token: str) -> str | None:
        if token in known:
            return token
        if "/" not in token and len(by_base.get(token, ())) == 1:
            return by_base[token][0]
        return None

    return resolve


def repository_file_resolver(repo: Path) -> Callable[[str], str | None]:
    """``token -> token`` when the repository holds a regular file at that path."""
    root = repo.resolve()

    def resolve(token: str) -> str | None:
        target = (root / token).resolve()
        return token if target.is_relative_to(root) and target.is_file() else None

    return resolve


def check_citations(repo: Path, text: str, known_paths: Collection[str] | None = None
                    ) -> list[Citation]:
    """Every citation of ``text``, checked. ``known_paths``: the packed paths, if known."""
    resolve = known_path_resolver(known_paths) if known_paths is not None \
        else repository_file_resolver(repo)
    lines: dict[str, int | None] = {}
    return [check_citation(repo, p, s, e, lines) for p, s, e in extract_citations(text, resolve)]


def citation_report(citations: list[Citation]) -> str:
    """A short human report (for stderr)."""
    if not citations:
        return "citations: none found in the answer\n"
    bad = [c for c in citations if not c.valid]
    out = [f"citations: {len(citations)} ({len(citations) - len(bad)} valid, {len(bad)} invalid)\n"]
    out.extend(f"  invalid: {c.label} ({c.reason})\n" for c in bad)
    return "".join(out)
