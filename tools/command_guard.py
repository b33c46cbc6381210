"""Spot destructive shell commands and shell reads of secret files before they run.

``classify_command(command, repo)`` returns a one-line reason when the command would
destroy something the checkpoints cannot bring back: deleting, moving or overwriting
anything outside the repository, deleting the repository itself or its .git, history-
or work-losing git commands (reset --hard, clean -f, checkout/restore of everything,
force pushes, branch -D, stash drop/clear), find -delete outside, mkfs/dd to devices,
fork bombs. Commands are split on shell separators with quotes respected; ``sudo``,
``env``, ``timeout``, ``xargs``… wrappers are looked through and ``bash -c``/``eval``/
``$(…)`` bodies are analysed recursively. Paths are resolved against the repository,
following ``cd``. A path that cannot be known (a variable) counts as dangerous for
deletions. It is a heuristic safety net, not a sandbox.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tools.git_guard import git_problem
from tools.guard_paths import HOME_VAR, PathJudge, within
from tools.paths import is_secret_path
from tools.shell_lexer import SHELLS, SimpleCommand, parse_script

MAX_DEPTH = 6
_FORK_BOMB = re.compile(r"([\w:.-]+)\s*\(\)\s*\{[^}]*?\1\s*\|\s*\1")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_RESERVED_WORDS = frozenset({"{", "}", "!", "if", "then", "else", "elif", "fi", "do", "done",
                             "while", "until", "time", "coproc"})
_PATH_PIECE = re.compile(r"[\w.~/+@-]+")
_OUTPUT_OPS = frozenset({">", ">>", ">|", "&>", "&>>", "<>", ">&"})
_DELETERS = frozenset({"rm", "rmdir", "unlink", "shred", "srm", "trash", "trash-put"})
_COPIERS = frozenset({"cp", "install", "rsync", "ln"})
_PERMISSIONS = frozenset({"chmod", "chown", "chgrp", "chattr", "setfacl"})
_ALWAYS = {
    **dict.fromkeys(("mkfs", "mke2fs", "mkswap", "fdisk", "sfdisk", "parted", "wipefs"),
                    "formats or repartitions a disk"),
    **dict.fromkeys(("shutdown", "reboot", "halt", "poweroff"), "shuts the machine down"),
    **dict.fromkeys(("pkill", "killall"), "kills processes by name"),
}
_WRAPPERS = {  # wrapper -> its options that take a value
    "sudo": {"-u", "-g", "-C", "-p", "-U", "-r", "-t", "-D", "-h"}, "doas": {"-u", "-C"},
    "nohup": set(), "command": set(), "builtin": set(), "exec": {"-a"}, "time": {"-f", "-o"},
    "nice": {"-n"}, "ionice": {"-c", "-n", "-p"}, "stdbuf": {"-i", "-o", "-e"},
    "timeout": {"-s", "-k", "--signal", "--kill-after"}, "watch": {"-n", "-d"},
    "chronic": set(), "unbuffer": set(), "setsid": set(), "caffeinate": set(),
}
_VALUE_OPTIONS = {  # per command, the options that take a value (not operands)
    **dict.fromkeys(("mv", "cp", "install", "ln"), {"-t", "--target-directory", "-S",
                                                   "--suffix", "-m", "--mode", "-o", "-g"}),
    "rsync": {"-e", "--rsh", "-f", "--filter", "--exclude", "--include", "-T", "--temp-dir"},
    "truncate": {"-s", "--size", "-r", "--reference"},
    "chmod": {"--reference"}, "chown": {"--from", "--reference"}, "setfacl": {"-m", "-x"},
}
_XARGS_VALUE_OPTIONS = {"-I", "-n", "-P", "-L", "-d", "-E", "-s", "-a", "--max-args",
                        "--max-procs", "--delimiter", "--arg-file", "--replace"}
_FIND_FILTERS = frozenset({"-name", "-iname", "-path", "-ipath", "-wholename", "-regex",
                           "-iregex", "-type", "-newer", "-mtime", "-mmin", "-atime", "-empty",
                           "-size", "-user", "-perm", "-links", "-inum", "-samefile"})


class _Analyzer(PathJudge):
    def __init__(self, repo: Path) -> None:
        super().__init__(repo)
        self.problems: list[str] = []
        self.secrets: list[str] = []

    def note(self, problem: str | None) -> None:
        if problem:
            self.problems.append(problem)

    # ------------------------------------------------------------ scripts
    def script(self, text: str, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            self.problems.append("nests shells too deeply to be checked")
            return
        if _FORK_BOMB.search(text):
            self.problems.append("is a fork bomb")
        parsed = parse_script(text)
        for command in parsed.commands:
            self.simple(command, depth)
        for inner in parsed.nested:
            self.script(inner, depth + 1)

    def simple(self, command: SimpleCommand, depth: int) -> None:
        for op, target in command.redirects:
            if op in _OUTPUT_OPS:
                if op == ">&" and (target.isdigit() or target == "-"):
                    continue
                self.note(self.write_problem(target, "writes to", allow_new_temp=True))
            elif op in ("<", "<<<"):
                self.secret_words([target])
        self.secret_words(command.words)
        self.dispatch(command.words, command.piped, depth, opaque_args=False)

    def secret_words(self, words: list[str]) -> None:
        for word in words:
            expanded = HOME_VAR.sub(str(self.home), word)
            for piece in _PATH_PIECE.findall(expanded):
                if not (is_secret_path(piece) or is_secret_path(piece + "/x")):
                    continue
                path = Path(os.path.expanduser(piece))
                if not path.is_absolute() and self.cwd is not None:
                    path = self.cwd / path
                if os.path.lexists(path):
                    self.secrets.append(piece)

    def dispatch(self, words: list[str], piped: bool, depth: int, opaque_args: bool) -> None:
        while words and (_ASSIGNMENT.match(words[0]) or words[0] in _RESERVED_WORDS):
            words = words[1:]
        if not words:
            return
        name, args = os.path.basename(words[0]), words[1:]
        if name in _WRAPPERS:
            if name == "timeout":
                args = _skip_options(args, _WRAPPERS[name])[1:]
            return self.dispatch(_skip_options(args, _WRAPPERS[name]), piped, depth, opaque_args)
        if name == "env":
            return self.env(args, piped, depth)
        if name == "xargs":
            rest = _skip_options(args, _XARGS_VALUE_OPTIONS)
            return self.dispatch(rest, piped, depth, opaque_args=True)
        if name in SHELLS:
            return self.shell(name, args, piped, depth)
        if name == "eval":
            return self.script(" ".join(args), depth + 1)
        if name in ("cd", "pushd"):
            self.cwd = self.target(args[0] if args else "~", follow_last=True).path
            return
        if name == "popd":
            self.cwd = None
            return
        self.tool(name, args, opaque_args)

    def env(self, args: list[str], piped: bool, depth: int) -> None:
        i = 0
        while i < len(args):
            arg = args[i]
            if arg in ("-u", "--unset"):
                i += 2
            elif arg in ("-C", "--chdir") and i + 1 < len(args):
                self.cwd = self.target(args[i + 1], follow_last=True).path
                i += 2
            elif arg in ("-S", "--split-string") and i + 1 < len(args):
                return self.script(" ".join(args[i + 1:]), depth + 1)
            elif arg.startswith("-") or _ASSIGNMENT.match(arg):
                i += 1
            else:
                break
        self.dispatch(args[i:], piped, depth, opaque_args=False)

    def shell(self, name: str, args: list[str], piped: bool, depth: int) -> None:
        wants_script, i = False, 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
                i += 1
            elif arg == "-c" or (arg.startswith("-") and not arg.startswith("--") and "c" in arg):
                wants_script = True
            elif arg.startswith(("-", "+")):
                continue
            elif wants_script:
                return self.script(arg, depth + 1)
            else:
                return  # runs a script file: not analysed
        if piped and not wants_script:
            self.problems.append(f"pipes data into {name}, whose commands cannot be checked")

    def tool(self, name: str, args: list[str], opaque_args: bool) -> None:
        base = re.sub(r"\.\w+$", "", name)  # mkfs.ext4 -> mkfs
        if base in _ALWAYS:
            return self.note(f"runs {name}: it {_ALWAYS[base]}")
        operands = _operands(args, _VALUE_OPTIONS.get(name, set()))
        if opaque_args and (name in _DELETERS | _COPIERS | _PERMISSIONS or name == "mv"):
            return self.note(f"{name} gets its paths from xargs, which cannot be checked")
        if name in _DELETERS:
            verb = "overwrites" if name == "shred" else "deletes"
            for word in operands:
                self.note(self.deletion_problem(word, f"{name} {verb}"))
        elif name == "mv":
            self.move(args, operands)
        elif name in _COPIERS and len(operands) >= 2:
            self.note(self.write_problem(_destination(args, operands), f"{name} writes to"))
        elif name in _PERMISSIONS:
            for word in operands[1:]:
                target = self.target(word, follow_last=True).path
                if target is None or not within(target, self.repo):
                    self.note(f"{name} changes {word}, outside the repository")
        elif name in ("tee", "truncate"):
            for word in operands:
                self.note(self.write_problem(word, f"{name} writes to", allow_new_temp=True))
        elif name == "dd":
            for arg in args:
                if arg.startswith("of="):
                    self.note(self.write_problem(arg[3:], "dd writes to"))
        elif name == "kill" and args and args[-1] == "-1":
            self.note("kill -1 signals every process of the user")
        elif name == "find":
            self.find(args)
        elif name == "git":
            self.note(git_problem(args, self))

    def move(self, args: list[str], operands: list[str]) -> None:
        if len(operands) < 2 and "-t" not in args:
            return
        destination = _destination(args, operands)
        for word in operands:
            if word is destination:
                continue
            self.note(self.deletion_problem(word, "mv moves away"))
        self.note(self.write_problem(destination, "mv writes to"))

    def find(self, args: list[str]) -> None:
        while args and args[0] in ("-H", "-L", "-P"):
            args = args[1:]
        count = 0
        while count < len(args) and not (
                args[count].startswith("-") or args[count] in ("(", "!", ")", ",")):
            count += 1
        starts, args = args[:count], args[count:]
        action = "-delete" if "-delete" in args else None
        for i, arg in enumerate(args):
            if arg in ("-exec", "-execdir", "-ok", "-okdir") and i + 1 < len(args):
                runs = os.path.basename(args[i + 1])
                if runs in _DELETERS | _COPIERS | _PERMISSIONS | SHELLS | {"mv", "xargs"}:
                    action = f"{arg} {runs}"
        if action is None:
            return
        filtered = any(arg in _FIND_FILTERS for arg in args)
        for word in starts or ["."]:
            path = self.target(word, follow_last=True).path
            if path is None or not within(path, self.repo):
                self.note(f"find {word} {action} works outside the repository")
            elif path == self.repo and not filtered:
                self.note(f"find {word} {action} deletes everything in the repository")


def _skip_options(args: list[str], value_options: set[str]) -> list[str]:
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        if args[i] == "--":
            return args[i + 1:]
        i += 2 if args[i] in value_options else 1
    return args[i:]


def _operands(args: list[str], value_options: set[str]) -> list[str]:
    out, i, options_done = [], 0, False
    while i < len(args):
        arg = args[i]
        if options_done or not arg.startswith("-") or arg == "-":
            out.append(arg)
        elif arg == "--":
            options_done = True
        elif arg in value_options:
            i += 1
        i += 1
    return out


def _destination(args: list[str], operands: list[str]) -> str:
    for i, arg in enumerate(args):
        if arg in ("-t", "--target-directory") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--target-directory="):
            return arg.split("=", 1)[1]
    return operands[-1]


def _analyse(command: str, repo: Path) -> _Analyzer:
    analyzer = _Analyzer(repo)
    try:
        analyzer.script(command)
    except Exception as exc:  # fail closed: an unreadable command is not "safe"
        analyzer.problems.append(f"could not be analysed ({type(exc).__name__})")
    return analyzer


def classify_command(command: str, repo: Path) -> str | None:
    """One-line reason why ``command`` is destructive, or None when it looks safe."""
    return "; ".join(dict.fromkeys(_analyse(command, repo).problems)) or None


def secret_reference(command: str, repo: Path) -> str | None:
    """Why ``command`` would expose a secret file (an existing .env, key, …), or None."""
    secrets = _analyse(command, repo).secrets
    if not secrets:
        return None
    names = ", ".join(dict.fromkeys(secrets))
    return f"the command reads secret files ({names}), which stay out of the model's context"
