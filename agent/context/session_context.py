"""Whole-repository context for one session, wired in one place (headless run, TUI).

New session::

    live = pack_for_session(repo, budget, question)        # None when budget is 0
    session.add({"role": "system", "content": system_prompt(repo, mode, live.text if live else "")})
    sc = attach_context(session, live)

Resumed session: ``sc = resume_context(session, repo)``. Then build the agent with
``tools=[*default_tools(), *sc.tools]``, ``compactor=sc.compactor`` and
``prepare_messages=sc.prepare_messages``; the TUI's /compact calls ``sc.compact_now(session)``.

Every compaction (automatic or /compact) also re-packs the repository (:meth:`SessionContext.repack`):
the system message's packed part is replaced by a fresh pack of the current tree, recorded
as a compaction record naming the new snapshot file, so the delta starts empty again and a
resumed session shows the same system message and computes deltas against the same snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.context.archive import Archive, recall_tool
from agent.context.compaction import DEFAULT_LIMIT, KEEP_RECENT, Compactor, compact
from agent.context.live import LiveContext, pack_path
from agent.context.render import PREAMBLE
from agent.context.tokens import count_tokens
from agent.events import CompactionEvent
from agent.session import Session
from tools.base import Tool


@dataclass(slots=True)
class SessionContext:
    archive: Archive
    compactor: Compactor
    live: LiveContext | None = None

    @property
    def tools(self) -> list[Tool]:
        """The tools this context adds: ``recall``."""
        return [recall_tool(self.archive)]

    @property
    def prepare_messages(self) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None:
        return self.live.prepare_messages if self.live is not None else None

    def compact_now(self, session: Session, keep_recent: int = KEEP_RECENT) -> CompactionEvent | None:
        """/compact: archive every old tool output now, whatever the budget."""
        event = compact(session, limit=None, keep_recent=keep_recent,
                        counter=self.compactor.counter, archive=self.archive)
        if event is not None:
            self.repack(session)
        return event

    def repack(self, session: Session) -> bool:
        """Pack the repository again into the system message (after a compaction, when the
        prefix cache is lost anyway); False when there is nothing to re-pack or no change."""
        live = self.live
        idx = next((i for i, m in enumerate(session.messages) if m.get("role") == "system"), None)
        content = session.messages[idx].get("content") if idx is not None else None
        if live is None or not isinstance(content, str) or not live.delta():
            return False
        at = content.find(PREAMBLE)
        if at < 0:
            return False
        fresh = LiveContext.pack(live.repo, live.packed.budget, live.question)
        n = 1 + sum(1 for c in session.compactions if c.get("pack"))
        name = f"{session.path.stem}.pack-{n}.json"
        fresh.save(session.path, name)  # the snapshot first: the record below points at it
        new_content = content[:at] + fresh.text
        session.replace_contents([(idx, new_content)], pack=name, files=len(fresh.packed.files),
                                 tokens=fresh.packed.tokens)
        self.live = fresh
        self.compactor.counter.seed(new_content, count_tokens([content[:at]])[0] + fresh.packed.tokens)
        return True


def pack_for_session(repo: Path, budget: int, question: str | None = None) -> LiveContext | None:
    """Pack ``repo`` for a new session (None when ``budget`` is 0: no packing)."""
    return LiveContext.pack(repo, budget, question) if budget > 0 else None


def _seed_system_count(session: Session, live: LiveContext | None, compactor: Compactor) -> None:
    """Count the system message without re-tokenizing the packed repository in it: rendered
    blocks start with '#', so counts add up (within a token or two at the joint)."""
    system = next((m for m in session.messages if m.get("role") == "system"), None)
    content = system.get("content") if system else None
    if live is None or not isinstance(content, str):
        return
    at = content.find(PREAMBLE)
    if at < 0:
        return
    compactor.counter.seed(content, count_tokens([content[:at]])[0] + live.packed.tokens)


def attach_context(session: Session, live: LiveContext | None, limit: int = DEFAULT_LIMIT) -> SessionContext:
    """Hooks for a session whose system message is in place; saves the pack snapshot."""
    if live is not None and not pack_path(session.path).is_file():
        live.save(session.path)
    archive = Archive.for_session(session.path)
    compactor = Compactor(limit=limit, archive=archive)
    _seed_system_count(session, live, compactor)
    sc = SessionContext(archive, compactor, live)
    compactor.after = sc.repack
    return sc


def resume_context(session: Session, repo: Path, limit: int = DEFAULT_LIMIT) -> SessionContext:
    """Hooks for a resumed session: deltas against the snapshot its system message shows
    (the one saved when it started, or the latest re-pack a compaction recorded)."""
    system = next((m for m in session.messages if m.get("role") == "system"), {})
    content = system.get("content") if isinstance(system.get("content"), str) else ""
    at = content.find(PREAMBLE)
    name = next((c["pack"] for c in reversed(session.compactions) if c.get("pack")), None)
    live = LiveContext.load(session.path, repo, content[at:] if at >= 0 else "", name)
    return attach_context(session, live, limit)
