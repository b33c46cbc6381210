"""Guess a repository's test command from the files at its root."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

_NPM_PLACEHOLDER = "no test specified"
_MAKE_TEST_TARGET = re.compile(r"^test\s*:(?!=)", re.MULTILINE)
_REPO_PYTHONS = (".venv/bin/python", "venv/bin/python", ".venv/Scripts/python.exe")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def uses_pytest(repo: Path) -> bool:
    if (repo / "pytest.ini").is_file() or (repo / "conftest.py").is_file():
        return True
    if "[tool.pytest" in _read(repo / "pyproject.toml"):
        return True
    if "[tool:pytest]" in _read(repo / "setup.cfg") or "[pytest]" in _read(repo / "tox.ini"):
        return True
    for folder in ("tests", "test"):
        if (repo / folder).is_dir() and any((repo / folder).rglob("*.py")):
            return True
    return any(repo.glob("test_*.py")) or any(repo.glob("*_test.py"))


def python_for(repo: Path) -> str:
    """The repository's own virtualenv python if it has one, else the one running us."""
    for candidate in _REPO_PYTHONS:
        if (repo / candidate).is_file():
            return candidate
    return shlex.quote(sys.executable)


def _npm_has_test_script(repo: Path) -> bool:
    try:
        scripts = json.loads(_read(repo / "package.json") or "{}").get("scripts") or {}
    except (json.JSONDecodeError, AttributeError):
        return False
    test = scripts.get("test") if isinstance(scripts, dict) else None
    return isinstance(test, str) and bool(test.strip()) and _NPM_PLACEHOLDER not in test


def detect_test_command(repo: Path) -> str | None:
    """pytest → npm test → go test → cargo test → make test; None when nothing fits."""
    if uses_pytest(repo):
        return f"{python_for(repo)} -m pytest -q"
    if (repo / "package.json").is_file() and _npm_has_test_script(repo):
        return "npm test"
    if (repo / "go.mod").is_file():
        return "go test ./..."
    if (repo / "Cargo.toml").is_file():
        return "cargo test"
    for makefile in ("Makefile", "makefile", "GNUmakefile"):
        if _MAKE_TEST_TARGET.search(_read(repo / makefile)):
            return "make test"
    return None
