"""The prompt: a multi-line TextArea. Enter submits; ctrl+j (or shift+enter where the
terminal reports it) inserts a newline; up/down at the first/last line walk the history;
typing @ opens a fuzzy file picker (tab or enter inserts, esc closes)."""

from __future__ import annotations

import re

from textual import events
from textual.message import Message
from textual.widgets import TextArea

from app.tui.file_picker import FilePicker

AT_TOKEN = re.compile(r"(?:^|\s)@([^\s@]*)$")
NEWLINE_KEYS = ("ctrl+j", "shift+enter")


class PromptArea(TextArea):
    DEFAULT_CLASSES = "prompt"

    class Submitted(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, picker: FilePicker | None = None, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, **kwargs)
        self.cursor_blink = False
        self.picker = picker
        self.sent_history: list[str] = []
        self._history_pos: int | None = None
        self._draft = ""

    # -- history -----------------------------------------------------------------------

    def remember(self, text: str) -> None:
        if text and (not self.sent_history or self.sent_history[-1] != text):
            self.sent_history.append(text)
        self._history_pos = None

    def _recall(self, delta: int) -> bool:
        if not self.sent_history:
            return False
        if self._history_pos is None:
            if delta > 0:
                return False
            self._draft = self.text
            pos = len(self.sent_history) - 1
        else:
            pos = self._history_pos + delta
        if pos >= len(self.sent_history):
            self._history_pos = None
            self.load_text(self._draft)
        else:
            self._history_pos = max(0, pos)
            self.load_text(self.sent_history[self._history_pos])
        self.move_cursor(self.document.end)
        return True

    # -- @-file picker -----------------------------------------------------------------

    def _at_query(self) -> str | None:
        row, col = self.cursor_location
        line = self.document.get_line(row)[:col]
        m = AT_TOKEN.search(line)
        return m.group(1) if m else None

    def _update_picker(self) -> None:
        if self.picker is None:
            return
        query = self._at_query()
        if query is None:
            self.picker.hide()
        else:
            self.picker.show_matches(query)

    def _accept_pick(self) -> None:
        assert self.picker is not None
        choice = self.picker.choice
        query = self._at_query()
        self.picker.hide()
        if choice is None or query is None:
            return
        row, col = self.cursor_location
        self.replace(choice + " ", (row, col - len(query)), (row, col))

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self._update_picker()

    # -- keys --------------------------------------------------------------------------

    async def _on_key(self, event: events.Key) -> None:
        key = event.key
        picking = self.picker is not None and self.picker.display
        handled = True
        if picking and key in ("tab", "enter"):
            self._accept_pick()
        elif picking and key == "escape":
            self.picker.hide()
        elif picking and key == "up":
            self.picker.action_cursor_up()
        elif picking and key == "down":
            self.picker.action_cursor_down()
        elif key == "enter":
            text = self.text.strip()
            if text:
                self.remember(text)
                self.load_text("")
                self.post_message(self.Submitted(text))
        elif key in NEWLINE_KEYS:
            self.insert("\n")
        elif key == "up" and self.cursor_at_first_line and self._recall(-1):
            pass
        elif key == "down" and self.cursor_at_last_line and self._recall(+1):
            pass
        else:
            handled = False
        if handled:
            event.stop()
            event.prevent_default()
            return
        await super()._on_key(event)
