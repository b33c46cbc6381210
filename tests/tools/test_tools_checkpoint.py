from __future__ import annotations

import os
import shutil

import pytest
from tools_testkit import git, git_state, tree_snapshot, write

from tools.base import ToolError
from tools.checkpoint import (
    PRE_RESTORE_REF,
    checkpoint_ref,
    create_checkpoint,
    list_checkpoints,
    restore_checkpoint,
    undo_last,
)


@pytest.fixture
def busy_repo(new_repo):
    """History, a staged change, an unstaged change, untracked and ignored files, a symlink."""
    repo = new_repo({".gitignore": "*.log\nbuild/\n", "README.md": "v1\n",
                     "src/app.py": "x = 1\n", "src/util.py": "y = 2\n", "docs/a.md": "a\n"})
    git(repo, "branch", "feature")
    write(repo, {"src/app.py": "x = 10\n"})
    git(repo, "add", "src/app.py")                       # staged
    write(repo, {"README.md": "v1 + local edit\n",      # unstaged
                 "notes/todo.txt": "untracked\n",       # untracked
                 "debug.log": "ignored before\n"})      # ignored
    os.symlink("src/app.py", repo / "app-link")
    (repo / "run.sh").write_text("#!/bin/sh\n")
    (repo / "run.sh").chmod(0o755)
    return repo


def _mess_up(repo):
    """A sequence of edits, creations and deletions, like an agent would make."""
    write(repo, {"src/app.py": "x = 99\n", "README.md": "rewritten\n",
                 "new/deep/file.py": "print(1)\n", "src/extra.py": "z = 3\n",
                 "build/out.o": "ignored output\n", "later.log": "ignored after\n"})
    os.unlink(repo / "src/util.py")
    os.unlink(repo / "notes/todo.txt")
    shutil.rmtree(repo / "docs")
    os.unlink(repo / "app-link")
    os.symlink("README.md", repo / "app-link")
    (repo / "run.sh").chmod(0o644)


def test_undo_restores_the_exact_tree_and_leaves_git_state_alone(busy_repo):
    repo = busy_repo
    before_files, before_git = tree_snapshot(repo), git_state(repo)
    staged_before = git(repo, "diff", "--cached")
    sha = create_checkpoint(repo, "before edits")
    assert git_state(repo) == before_git  # creating a checkpoint touches no user state
    _mess_up(repo)
    assert undo_last(repo) == sha
    after = tree_snapshot(repo)
    # Ignored files created after the checkpoint are never deleted; everything else is exact.
    assert after.pop("build/out.o") == b"ignored output\n"
    assert after.pop("later.log") == b"ignored after\n"
    assert after == before_files
    assert not (repo / "new").exists()
    assert os.access(repo / "run.sh", os.X_OK)
    assert git_state(repo) == before_git
    assert git(repo, "diff", "--cached") == staged_before
    assert git(repo, "branch", "--list") == "  feature\n* main\n"


def test_a_same_size_edit_in_the_second_of_staging_is_not_missed(new_repo):
    """Git's racy-clean check must see the real index's mtime, not the copy's."""
    repo = new_repo({"f.txt": "aaaa\n"})
    git(repo, "config", "core.checkStat", "minimal")  # compare only mtime seconds + size
    git(repo, "config", "core.trustctime", "false")
    past = (1_600_000_000, 1_600_000_000)
    os.utime(repo / "f.txt", past)
    git(repo, "add", "f.txt")
    os.utime(repo / ".git" / "index", past)  # the index was written in that same second
    (repo / "f.txt").write_text("bbbb\n")    # same size, and ...
    os.utime(repo / "f.txt", past)             # ... same mtime as the staged entry
    sha = create_checkpoint(repo, "after the edit")
    assert git(repo, "show", f"{sha}:f.txt") == "bbbb\n"


def test_checkpoints_form_a_chain_and_undo_walks_back(busy_repo):
    repo = busy_repo
    first = create_checkpoint(repo, "one")
    assert create_checkpoint(repo, "unchanged") == first  # no duplicate for the same tree
    write(repo, {"step.txt": "1\n"})
    state_two = tree_snapshot(repo)
    second = create_checkpoint(repo, "two")
    write(repo, {"step.txt": "2\n"})
    assert [c.sha for c in list_checkpoints(repo)] == [second, first]
    assert [c.label for c in list_checkpoints(repo)] == ["two", "one"]
    assert git(repo, "rev-parse", checkpoint_ref()).strip() == second
    assert undo_last(repo) == second
    assert tree_snapshot(repo) == state_two
    assert undo_last(repo) == first
    assert not (repo / "step.txt").exists()
    assert undo_last(repo) is None
    assert list_checkpoints(repo) == []


def test_undo_skips_checkpoints_equal_to_the_current_tree(busy_repo):
    repo = busy_repo
    first = create_checkpoint(repo, "before edit")
    write(repo, {"README.md": "edited\n"})
    create_checkpoint(repo, "before a command that changed nothing")
    assert undo_last(repo) == first
    assert (repo / "README.md").read_text() == "v1 + local edit\n"


def test_restore_can_itself_be_undone_through_the_pre_restore_ref(busy_repo):
    repo = busy_repo
    sha = create_checkpoint(repo, "start")
    _mess_up(repo)
    messed = tree_snapshot(repo)
    summary = restore_checkpoint(repo, sha)
    assert "src/util.py" in summary.written and "new/deep/file.py" in summary.removed
    saved = git(repo, "rev-parse", PRE_RESTORE_REF).strip()
    restore_checkpoint(repo, saved)
    assert tree_snapshot(repo) == messed


def test_sessions_have_separate_chains(busy_repo):
    repo = busy_repo
    a = create_checkpoint(repo, "a", session="alpha")
    write(repo, {"x.txt": "x"})
    b = create_checkpoint(repo, "b", session="beta/../weird name")
    assert [c.sha for c in list_checkpoints(repo, session="alpha")] == [a]
    assert [c.sha for c in list_checkpoints(repo, session="beta/../weird name")] == [b]
    assert list_checkpoints(repo) == []


def test_checkpoint_in_a_repo_without_commits(new_repo):
    repo = new_repo({"a.txt": "first\n", "dir/b.txt": "b\n"}, commit=False)
    before_files, before_git = tree_snapshot(repo), git_state(repo)
    sha = create_checkpoint(repo, "initial")
    write(repo, {"a.txt": "changed\n", "c.txt": "new\n"})
    os.unlink(repo / "dir/b.txt")
    assert undo_last(repo) == sha
    assert tree_snapshot(repo) == before_files
    assert git_state(repo) == before_git
    assert git_state(repo)["head_commit"] == ""  # still no commit on the user's branch


def test_checkpoint_outside_git_is_a_clear_error(tmp_path):
    with pytest.raises(ToolError, match="not inside a git repository"):
        create_checkpoint(tmp_path, "x")
    with pytest.raises(ToolError, match="not inside a git repository"):
        undo_last(tmp_path)


def test_restore_of_an_unknown_sha_fails_cleanly(busy_repo):
    before = tree_snapshot(busy_repo)
    with pytest.raises(ToolError, match="no checkpoint"):
        restore_checkpoint(busy_repo, "0" * 40)
    assert tree_snapshot(busy_repo) == before
