"""The model-facing tool contract: a tool is a function with a JSON schema.

``Tool.run(ctx, args)`` never raises for expected failures: it returns a ``ToolResult``
with ``ok=False`` and a message meant for the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class ToolResult:
    ok: bool
    output: str
    # Set by finish(): the run is over and this is the summary.
    finished: bool = False


class ToolError(Exception):
    """Raised inside a tool for an expected failure; becomes ToolResult(ok=False)."""


@dataclass(slots=True)
class ToolContext:
    repo: Path                       # resolved repository root; every path is confined to it
    mode: str = "full-auto"          # read-only | ask | auto-edit | full-auto
    headless: bool = True            # destructive commands are refused outright when headless
    allow_secrets: bool = False      # let .env / private keys into the model's context
    command_timeout: float = 300.0   # default seconds for bash / run_tests
    test_command: str | None = None  # the user's configured test command, if any
    env: dict[str, str] = field(default_factory=dict)  # extra variables for child processes


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of an object
    run: Callable[[ToolContext, dict[str, Any]], ToolResult]
    mutating: bool = False      # checkpoint the tree before running; needs edit approval

    def openai_schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }
