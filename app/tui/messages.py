"""Messages the agent's worker thread posts to the UI thread (post_message is thread-safe)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from textual.message import Message

from agent.backends.base import ToolCall
from agent.events import Event


class AgentEvent(Message):
    """One event of the agent's stream, with the diff of an edit computed before it ran."""

    def __init__(self, event: Event, diff: str = "", turn: int = 0) -> None:
        super().__init__()
        self.event = event
        self.diff = diff
        self.turn = turn


@dataclass(slots=True)
class ApprovalAnswer:
    """Filled in by the UI; the worker waits on ``ready``."""

    choice: str = "n"           # y | a | n
    ready: threading.Event = field(default_factory=threading.Event)


class ApprovalRequest(Message):
    def __init__(self, call: ToolCall, reason: str, diff: str, answer: ApprovalAnswer) -> None:
        super().__init__()
        self.call = call
        self.reason = reason
        self.diff = diff
        self.answer = answer


class TurnFinished(Message):
    """The worker's loop returned (normally, cancelled, or with an exception)."""

    def __init__(self, error: str = "") -> None:
        super().__init__()
        self.error = error


class ContextReady(Message):
    """The context worker finished: the repository is packed (or a resumed session's
    snapshot loaded) and the session's hooks are in place; ``error`` if packing failed."""

    def __init__(self, resumed: bool, error: str = "") -> None:
        super().__init__()
        self.resumed = resumed
        self.error = error


class LoadProgress(Message):
    """Model loading progress: ``fraction`` in [0, 1]; ``done`` hides the bar."""

    def __init__(self, fraction: float, label: str = "", done: bool = False) -> None:
        super().__init__()
        self.fraction = fraction
        self.label = label
        self.done = done
