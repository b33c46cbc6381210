"""The status bar: backend and model, a context meter (prompt tokens of 1M, cached prefix
vs new), tokens/s, step count, approval mode, whether a turn is running, how far the model is
into reading a long prompt, and a note while background work (packing the repository, loading
the model) goes on."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

CONTEXT_WINDOW = 1_000_000
METER_CELLS = 12


def human(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.2f}M"
    if n >= 1_000:
        return f"{n / 1_000:.1f}k"
    return str(n)


@dataclass(slots=True)
class StatusState:
    backend: str = ""
    model: str = ""
    mode: str = "ask"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    tokens_per_second: float = 0.0
    step: int = 0
    running: bool = False
    activity: str = ""          # background work in progress ("" when none)
    prefill: str = ""           # how far the model is into a long prompt ("" when not reading)


def meter(used: int, cached: int, window: int = CONTEXT_WINDOW, cells: int = METER_CELLS) -> Text:
    """▕███▒▒░░░▏: █ cached prefix, ▒ new tokens, ░ free."""
    cached = min(cached, used)
    full = min(cells, round(cells * used / window)) if used else 0
    if used and not full:
        full = 1
    cached_cells = min(full, round(cells * cached / window))
    text = Text("▕")
    text.append("█" * cached_cells, style="green")
    text.append("▒" * (full - cached_cells), style="yellow")
    text.append("░" * (cells - full), style="grey50")
    text.append("▏")
    return text


def render_status(s: StatusState) -> Text:
    text = Text()
    text.append(f" {s.backend}", style="bold")
    text.append(f" · {s.model}  ")
    text.append(meter(s.prompt_tokens, s.cached_tokens))
    new = max(0, s.prompt_tokens - s.cached_tokens)
    text.append(f" {human(s.prompt_tokens)}/1M ({human(s.cached_tokens)} cached, {human(new)} new)")
    text.append(f"  {s.tokens_per_second:.0f} tok/s  step {s.step}  ")
    text.append(s.mode, style="bold cyan")
    text.append("  ● running, esc cancels" if s.running else "  ○ idle",
                style="bold yellow" if s.running else "dim")
    if s.prefill:
        text.append(f"  ◌ {s.prefill}", style="italic yellow")
    if s.activity:
        text.append(f"  ◌ {s.activity}", style="italic yellow")
    return text


class StatusBar(Static):
    DEFAULT_CLASSES = "status-bar"

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.state = StatusState()

    def refresh_state(self, **changes) -> None:
        for key, value in changes.items():
            setattr(self.state, key, value)
        self.update(render_status(self.state))
