"""Server-sent events and OpenAI chat-completion chunks -> TextDelta events + one Completion.

Pure functions and one accumulator, no HTTP: ``openai.py`` feeds them the response lines.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.backends.base import Completion, ToolCall, Usage
from agent.events import PrefillEvent, TextDelta
from agent.tool_schema import check_call, tools_by_name

DONE = "[DONE]"


class StreamError(Exception):
    """The server reported an error, or sent something that is not a chunk."""


PREFILL_COMMENT = "prefill "   # `v4coder serve`: ": prefill {"done", "total", "cached"}"


def iter_sse_data(lines: Iterable[str]) -> Iterator[str | PrefillEvent]:
    """Yield the data of each server-sent event (multi-line data joined with newlines).

    Comment lines (``:``) and the ``event:``/``id:``/``retry:`` fields are skipped, except
    ``v4coder serve``'s prefill progress comments, yielded as PrefillEvent; an event still open
    when the lines end is yielded too."""
    data: list[str] = []
    for line in lines:
        line = line.rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            progress = _prefill_comment(line[1:].strip())
            if progress is not None:
                yield progress
            continue
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
    if data:
        yield "\n".join(data)


def _prefill_comment(text: str) -> PrefillEvent | None:
    if not text.startswith(PREFILL_COMMENT):
        return None
    try:
        d = json.loads(text[len(PREFILL_COMMENT):])
        return PrefillEvent(int(d["done"]), int(d["total"]), int(d.get("cached", 0)))
    except (ValueError, TypeError, KeyError):
        return None   # a comment is never an error


def iter_chunks(lines: Iterable[str]) -> Iterator[dict[str, Any] | PrefillEvent | None]:
    """Yield each chunk as a dict, None for ``[DONE]``, and PrefillEvent for progress comments.

    Tolerates servers that put several ``data:`` lines in one event without blank lines
    between them (each line is then a JSON object of its own)."""
    for data in iter_sse_data(lines):
        if isinstance(data, PrefillEvent):
            yield data
            continue
        if data.strip() == DONE:
            yield None
            continue
        try:
            parts = [json.loads(data)]
        except json.JSONDecodeError:
            if "\n" not in data:
                raise StreamError(f"malformed stream chunk: {_one_line(data)}") from None
            parts = []
            for piece in data.split("\n"):
                if piece.strip() == DONE:
                    parts.append(None)
                elif piece.strip():
                    try:
                        parts.append(json.loads(piece))
                    except json.JSONDecodeError:
                        raise StreamError(f"malformed stream chunk: {_one_line(piece)}") from None
        for part in parts:
            if part is not None and not isinstance(part, dict):
                raise StreamError(f"malformed stream chunk: {_one_line(data)}")
            yield part


def parse_usage(raw: dict[str, Any]) -> Usage:
    details = raw.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") or raw.get("prompt_cache_hit_tokens") or 0
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(cached),
    )


def error_message(body: Any) -> str | None:
    """The human message in an OpenAI-style error body, if it is one."""
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err)
    if isinstance(err, str):
        return err
    for key in ("message", "detail"):
        if body.get(key) and "choices" not in body:
            return str(body[key])
    return None


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ChunkAccumulator:
    """Collects one reply from its chunks (or from a whole non-streamed body)."""

    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: dict[int, _PartialCall] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    done: bool = False
    lengths: dict[str, int] = field(default_factory=lambda: {"text": 0, "reasoning": 0})

    def feed(self, chunk: dict[str, Any], whole: bool = False) -> list[TextDelta]:
        """Take one chunk (``whole``: a complete non-streamed response); return its deltas."""
        message = error_message(chunk)
        if message is not None and not chunk.get("choices"):
            raise StreamError(f"server reported an error: {_one_line(message)}")
        if isinstance(chunk.get("usage"), dict):
            self.usage = parse_usage(chunk["usage"])
        deltas: list[TextDelta] = []
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or (choice.get("index") or 0) != 0:
                continue
            delta = choice.get("message" if whole else "delta") or choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                deltas.append(self._text(reasoning, "reasoning"))
            content = delta.get("content")
            if isinstance(content, str) and content:
                deltas.append(self._text(content, "text"))
            for fragment in delta.get("tool_calls") or []:
                if isinstance(fragment, dict):
                    self._add_fragment(fragment, whole)
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return deltas

    def _text(self, text: str, channel: str) -> TextDelta:
        (self.reasoning if channel == "reasoning" else self.content).append(text)
        self.lengths[channel] += len(text)
        return TextDelta(text, channel=channel)

    def _add_fragment(self, fragment: dict[str, Any], whole: bool) -> None:
        index = fragment.get("index")
        call_id = fragment.get("id") or ""
        if whole or not isinstance(index, int):
            known = {c.id for c in self.calls.values()}
            if whole or not self.calls or (call_id and call_id not in known):
                index = len(self.calls)
            else:
                index = max(self.calls)
        call = self.calls.setdefault(index, _PartialCall())
        if call_id and not call.id:
            call.id = str(call_id)
        fn = fragment.get("function") or {}
        name = fn.get("name")
        if isinstance(name, str) and name and name != call.name:
            call.name += name
        args = fn.get("arguments")
        if isinstance(args, str):
            call.arguments.append(args)
        elif args is not None:  # a server that sends the arguments already decoded
            call.arguments.append(json.dumps(args, ensure_ascii=False))

    def completion(self, tools: list[dict[str, Any]]) -> Completion:
        offered = tools_by_name(tools)
        calls = [_finish_call(self.calls[i], offered) for i in sorted(self.calls)]
        return Completion(
            content="".join(self.content),
            reasoning="".join(self.reasoning),
            tool_calls=calls,
            usage=self.usage,
            finish_reason=self.finish_reason or ("tool_calls" if calls else "stop"),
        )


def _finish_call(call: _PartialCall, offered: dict[str, dict[str, Any]]) -> ToolCall:
    raw = "".join(call.arguments)
    call_id = call.id or f"call_{uuid.uuid4().hex[:24]}"
    parsed: Any = {}
    error: str | None = None
    if raw.strip():
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            error = f"arguments are not valid JSON: {exc}"
    if error is None:
        if not call.name:
            error = "tool call without a function name"
        else:
            error = check_call(call.name, parsed, offered)
    arguments = parsed if isinstance(parsed, dict) else {}
    return ToolCall(id=call_id, name=call.name, arguments=arguments, raw_arguments=raw, error=error)


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
