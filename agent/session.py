"""The transcript: an append-only JSONL file, fsynced after every record, resumable.

Line 1 is a header ``{"kind": "header", ...}`` (session id, repo, backend, task, start
commit). Every other line is ``{"kind": "message", "message": {...}}`` (an OpenAI-style
message, exactly what the model is sent) or ``{"kind": "note", ...}`` (a marker such as
``{"note": "done", "reason": ...}``) or ``{"kind": "compaction", "replaced": [[index, text],
...], "replaced_arguments": [[index, call index, arguments], ...], ...}``
(agent.context.compaction replaced those messages' content, or those tool calls' arguments,
by archive stubs; applied in order on load, so a resumed session has the compacted transcript). A line cut short by a crash is ignored on load, and
tool calls left without results are answered with an "interrupted" result, so a session
killed mid-step resumes into a well-formed conversation.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INTERRUPTED = "interrupted: the session stopped before this tool call finished; its effect is unknown"


def sessions_dir(repo: Path) -> Path:
    """Sessions live in the repository's git dir, out of the working tree and its diffs."""
    git = repo / ".git"
    return git / "v4coder" / "sessions" if git.is_dir() else repo / ".v4coder" / "sessions"


def apply_replacements(messages: list[dict[str, Any]], record: dict[str, Any]) -> None:
    """Apply a compaction record to ``messages`` in place (new dicts for changed messages)."""
    for i, text in record.get("replaced", []):
        if 0 <= i < len(messages):
            messages[i] = {**messages[i], "content": text}
    for i, k, args in record.get("replaced_arguments", []):
        calls = messages[i].get("tool_calls") if 0 <= i < len(messages) else None
        if calls and 0 <= k < len(calls):
            calls = list(calls)
            calls[k] = {**calls[k], "function": {**calls[k].get("function", {}), "arguments": args}}
            messages[i] = {**messages[i], "tool_calls": calls}


@dataclass(slots=True)
class Session:
    path: Path
    header: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    compactions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.header["id"]

    @classmethod
    def create(cls, directory: Path, **header: Any) -> Session:
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        sid = f"{stamp}-{uuid.uuid4().hex[:6]}"
        head = {**header, "kind": "header", "id": sid, "created": time.time()}
        session = cls(path=directory / f"{sid}.jsonl", header=head)
        session._append(head)
        return session

    @classmethod
    def load(cls, path: Path) -> Session:
        lines = path.read_text(encoding="utf-8").splitlines()
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        if not records or records[0].get("kind") != "header":
            raise ValueError(f"{path} is not a v4coder session (no header line)")
        session = cls(path=path, header=records[0])
        for rec in records[1:]:
            if rec.get("kind") == "message":
                session.messages.append(rec["message"])
            elif rec.get("kind") == "note":
                session.notes.append(rec)
            elif rec.get("kind") == "compaction":
                session._apply_replacements(rec)
        session._close_dangling_calls()
        return session

    @classmethod
    def latest(cls, directory: Path) -> Session | None:
        files = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []
        return cls.load(files[-1]) if files else None

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def add(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self._append({"kind": "message", "message": message})

    def note(self, **fields: Any) -> None:
        record = {"kind": "note", "time": time.time(), **fields}
        self.notes.append(record)
        self._append(record)

    def replace_contents(self, replaced: list[tuple[int, str]],
                         arguments: list[tuple[int, int, Any]] | None = None, **fields: Any) -> None:
        """Replace the content of messages by index, and the arguments of tool calls by
        (message index, call index) (compaction), recorded durably."""
        record = {"kind": "compaction", "time": time.time(),
                  "replaced": [[i, text] for i, text in replaced], **fields}
        if arguments:
            record["replaced_arguments"] = [[i, k, args] for i, k, args in arguments]
        self._apply_replacements(record)
        self._append(record)

    def _apply_replacements(self, record: dict[str, Any]) -> None:
        apply_replacements(self.messages, record)
        self.compactions.append(record)

    def _close_dangling_calls(self) -> None:
        answered = {m.get("tool_call_id") for m in self.messages if m.get("role") == "tool"}
        for i, msg in enumerate(self.messages):
            if msg.get("role") != "assistant" or not msg.get("tool_calls"):
                continue
            later = self.messages[i + 1:]
            if any(m.get("role") == "assistant" for m in later):
                continue  # answered by a later turn already
            for call in msg["tool_calls"]:
                if call["id"] not in answered:
                    self.add({"role": "tool", "tool_call_id": call["id"], "content": INTERRUPTED})
