from __future__ import annotations

import pytest
from tools_testkit import git, git_state, write

from tools.base import ToolContext, ToolError
from tools.git_tools import git_commit, git_diff, git_log, git_status


def test_git_diff_includes_untracked_files_and_leaves_the_index_alone(ctx, repo):
    write(repo, {"src/app.py": "print('changed')\n", "src/new_module.py": "VALUE = 1\n"})
    before = git_state(repo)
    diff = git_diff(ctx)
    assert "diff --git a/src/app.py b/src/app.py" in diff
    assert "-print('hi')\n+print('changed')" in diff
    assert "diff --git a/src/new_module.py b/src/new_module.py\nnew file mode 100644" in diff
    assert "+VALUE = 1" in diff
    assert git_state(repo) == before
    assert git(repo, "status", "--porcelain") == " M src/app.py\n?? src/new_module.py\n"


def test_git_diff_path_filter_and_clean_tree(ctx, repo):
    assert git_diff(ctx).startswith("no changes")
    write(repo, {"README.md": "changed\n", "src/app.py": "x\n"})
    only = git_diff(ctx, "README.md")
    assert "README.md" in only and "src/app.py" not in only
    with pytest.raises(ToolError, match="outside"):
        git_diff(ctx, "../elsewhere")


def test_git_diff_hides_secret_files(ctx, repo):
    write(repo, {".env": "TOKEN=s3cr3t\n", "a.txt": "visible\n"})
    diff = git_diff(ctx)
    assert "s3cr3t" not in diff and "+visible" in diff
    assert "[1 changed secret files not shown: .env]" in diff
    assert "s3cr3t" in git_diff(ToolContext(repo=repo, allow_secrets=True))


def test_git_diff_in_a_repo_without_commits(new_repo):
    repo = new_repo({"first.py": "a = 1\n"}, commit=False)
    diff = git_diff(ToolContext(repo=repo))
    assert "new file mode 100644" in diff and "+a = 1" in diff


def test_git_commit_without_identity_uses_the_fallback(ctx, repo):
    write(repo, {"src/app.py": "print('v2')\n", "added.txt": "new\n", ".env": "KEY=1\n"})
    out = git_commit(ctx, "Change the greeting")
    assert out.startswith("committed ") and "Change the greeting" in out
    assert "[untracked secret files not committed: .env]" in out
    assert git(repo, "log", "-1", "--format=%an <%ae>") == "v4coder <v4coder@localhost>\n"
    assert git(repo, "show", "--name-only", "--format=", "HEAD").split() == [
        "added.txt", "src/app.py"]
    assert git(repo, "status", "--porcelain") == "?? .env\n"
    with pytest.raises(ToolError, match="nothing to commit"):
        git_commit(ctx, "again")
    with pytest.raises(ToolError, match="empty"):
        git_commit(ctx, "  ")


def test_git_hooks_do_not_see_our_secrets(ctx, repo, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_API_KEY", "sk-hook-leak")
    dump = tmp_path / "hook-env.txt"
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\nenv > '{dump}'\n")
    hook.chmod(0o755)
    write(repo, {"x.txt": "x\n"})
    git_commit(ctx, "with a hook")
    seen = dump.read_text()
    assert "PATH=" in seen and "sk-hook-leak" not in seen


def test_git_commit_keeps_a_configured_identity(ctx, repo):
    git(repo, "config", "user.name", "Real Person")
    git(repo, "config", "user.email", "real@example.invalid")
    write(repo, {"x.txt": "x\n"})
    git_commit(ctx, "mine")
    assert git(repo, "log", "-1", "--format=%an <%ae>") == "Real Person <real@example.invalid>\n"


def test_git_commit_in_a_repo_without_commits(new_repo):
    repo = new_repo({"a.txt": "a\n"}, commit=False)
    git_commit(ToolContext(repo=repo), "first")
    assert git(repo, "log", "--format=%s") == "first\n"


def test_git_log_and_status(ctx, repo, new_repo):
    write(repo, {"b.txt": "b\n"})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second commit")
    log = git_log(ctx).splitlines()
    assert len(log) == 2 and log[0].endswith("Test Person: second commit")
    assert git_log(ctx, n=1) == log[0]
    assert git_status(ctx).startswith("## main") and "no changes" in git_status(ctx)
    write(repo, {"c.txt": "c\n"})
    assert "?? c.txt" in git_status(ctx)
    empty = new_repo(name="empty", commit=False)
    assert git_log(ToolContext(repo=empty)) == "no commits yet"


def test_git_tools_outside_a_repository(tmp_path):
    ctx = ToolContext(repo=tmp_path)
    for call in (lambda: git_status(ctx), lambda: git_diff(ctx), lambda: git_log(ctx),
                 lambda: git_commit(ctx, "m")):
        with pytest.raises(ToolError, match="not inside a git repository"):
            call()
