"""Fixtures for the TUI tests: a real git repository, replay files, an app factory and a
``wait_until`` helper that pumps the pilot until a condition holds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tui_support import HELLO, SIZE, wait_until  # noqa: F401  (re-exported for old imports)

from agent.backends.replay import ReplayBackend
from app.tui.app import CoderApp


@pytest.fixture
def repo(make_repo) -> Path:
    return make_repo({"hello.py": HELLO, "README.md": "# demo\n", "pkg/util.py": "X = 1\n"},
                     name="demo")


@pytest.fixture
def edit_turn(make_replay) -> Path:
    """One turn: text, an edit (needs approval in ask mode), a command, then an answer."""
    return make_replay([
        ("I'll make the greeting **friendlier**.",
         [("edit_file", {"path": "hello.py", "old_string": "'hi ' + name",
                         "new_string": "'hello, ' + name"})]),
        ("Now I run it.", [("bash", {"command": "python hello.py"})]),
        "Done: `greet` now says *hello*.",
    ])


@pytest.fixture
def make_app() -> Callable[..., CoderApp]:
    def make(repo: Path, replay: Path | None = None, mode: str = "ask", resume: bool = False,
             tokens_per_second: float = 0.0) -> CoderApp:
        backend = ReplayBackend(replay, tokens_per_second=tokens_per_second) if replay else None
        spec = f"replay:{replay}" if replay else "replay:none.jsonl"
        return CoderApp(repo=repo, backend_spec=spec, backend=backend, mode=mode, resume=resume)
    return make
