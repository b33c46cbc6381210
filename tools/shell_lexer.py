"""A small bash lexer for command analysis: simple commands, redirections, nested scripts.

It is not a full shell parser. It splits a command line on ``; & && || | |&`` newlines
and parentheses, removes quotes (so quoted separators stay inside their word), records
redirections with their targets, and collects the bodies of ``$(…)``, backticks,
``<(…)``/``>(…)`` and of here-documents fed to a shell, so the caller can analyse those too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

SHELLS = frozenset({"bash", "sh", "zsh", "dash", "ksh", "fish", "busybox"})


@dataclass(slots=True)
class SimpleCommand:
    words: list[str] = field(default_factory=list)
    redirects: list[tuple[str, str]] = field(default_factory=list)  # (operator, target)
    piped: bool = False  # its stdin comes from the previous command through a pipe


@dataclass(slots=True)
class ParsedScript:
    commands: list[SimpleCommand]
    nested: list[str]  # scripts that run as part of this one: $(…), `…`, shell heredocs


_REDIRECT_OPS = ("&>>", "&>", "<<<", "<<-", "<<", ">>", ">|", ">&", "<&", "<>", ">", "<")
HEREDOC_OPS = ("<<", "<<-")


class _Lexer:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.commands: list[SimpleCommand] = []
        self.nested: list[str] = []
        self.current = SimpleCommand()
        self.word: list[str] = []
        self.in_word = False
        self.redirect_op: str | None = None
        self.heredocs: list[tuple[str, bool, SimpleCommand]] = []

    # -- words and commands
    def add(self, text: str) -> None:
        self.word.append(text)
        self.in_word = True

    def end_word(self) -> None:
        if not self.in_word:
            return
        word = "".join(self.word)
        self.word, self.in_word = [], False
        if self.redirect_op is None:
            self.current.words.append(word)
            return
        op, self.redirect_op = self.redirect_op, None
        self.current.redirects.append((op, word))
        if op in HEREDOC_OPS:
            self.heredocs.append((word, op == "<<-", self.current))

    def end_command(self, next_piped: bool = False) -> None:
        self.end_word()
        if self.current.words or self.current.redirects:
            self.commands.append(self.current)
        self.current = SimpleCommand(piped=next_piped)

    # -- scanning helpers
    def balanced(self, start: int) -> int:
        """Index just past the ')' closing the '(' before ``start``."""
        depth, j, s = 1, start, self.s
        while j < len(s):
            ch = s[j]
            if ch == "\\":
                j += 2
                continue
            if ch == "'":
                j = s.find("'", j + 1)
                if j == -1:
                    return len(s)
            elif ch == '"':
                j = self.quote_end(j + 1)
                continue
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return len(s)

    def quote_end(self, j: int) -> int:
        """Index just past the '"' closing a double-quoted string that starts at ``j``."""
        s = self.s
        while j < len(s) and s[j] != '"':
            j += 2 if s[j] == "\\" else 1
        return min(j + 1, len(s))

    def substitution(self, start: int, body_start: int) -> None:
        end = self.balanced(body_start)
        self.nested.append(self.s[body_start:end - 1])
        self.add(self.s[start:end])
        self.i = end

    def backtick(self) -> None:
        j = self.i + 1
        while j < len(self.s) and self.s[j] != "`":
            j += 2 if self.s[j] == "\\" else 1
        self.nested.append(self.s[self.i + 1:j])
        self.add(self.s[self.i:j + 1])
        self.i = j + 1

    def double_quoted(self) -> None:
        s, j = self.s, self.i + 1
        self.in_word = True
        while j < len(s) and s[j] != '"':
            if s[j] == "\\" and j + 1 < len(s) and s[j + 1] in '"\\$`\n':
                self.add(s[j + 1])
                j += 2
            elif s.startswith("$(", j):
                self.i = j
                self.substitution(j, j + 2)
                j = self.i
            elif s[j] == "`":
                self.i = j
                self.backtick()
                j = self.i
            else:
                self.add(s[j])
                j += 1
        self.i = j + 1

    def heredoc_bodies(self) -> None:
        """Called just after a newline: consume pending here-document bodies."""
        for delimiter, strip_tabs, command in self.heredocs:
            body: list[str] = []
            while self.i < len(self.s):
                end = self.s.find("\n", self.i)
                end = len(self.s) if end == -1 else end
                line = self.s[self.i:end]
                self.i = end + 1
                if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                    break
                body.append(line)
            if command.words and os.path.basename(command.words[0]) in SHELLS:
                self.nested.append("\n".join(body))
        self.heredocs = []

    def redirect(self) -> bool:
        for op in _REDIRECT_OPS:
            if self.s.startswith(op, self.i):
                if self.in_word and "".join(self.word).isdigit():  # "2>": fd number
                    self.word, self.in_word = [], False
                self.end_word()
                self.redirect_op = op
                self.i += len(op)
                return True
        return False

    def run(self) -> ParsedScript:
        s = self.s
        while self.i < len(s):
            ch, nxt = s[self.i], s[self.i + 1:self.i + 2]
            if ch in " \t\r":
                self.end_word()
                self.i += 1
            elif ch == "\\":
                if nxt != "\n":
                    self.add(nxt)
                self.i += 2
            elif ch == "'":
                end = s.find("'", self.i + 1)
                end = len(s) if end == -1 else end
                self.add(s[self.i + 1:end])
                self.i = end + 1
            elif ch == '"':
                self.double_quoted()
            elif ch == "$" and nxt == "'":
                end = self.i + 2
                while end < len(s) and s[end] != "'":
                    end += 2 if s[end] == "\\" else 1
                self.add(s[self.i + 2:end])
                self.i = end + 1
            elif ch == "$" and nxt == "(":
                self.substitution(self.i, self.i + 2)
            elif ch in "<>" and nxt == "(":
                self.end_word()
                self.substitution(self.i, self.i + 2)
                self.end_word()
            elif ch == "`":
                self.backtick()
            elif ch == "#" and not self.in_word:
                end = s.find("\n", self.i)
                self.i = len(s) if end == -1 else end
            elif ch == "\n":
                self.end_command()
                self.i += 1
                self.heredoc_bodies()
            elif ch == "|":
                double = nxt == "|"
                self.end_command(next_piped=not double)
                self.i += 2 if nxt in "|&" and nxt else 1
            elif ch == "&" and nxt != ">":
                self.end_command()
                self.i += 2 if nxt == "&" else 1
            elif ch in ";()":
                self.end_command()
                self.i += 1
            elif ch in "<>&" and self.redirect():
                continue
            else:
                self.add(ch)
                self.i += 1
        self.end_command()
        return ParsedScript(self.commands, self.nested)


def parse_script(text: str) -> ParsedScript:
    return _Lexer(text).run()
