"""Fixtures for the context tests: real git repositories in temporary directories."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest


def write_tree(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("V4CODER_CACHE_DIR", str(tmp_path_factory.mktemp("v4cache")))


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    counter = {"n": 0}

    def make(files: dict[str, str | bytes], use_git: bool = True, commit: bool = True) -> Path:
        counter["n"] += 1
        root = tmp_path / f"repo{counter['n']}"
        root.mkdir()
        write_tree(root, files)
        if use_git:
            git(root, "init", "-q")
            git(root, "config", "user.email", "t@example.com")
            git(root, "config", "user.name", "t")
            if commit:
                git(root, "add", "-A")
                git(root, "commit", "-qm", "init")
        return root

    return make
