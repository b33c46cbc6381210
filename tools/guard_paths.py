"""Where a shell word points, and whether deleting or writing there is destructive.

Used by tools.command_guard. Paths are resolved against the repository (or the directory a
preceding ``cd`` moved to), with ``~``, ``$HOME``, ``$PWD`` and ``$(pwd)`` expanded; other
variables make a path unknowable. Wildcards are judged by the directory they expand in.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

_GLOB_CHARS = re.compile(r"[*?\[]")
HOME_VAR = re.compile(r"\$HOME\b|\$\{HOME\}")
_PWD_VAR = re.compile(r"\$PWD\b|\$\{PWD\}|\$\(pwd(?: -[LP])?\)|`pwd`")
_SAFE_DEVICES = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty", "/dev/zero"})


def within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _temp_roots() -> list[Path]:
    roots = {tempfile.gettempdir(), "/tmp", "/var/tmp", os.environ.get("TMPDIR") or "/tmp"}
    return [Path(os.path.realpath(r)) for r in roots]


@dataclass(slots=True)
class Target:
    path: Path | None  # where the word points (its directory when it has wildcards)
    glob: str | None   # the wildcard part, if any


class PathJudge:
    """Judges paths for one command line; ``cwd`` follows its ``cd``s (None: unknown)."""

    def __init__(self, repo: Path) -> None:
        self.repo = Path(os.path.realpath(repo))
        self.home = Path(os.path.realpath(os.path.expanduser("~")))
        self.cwd: Path | None = self.repo

    def expand(self, word: str) -> str | None:
        if word == "~" or word.startswith("~/"):
            word = str(self.home) + word[1:]
        elif word.startswith("~"):
            return None
        word = HOME_VAR.sub(str(self.home), word)
        if _PWD_VAR.search(word):
            if self.cwd is None:
                return None
            word = _PWD_VAR.sub(str(self.cwd), word)
        return None if ("$" in word or "`" in word) else word

    def target(self, word: str, follow_last: bool) -> Target:
        text = self.expand(word)
        if text is None:
            return Target(None, None)
        glob = None
        if _GLOB_CHARS.search(text):
            parts = text.split("/")
            first = next(i for i, part in enumerate(parts) if _GLOB_CHARS.search(part))
            glob = "/".join(parts[first:])
            text = "/".join(parts[:first]) or ("/" if text.startswith("/") else ".")
            follow_last = True
        base = Path(text)
        if not base.is_absolute():
            if self.cwd is None:
                return Target(None, glob)
            base = self.cwd / base
        if follow_last or base.name in ("", "..") or text.endswith("/"):
            return Target(Path(os.path.realpath(base)), glob)
        return Target(Path(os.path.realpath(base.parent)) / base.name, glob)

    def deletion_problem(self, word: str, verb: str = "deletes") -> str | None:
        target = self.target(word, follow_last=False)
        path, glob = target.path, target.glob
        if path is None:
            return f"{verb} {word!r}, a path that depends on a variable and cannot be checked"
        where = f"files in {path}" if glob else str(path)
        if not within(path, self.repo):
            return f"{verb} {where}, outside the repository"
        broad = glob is not None and set(glob) <= set("*.?/")
        if path == self.repo and (glob is None or broad):
            return f"{verb} the whole repository ({word})"
        git_dir = self.repo / ".git"
        if (path == git_dir and (glob is None or broad)) or (
                path == self.repo and glob and re.fullmatch(
                    _glob_to_regex(glob.split("/")[0]), ".git")):
            return f"{verb} the repository's .git directory ({word})"
        return None

    def write_problem(self, word: str, verb: str, allow_new_temp: bool = False) -> str | None:
        text = self.expand(word)
        if text is None:
            return None
        if text in _SAFE_DEVICES or text.startswith(("/dev/fd/", "/proc/self/fd/")):
            return None
        target = self.target(word, follow_last=True)
        path = target.path
        if path is None:
            return None
        if text.startswith("/dev/") or within(path, Path("/dev")):
            return f"{verb} the device {text}"
        if within(path, self.repo):
            hooks = self.repo / ".git" / "hooks"
            if within(path, hooks) or path == self.repo / ".git" / "config":
                return f"{verb} {path}, git's hooks/configuration"
            return None
        if allow_new_temp and not path.exists() and any(within(path, t) for t in _temp_roots()):
            return None
        return f"{verb} {path}, outside the repository"


def _glob_to_regex(glob: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)


