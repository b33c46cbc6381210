"""The archive of compacted tool outputs and arguments, and the ``recall(id)`` tool.

Compaction (agent.context.compaction) never throws text away: before a tool output (or a
large string in a tool call's arguments, agent.context.archive_args) is replaced by a stub in
the transcript, its full text is appended here, one JSON object per line (``{"id",
"tool_call_id", "index", "content", "time"}``, plus ``call`` and ``key`` for arguments),
fsynced. The file sits next
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
RECALL_WHOLE_MAX = 30_000  # the loop's default cut of a tool output (agent.limits)
RECALL_PAGE_CHARS = 28_000  # a page and its note stay under that cut
PAGE_NOTE = "[recall page: "


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

    def put(self, content: str, index: int, tool_call_id: str = "", aid: str | None = None,
            **extra: Any) -> str:
        """Store text of transcript message ``index`` durably; returns its id.

        A tool output's id is ``out-<index>``: a message is archived at most once, so ids
        are unique without coordination between archive objects (the loop's and the TUI's
        /compact). Tool-call arguments pass their own ``aid`` (agent.context.archive_args)
        and ``extra`` fields (which call, which key).
        """
        aid = aid or f"{ID_PREFIX}{index}"
        rec = {"id": aid, "tool_call_id": tool_call_id, "index": index, **extra,
               "content": content, "time": time.time()}
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


def recall_page(aid: str, text: str, offset: int = 0) -> str:
    """``text`` itself when it fits one tool output (:data:`RECALL_WHOLE_MAX`), else the
    :data:`RECALL_PAGE_CHARS` characters from ``offset`` and a last line saying where the
    next page starts: the pages, without that line, join to the exact text."""
    if offset == 0 and len(text) <= RECALL_WHOLE_MAX:
        return text
    end = min(len(text), offset + RECALL_PAGE_CHARS)
    more = (f'; call recall(id="{aid}", offset={end}) for the rest' if end < len(text)
            else "; that is the end")
    return f"{text[offset:end]}\n{PAGE_NOTE}characters {offset}-{end} of {len(text)}{more}]"


def recall_tool(archive: Archive) -> Tool:
    """``recall(id)``: the exact text of an archived tool output or argument (reads only)."""

    def run(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        aid = args.get("id") if isinstance(args, dict) else None
        if not isinstance(aid, str) or not aid.strip():
            return ToolResult(ok=False, output='recall: pass the archived output\'s id, e.g. recall(id="out-1")')
        text = archive.get(aid)
        if text is None:
            order = sorted(archive.entries, key=lambda k: (int(archive.entries[k].get("index") or 0), k))
            known = ", ".join(order[-10:]) or "none yet"
            return ToolResult(ok=False, output=f"recall: no archived output {aid!r} (known: {known})")
        offset = args.get("offset", 0)
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= len(text):
            return ToolResult(ok=False, output=f"recall: offset must be a character offset from 0 "
                                               f"to {len(text)}")
        return ToolResult(ok=True, output=recall_page(aid.strip(), text, offset))

    return Tool(
        name="recall",
        description=("Fetch back, exactly, an earlier tool output or tool-call argument that was "
                     "archived to save context. Archived text appears as '[archived tool output "
                     "<id>: ...]' or '[archived tool argument <id> (<key>): ...]'. Text longer "
                     f"than {RECALL_WHOLE_MAX} characters comes in pages of {RECALL_PAGE_CHARS}, "
                     "each ending with a line that says where the next one starts."),
        parameters={"type": "object",
                    "properties": {"id": {"type": "string", "description": "The id, e.g. out-3."},
                                   "offset": {"type": "integer", "description": (
                                       "Character offset of the page to read, for text "
                                       "longer than one tool output (default 0).")}},
                    "required": ["id"]},
        run=run,
    )


def archived_stub(head: str, aid: str, text: str) -> str:
    """The one line left where archived text was: ``head``, its size and first line, and how
    to get it back."""
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    if len(first) > 80:
        first = first[:80] + "…"
    return (f"{head}: {len(lines)} lines, first line: {first}; "
            f'call recall(id="{aid}") to see it again]')
