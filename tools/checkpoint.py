"""Undo through shadow commits that live beside, never inside, the user's git history.

Design
------
- A checkpoint is a commit whose tree is the whole work tree as ``git add -A`` sees it:
  tracked files with their current content plus untracked files that are not ignored.
  It is built in a temporary index (``GIT_INDEX_FILE``, seeded from a copy of the real
  index for speed), written with ``write-tree`` and ``commit-tree`` under the fixed
  identity ``v4coder <v4coder@localhost>``, so it works with no user identity and in a
  repository without any commit.
- Checkpoints form a chain per session: ``refs/v4coder/checkpoints/<session>`` points at
  the newest one and each checkpoint's parent is the previous one. ``git log`` on that
  ref lists them. A checkpoint identical to the newest one is not created again.
- ``restore_checkpoint`` makes the work tree EXACTLY the snapshot: files changed since are
  rewritten, files created since are deleted (emptied directories removed), files deleted
  since come back. Files git ignores are never in a snapshot, so they are never deleted;
  ``.git`` is never touched; submodule contents are left alone. HEAD, branches, stash and
  the REAL INDEX are not modified (the index keeps what the user staged, so ``git status``
  compares the restored files against it as usual). Before restoring, the current state
  is saved as a commit at ``refs/v4coder/pre-restore`` (with a reflog): a restore can be
  undone by restoring that commit.
- ``undo_last`` restores the newest checkpoint that differs from the current work tree and
  pops it (the ref moves to its parent, or is deleted with the last one).
- When ``repo`` is a subdirectory of a work tree, only paths under it are restored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tools.base import ToolError
from tools.gitutil import (
    IDENTITY_ENV,
    NO_CONVERSION,
    git_out,
    git_prefix,
    git_toplevel,
    require_git_repo,
    run_git,
    snapshot_tree,
    temporary_index,
)
from tools.paths import resolve_in_repo

CHECKPOINT_REF_PREFIX = "refs/v4coder/checkpoints/"
PRE_RESTORE_REF = "refs/v4coder/pre-restore"
_GITLINK_MODE = "160000"
_NO_SIGNING = ("-c", "commit.gpgsign=false")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    sha: str
    tree: str
    created: int  # unix time
    label: str


@dataclass(slots=True)
class RestoreSummary:
    sha: str
    written: list[str] = field(default_factory=list)  # changed or deleted files put back
    removed: list[str] = field(default_factory=list)  # files created after the checkpoint


def checkpoint_ref(session: str = "default") -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", session).strip(".-") or "default"
    return CHECKPOINT_REF_PREFIX + name.replace("..", ".")


def _resolve_ref(repo: Path, ref: str) -> str | None:
    proc = run_git(repo, "rev-parse", "--verify", "--quiet", ref + "^{commit}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _tree_of(repo: Path, commit: str) -> str:
    return git_out(repo, "rev-parse", commit + "^{tree}").strip()


def _commit_tree(repo: Path, tree: str, label: str, parent: str | None) -> str:
    args = ["commit-tree", tree, "-m", label or "checkpoint"]
    if parent:
        args += ["-p", parent]
    return git_out(repo, *_NO_SIGNING, *args, env=IDENTITY_ENV).strip()


def create_checkpoint(repo: Path, label: str, session: str = "default") -> str:
    """Snapshot the work tree; return the checkpoint commit (the newest one if unchanged)."""
    require_git_repo(repo)
    ref = checkpoint_ref(session)
    tree = snapshot_tree(repo)
    parent = _resolve_ref(repo, ref)
    if parent and _tree_of(repo, parent) == tree:
        return parent
    sha = _commit_tree(repo, tree, label, parent)
    run_git(repo, "update-ref", "-m", f"v4coder checkpoint: {label}"[:200], ref, sha,
            parent or "")
    return sha


def list_checkpoints(repo: Path, session: str = "default") -> list[Checkpoint]:
    """Checkpoints of a session, newest first."""
    require_git_repo(repo)
    ref = checkpoint_ref(session)
    if _resolve_ref(repo, ref) is None:
        return []
    out = git_out(repo, "log", "--first-parent", "--format=%H%x1f%T%x1f%ct%x1f%s%x1e", ref)
    checkpoints = []
    for record in out.split("\x1e"):
        fields = record.strip("\n").split("\x1f")
        if len(fields) == 4:
            checkpoints.append(Checkpoint(fields[0], fields[1], int(fields[2]), fields[3]))
    return checkpoints


def _changes(top: Path, current: str, target: str, prefix: str) -> tuple[list[str], list[str]]:
    """(paths to write from target, paths to remove) to turn tree current into target."""
    raw = git_out(top, "diff-tree", "-r", "-z", "--no-renames", current, target, "--",
                  prefix or ".")
    items = raw.split("\0")
    to_write, to_remove = [], []
    for header, path in zip(items[0::2], items[1::2], strict=False):
        if not header.startswith(":"):
            continue
        old_mode, new_mode, _, _, status = header[1:].split(" ")
        if status == "D":
            if old_mode != _GITLINK_MODE:
                to_remove.append(path)
        elif new_mode != _GITLINK_MODE:
            to_write.append(path)
    return to_write, to_remove


def _remove(top: Path, rel: str) -> None:
    path = top / rel
    try:
        resolve_in_repo(top, os.path.dirname(rel) or ".")  # never through a symlinked dir
    except ToolError:
        return
    try:
        os.unlink(path)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return
    parent = path.parent
    while parent != top and top in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


def restore_checkpoint(repo: Path, sha: str) -> RestoreSummary:
    """Make the work tree (under ``repo``) exactly the snapshot ``sha``; see module doc."""
    require_git_repo(repo)
    top, prefix = git_toplevel(repo), git_prefix(repo)
    proc = run_git(top, "rev-parse", "--verify", "--quiet", sha + "^{commit}", check=False)
    if proc.returncode != 0:
        raise ToolError(f"no checkpoint {sha!r} in this repository")
    commit = proc.stdout.strip()
    target = _tree_of(top, commit)
    current = snapshot_tree(top)
    saved = _commit_tree(top, current, f"work tree before restoring {commit[:12]}", None)
    run_git(top, "update-ref", "--create-reflog", "-m", "v4coder pre-restore",
            PRE_RESTORE_REF, saved)
    to_write, to_remove = _changes(top, current, target, prefix)
    for rel in to_remove:
        _remove(top, rel)
    if to_write:
        with temporary_index(top, seed_from_real=False) as env:
            run_git(top, "read-tree", target, env=env)
            run_git(top, *NO_CONVERSION, "checkout-index", "-f", "-z", "--stdin", env=env,
                    input_text="\0".join(to_write) + "\0")
    return RestoreSummary(commit, to_write, to_remove)


def undo_last(repo: Path, session: str = "default") -> str | None:
    """Restore the newest checkpoint that differs from the work tree and pop it.

    Returns its sha, or None when there is nothing to undo.
    """
    require_git_repo(repo)
    ref = checkpoint_ref(session)
    current = snapshot_tree(repo)
    while (newest := _resolve_ref(repo, ref)) is not None:
        parent = _resolve_ref(repo, newest + "^")
        differs = _tree_of(repo, newest) != current
        if differs:
            restore_checkpoint(repo, newest)
        if parent:
            run_git(repo, "update-ref", "-m", "v4coder undo", ref, parent, newest)
        else:
            run_git(repo, "update-ref", "-d", ref, newest)
        if differs:
            return newest
    return None
