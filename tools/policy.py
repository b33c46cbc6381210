"""Approval policy: may this tool call run now, does it need the user, or is it refused?

Modes, from strictest to most permissive:

- ``read-only``: reading tools and the project's own test command; nothing else.
- ``ask``: every mutating call asks the user.
- ``auto-edit``: file edits and the project's tests run; shell commands and commits ask.
- ``full-auto``: everything runs.

On top of the mode, for every shell command (``bash``, ``run_tests`` with an explicit
command): reading an existing secret file is denied unless ``ctx.allow_secrets``; a
destructive command (see tools.command_guard) is DENIED when ``ctx.headless`` — it is
never executed and the reason goes back to the model — and otherwise always asks,
even in full-auto.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tools.base import Tool, ToolContext
from tools.command_guard import classify_command, secret_reference

APPROVAL_MODES = ("read-only", "ask", "auto-edit", "full-auto")
READING_TOOLS = frozenset({"read_file", "list_files", "search", "git_status", "git_diff",
                           "git_log", "finish"})
EDITING_TOOLS = frozenset({"edit_file", "write_file"})

Action = Literal["allow", "ask", "deny"]


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str


def command_of(tool: Tool, args: Any) -> str | None:
    """The shell command a call would run, if it runs one (None for the autodetected tests)."""
    if tool.name not in ("bash", "run_tests") or not isinstance(args, dict):
        return None
    command = args.get("command")
    if not isinstance(command, str) or not command.strip():
        return None
    return command


def _by_mode(tool: Tool, command: str | None, mode: str) -> Decision:
    name = tool.name
    if name in READING_TOOLS or (not tool.mutating and name not in EDITING_TOOLS):
        return Decision("allow", f"{name} only reads")
    if name == "run_tests" and command is None:
        if mode == "ask":
            return Decision("ask", "runs the project's test command")
        return Decision("allow", "runs the project's test command")
    if mode == "read-only":
        return Decision("deny", f"{name} can change the repository and the mode is read-only")
    if mode == "full-auto":
        return Decision("allow", "full-auto mode")
    if name in EDITING_TOOLS:
        if mode == "auto-edit":
            return Decision("allow", "auto-edit mode allows file edits")
        return Decision("ask", f"{name} changes files")
    what = f"runs `{command}`" if command else f"{name} changes the repository"
    return Decision("ask", what)


def decide(tool: Tool, args: Any, ctx: ToolContext) -> Decision:
    """Allow, ask or deny one tool call under ``ctx.mode`` / ``ctx.headless``."""
    if ctx.mode not in APPROVAL_MODES:
        return Decision("deny", f"unknown approval mode {ctx.mode!r}; "
                                f"expected one of {', '.join(APPROVAL_MODES)}")
    command = command_of(tool, args)
    if command is not None:
        if not ctx.allow_secrets:
            secret = secret_reference(command, ctx.repo)
            if secret:
                return Decision("deny", secret)
        danger = classify_command(command, ctx.repo)
        if danger:
            if ctx.headless:
                return Decision("deny", f"destructive command not run (headless mode): {danger}")
            if ctx.mode == "read-only":
                return Decision("deny", f"destructive command in read-only mode: {danger}")
            return Decision("ask", f"destructive command: {danger}")
    return _by_mode(tool, command, ctx.mode)
