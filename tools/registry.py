"""The model-facing tool list and the one safe way to run a tool call.

``default_tools()`` is the contract the model sees: names, descriptions and JSON schemas.
``run_tool(tool, ctx, args)`` applies the policy's hard refusals (a "deny" never runs),
and turns every failure into ``ToolResult(ok=False, …)`` with a one-line message.
"Ask" decisions are the caller's job: call run_tool once the user has approved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tools import files, git_tools, shell
from tools.base import Tool, ToolContext, ToolError, ToolResult
from tools.policy import decide

_TYPES: dict[str, type] = {"string": str, "integer": int, "boolean": bool}


def _schema(required: dict[str, tuple[str, str]],
            optional: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:
    props = {name: {"type": kind, "description": text}
             for name, (kind, text) in {**required, **(optional or {})}.items()}
    return {"type": "object", "properties": props, "required": list(required)}


def _coerce(tool: str, name: str, kind: str, value: Any) -> Any:
    if kind == "integer" and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if kind == "boolean" and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, _TYPES[kind]) or (kind == "integer" and isinstance(value, bool)):
        raise ToolError(f"{tool}: {name} must be of type {kind}, got {type(value).__name__}")
    return value


def _arguments(name: str, parameters: dict[str, Any], args: Any) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise ToolError(f"{name}: arguments must be a JSON object")
    props: dict[str, Any] = parameters.get("properties", {})
    unknown = [key for key in args if key not in props]
    if unknown:
        raise ToolError(f"{name}: unknown argument {unknown[0]!r}; "
                        f"arguments are: {', '.join(props) or 'none'}")
    missing = [key for key in parameters.get("required", []) if args.get(key) is None]
    if missing:
        raise ToolError(f"{name}: missing required argument {missing[0]!r}")
    return {key: _coerce(name, key, props[key]["type"], value)
            for key, value in args.items() if value is not None}


def _tool(name: str, description: str, parameters: dict[str, Any],
          fn: Callable[..., str | ToolResult], mutating: bool = False) -> Tool:
    """Wrap ``fn(ctx, **arguments)``; a plain string result means success."""

    def run(ctx: ToolContext, args: dict[str, Any]) -> ToolResult:
        result = fn(ctx, **_arguments(name, parameters, args))
        return result if isinstance(result, ToolResult) else ToolResult(ok=True, output=result)

    return Tool(name, description, parameters, run, mutating)


def _finish(ctx: ToolContext, summary: str) -> ToolResult:
    return ToolResult(ok=True, output=summary, finished=True)


_PATH = ("string", "File path relative to the repository root.")


def default_tools() -> list[Tool]:
    """The twelve tools offered to the model, in the order they are listed to it."""
    return [
        _tool("read_file", "Read a text file with numbered lines ('  12| text'). For long "
                   "files pass start_line/end_line (1-based, inclusive) to read a range.",
                   _schema({"path": _PATH},
                           {"start_line": ("integer", "First line to show (1-based)."),
                            "end_line": ("integer", "Last line to show (inclusive).")}),
                   files.read_file),
        _tool("list_files", "List the repository's files (git-ignored files are left out), "
                   "optionally under a directory and/or matching a glob such as '*.py' or "
                   "'src/**/*.ts'.",
                   _schema({}, {"path": ("string", "Directory to list (default: the root)."),
                                "glob": ("string", "Glob filter, e.g. '*.py'.")}),
                   files.list_files),
        _tool("search", "Search file contents with a Python regular expression (invalid "
                   "regexes are searched literally). Prints 'path:line:text' for each match.",
                   _schema({"pattern": ("string", "Python regex, e.g. 'def \\w+_handler'.")},
                           {"path": ("string", "File or directory to search (default: all)."),
                            "glob": ("string", "Only files matching this glob, e.g. '*.py'.")}),
                   files.search),
        _tool("edit_file", "Replace old_string with new_string in a file. old_string must "
                   "match exactly one place (copy it from read_file without the line-number "
                   "prefix, with enough context to be unique); set replace_all to change every "
                   "exact occurrence. An empty old_string creates a new file.",
                   _schema({"path": _PATH,
                            "old_string": ("string", "Exact text to replace."),
                            "new_string": ("string", "Text to put in its place.")},
                           {"replace_all": ("boolean", "Replace every occurrence.")}),
                   files.edit_file, mutating=True),
        _tool("write_file", "Create a file, or replace a file's whole content. Parent "
                   "directories are created. Prefer edit_file for changes to existing files.",
                   _schema({"path": _PATH, "content": ("string", "The complete file content.")}),
                   files.write_file, mutating=True),
        _tool("run_tests", "Run the project's tests (the configured or detected test "
                      "command: pytest, npm test, go test, cargo test or make test), or the "
                      "given command. Shows the command, its output and its exit code.",
                      _schema({}, {"command": ("string", "Test command to run instead, e.g. "
                                               "'python -m pytest -q tests/test_x.py'.")}),
                      shell.run_tests, mutating=True),
        _tool("bash", "Run a bash command in the repository root (non-interactive, no "
                      "stdin). Output is stdout and stderr together, then the exit code. "
                      "Destructive commands may be refused.",
                      _schema({"command": ("string", "The bash command line.")},
                              {"timeout": ("integer", "Seconds before the command is killed.")}),
                      shell.bash, mutating=True),
        _tool("git_status", "Show the branch and changed, staged and untracked files.",
                   _schema({}), git_tools.git_status),
        _tool("git_diff", "Show all changes against HEAD as a unified diff, including new "
                   "untracked files.",
                   _schema({}, {"path": ("string", "Limit the diff to this file or directory.")}),
                   git_tools.git_diff),
        _tool("git_log", "Show recent commits, newest first.",
                   _schema({}, {"n": ("integer", "How many commits (default 10).")}),
                   git_tools.git_log),
        _tool("git_commit", "Commit every change in the work tree (git add -A) with this "
                   "message.",
                   _schema({"message": ("string", "The commit message.")}),
                   git_tools.git_commit, mutating=True),
        _tool("finish", "End the task. Give a short summary of what you changed and "
                      "how you checked it.",
                      _schema({"summary": ("string", "What was done and how it was verified.")}),
                      _finish),
    ]


def tools_by_name(tools: list[Tool] | None = None) -> dict[str, Tool]:
    return {tool.name: tool for tool in (tools if tools is not None else default_tools())}


def run_tool(tool: Tool, ctx: ToolContext, args: Any) -> ToolResult:
    """Run one call; a policy "deny" is refused without running. Never raises."""
    try:
        decision = decide(tool, args, ctx)
        if decision.action == "deny":
            return ToolResult(ok=False, output=f"refused: {decision.reason}")
        return tool.run(ctx, args)
    except ToolError as exc:
        return ToolResult(ok=False, output=str(exc) or f"{tool.name} failed")
    except Exception as exc:  # never show a traceback to the model
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        return ToolResult(ok=False, output=f"{tool.name} failed: {type(exc).__name__}"
                                           + (f": {first_line}" if first_line else ""))
