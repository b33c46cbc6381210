"""Re-render a saved session's messages into the transcript (for --resume and /sessions)."""

from __future__ import annotations

import json
from typing import Any

from app.tui.diffs import DIFF_TOOLS
from app.tui.tool_card import ToolCard
from app.tui.transcript import Transcript

FAILED_PREFIXES = ("error", "refused", "interrupted", "not run", "cancelled")


def _arguments(call: dict[str, Any]) -> dict[str, Any]:
    raw = call.get("function", {}).get("arguments", {})
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return {"arguments": raw}
    return raw if isinstance(raw, dict) else {}


def _edit_diff(tool: str, args: dict[str, Any]) -> str:
    """The diff as the arguments state it (the file's old state is gone)."""
    import difflib
    if tool not in DIFF_TOOLS:
        return ""
    path = str(args.get("path", ""))
    before = "" if tool == "write_file" else str(args.get("old_string", ""))
    after = str(args.get("content" if tool == "write_file" else "new_string", ""))
    lines = difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                 f"a/{path}", f"b/{path}")
    return "".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines)


async def render_messages(transcript: Transcript, messages: list[dict[str, Any]]) -> int:
    """Mount widgets for ``messages``; returns how many user turns there were."""
    turns = 0
    for msg in messages:
        role = msg.get("role")
        content = msg.get("content") or ""
        if role == "user":
            turns += 1
            await transcript.add_user(str(content))
        elif role == "assistant":
            if str(content).strip():
                await transcript.add_reply(str(content))
            for call in msg.get("tool_calls") or []:
                name = call.get("function", {}).get("name", "?")
                args = _arguments(call)
                await transcript.add_card(ToolCard(call.get("id", ""), name, args,
                                                   _edit_diff(name, args)))
        elif role == "tool":
            card = transcript.cards.get(msg.get("tool_call_id", ""))
            if card is not None:
                ok = not str(content).lower().startswith(FAILED_PREFIXES)
                card.set_result(ok, str(content))
    return turns
