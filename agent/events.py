"""Typed events: the one stream the TUI, headless mode, the server and the tests consume.

Every event serialises to one JSON object with a ``type`` field (one JSONL line in
headless mode). ``ToolResult.output`` is exactly the text sent back to the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(slots=True)
class Event:
    type: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


@dataclass(slots=True)
class TextDelta(Event):
    """A piece of the model's visible answer (``channel="text"``) or reasoning (``"reasoning"``)."""

    type: ClassVar[str] = "text_delta"
    text: str
    channel: str = "text"


@dataclass(slots=True)
class ToolCallEvent(Event):
    type: ClassVar[str] = "tool_call"
    id: str
    tool: str
    arguments: dict[str, Any]


@dataclass(slots=True)
class ToolResultEvent(Event):
    type: ClassVar[str] = "tool_result"
    id: str
    tool: str
    ok: bool
    output: str


@dataclass(slots=True)
class UsageEvent(Event):
    type: ClassVar[str] = "usage"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class PrefillEvent(Event):
    """The model is reading the prompt: ``done`` of ``total`` prompt tokens are in its cache,
    ``cached`` of them restored from the prefix cache (the embedded backend, or ``v4coder serve``
    through the openai backend; a long prompt's first turn takes minutes). The last one before
    the reply has ``done == total``."""

    type: ClassVar[str] = "prefill"
    done: int
    total: int
    cached: int = 0

    def describe(self) -> str:
        pct = 100 * self.done // max(1, self.total)
        return (f"reading the prompt: {pct}% ({_tokens(self.done)} of {_tokens(self.total)} "
                f"tokens, {_tokens(self.cached)} from the prefix cache)")


def _tokens(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}k" if n >= 1_000 else str(n)


@dataclass(slots=True)
class ErrorEvent(Event):
    type: ClassVar[str] = "error"
    message: str
    fatal: bool = False


@dataclass(slots=True)
class CompactionEvent(Event):
    """Old tool outputs were archived (agent.context.compaction): ``ids`` can be passed to
    ``recall(id)``; token counts of the transcript before and after; ``manual`` for /compact."""

    type: ClassVar[str] = "compaction"
    ids: list[str]
    tokens_before: int
    tokens_after: int
    manual: bool = False
    archive: str = ""


@dataclass(slots=True)
class StepEvent(Event):
    """Marks the start of model step ``step`` (1-based)."""

    type: ClassVar[str] = "step"
    step: int


@dataclass(slots=True)
class DoneEvent(Event):
    """The run ended. ``reason`` is one of: finished, step_limit, time_limit, repeated_calls,
    format_errors, cancelled, backend_error, no_tool_call, answered. ``summary`` is finish()'s text."""

    type: ClassVar[str] = "done"
    reason: str
    finished: bool
    steps: int
    summary: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (TextDelta, ToolCallEvent, ToolResultEvent, UsageEvent, ErrorEvent, StepEvent, DoneEvent,
                CompactionEvent, PrefillEvent)
}


def event_from_dict(data: dict[str, Any]) -> Event:
    data = dict(data)
    cls = EVENT_TYPES[data.pop("type")]
    return cls(**data)
