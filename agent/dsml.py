"""Parse what the model wrote after ``<｜Assistant｜>`` into reasoning, text and tool calls.

The parser never raises. A malformed tool-call block becomes ``Completion.format_error``
(structure broken: nothing usable) or a ``ToolCall.error`` (one call wrong: unknown tool,
duplicate or unknown parameter, bad JSON literal, missing required parameter). Either way
the agent runs none of the calls of that reply and tells the model why.

Grammar of a reply (chat mode; thinking mode puts ``reasoning</think>`` first)::

    content ["\\n\\n<｜DSML｜tool_calls>\\n" invoke ("\\n" invoke)* "\\n</｜DSML｜tool_calls>"] [EOS]
    invoke := '<｜DSML｜invoke name="N">\\n' (param "\\n")* '</｜DSML｜invoke>'
    param  := '<｜DSML｜parameter name="P" string="true|false">VALUE</｜DSML｜parameter>'

Whitespace between tags is tolerated; anything else between them is an error.
"""

from __future__ import annotations

import json
import re
from typing import Any

from agent.backends.base import Completion, ToolCall
from agent.encoding import (
    DSML,
    EOS,
    INVOKE_CLOSE,
    INVOKE_OPEN,
    PARAM_CLOSE,
    PARAM_OPEN,
    THINK_END,
    TOOL_CALLS_CLOSE,
    TOOL_CALLS_OPEN,
)
from agent.tool_schema import check_call, tools_by_name

_INVOKE_HEAD = re.compile(r'\s+name="([^"\n]*)"\s*>')
_PARAM_HEAD = re.compile(r'\s+name="([^"\n]*)"(?:\s+string="([^"\n]*)")?\s*>')


class _BlockError(Exception):
    pass


def split_reasoning(text: str, thinking: bool) -> tuple[str, str]:
    """-> (reasoning, rest). In thinking mode the reply starts inside ``<think>``."""
    if not thinking:
        return "", text
    end = text.find(THINK_END)
    if end < 0:
        return text, ""  # still thinking when it stopped
    return text[:end], text[end + len(THINK_END):]


def _coerce(value: str, flag: str | None, schema_type: Any) -> Any:
    """string="true" keeps the raw text (numbers/booleans are coerced when the schema asks
    for them and the text is unambiguous); string="false" must be a JSON literal."""
    if flag in (None, "true"):
        if schema_type in ("integer", "number") and re.fullmatch(r"-?\d+(\.\d+)?", value.strip()):
            num = json.loads(value.strip())
            return num if schema_type == "number" or isinstance(num, int) else value
        if schema_type == "boolean" and value.strip() in ("true", "false"):
            return value.strip() == "true"
        return value
    if flag != "false":
        raise ValueError(f'string="{flag}" must be "true" or "false"')
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        if schema_type == "string":
            return value  # a string parameter marked string="false": keep its text
        raise ValueError(f"value {value[:60]!r} is not a valid JSON literal ({exc.msg})") from None


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _parse_invoke(text: str, pos: int, tools: dict[str, dict[str, Any]], index: int
                  ) -> tuple[ToolCall, int]:
    head = _INVOKE_HEAD.match(text, pos)
    if not head:
        raise _BlockError(f"invoke #{index + 1}: expected ' name=\"TOOL\">' after {INVOKE_OPEN}")
    name, pos = head.group(1), head.end()
    props = ((tools.get(name) or {}).get("parameters") or {}).get("properties") or {}
    args: dict[str, Any] = {}
    raw: list[str] = []
    error: str | None = None
    while True:
        pos = _skip_ws(text, pos)
        if text.startswith(INVOKE_CLOSE, pos):
            pos += len(INVOKE_CLOSE)
            break
        if not text.startswith(PARAM_OPEN, pos):
            if pos >= len(text) or text.startswith(TOOL_CALLS_CLOSE, pos) or text.startswith(INVOKE_OPEN, pos):
                raise _BlockError(f"invoke of {name!r} is not closed with {INVOKE_CLOSE}")
            raise _BlockError(f"unexpected text {text[pos:pos + 40]!r} inside invoke of {name!r}")
        phead = _PARAM_HEAD.match(text, pos + len(PARAM_OPEN))
        if not phead:
            raise _BlockError(f"{name}: malformed parameter tag {text[pos:pos + 60]!r}")
        key, flag = phead.group(1), phead.group(2)
        end = text.find(PARAM_CLOSE, phead.end())
        if end < 0:
            raise _BlockError(f"{name}: parameter {key!r} is not closed with {PARAM_CLOSE}")
        value = text[phead.end():end]
        pos = end + len(PARAM_CLOSE)
        raw.append(f"{key}={value}")
        if error:
            continue
        if key in args:
            error = f"{name}: duplicate parameter {key!r}"
            continue
        try:
            args[key] = _coerce(value, flag, (props.get(key) or {}).get("type"))
        except ValueError as exc:
            error = f"{name}: parameter {key!r}: {exc}"
    call = ToolCall(id=f"call_{index}", name=name, arguments=args, raw_arguments="\n".join(raw))
    call.error = error or check_call(name, args, tools)
    return call, pos


def parse_tool_block(text: str, tools: dict[str, dict[str, Any]]) -> tuple[list[ToolCall], str | None]:
    """Parse a block starting at ``<｜DSML｜tool_calls>``. -> (calls, block_error)."""
    pos = len(TOOL_CALLS_OPEN)
    calls: list[ToolCall] = []
    try:
        while True:
            pos = _skip_ws(text, pos)
            if text.startswith(TOOL_CALLS_CLOSE, pos):
                pos += len(TOOL_CALLS_CLOSE)
                break
            if text.startswith(INVOKE_OPEN, pos):
                call, pos = _parse_invoke(text, pos + len(INVOKE_OPEN), tools, len(calls))
                calls.append(call)
                continue
            if pos >= len(text):
                raise _BlockError(f"the tool_calls block is not closed with {TOOL_CALLS_CLOSE}")
            raise _BlockError(f"unexpected text {text[pos:pos + 40]!r} in the tool_calls block")
        if not calls:
            raise _BlockError("the tool_calls block holds no invoke")
        rest = text[pos:].strip()
        if rest:
            raise _BlockError(f"unexpected text after the tool_calls block: {rest[:60]!r}")
    except _BlockError as exc:
        return calls, str(exc)
    return calls, None


def parse_completion(raw: str, tools: list[dict[str, Any]], thinking: bool = False) -> Completion:
    """Raw model text (with or without a final EOS) -> Completion. Never raises."""
    # Generation stops at the end-of-sentence token, so only a final one is structure.
    text = raw.rstrip()
    text = text[: -len(EOS)] if text.endswith(EOS) else raw
    reasoning, body = split_reasoning(text, thinking)
    start = body.find(TOOL_CALLS_OPEN)
    completion = Completion(content=body, reasoning=reasoning, raw=raw)
    if start < 0:
        if DSML in body:
            completion.format_error = (
                f"found {DSML} outside a tool-call block; a tool call must be written as "
                f"{TOOL_CALLS_OPEN} ... {TOOL_CALLS_CLOSE}")
        return completion
    completion.content = body[:start].rstrip("\n")
    calls, error = parse_tool_block(body[start:], tools_by_name(tools))
    completion.tool_calls = calls
    completion.format_error = error
    return completion
