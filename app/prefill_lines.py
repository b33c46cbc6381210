"""Which prefill progress events a text log prints: a prompt read in more than one chunk gets a
line at each new tenth and one at the end; a prompt read at once (most agent turns, which
restore the transcript from the prefix cache) gets none."""

from __future__ import annotations

from agent.events import PrefillEvent


class PrefillLines:
    def __init__(self) -> None:
        self.tenth = -1   # the last tenth printed for the prompt being read (-1: none yet)

    def wants(self, event: PrefillEvent) -> bool:
        if event.done == event.total:
            shown, self.tenth = self.tenth >= 0, -1
            return shown
        tenth = 10 * event.done // max(1, event.total)
        if event.done == event.cached or tenth <= self.tenth:
            return False
        self.tenth = tenth
        return True
