"""``CoderApp``: transcript, prompt, status bar; the agent runs in a thread worker and posts
its events to the UI thread. Approvals block the worker on a threading.Event until the
modal is answered. The repository is packed (or a resumed session's snapshot loaded) in
another worker started after the first paint; an embedded model loads in a third, with a
progress bar."""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import ProgressBar

from agent.backends.base import Backend, BackendError, ToolCall
from agent.events import (
    CompactionEvent,
    DoneEvent,
    ErrorEvent,
    PrefillEvent,
    StepEvent,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    UsageEvent,
)
from app.tui.approval import ApprovalScreen
from app.tui.commands import run_command
from app.tui.diffs import DIFF_TOOLS, call_diff
from app.tui.file_picker import FilePicker
from app.tui.fuzzy import repo_file_list
from app.tui.host import DEFAULT_CONTEXT_BUDGET, AgentHost, backend_label
from app.tui.messages import (
    AgentEvent,
    ApprovalAnswer,
    ApprovalRequest,
    ContextReady,
    LoadProgress,
    TurnFinished,
)
from app.tui.prompt import PromptArea
from app.tui.session_view import render_messages
from app.tui.sessions_screen import SessionPicker
from app.tui.status import StatusBar
from app.tui.tool_card import ToolCard
from app.tui.transcript import Transcript

DONE_TEXT = {
    "answered": "", "finished": "finished", "cancelled": "cancelled by the user",
    "step_limit": "stopped: step limit", "time_limit": "stopped: time limit",
    "repeated_calls": "stopped: the same call repeated", "format_errors": "stopped: malformed replies",
    "backend_error": "stopped: backend error",
}


class CoderApp(App):
    CSS_PATH = str(Path(__file__).with_name("app.tcss"))
    TITLE = "v4coder"
    BINDINGS = [
        Binding("escape", "cancel_turn", "cancel turn", show=False),
        Binding("ctrl+q", "quit", "quit", priority=True),
    ]

    def __init__(self, repo: Path, backend_spec: str, backend: Backend | None = None,
                 mode: str = "ask", resume: bool = False, model: str | None = None,
                 max_widgets: int = 300, tools_factory=None,
                 context_budget: int = DEFAULT_CONTEXT_BUDGET) -> None:
        super().__init__()
        self.host = AgentHost(repo=repo, backend_spec=backend_spec, mode=mode, backend=backend,
                              tools_factory=tools_factory, context_budget=context_budget)
        self.host.approver = self._approve
        self.model_name = model
        self.resume = resume
        self.max_widgets = max_widgets
        self.running = False
        self.pending_notice = ""
        self.turns = 0
        self.painted_at: float | None = None
        self.context_busy = False          # the context worker is packing / resuming
        self.context_ready = False         # it finished (for tests and /context)
        self.activities: dict[str, str] = {}   # status-bar notes of background work
        self._stream_t0 = 0.0
        self._stream_chars = 0
        self._last_rate_update = 0.0

    # -- layout --------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        self.transcript = Transcript(max_widgets=self.max_widgets, id="transcript")
        self.picker = FilePicker(id="file-picker")
        self.prompt = PromptArea(picker=self.picker, id="prompt")
        self.status = StatusBar(id="status")
        self.load_bar = ProgressBar(total=1.0, show_eta=False, id="load-bar")
        yield self.transcript
        with Vertical(id="bottom"):
            yield self.picker
            yield self.load_bar
            yield self.prompt
            yield self.status

    async def on_mount(self) -> None:
        self.load_bar.display = False
        self.prompt.focus()
        self.reset_status()
        self.call_after_refresh(self._first_paint)
        self.load_files()
        await self.transcript.add_notice(
            f"v4coder on {self.host.repo.name} · enter sends, ctrl+j new line, @ picks a file, "
            "esc cancels a turn, /help lists commands", "dim")
        if self.resume:
            session = self.host.resume_latest()
            if session is None:
                await self.transcript.add_notice("--resume: no saved session for this repository; "
                                                 "starting a new one", "yellow")
            else:
                await self.show_session()
        if self.host.backend is None:
            self.load_backend(self.host.backend_spec)

    def _first_paint(self) -> None:
        self.painted_at = time.perf_counter()
        self.call_later(self.start_context)   # after the paint: packing is never in its way

    def reset_status(self) -> None:
        name, model = backend_label(self.host.backend, self.host.backend_spec)
        self.status.refresh_state(backend=name, model=self.model_name or model, mode=self.host.mode,
                                  prompt_tokens=0, cached_tokens=0, tokens_per_second=0.0,
                                  step=0, running=self.running)

    async def show_session(self) -> None:
        await self.transcript.clear()
        session = self.host.session
        assert session is not None
        self.turns = await render_messages(self.transcript, session.messages)
        await self.transcript.add_notice(f"Resumed session {session.id} "
                                         f"({len(session.messages)} messages).", "dim")

    # -- background work -----------------------------------------------------------------

    def set_activity(self, key: str, label: str | None) -> None:
        """Show (or, with None, clear) a note about background work in the status bar."""
        if label:
            self.activities[key] = label
        else:
            self.activities.pop(key, None)
        self.status.refresh_state(activity=" · ".join(self.activities.values()))

    def start_context(self) -> None:
        """Pack the repository for the next session, or load a resumed session's snapshot,
        off the UI thread. A turn submitted meanwhile waits for it (AgentHost.lock)."""
        if self.context_busy:
            return
        resumed = self.host.session is not None
        if self.host.context is not None if resumed else self.host.prepacked is not None:
            return
        self.context_busy = True
        self.context_ready = False
        self.set_activity("context", "loading the repository snapshot…" if resumed
                          else f"packing {self.host.repo.name}…")
        self.prepare_context(resumed)

    @work(thread=True, group="context", exit_on_error=False)
    def prepare_context(self, resumed: bool) -> None:
        error = ""
        try:
            if resumed:
                self.host.ensure_context()
            else:
                self.host.prepack()
        except Exception as exc:  # the session goes on without packed context
            error = f"{type(exc).__name__}: {exc}"
        self.post_message(ContextReady(resumed, error or self.host.pack_error))

    async def on_context_ready(self, message: ContextReady) -> None:
        self.context_busy = False
        self.context_ready = True
        self.set_activity("context", None)
        if message.error:
            await self.transcript.add_notice(
                f"could not pack the repository ({message.error}); the session runs without it",
                "yellow")
            return
        stats = self.host.context_stats() or {}
        if not message.resumed and (stats.get("outlined") or stats.get("omitted")):
            await self.transcript.add_notice(
                f"{self.host.repo.name} is over the context budget: {stats.get('files', 0)} files "
                f"whole, {stats.get('outlined', 0)} outlined, {stats.get('omitted', 0)} omitted "
                "(/context has the details)", "dim")

    @work(thread=True, group="files", exit_on_error=False)
    def load_files(self) -> None:
        files = repo_file_list(self.host.repo)
        self.call_from_thread(setattr, self.picker, "files", files)

    @work(thread=True, exclusive=True, group="backend", exit_on_error=False)
    def load_backend(self, spec: str) -> None:
        """Build the backend off the UI thread. The embedded model reports its loading
        through ``EmbeddedBackend(progress_callback=...)``; another backend with
        ``load(progress=...)`` through that: both call ``progress(fraction, label)``."""
        from agent.backends.factory import make_backend
        self.post_message(LoadProgress(0.0, f"loading {spec}"))
        try:
            kind, _, rest = spec.partition(":")
            if kind == "embedded" and rest:
                backend = self._load_embedded(rest)
            else:
                backend = make_backend(spec, model=self.model_name)
            loader = getattr(backend, "load", None)
            if callable(loader):
                loader(progress=self.report_load_progress)
        except Exception as exc:  # BackendError, or a runtime that failed while loading
            text = str(exc) if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}"
            self.post_message(LoadProgress(1.0, f"cannot load {spec}: {text}", done=True))
            return
        self.call_from_thread(self._backend_ready, spec, backend)

    def _load_embedded(self, checkpoint_dir: str) -> Backend:
        """make_backend's embedded case, with the progress hook (and no stderr bar)."""
        try:
            from agent.backends.embedded import EmbeddedBackend
        except ImportError:
            raise BackendError("the embedded backend is not available in this build") from None
        return EmbeddedBackend(checkpoint_dir, progress=False,
                               progress_callback=self.report_load_progress)

    def report_load_progress(self, fraction: float, label: str = "") -> None:
        """Thread-safe progress hook for a backend that loads a model."""
        self.post_message(LoadProgress(fraction, label))

    def _backend_ready(self, spec: str, backend: Backend) -> None:
        self.host.backend = backend
        self.host.backend_spec = spec
        self.host.agent = None
        self.load_bar.display = False
        self.set_activity("load", None)
        name, model = backend_label(backend, spec)
        self.status.refresh_state(backend=name, model=self.model_name or model)

    async def on_load_progress(self, message: LoadProgress) -> None:
        if message.done:
            self.load_bar.display = False
            self.set_activity("load", None)
            if message.label:
                await self.transcript.add_notice(message.label, "red")
            return
        if message.fraction >= 1.0:  # loaded (may arrive after _backend_ready: hide, not show)
            self.load_bar.display = False
            self.set_activity("load", None)
            return
        self.load_bar.display = True
        self.load_bar.update(progress=message.fraction)
        if message.label:
            self.set_activity("load", message.label)

    # -- turns ---------------------------------------------------------------------------

    async def on_prompt_area_submitted(self, message: PromptArea.Submitted) -> None:
        text = message.text
        if text.startswith("/"):
            await run_command(self, text)
            return
        if self.running:
            self.notify("A turn is running; esc cancels it.", severity="warning")
            return
        if self.host.backend is None:
            self.notify("The model is still loading.", severity="warning")
            return
        await self.transcript.add_user(text)
        self.transcript.anchor()
        self.turns += 1
        self.running = True
        self.status.refresh_state(running=True)
        user_text = self.pending_notice + text
        self.pending_notice = ""
        self.run_turn(user_text, self.turns)

    @work(thread=True, exclusive=True, group="agent", exit_on_error=False)
    def run_turn(self, text: str, turn: int) -> None:
        error = ""
        try:
            agent = self.host.ensure_agent(text)
            repo = self.host.repo
            for event in agent.run(text):
                diff = ""
                if isinstance(event, ToolCallEvent) and event.tool in DIFF_TOOLS:
                    diff = call_diff(repo, event.tool, event.arguments)   # before it runs
                self.post_message(AgentEvent(event, diff, turn))
        except Exception as exc:  # one failed turn must not take the app down
            error = f"{type(exc).__name__}: {exc}"
            if os.environ.get("V4CODER_DEBUG"):
                error += "\n" + traceback.format_exc()
        self.post_message(TurnFinished(error))

    def _approve(self, call: ToolCall, reason: str) -> bool:
        """Called by the agent loop in the worker thread; blocks until the user answers."""
        destructive = reason.startswith("destructive")
        if call.name in self.host.always and not destructive:
            return True
        diff = call_diff(self.host.repo, call.name, call.arguments) if call.name in DIFF_TOOLS else ""
        answer = ApprovalAnswer()
        self.post_message(ApprovalRequest(call, reason, diff, answer))
        while not answer.ready.wait(0.05):
            if self.host.cancel.is_set():
                return False
        if answer.choice == "a" and not destructive:
            self.host.always.add(call.name)
        return answer.choice in ("y", "a")

    def on_approval_request(self, message: ApprovalRequest) -> None:
        answer = message.answer

        def done(choice: str | None) -> None:
            answer.choice = choice or "n"
            answer.ready.set()

        self.push_screen(ApprovalScreen(message.call, message.reason, message.diff), done)

    async def on_agent_event(self, message: AgentEvent) -> None:
        event = message.event
        t = self.transcript
        if isinstance(event, TextDelta):
            if event.channel == "text":
                await t.append_text(event.text)
            else:
                await t.append_reasoning(event.text)
            self._count_stream(len(event.text))
        elif isinstance(event, PrefillEvent):
            self.status.refresh_state(
                prefill="" if event.done == event.total else event.describe(),
                prompt_tokens=event.total, cached_tokens=event.cached)
            self._stream_t0 = time.perf_counter()   # tokens/s counts from the first token
        elif isinstance(event, StepEvent):
            self._stream_t0 = time.perf_counter()
            self._stream_chars = 0
            self.status.refresh_state(step=event.step)
        elif isinstance(event, ToolCallEvent):
            await t.add_card(ToolCard(event.id, event.tool, event.arguments, message.diff))
        elif isinstance(event, ToolResultEvent):
            card = t.cards.get(event.id) if event.id else None
            if card is not None:
                card.set_result(event.ok, event.output)
            else:
                await t.add_notice(event.output, "red" if not event.ok else "")
        elif isinstance(event, UsageEvent):
            self.status.refresh_state(prompt_tokens=event.prompt_tokens,
                                      cached_tokens=event.cached_tokens)
            if event.seconds > 0:
                self.status.refresh_state(
                    tokens_per_second=event.completion_tokens / event.seconds)
        elif isinstance(event, CompactionEvent):
            await t.add_compaction(event)
        elif isinstance(event, ErrorEvent):
            await t.add_notice(f"error: {event.message}", "bold red")
        elif isinstance(event, DoneEvent):
            await t.end_reply()
            text = DONE_TEXT.get(event.reason, event.reason)
            if event.reason == "finished" and event.summary:
                text = f"finished: {event.summary}"
            if text:
                style = "yellow" if event.reason == "cancelled" else "dim"
                await t.add_notice(f"— {text}", style)

    def _count_stream(self, chars: int) -> None:
        self._stream_chars += chars
        now = time.perf_counter()
        if now - self._last_rate_update > 0.25 and now > self._stream_t0:
            self._last_rate_update = now
            rate = self._stream_chars / 4 / (now - self._stream_t0)
            self.status.refresh_state(tokens_per_second=rate)

    async def on_turn_finished(self, message: TurnFinished) -> None:
        self.running = False
        self.status.refresh_state(running=False)
        await self.transcript.end_reply()
        if message.error:
            await self.transcript.add_notice(f"the turn failed: {message.error}", "bold red")

    def action_cancel_turn(self) -> None:
        if self.picker.display:
            self.picker.hide()
            return
        if self.running:
            self.host.cancel.set()
            self.notify("Cancelling the turn…", timeout=2)

    # -- sessions --------------------------------------------------------------------------

    def open_session_picker(self, sessions: list[Path]) -> None:
        async def picked(path: Path | None) -> None:
            if path is None:
                return
            try:
                self.host.load_session(path)
            except (OSError, ValueError, KeyError) as exc:
                await self.transcript.add_notice(f"/sessions: cannot load {path.name}: {exc}", "red")
                return
            await self.show_session()
            self.reset_status()
            self.start_context()

        self.push_screen(SessionPicker(sessions), picked)

    def status_text(self) -> Text:
        return self.status.render()  # type: ignore[return-value]
