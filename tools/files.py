"""File tools: read_file, list_files, search, edit_file, write_file.

Each function takes the ToolContext plus the model's arguments, returns the text shown to
the model, and raises ToolError for expected failures. Paths are repo-relative.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tools.base import ToolContext, ToolError
from tools.edit_match import apply_edit
from tools.listing import matches_glob, repo_files
from tools.paths import is_inside_git_dir, is_secret_path, relative_to_repo, resolve_in_repo
from tools.textfile import (
    TextFile,
    atomic_write_bytes,
    count_lines,
    decode_text,
    looks_binary,
    read_text,
)

MAX_READ_LINES = 2000
MAX_LINE_CHARS = 2000
MAX_LISTED_FILES = 1000
MAX_SEARCH_HITS = 200
MAX_HIT_CHARS = 300
MAX_SEARCH_FILE_BYTES = 5_000_000
SNIPPET_CONTEXT = 2
MAX_SNIPPET_LINES = 40


def _refuse_secret(ctx: ToolContext, rel: str) -> None:
    if not ctx.allow_secrets and is_secret_path(rel):
        raise ToolError(f"refused: {rel} looks like a secret file (credentials, keys, .env); "
                        "it is kept out of the model's context unless secrets are allowed")


def _numbered(lines: list[str], first: int, last: int) -> str:
    width = max(4, len(str(last)))
    out = []
    for number in range(first, last + 1):
        line = lines[number - 1]
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + f" … [line cut, {len(line)} chars]"
        out.append(f"{number:>{width}}| {line}")
    return "\n".join(out)


def _text_lines(text: str) -> list[str]:
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines


def read_file(ctx: ToolContext, path: str, start_line: int | None = None,
              end_line: int | None = None) -> str:
    resolved = resolve_in_repo(ctx.repo, path)
    rel = relative_to_repo(ctx.repo, resolved)
    _refuse_secret(ctx, rel)
    lines = _text_lines(read_text(resolved, rel, strict=False).text)
    total = len(lines)
    if total == 0:
        return f"{rel}: empty file"
    first = 1 if start_line is None else int(start_line)
    last = total if end_line is None else min(int(end_line), total)
    if first < 1:
        raise ToolError("start_line is 1-based and must be at least 1")
    if first > total:
        raise ToolError(f"start_line {first} is past the end of {rel} ({total} lines)")
    if last < first:
        raise ToolError(f"end_line {end_line} is before start_line {first}")
    note = ""
    if last - first + 1 > MAX_READ_LINES:
        last = first + MAX_READ_LINES - 1
        note = (f"\n[showing lines {first}-{last} of {total}; call read_file with "
                f"start_line={last + 1} to continue]")
    whole = first == 1 and last == total
    header = f"{rel} ({total} lines)" if whole else f"{rel} (lines {first}-{last} of {total})"
    return header + "\n" + _numbered(lines, first, last) + note


def _files_under(ctx: ToolContext, path: str | None, glob: str | None) -> tuple[str, list[str]]:
    resolved = resolve_in_repo(ctx.repo, path or ".")
    rel_base = relative_to_repo(ctx.repo, resolved)
    if resolved.is_file():
        return rel_base, [rel_base]
    if not resolved.is_dir():
        raise ToolError(f"{path} does not exist")
    names = repo_files(ctx.repo, resolved)
    if glob:
        prefix = "" if rel_base == "." else rel_base + "/"
        names = [n for n in names
                 if matches_glob(n, glob) or matches_glob(n.removeprefix(prefix), glob)]
    return rel_base, names


def list_files(ctx: ToolContext, path: str | None = None, glob: str | None = None) -> str:
    rel_base, names = _files_under(ctx, path, glob)
    where = "the repository" if rel_base == "." else rel_base
    if not names:
        return f"no files under {where}" + (f" matching {glob!r}" if glob else "")
    shown = names[:MAX_LISTED_FILES]
    out = "\n".join(shown)
    if len(names) > len(shown):
        out += (f"\n[{len(names) - len(shown)} more files not shown; "
                "narrow with path or glob]")
    return out


def _compile(pattern: str) -> tuple[re.Pattern[str], str]:
    try:
        return re.compile(pattern), ""
    except re.error as exc:
        return re.compile(re.escape(pattern)), f"[invalid regex ({exc}); searched as literal text]\n"


def search(ctx: ToolContext, pattern: str, path: str | None = None,
           glob: str | None = None) -> str:
    if not pattern:
        raise ToolError("pattern is empty")
    regex, note = _compile(pattern)
    _, names = _files_under(ctx, path, glob)
    root = Path(os.path.realpath(ctx.repo))
    hits: list[str] = []
    total = secrets_skipped = 0
    files_with_hits = set()
    for name in names:
        real = Path(os.path.realpath(root / name))
        if not real.is_relative_to(root) or not real.is_file():
            continue
        secret = is_secret_path(name) or is_secret_path(real.relative_to(root))
        if secret and not ctx.allow_secrets:
            secrets_skipped += 1
            continue
        try:
            if real.stat().st_size > MAX_SEARCH_FILE_BYTES:
                continue
            data = real.read_bytes()
        except OSError:
            continue
        if looks_binary(data):
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if regex.search(line):
                total += 1
                files_with_hits.add(name)
                if len(hits) < MAX_SEARCH_HITS:
                    text = line if len(line) <= MAX_HIT_CHARS else line[:MAX_HIT_CHARS] + " …"
                    hits.append(f"{name}:{number}:{text}")
    out = note + ("\n".join(hits) if hits else f"no matches for {pattern!r}")
    if total > len(hits):
        out += (f"\n[{total} matches in {len(files_with_hits)} files; showing the first "
                f"{len(hits)}; narrow with path or glob]")
    if secrets_skipped:
        out += f"\n[{secrets_skipped} secret files not searched]"
    return out


def _writable(ctx: ToolContext, path: str) -> tuple[Path, str]:
    resolved = resolve_in_repo(ctx.repo, path)
    rel = relative_to_repo(ctx.repo, resolved)
    if rel == ".":
        raise ToolError("path names the repository root, not a file")
    if is_inside_git_dir(ctx.repo, resolved):
        raise ToolError(f"refused: {rel} is inside .git; file tools never write there")
    if resolved.is_dir():
        raise ToolError(f"{rel} is a directory")
    return resolved, rel


def _snippet(text: str, first: int, last: int) -> str:
    lines = _text_lines(text)
    if not lines:
        return ""
    lo = max(1, first - SNIPPET_CONTEXT)
    hi = min(len(lines), last + SNIPPET_CONTEXT, lo + MAX_SNIPPET_LINES - 1)
    return "\n" + _numbered(lines, lo, hi) if lo <= hi else ""


def edit_file(ctx: ToolContext, path: str, old_string: str, new_string: str,
              replace_all: bool = False) -> str:
    resolved, rel = _writable(ctx, path)
    old = old_string.replace("\r\n", "\n")
    new = new_string.replace("\r\n", "\n")
    if old == new:
        raise ToolError("old_string and new_string are identical; nothing would change")
    if not resolved.exists():
        if old:
            raise ToolError(f"{rel} does not exist; to create it pass an empty old_string "
                            "or use write_file")
        atomic_write_bytes(resolved, new.encode("utf-8"))
        return f"created {rel} ({count_lines(new)} lines)"
    _refuse_secret(ctx, rel)
    current = read_text(resolved, rel, strict=True)
    if not old:
        if current.text:
            raise ToolError(f"old_string is empty but {rel} already has content; give the "
                            "text to replace, or use write_file to replace the whole file")
        atomic_write_bytes(resolved, current.encode(new))
        return f"wrote {rel} ({count_lines(new)} lines)"
    outcome = apply_edit(current.text, old, new, bool(replace_all), rel)
    atomic_write_bytes(resolved, current.encode(outcome.text))
    plural = "s" if outcome.count != 1 else ""
    how = "" if outcome.strategy == "exact" else f" (matched {outcome.strategy})"
    return (f"edited {rel}: replaced {outcome.count} occurrence{plural}{how}"
            + _snippet(outcome.text, outcome.first_line, outcome.last_line))


def write_file(ctx: ToolContext, path: str, content: str) -> str:
    resolved, rel = _writable(ctx, path)
    existed = resolved.exists()
    target = TextFile(text=content)
    if existed:
        _refuse_secret(ctx, rel)
        try:
            current = decode_text(resolved.read_bytes(), rel, strict=False)
            if "\r\n" not in content:  # keep an existing CRLF / BOM convention
                target = TextFile(text=content, crlf=current.crlf, bom=current.bom)
        except ToolError:
            pass  # replacing a binary file: write the content as given
    data = target.encode()
    atomic_write_bytes(resolved, data)
    verb = "wrote" if existed else "created"
    return f"{verb} {rel} ({count_lines(content)} lines, {len(data)} bytes)"
