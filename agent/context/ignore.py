"""gitignore-syntax matching, written here (no pathspec dependency).

Used for ``.v4coderignore`` everywhere (``git ls-files --cached`` lists tracked files
regardless of excludes, so git cannot apply it for us) and for ``.gitignore`` files when
the directory is not a git repository. Paths are POSIX, relative to the repository root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(slots=True, frozen=True)
class Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    base: str  # directory of the ignore file, "" for the root, else "a/b/"


def _translate(pat: str) -> str:
    """Regex for one gitignore glob (already stripped of !, leading and trailing /)."""
    out: list[str] = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if c == "*":
            if pat.startswith("**", i):
                before_ok = i == 0 or pat[i - 1] == "/"
                after = pat[i + 2 : i + 3]
                if before_ok and after == "/":
                    out.append("(?:.*/)?")
                    i += 3
                    continue
                if before_ok and i + 2 == n:
                    out.append(".*")
                    i += 2
                    continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pat[i]))
        elif c == "[":
            j = pat.find("]", i + 2 if pat[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pat[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def parse_rules(text: str, base: str = "") -> list[Rule]:
    """Rules from the text of one ignore file located in directory ``base``."""
    rules: list[Rule] = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if not line or line.startswith("#"):
            continue
        while line.endswith(" ") and not line.endswith("\\ "):
            line = line[:-1]
        if not line:
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        elif line.startswith("\\!") or line.startswith("\\#"):
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        body = _translate(line)
        prefix = "" if anchored else "(?:.*/)?"
        regex = re.compile(prefix + body + r"\Z", re.DOTALL)
        rules.append(Rule(regex, negate, dir_only, base))
    return rules


@dataclass(slots=True)
class IgnoreRules:
    """An ordered rule list; the last matching rule wins, as in git."""

    rules: list[Rule] = field(default_factory=list)

    def add_file(self, path: Path, base: str = "") -> None:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return
        self.rules.extend(parse_rules(text, base))

    def _match(self, rel: str, is_dir: bool) -> bool | None:
        verdict: bool | None = None
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.base:
                if not rel.startswith(rule.base):
                    continue
                sub = rel[len(rule.base) :]
            else:
                sub = rel
            if rule.regex.match(sub):
                verdict = not rule.negate
        return verdict

    def is_ignored(self, rel: str, is_dir: bool = False) -> bool:
        """True when ``rel`` or one of its parent directories is ignored."""
        if not self.rules:
            return False
        parts = rel.split("/")
        for k in range(1, len(parts)):
            if self._match("/".join(parts[:k]), True):
                return True
        return bool(self._match(rel, is_dir))
