"""Git tools for the model: git_status, git_diff, git_log, git_commit.

git_diff compares HEAD (or the empty tree before the first commit) with a snapshot of the
whole work tree made in a temporary index, so untracked files show up as new files and
the user's index is never touched. Secret files are left out unless ctx.allow_secrets.
"""

from __future__ import annotations

from tools.base import ToolContext, ToolError
from tools.gitutil import (
    FALLBACK_EMAIL,
    FALLBACK_NAME,
    empty_tree,
    git_out,
    has_identity,
    head_commit,
    require_git_repo,
    run_git,
    snapshot_tree,
    split_z,
)
from tools.paths import is_secret_path, relative_to_repo, resolve_in_repo

MAX_LOG_ENTRIES = 100


def git_status(ctx: ToolContext) -> str:
    require_git_repo(ctx.repo)
    out = git_out(ctx.repo, "status", "--short", "--branch", "--untracked-files=all").rstrip()
    lines = out.splitlines()
    if len(lines) <= 1:
        out += "\n(no changes: the work tree matches HEAD)"
    return out


def _literal(paths: list[str], exclude: bool = False) -> list[str]:
    magic = ":(exclude,literal,top)" if exclude else ":(literal,top)"
    return [magic + path for path in paths]


def git_diff(ctx: ToolContext, path: str | None = None) -> str:
    require_git_repo(ctx.repo)
    scope = ["."]
    if path:
        resolved = resolve_in_repo(ctx.repo, path)
        scope = [relative_to_repo(ctx.repo, resolved)]
    base = head_commit(ctx.repo) or empty_tree(ctx.repo)
    tree = snapshot_tree(ctx.repo)
    changed = split_z(git_out(ctx.repo, "diff", "--name-only", "-z", "--no-renames", base, tree,
                              "--", *scope))
    hidden = [] if ctx.allow_secrets else [name for name in changed if is_secret_path(name)]
    diff = git_out(ctx.repo, "-c", "core.quotepath=false", "diff", "--no-color", "--no-ext-diff",
                   base, tree, "--", *scope, *_literal(hidden, exclude=True)).rstrip()
    if not diff and not hidden:
        where = f" in {path}" if path else ""
        return f"no changes{where} (the work tree matches HEAD)"
    if hidden:
        diff += (f"\n[{len(hidden)} changed secret files not shown: {', '.join(hidden)}]")
    return diff.lstrip("\n")


def git_log(ctx: ToolContext, n: int | None = None) -> str:
    require_git_repo(ctx.repo)
    count = max(1, min(int(n or 10), MAX_LOG_ENTRIES))
    if head_commit(ctx.repo) is None:
        return "no commits yet"
    return git_out(ctx.repo, "log", f"-n{count}", "--date=short",
                   "--format=%h %ad %an: %s").rstrip()


def git_commit(ctx: ToolContext, message: str) -> str:
    require_git_repo(ctx.repo)
    if not message or not message.strip():
        raise ToolError("commit message is empty")
    untracked = split_z(git_out(ctx.repo, "ls-files", "--others", "--exclude-standard", "-z",
                                "--full-name"))
    skipped = [] if ctx.allow_secrets else [p for p in untracked if is_secret_path(p)]
    run_git(ctx.repo, "add", "-A", "--", ".", *_literal(skipped, exclude=True))
    if run_git(ctx.repo, "diff", "--cached", "--quiet", check=False).returncode == 0:
        raise ToolError("nothing to commit: the work tree matches HEAD")
    identity = [] if has_identity(ctx.repo) else [
        "-c", f"user.name={FALLBACK_NAME}", "-c", f"user.email={FALLBACK_EMAIL}"]
    proc = run_git(ctx.repo, *identity, "commit", "-q", "-m", message, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ToolError("git commit failed: " + (detail[-1] if detail else "unknown error"))
    summary = git_out(ctx.repo, "show", "--stat", "--format=%h %s", "HEAD").rstrip()
    note = f"\n[untracked secret files not committed: {', '.join(skipped)}]" if skipped else ""
    return f"committed {summary}{note}"
