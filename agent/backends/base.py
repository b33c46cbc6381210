"""The one protocol every model backend speaks.

A backend takes the conversation (OpenAI-style message dicts, the same shape the V4
encoder renders) plus the offered tools, streams ``TextDelta`` events while the model
writes, and ends with one ``Completion``: the visible text, the reasoning, the tool calls
(each already validated against the offered tools) and the token usage.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.events import PrefillEvent, TextDelta


class BackendError(Exception):
    """The backend could not produce a completion (unreachable server, bad answer...)."""


@dataclass(slots=True)
class Sampling:
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 8192
    seed: int | None = None


@dataclass(slots=True)
class ToolCall:
    """One tool call the model asked for. ``error`` is set when the call is malformed:
    such a call is never executed, and neither is any other call of the same reply."""

    id: str
    name: str
    arguments: dict[str, Any]
    raw_arguments: str = ""
    error: str | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass(slots=True)
class Completion:
    content: str
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    # A malformed tool-call block that produced no usable call list (e.g. unclosed block).
    format_error: str | None = None
    # The raw text of the reply as the model wrote it (DSML backends), for the transcript.
    raw: str = ""
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"

    @property
    def has_errors(self) -> bool:
        return self.format_error is not None or any(c.error for c in self.tool_calls)


@dataclass(slots=True)
class CompletionRequest:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]  # OpenAI format: {"type": "function", "function": {...}}
    sampling: Sampling = field(default_factory=Sampling)
    thinking: bool = False


class Backend(Protocol):
    name: str
    model: str

    def stream(self, request: CompletionRequest) -> Iterator[TextDelta | PrefillEvent | Completion]:
        """Yield TextDelta events as text arrives, then exactly one Completion last. A backend
        that knows how far it is into the prompt may yield PrefillEvent before the text.
        Raise BackendError when no completion can be produced."""
        ...
