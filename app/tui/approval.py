"""The approval modal: the diff or the command, and single-key y (yes) / a (always: this
tool for the rest of the session) / n (no, also esc)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from agent.backends.base import ToolCall
from app.tui.tool_card import arguments_text, call_summary, diff_renderable


class ApprovalScreen(ModalScreen[str]):
    """Dismisses with "y", "a" or "n"."""

    BINDINGS = [
        Binding("y", "answer('y')", "yes"),
        Binding("a", "answer('a')", "always"),
        Binding("n", "answer('n')", "no"),
        Binding("escape", "answer('n')", "no", show=False),
    ]

    def __init__(self, call: ToolCall, reason: str, diff: str = "") -> None:
        super().__init__()
        self.call = call
        self.reason = reason
        self.diff = diff

    def compose(self) -> ComposeResult:
        with Vertical(id="approval-box"):
            title = Text("Approve ", style="bold")
            title.append(self.call.name, style="bold magenta")
            title.append(f" {call_summary(self.call.name, self.call.arguments, 60)}")
            yield Static(title, id="approval-title")
            if self.reason:
                yield Static(Text(self.reason, style="italic"), id="approval-reason")
            with VerticalScroll(id="approval-body"):
                if self.diff:
                    yield Static(diff_renderable(self.diff), id="approval-diff")
                else:
                    yield Static(arguments_text(self.call.name, self.call.arguments),
                                 id="approval-args")
            keys = Text()
            for key, word in (("y", "yes"), ("a", f"always {self.call.name}"), ("n", "no")):
                keys.append(f" {key} ", style="bold reverse")
                keys.append(f" {word}   ")
            yield Static(keys, id="approval-keys")

    def action_answer(self, choice: str) -> None:
        self.dismiss(choice)
