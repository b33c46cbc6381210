"""Turn a stream of raw model text into TextDelta events as it arrives.

Reasoning (thinking mode, up to ``</think>``) goes out on the ``reasoning`` channel, the
visible answer on ``text``; the tool-call block is held back (the parser reads it whole at
the end). A piece of text that might be the start of a marker is held until it is not.
"""

from __future__ import annotations

from collections.abc import Iterator

from agent.encoding import EOS, THINK_END, TOOL_CALLS_OPEN
from agent.events import TextDelta


class DsmlTextStreamer:
    def __init__(self, thinking: bool) -> None:
        self._channel = "reasoning" if thinking else "text"
        self._pending = ""
        self._done = False  # inside the tool block or past EOS: emit nothing more

    def _markers(self) -> tuple[str, ...]:
        if self._channel == "reasoning":
            return (THINK_END, TOOL_CALLS_OPEN, EOS)
        return (TOOL_CALLS_OPEN, EOS)

    def feed(self, chunk: str) -> Iterator[TextDelta]:
        if self._done:
            return
        self._pending += chunk
        while True:
            hits = [(self._pending.find(m), m) for m in self._markers()]
            hits = [(i, m) for i, m in hits if i >= 0]
            if not hits:
                break
            pos, marker = min(hits)
            before = self._pending[:pos]
            if marker == TOOL_CALLS_OPEN:
                before = before.rstrip("\n")
            if before:
                yield TextDelta(text=before, channel=self._channel)
            if marker == THINK_END:
                self._pending = self._pending[pos + len(marker):]
                self._channel = "text"
                continue
            self._pending = ""
            self._done = True
            return
        # Hold back a suffix that could begin a marker, and the newlines before it (the
        # blank lines before a tool block are not part of the answer).
        keep = 0
        for marker in self._markers():
            for n in range(min(len(marker) - 1, len(self._pending)), 0, -1):
                if self._pending.endswith(marker[:n]):
                    keep = max(keep, n)
                    break
        head = self._pending[: len(self._pending) - keep]
        emit = head.rstrip("\n")
        self._pending = self._pending[len(emit):]
        if emit:
            yield TextDelta(text=emit, channel=self._channel)

    def flush(self) -> Iterator[TextDelta]:
        if not self._done and self._pending:
            yield TextDelta(text=self._pending, channel=self._channel)
        self._pending = ""
