"""Which git invocations lose work or history that our checkpoints cannot restore."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

# Pathspecs that mean "everything".
_EVERYTHING = frozenset({".", "./", "*", ":/", ":/*", ":/.", ":(top)", ":(top).", ":(top)*"})
_GLOBAL_VALUE_OPTIONS = frozenset({"-C", "-c", "--git-dir", "--work-tree", "--namespace",
                                   "--exec-path", "--config-env", "--super-prefix"})


class _PathResolver(Protocol):
    repo: Path

    def target(self, word: str, follow_last: bool) -> object: ...


def _short_flags(args: list[str]) -> set[str]:
    return {ch for arg in args if arg.startswith("-") and not arg.startswith("--")
            for ch in arg[1:]}


def _long_options(args: list[str]) -> set[str]:
    return {arg.split("=", 1)[0] for arg in args if arg.startswith("--") and arg != "--"}


def _pathspecs(args: list[str]) -> list[str]:
    if "--" in args:
        return args[args.index("--") + 1:]
    return [arg for arg in args if not arg.startswith("-")]


def _names_everything(args: list[str], resolver: _PathResolver) -> bool:
    for spec in _pathspecs(args):
        if spec in _EVERYTHING:
            return True
        target = resolver.target(spec, follow_last=True)
        if getattr(target, "path", None) == resolver.repo and getattr(target, "glob", None) in (
                None, "*"):
            return True
    return False


def git_problem(args: list[str], resolver: _PathResolver) -> str | None:
    """A reason when ``git ARGS`` would destroy work or history, else None."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in _GLOBAL_VALUE_OPTIONS else 1
    if i >= len(args):
        return None
    sub, rest = args[i], args[i + 1:]
    short, long = _short_flags(rest), _long_options(rest)
    if sub == "reset" and ("--hard" in long or "--merge" in long):
        return "git reset --hard discards uncommitted changes"
    if sub == "clean" and ("f" in short or "--force" in long) and not (
            "n" in short or "--dry-run" in long):
        return "git clean -f deletes untracked files"
    if sub == "checkout" and ("f" in short or "--force" in long):
        return "git checkout --force discards local changes"
    if sub == "checkout" and _names_everything(rest, resolver):
        return "git checkout of every path discards all uncommitted changes"
    if sub == "restore" and _names_everything(rest, resolver):
        staged_only = ("S" in short or "--staged" in long) and not (
            "W" in short or "--worktree" in long)
        if not staged_only:
            return "git restore of every path discards all uncommitted changes"
    if sub == "switch" and ("f" in short or long & {"--force", "--discard-changes"}):
        return "git switch --discard-changes discards local changes"
    if sub == "push":
        forced = long & {"--force", "--force-with-lease", "--force-if-includes", "--mirror",
                         "--delete", "--prune"}
        refspecs = [a for a in rest if not a.startswith("-") and a.startswith(("+", ":"))]
        if forced or short & {"f", "d"} or refspecs:
            return "git push that overwrites or deletes remote history"
    if sub == "branch" and ("D" in short or "f" in short or "--force" in long):
        return "git branch -D/--force can drop unmerged commits"
    if sub == "branch" and ("d" in short or "--delete" in long) and (
            "f" in short or "--force" in long):
        return "git branch --delete --force can drop unmerged commits"
    if sub == "stash" and rest[:1] in (["drop"], ["clear"]):
        return f"git stash {rest[0]} deletes stashed work"
    if sub == "reflog" and rest[:1] in (["expire"], ["delete"]):
        return "git reflog expire/delete removes the history needed for recovery"
    if sub == "gc" and any(a.startswith("--prune=now") or a == "--prune=all" for a in rest):
        return "git gc --prune=now deletes unreachable commits immediately"
    if sub in ("filter-branch", "filter-repo"):
        return f"git {sub} rewrites history"
    if sub == "update-ref" and "d" in short:
        return "git update-ref -d deletes a ref"
    if sub == "rm" and "r" in short and _names_everything(rest, resolver):
        return "git rm -r of everything deletes all tracked files"
    return None
