"""Archiving large tool-call *arguments* (a write_file's content, an edit's strings).

An assistant turn that called ``write_file`` with 200 KB of content carries those 200 KB in
its ``tool_calls[k].function.arguments`` for the rest of the session. Compaction
(agent.context.compaction) archives them like tool outputs: every string inside the
arguments (at any depth) of at least ``min_chars`` characters goes to the archive under the
id ``arg-<message index>-<call index>-<n>`` and is replaced, in place, by a one-line stub::

    [archived tool argument arg-5-0-0 (content): 4000 lines, first line: import os; call recall(id="arg-5-0-0") to see it again]

The arguments stay a JSON object with the same keys (the chat encoding parses them), and
``recall(id)`` returns the original string exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agent.context.archive import Archive, archived_stub

ARG_ID_PREFIX = "arg-"
ARG_STUB_PREFIX = "[archived tool argument "


def arg_stub(aid: str, key: str, text: str) -> str:
    return archived_stub(f"{ARG_STUB_PREFIX}{aid} ({key})", aid, text)


def parsed_arguments(call: dict[str, Any]) -> Any:
    """The call's arguments as a JSON value (None when they are not valid JSON)."""
    args = call.get("function", {}).get("arguments")
    if isinstance(args, str):
        try:
            return json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    return args


def _large_strings(value: Any, min_chars: int, path: str = "") -> list[str]:
    """Key paths (``content``, ``edits.0.new``) of archivable strings, in document order."""
    if isinstance(value, str):
        return [path] if len(value) >= min_chars and not value.startswith(ARG_STUB_PREFIX) else []
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    out: list[str] = []
    for key, child in items:
        out.extend(_large_strings(child, min_chars, f"{path}.{key}" if path else str(key)))
    return out


def has_large_arguments(call: dict[str, Any], min_chars: int) -> bool:
    args = parsed_arguments(call)
    return args is not None and bool(_large_strings(args, min_chars))


def _replace(value: Any, path: list[str], new: str) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[int(head)] = _replace(copy[int(head)], rest, new)
    return copy


def _lookup(value: Any, path: list[str]) -> Any:
    for part in path:
        value = value[part] if isinstance(value, dict) else value[int(part)]
    return value


@dataclass(slots=True)
class ArchivedCall:
    arguments: str | dict[str, Any]  # the new arguments, in the form the message had
    ids: list[str] = field(default_factory=list)
    chars_saved: int = 0


def archive_call(archive: Archive, index: int, call_index: int, call: dict[str, Any],
                 min_chars: int) -> ArchivedCall | None:
    """Archive the large strings of one call's arguments; None when there are none."""
    args = parsed_arguments(call)
    paths = _large_strings(args, min_chars) if args is not None else []
    if not paths:
        return None
    result = ArchivedCall(arguments="")
    call_id = str(call.get("id") or "")
    existing = sum(1 for k in archive.entries if k.startswith(f"{ARG_ID_PREFIX}{index}-{call_index}-"))
    for n, key in enumerate(paths, existing):
        parts = key.split(".")
        text = _lookup(args, parts)
        aid = archive.put(text, index, call_id, aid=f"{ARG_ID_PREFIX}{index}-{call_index}-{n}",
                          call=call_index, key=key)
        short = arg_stub(aid, key, text)
        args = _replace(args, parts, short)
        result.ids.append(aid)
        result.chars_saved += len(text) - len(short)
    original = call.get("function", {}).get("arguments")
    result.arguments = json.dumps(args, ensure_ascii=False) if isinstance(original, str) else args
    return result
