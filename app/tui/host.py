"""The agent side of the TUI, free of widgets: backend, session, tool context and Agent.

The app owns one ``AgentHost``; /clear, /sessions, /model and /mode go through it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.backends.base import Backend, ToolCall
from agent.loop import Agent
from agent.prompts import system_prompt
from agent.session import Session, sessions_dir
from tools.base import ToolContext

MODES = ("read-only", "ask", "auto-edit", "full-auto")


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

    def __post_init__(self) -> None:
        self.ctx = ToolContext(repo=self.repo, mode=self.mode, headless=False)
        self.cancel = threading.Event()

    # -- sessions ----------------------------------------------------------------------

    def new_session(self) -> Session:
        name, model = backend_label(self.backend, self.backend_spec)
        self.session = Session.create(sessions_dir(self.repo), repo=str(self.repo), backend=name,
                                      model=model, face="tui")
        self.session.add({"role": "system", "content": system_prompt(self.repo, self.ctx.mode)})
        self.always.clear()
        self.agent = None
        return self.session

    def load_session(self, path: Path) -> Session:
        self.session = Session.load(path)
        self.always.clear()
        self.agent = None
        return self.session

    def resume_latest(self) -> Session | None:
        """The newest session that loads (a damaged or foreign file is skipped)."""
        for path in list_sessions(self.repo):
            try:
                self.session = Session.load(path)
            except (OSError, ValueError, KeyError):
                continue
            self.always.clear()
            self.agent = None
            return self.session
        return None

    # -- the agent ---------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        self.mode = self.ctx.mode = mode

    def ensure_agent(self) -> Agent:
        if self.backend is None:
            raise RuntimeError("the model is still loading")
        if self.session is None:
            self.new_session()
        if self.agent is None or self.agent.backend is not self.backend:
            if self.tools_factory is None:
                from tools.registry import default_tools
                self.tools_factory = default_tools
            steps = self.agent.steps if self.agent else 0
            self.agent = Agent(backend=self.backend, tools=self.tools_factory(), ctx=self.ctx,
                               session=self.session, interactive=True, approver=self.approver,
                               cancel=self.cancel)
            self.agent.steps = steps
        return self.agent
