"""The agent side of the TUI, free of widgets: backend, session, tool context and Agent.

The app owns one ``AgentHost``; /clear, /sessions, /model and /mode go through it.

Whole-repository context (agent.context.session_context), as in ``v4coder run``: a new
session packs the repository into its system message, a loaded one resumes its pack
snapshot; the Agent gets the ``recall`` tool and the compactor / prepare_messages hooks.
Packing takes seconds on a big repository, so the app calls ``prepack`` (or, for a loaded
session, ``ensure_context``) in a worker thread right after the first paint; the session
file itself is still created by the first turn (no empty sessions). ``lock`` makes a turn
that starts meanwhile wait for the pack instead of packing twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.backends.base import Backend, ToolCall
from agent.loop import Agent
from agent.prompts import system_prompt
from agent.session import Session, sessions_dir
from tools.base import ToolContext

MODES = ("read-only", "ask", "auto-edit", "full-auto")
DEFAULT_CONTEXT_BUDGET = 900_000  # agent.context.pack.DEFAULT_BUDGET (not imported: first paint)


def backend_label(backend: Backend | None, spec: str) -> tuple[str, str]:
    """(backend name, model name) for the status bar."""
    if backend is None:
        return spec.partition(":")[0] or "none", "loading…"
    return getattr(backend, "name", spec), str(getattr(backend, "model", "") or spec)


def list_sessions(repo: Path) -> list[Path]:
    directory = sessions_dir(repo)
    return sorted(directory.glob("*.jsonl"), reverse=True) if directory.is_dir() else []


def session_title(path: Path, limit: int = 60) -> str:
    """First user message of a saved session (cheap: stops at the first one)."""
    import json
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                msg = rec.get("message") or {}
                if msg.get("role") == "user":
                    text = " ".join(str(msg.get("content") or "").split())
                    return text[:limit] + ("…" if len(text) > limit else "")
    except OSError:
        pass
    return "(empty)"


def pack_stats(live: Any) -> dict[str, Any] | None:
    """A LiveContext's statistics for the session header and /context (skips by reason)."""
    if live is None:
        return None
    return {**live.stats(), "skipped": live.packed.stats()["skipped"]["by_reason"],
            "seconds": round(live.packed.seconds, 3)}


@dataclass
class AgentHost:
    repo: Path
    backend_spec: str
    mode: str = "ask"
    backend: Backend | None = None
    session: Session | None = None
    agent: Agent | None = None
    always: set[str] = field(default_factory=set)      # tools approved for the whole session
    approver: Callable[[ToolCall, str], bool] | None = None
    tools_factory: Callable[[], list] | None = None
    context_budget: int = DEFAULT_CONTEXT_BUDGET  # tokens of packed repository; 0 = none
    context: Any = None         # agent.context.session_context.SessionContext of ``session``
    pack_error: str = ""        # why the last pack failed (the session then runs without one)
    prepacked: Any = None       # LiveContext packed ahead of the next new session
    compact_limit: int | None = None  # transcript tokens that trigger compaction (None: default)

    def __post_init__(self) -> None:
        self.ctx = ToolContext(repo=self.repo, mode=self.mode, headless=False)
        self.cancel = threading.Event()
        self.lock = threading.RLock()

    # -- sessions ----------------------------------------------------------------------

    def prepack(self) -> Any:
        """Pack the repository for the next new session (slow: call from a worker). None
        when the budget is 0, packing failed (``pack_error`` says why), or a session is
        already open (a turn that started first packed for it)."""
        with self.lock:
            return self._pack() if self.session is None else None

    def _pack(self) -> Any:
        from agent.context.session_context import pack_for_session
        with self.lock:
            if self.prepacked is None and not self.pack_error:
                try:
                    self.prepacked = pack_for_session(self.repo, self.context_budget)
                except Exception as exc:  # an unreadable tree must not stop the session
                    self.pack_error = f"{type(exc).__name__}: {exc}"
            return self.prepacked

    def new_session(self, question: str | None = None) -> Session:
        """Start a session around the packed repository (packing now if not done yet). When
        the repository did not fit the budget and the session starts with ``question``, it is
        packed again ranked by that question (files it names come whole; cheap: the per-file
        facts are cached), as ``v4coder run`` does with the issue."""
        from agent.context.session_context import attach_context, pack_for_session
        with self.lock:
            live = self._pack()
            if live is not None and question and (live.packed.outlined or live.packed.omitted):
                try:
                    live = pack_for_session(self.repo, self.context_budget, question)
                except Exception:  # noqa: BLE001 - keep the pack that worked
                    pass
            self.prepacked = None
            stats = pack_stats(live)
            name, model = backend_label(self.backend, self.backend_spec)
            session = Session.create(sessions_dir(self.repo), repo=str(self.repo), backend=name,
                                     model=model, face="tui", context=stats)
            session.add({"role": "system", "content": system_prompt(
                self.repo, self.ctx.mode, live.text if live is not None else "")})
            self.context = attach_context(session, live, **self._limit())
            self.session = session
            self.always.clear()
            self.agent = None
            return session

    def load_session(self, path: Path) -> Session:
        """Load a saved session; its context is resumed by ``ensure_context`` (a worker)."""
        with self.lock:
            self.session = Session.load(path)
            self.context = None
            self.always.clear()
            self.agent = None
            return self.session

    def forget_session(self) -> None:
        """/clear: the next turn starts a new session (on a fresh pack)."""
        with self.lock:
            self.session = self.context = self.agent = self.prepacked = None
            self.pack_error = ""
            self.always.clear()

    def ensure_context(self, question: str | None = None) -> Any:
        """The SessionContext of the current session: pack a new session (ranked by its first
        ``question`` when over budget) or resume the loaded one's snapshot, whichever is
        missing (slow: call from a worker)."""
        with self.lock:
            if self.session is None:
                self.new_session(question)
            elif self.context is None:
                from agent.context.session_context import resume_context
                self.context = resume_context(self.session, self.repo, **self._limit())
            return self.context

    def _limit(self) -> dict[str, int]:
        return {} if self.compact_limit is None else {"limit": self.compact_limit}

    def context_stats(self) -> dict[str, Any] | None:
        """Pack statistics of the current (or next) session; from its header when resumed."""
        session = self.session
        if session is None:
            return pack_stats(self.prepacked)
        stats = dict(session.header.get("context") or {})
        live = getattr(self.context, "live", None)
        if live is not None and not stats:
            stats = live.stats()
        return stats or None

    def resume_latest(self) -> Session | None:
        """The newest session that loads (a damaged or foreign file is skipped)."""
        for path in list_sessions(self.repo):
            try:
                return self.load_session(path)
            except (OSError, ValueError, KeyError):
                continue
        return None

    # -- the agent ---------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        self.mode = self.ctx.mode = mode

    def ensure_agent(self, question: str | None = None) -> Agent:
        if self.backend is None:
            raise RuntimeError("the model is still loading")
        with self.lock:
            context = self.ensure_context(question)
            if self.agent is None or self.agent.backend is not self.backend:
                if self.tools_factory is None:
                    from tools.registry import default_tools
                    self.tools_factory = default_tools
                steps = self.agent.steps if self.agent else 0
                self.agent = Agent(backend=self.backend, tools=[*self.tools_factory(), *context.tools],
                                   ctx=self.ctx, session=self.session, interactive=True,
                                   approver=self.approver, cancel=self.cancel,
                                   compactor=context.compactor,
                                   prepare_messages=context.prepare_messages)
                self.agent.steps = steps
            return self.agent
