"""Deltas: what changed in the repository since it was packed, without touching the prefix.

The session appends the delta after the transcript; the packed prefix (and so the
engine's prefix cache) stays valid. Each delta is cumulative against the pack snapshot,
so the latest one supersedes earlier ones. Format, in the pack's numbering style::

    ### path/to/file.py (edited since packing)
    @@ lines 12-13 now (were 12-12) @@
    12 new text
    13 new text
    @@ lines 20-21 deleted (now before line 21) @@
    ### other.py (deleted since packing)
    ### new.py (new since packing)
    1 ...

Line numbers in hunks are the file's current numbering.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING

from agent.context.cache import content_key
from agent.context.render import number_lines, render_body, split_lines
from agent.context.walk import walk_repository

if TYPE_CHECKING:
    from agent.context.pack import PackedContext


def _span(a: int, b: int) -> str:
    return f"{a + 1}-{b}"


def diff_hunks(old: str, new: str) -> str:
    """Numbered hunks with the new content of every changed region of one file."""
    a, b = split_lines(old), split_lines(new)
    out: list[str] = []
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        if tag == "delete":
            out.append(f"@@ lines {_span(i1, i2)} deleted (now before line {j1 + 1}) @@\n")
            continue
        was = _span(i1, i2) if i2 > i1 else f"none, inserted after line {i1}"
        out.append(f"@@ lines {_span(j1, j2)} now (were {was}) @@\n")
        out.append(number_lines(b[j1:j2], j1 + 1))
    return "".join(out)


def render_delta(packed: PackedContext, repo: Path) -> str:
    """Every file added, deleted or edited since ``packed``; "" when nothing changed."""
    walked = walk_repository(repo)
    now = {f.path: f for f in walked.files}
    parts: list[str] = []
    for path in sorted(set(packed.keys) | set(now)):
        old_key = packed.keys.get(path)
        cur = now.get(path)
        if cur is None:
            parts.append(f"### {path} (deleted since packing)\n")
        elif old_key is None:
            parts.append(f"### {path} (new since packing)\n" + render_body(cur.text))
        elif content_key(path, cur.data) != old_key:
            hunks = diff_hunks(packed.contents.get(path, ""), cur.text)
            if hunks:
                parts.append(f"### {path} (edited since packing)\n" + hunks)
    return "".join(parts)
