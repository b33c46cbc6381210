"""Fixtures for the tools tests: real git repositories in tmp_path, no user git identity."""

from __future__ import annotations

from pathlib import Path

import pytest
from tools_testkit import git, write

from tools.base import ToolContext


@pytest.fixture(autouse=True)
def no_git_identity(tmp_path_factory, monkeypatch):
    """Run every test as a user with no git identity and no global/system git config."""
    empty = tmp_path_factory.getbasetemp() / "empty-gitconfig"
    empty.touch()
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    # Refuse git's guessed identity (user@hostname) so a missing identity really fails.
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "user.useConfigOnly")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "true")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                 "GIT_COMMITTER_EMAIL", "EMAIL", "GIT_DIR", "GIT_INDEX_FILE", "GIT_WORK_TREE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def new_repo(tmp_path):
    """new_repo(files, commit=True, name="repo") -> a resolved git repository path."""

    def make(files: dict[str, str | bytes] | None = None, commit: bool = True,
             name: str = "repo") -> Path:
        repo = (tmp_path / name).resolve()
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        write(repo, files or {})
        if commit:
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "--allow-empty", "-m", "initial")
        return repo

    return make


@pytest.fixture
def repo(new_repo) -> Path:
    return new_repo({"README.md": "hello\n", "src/app.py": "print('hi')\n"})


@pytest.fixture
def ctx(repo) -> ToolContext:
    return ToolContext(repo=repo)
