"""The /sessions picker: saved sessions of this repository, newest first."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from app.tui.host import session_title


class SessionPicker(ModalScreen[Path | None]):
    BINDINGS = [Binding("escape", "cancel", "close")]

    def __init__(self, sessions: list[Path]) -> None:
        super().__init__()
        self.sessions = sessions

    def compose(self) -> ComposeResult:
        with Vertical(id="sessions-box"):
            yield Static("Sessions (enter opens, esc closes)", id="sessions-title")
            options = [Option(f"{p.stem}  {session_title(p)}", id=str(i))
                       for i, p in enumerate(self.sessions)]
            yield OptionList(*options, id="sessions-list")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.sessions[int(event.option.id or 0)])

    def action_cancel(self) -> None:
        self.dismiss(None)
