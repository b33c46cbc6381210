"""The archive of compacted tool outputs, and the ``recall(id)`` tool that reads it back.

Compaction (agent.context.compaction) never throws text away: before a tool output is
replaced by a stub in the transcript, its full text is appended here, one JSON object per
line (``{"id", "tool_call_id", "index", "content", "time"}``), fsynced. The file sits next
to the session: ``<session id>.archive`` beside ``<session id>.jsonl`` (deliberately not
``*.jsonl``, so session listings never mistake it for a session).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.base import Tool, ToolContext, ToolResult

ARCHIVE_SUFFIX = ".archive"
ID_PREFIX = "out-"


def archive_path(session_path: Path) -> Path:
    """``<dir>/<id>.jsonl`` -> ``<dir>/<id>.archive``."""
    return session_path.with_suffix(ARCHIVE_SUFFIX)


@dataclass(slots=True)
class Archive:
    path: Path
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> Archive:
        """Load an archive (missing file: empty). A line cut short by a crash is ignored."""
        archive = cls(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return archive
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("id"), str):
                archive.entries[rec["id"]] = rec
        return archive

    @classmethod
    def for_session(cls, session_path: Path) -> Archive:
        return cls.open(archive_path(session_path))

    def put(self, content: str, index: int, tool_call_id: str = "") -> str:
        """Store the output of transcript message ``index`` durably; returns its id.

        Ids are ``out-<index>``: a message is archived at most once, so ids are unique
        without coordination between archive objects (the loop's and the TUI's /compact).
        """
        aid = f"{ID_PREFIX}{index}"
        rec = {"id": aid, "tool_call_id": tool_call_id, "index": index, "content": content,
               "time": time.time()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.entries[aid] = rec
        return aid

    def get(self, aid: str) -> str | None:
        """The archived text, or None. A miss re-reads the file (another writer may have added it)."""
        aid = aid.strip()
        if aid not in self.entries:
            self.entries.update(Archive.open(self.path).entries)
        rec = self.entries.get(aid)
        return None if rec is None else rec["content"]


def recall_tool(archive: Archive) -> Tool:
    """``recall(id)``: the exact text of an archived tool output (reads only)."""

    def run(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        aid = args.get("id") if isinstance(args, dict) else None
        if not isinstance(aid, str) or not aid.strip():
            return ToolResult(ok=False, output='recall: pass the archived output\'s id, e.g. recall(id="out-1")')
        text = archive.get(aid)
        if text is None:
            known = ", ".join(sorted(archive.entries, key=lambda k: int(k[len(ID_PREFIX):])
                                     if k[len(ID_PREFIX):].isdigit() else 0)[-10:]) or "none yet"
            return ToolResult(ok=False, output=f"recall: no archived output {aid!r} (known: {known})")
        return ToolResult(ok=True, output=text)

    return Tool(
        name="recall",
        description=("Fetch back, exactly, an earlier tool output that was archived to save "
                     "context. Archived outputs appear as '[archived tool output <id>: ...]'."),
        parameters={"type": "object",
                    "properties": {"id": {"type": "string", "description": "The id, e.g. out-3."}},
                    "required": ["id"]},
        run=run,
    )
