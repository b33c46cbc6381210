"""Find where an edit's ``old_string`` goes, and apply it, without ever guessing.

The cascade, each step only accepted when it finds exactly ONE place:

1. exact substring (``replace_all`` may replace every exact occurrence);
2. whole lines equal after stripping trailing whitespace;
3. whole lines equal except for a uniform change of indentation — the replacement is
   re-indented by the same amount;
4. whole lines equal after collapsing every run of whitespace to one space.

Leading/trailing blank lines of ``old_string`` are ignored by steps 2-4. When a step finds
several places the edit fails with their line numbers; when nothing matches it fails with
the most similar window of the file (difflib), so the model can correct itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from difflib import SequenceMatcher

from tools.base import ToolError

SIMILARITY_THRESHOLD = 0.5
MAX_SIMILARITY_WINDOWS = 20_000
_READ_FILE_PREFIX = re.compile(r"^\s*\d+\| ")


@dataclass(slots=True)
class EditOutcome:
    text: str        # the new content ('\n' line endings)
    count: int       # how many places were replaced
    first_line: int  # 1-based first line of the (first) replacement in the new text
    last_line: int   # 1-based last line of it
    strategy: str    # "exact" or which tolerance made the match


def apply_edit(text: str, old: str, new: str, replace_all: bool = False,
               display: str = "the file") -> EditOutcome:
    """Return the edited text, or raise ToolError explaining why it cannot be applied."""
    if old == new:
        raise ToolError("old_string and new_string are identical; nothing would change")
    if not old:
        raise ToolError("old_string is empty; give the exact text to replace")
    exact = _apply_exact(text, old, new, replace_all, display)
    if exact is not None:
        return exact
    lines = text.split("\n")
    old_lines, new_lines = _trim_blank_edges(old.split("\n"), _split_new(new))
    if old_lines:
        for strategy, matcher in _LINE_STRATEGIES:
            found = [(i, m) for i in range(len(lines) - len(old_lines) + 1)
                     if (m := matcher(lines[i:i + len(old_lines)], old_lines)) is not None]
            if len(found) > 1:
                where = ", ".join(str(i + 1) for i, _ in found[:20])
                raise ToolError(
                    f"old_string matches {len(found)} places in {display} ({strategy}), "
                    f"starting at lines {where}; include more surrounding lines so it is unique")
            if found:
                start, reindent = found[0]
                replacement = reindent(new_lines)
                lines[start:start + len(old_lines)] = replacement
                last = start + max(len(replacement), 1)
                return EditOutcome("\n".join(lines), 1, start + 1, last, strategy)
    raise ToolError(_not_found_message(text, old, new, display))


def _apply_exact(text: str, old: str, new: str, replace_all: bool,
                 display: str) -> EditOutcome | None:
    starts = _occurrences(text, old)
    if not starts:
        return None
    if len(starts) > 1 and not replace_all:
        where = ", ".join(str(text.count("\n", 0, s) + 1) for s in starts[:20])
        raise ToolError(
            f"old_string occurs {len(starts)} times in {display} (at lines {where}); include "
            "more surrounding lines to make it unique, or pass replace_all=true to replace all")
    first_line = text.count("\n", 0, starts[0]) + 1
    replaced = text.replace(old, new) if replace_all else text.replace(old, new, 1)
    new_line_span = new.count("\n") - (1 if new.endswith("\n") else 0)
    return EditOutcome(replaced, len(starts), first_line,
                       first_line + max(new_line_span, 0), "exact")


def _occurrences(text: str, old: str) -> list[int]:
    starts, pos = [], text.find(old)
    while pos != -1:
        starts.append(pos)
        pos = text.find(old, pos + len(old))
    return starts


def _split_new(new: str) -> list[str]:
    if not new:
        return []
    lines = new.split("\n")
    return lines[:-1] if new.endswith("\n") else lines


def _trim_blank_edges(old_lines: list[str], new_lines: list[str]) -> tuple[list[str], list[str]]:
    """Drop blank lines at both ends of old (and the same blank lines of new, if present)."""
    old_lines, new_lines = list(old_lines), list(new_lines)
    while old_lines and not old_lines[0].strip():
        old_lines.pop(0)
        if new_lines and not new_lines[0].strip():
            new_lines.pop(0)
    while old_lines and not old_lines[-1].strip():
        old_lines.pop()
        if new_lines and not new_lines[-1].strip():
            new_lines.pop()
    return old_lines, new_lines


# A matcher compares a window of the file with old's lines and returns how to adapt the
# replacement lines to that window, or None when the window does not match.
Reindent = Callable[[list[str]], list[str]]


def _unchanged(new_lines: list[str]) -> list[str]:
    return list(new_lines)


def _match_trailing_whitespace(window: list[str], old: list[str]) -> Reindent | None:
    if all(w.rstrip() == o.rstrip() for w, o in zip(window, old, strict=True)):
        return _unchanged
    return None


def _leading(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def _common_indent(lines: list[str]) -> str:
    indents = [_leading(line) for line in lines if line.strip()]
    if not indents:
        return ""
    common = indents[0]
    for indent in indents[1:]:
        while not indent.startswith(common):
            common = common[:-1]
    return common


def _reindenter(old_indent: str, file_indent: str) -> Reindent:
    """Shift replacement lines from old_string's indentation to the file's."""
    if old_indent == file_indent:
        return _unchanged

    def reindent(new_lines: list[str]) -> list[str]:
        out = []
        for line in new_lines:
            lead, body = _leading(line), line.lstrip()
            if not body:
                out.append("")
            elif lead.startswith(old_indent):
                out.append(file_indent + lead[len(old_indent):] + body)
            elif lead.strip(" ") == "" and file_indent.strip(" ") == "":
                width = max(0, len(lead) - len(old_indent) + len(file_indent))
                out.append(" " * width + body)
            else:
                out.append(file_indent + body)
        return out

    return reindent


def _match_indentation(window: list[str], old: list[str]) -> Reindent | None:
    old_indent = _common_indent(old)
    file_indent = _common_indent([w for w, o in zip(window, old, strict=True) if o.strip()])
    for w, o in zip(window, old, strict=True):
        if not o.strip():
            if w.strip():
                return None
        elif w.rstrip() != file_indent + o.rstrip()[len(old_indent):]:
            return None
    return _reindenter(old_indent, file_indent)


def _collapse(line: str) -> str:
    return " ".join(line.split())


def _match_collapsed_whitespace(window: list[str], old: list[str]) -> Reindent | None:
    if not all(_collapse(w) == _collapse(o) for w, o in zip(window, old, strict=True)):
        return None
    # Map each indentation old_string used to the one the file really has (tabs vs spaces).
    mapping: dict[str, str] = {}
    for w, o in zip(window, old, strict=True):
        if o.strip():
            mapping.setdefault(_leading(o), _leading(w))
    file_indent = _common_indent([w for w, o in zip(window, old, strict=True) if o.strip()])
    fallback = _reindenter(_common_indent(old), file_indent)

    def reindent(new_lines: list[str]) -> list[str]:
        out = []
        for line in new_lines:
            lead, body = _leading(line), line.lstrip()
            if body and lead in mapping:
                out.append(mapping[lead] + body)
            else:
                out.extend(fallback([line]))
        return out

    return reindent


Matcher = Callable[[list[str], list[str]], Reindent | None]


def _allow_partial_first_line(matcher: Matcher) -> Matcher:
    """Also accept old_string starting at the first non-blank character of its first line
    (a common way to copy text): borrow that line's indentation from the file."""

    def match(window: list[str], old: list[str]) -> Reindent | None:
        found = matcher(window, old)
        lead = _leading(window[0])
        if found is not None or not lead or not old[0] or old[0][0].isspace():
            return found
        partial = matcher(window, [lead + old[0], *old[1:]])
        if partial is None:
            return None

        def adapt(new_lines: list[str]) -> list[str]:
            if new_lines and new_lines[0] and not new_lines[0][0].isspace():
                new_lines = [lead + new_lines[0], *new_lines[1:]]
            return partial(new_lines)

        return adapt

    return match


_LINE_STRATEGIES: tuple[tuple[str, Matcher], ...] = (
    ("ignoring trailing whitespace", _allow_partial_first_line(_match_trailing_whitespace)),
    ("ignoring indentation; replacement re-indented",
     _allow_partial_first_line(_match_indentation)),
    ("ignoring whitespace differences", _allow_partial_first_line(_match_collapsed_whitespace)),
)


def closest_window(text: str, old: str) -> tuple[float, int, int]:
    """(similarity, first line, last line) of the file window most like ``old`` (1-based)."""
    lines = text.split("\n")
    size = max(1, len(old.strip("\n").split("\n")))
    matcher = SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(old.strip("\n"))
    best = (0.0, 1, min(size, len(lines)))
    for start in range(min(max(1, len(lines) - size + 1), MAX_SIMILARITY_WINDOWS)):
        matcher.set_seq1("\n".join(lines[start:start + size]))
        if matcher.real_quick_ratio() <= best[0] or matcher.quick_ratio() <= best[0]:
            continue
        ratio = matcher.ratio()
        if ratio > best[0]:
            best = (ratio, start + 1, min(start + size, len(lines)))
    return best


def _not_found_message(text: str, old: str, new: str, display: str) -> str:
    parts = [f"old_string was not found in {display}."]
    ratio, first, last = closest_window(text, old)
    if ratio >= SIMILARITY_THRESHOLD:
        lines = text.split("\n")
        width = max(4, len(str(last)))
        excerpt = "\n".join(f"{n:>{width}}| {lines[n - 1]}" for n in range(first, last + 1))
        parts.append(f"Did you mean lines {first}-{last} (similarity {ratio:.2f})?\n{excerpt}")
        parts.append("Copy old_string exactly from the file, without the line-number prefix.")
    else:
        parts.append("Nothing in the file is similar; read_file it again before editing.")
    old_lines = [line for line in old.split("\n") if line.strip()]
    if old_lines and all(_READ_FILE_PREFIX.match(line) for line in old_lines):
        parts.append("old_string still has read_file's line-number prefixes ('  12| '); "
                     "remove them.")
    if new.strip() and new in text:
        line = text.count("\n", 0, text.find(new)) + 1
        parts.append(f"Note: new_string already appears at line {line}; "
                     "the edit may have been applied already.")
    return "\n".join(parts)
