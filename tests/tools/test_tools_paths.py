from __future__ import annotations

import os

import pytest

from tools.base import ToolContext, ToolError
from tools.paths import is_secret_path, resolve_in_repo
from tools.registry import run_tool, tools_by_name


@pytest.fixture
def layout(tmp_path):
    repo = (tmp_path / "repo").resolve()
    outside = (tmp_path / "outside").resolve()
    (repo / "src").mkdir(parents=True)
    outside.mkdir()
    (repo / "src" / "a.py").write_text("a\n")
    (outside / "secret.txt").write_text("outside data\n")
    return repo, outside


def test_relative_and_absolute_inside_paths_resolve(layout):
    repo, _ = layout
    assert resolve_in_repo(repo, "src/a.py") == repo / "src" / "a.py"
    assert resolve_in_repo(repo, str(repo / "src" / "a.py")) == repo / "src" / "a.py"
    assert resolve_in_repo(repo, "src/../src/a.py") == repo / "src" / "a.py"
    assert resolve_in_repo(repo, "new/dir/file.txt") == repo / "new" / "dir" / "file.txt"
    assert resolve_in_repo(repo, "") == repo


@pytest.mark.parametrize("path", ["..", "../outside/secret.txt", "src/../../outside",
                                  "/etc/passwd", "~/.bashrc", "/"])
def test_escapes_are_refused(layout, path):
    repo, _ = layout
    with pytest.raises(ToolError, match="outside the repository"):
        resolve_in_repo(repo, path)


def test_absolute_path_outside_is_refused(layout):
    repo, outside = layout
    with pytest.raises(ToolError, match="outside the repository"):
        resolve_in_repo(repo, str(outside / "secret.txt"))


def test_symlinked_file_pointing_out_is_refused(layout):
    repo, outside = layout
    os.symlink(outside / "secret.txt", repo / "link.txt")
    with pytest.raises(ToolError, match="symlink"):
        resolve_in_repo(repo, "link.txt")


def test_symlinked_parent_directory_pointing_out_is_refused(layout):
    repo, outside = layout
    os.symlink(outside, repo / "linkdir")
    with pytest.raises(ToolError, match="symlink"):
        resolve_in_repo(repo, "linkdir/secret.txt")
    with pytest.raises(ToolError):  # a file that does not exist yet, below the link
        resolve_in_repo(repo, "linkdir/new/file.txt")


def test_symlink_inside_the_repo_is_fine(layout):
    repo, _ = layout
    os.symlink(repo / "src", repo / "alias")
    assert resolve_in_repo(repo, "alias/a.py") == repo / "src" / "a.py"


def test_file_tools_refuse_escapes_and_write_nothing(layout):
    repo, outside = layout
    os.symlink(outside, repo / "linkdir")
    ctx = ToolContext(repo=repo)
    tools = tools_by_name()
    calls = [
        ("read_file", {"path": "../outside/secret.txt"}),
        ("read_file", {"path": "linkdir/secret.txt"}),
        ("write_file", {"path": "linkdir/evil.txt", "content": "x"}),
        ("write_file", {"path": str(outside / "evil.txt"), "content": "x"}),
        ("edit_file", {"path": "linkdir/secret.txt", "old_string": "outside", "new_string": "x"}),
        ("list_files", {"path": ".."}),
        ("search", {"pattern": "outside", "path": "linkdir"}),
    ]
    for name, args in calls:
        result = run_tool(tools[name], ctx, args)
        assert not result.ok, (name, args)
        assert "outside data" not in result.output
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "outside data\n"


@pytest.mark.parametrize("path", [
    ".env", "config/.env", ".env.local", ".env.production", "prod.env", "server.pem",
    "tls/private.key", "id_rsa", "id_ed25519", ".ssh/config", "home/.ssh/anything", ".netrc",
    ".npmrc", ".pypirc", ".git-credentials", ".aws/credentials", "credentials.json",
    "certs/client.p12",
])
def test_secret_paths(path):
    assert is_secret_path(path)


@pytest.mark.parametrize("path", [
    ".env.example", ".env.sample", "env.py", "src/environment.ts", "README.md", "keys.py",
    "id_rsa.pub", "monkey.txt", "docs/credentials.md", "public/key.png",
])
def test_non_secret_paths(path):
    assert not is_secret_path(path)
