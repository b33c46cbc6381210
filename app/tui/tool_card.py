"""A collapsible card for one tool call: what was called, the diff for edits, the output
and ok/failed. Cards of read-only tools collapse once they finish; edit cards stay open."""

from __future__ import annotations

import json
from typing import Any

from rich.syntax import Syntax
from rich.text import Text
from textual.widgets import Collapsible, Static

from app.tui.diffs import DIFF_TOOLS, diff_stats

OUTPUT_LINES = 60        # shown in the card; the model got the full (already capped) text


def call_summary(tool: str, args: dict[str, Any], width: int = 70) -> str:
    """One line: the command for bash, the path for file tools, else compact JSON."""
    if tool in ("bash", "run_tests") and args.get("command"):
        text = str(args["command"])
    elif args.get("path"):
        text = str(args["path"])
    elif tool == "finish":
        text = ""
    elif args:
        text = json.dumps(args, ensure_ascii=False)
    else:
        text = ""
    text = " ".join(text.split())
    return text[:width] + ("…" if len(text) > width else "")


def diff_renderable(diff: str) -> Syntax:
    return Syntax(diff.rstrip("\n"), "diff", theme="ansi_dark", word_wrap=False,
                  background_color="default")


def arguments_text(tool: str, args: dict[str, Any]) -> Text:
    if tool in ("bash", "run_tests") and args.get("command"):
        return Text("$ " + str(args["command"]), style="bold")
    shown = {k: v for k, v in args.items()
             if not (tool in DIFF_TOOLS and k in ("path", "old_string", "new_string", "content"))}
    if not shown:
        return Text("")
    return Text(json.dumps(shown, ensure_ascii=False, indent=1)[:2000], style="dim")


class ToolCard(Collapsible):
    """One tool call. ``set_result`` fills in the output and the status."""

    DEFAULT_CLASSES = "tool-card"

    def __init__(self, call_id: str, tool: str, arguments: dict[str, Any], diff: str = "") -> None:
        self.call_id = call_id
        self.tool = tool
        self.arguments = arguments
        self.diff = diff
        self.ok: bool | None = None
        children: list[Static] = []
        args_text = arguments_text(tool, arguments)
        if args_text.plain:
            children.append(Static(args_text, classes="card-args"))
        if diff:
            children.append(Static(diff_renderable(diff), classes="card-diff"))
        self._output = Static("", classes="card-output")
        children.append(self._output)
        super().__init__(*children, title=self._card_title(), collapsed=not diff)

    def _card_title(self) -> str:
        status = {None: "…", True: "✓", False: "✗"}[self.ok]
        summary = call_summary(self.tool, self.arguments)
        extra = ""
        if self.diff:
            added, removed = diff_stats(self.diff)
            extra = f"  +{added} -{removed}"
        return f"{status} {self.tool} {summary}{extra}".rstrip()

    def set_result(self, ok: bool, output: str) -> None:
        self.ok = ok
        self.title = self._card_title()
        self.set_class(not ok, "-failed")
        self.set_class(ok, "-ok")
        lines = output.rstrip("\n").splitlines()
        if len(lines) > OUTPUT_LINES:
            hidden = len(lines) - OUTPUT_LINES
            lines = lines[:OUTPUT_LINES] + [f"… {hidden} more lines"]
        self._output.update(Text("\n".join(lines), style="" if ok else "red"))
        if not ok:
            self.collapsed = False
