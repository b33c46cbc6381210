import subprocess
from pathlib import Path

import pytest

from agent.context.ignore import IgnoreRules, parse_rules
from agent.context.walk import walk_repository


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def _paths(result) -> set[str]:  # noqa: ANN001
    return {f.path for f in result.files}


def _reasons(result) -> dict[str, str]:  # noqa: ANN001
    return {s.path: s.reason for s in result.skipped}


def test_gitignore_and_v4coderignore(make_repo) -> None:  # noqa: ANN001
    repo = make_repo({
        ".gitignore": "*.log\nbuildout/\n",
        ".v4coderignore": "docs/private/\n*.snap\n!keep.snap\n",
        "src/app.py": "print('hi')\n",
        "debug.log": "noise\n",
        "buildout/x.py": "x = 1\n",
        "docs/private/notes.md": "secret plans\n",
        "docs/public.md": "# Public\n",
        "a.snap": "snap\n",
        "keep.snap": "kept\n",
    })
    (repo / "untracked.py").write_text("y = 2\n")
    (repo / "untracked.log").write_text("ignored\n")
    result = walk_repository(repo)
    assert result.git
    paths = _paths(result)
    assert {"src/app.py", "docs/public.md", "keep.snap", "untracked.py", ".gitignore"} <= paths
    assert not paths & {"debug.log", "buildout/x.py", "untracked.log", "docs/private/notes.md",
                        "a.snap"}
    reasons = _reasons(result)
    assert reasons["docs/private/notes.md"] == "v4coderignore"
    assert reasons["a.snap"] == "v4coderignore"
    assert "debug.log" not in reasons  # gitignored files are not even listed


def test_binary_secret_lock_vendored_generated_skipped_with_reasons(make_repo) -> None:  # noqa: ANN001
    repo = make_repo({
        "main.py": "import os\n",
        "image.png": b"\x89PNG\r\n\x1a\n\0\0",
        "blob.dat2": b"abc\0def",
        "latin1.txt": "café".encode("latin-1"),
        ".env": "API_KEY=hunter2\n",
        ".env.production": "X=1\n",
        "certs/server.pem": "-----BEGIN CERTIFICATE-----\n",
        "keys/deploy.key": "k\n",
        "id_rsa": "k\n",
        "notes.txt": "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n",
        "package-lock.json": "{}\n",
        "Cargo.lock": "x\n",
        "poetry.lock": "x\n",
        "yarn.lock": "x\n",
        "node_modules/left-pad/index.js": "module.exports = 1;\n",
        "node_modules/left-pad/package.json": "{}\n",
        "vendor/lib.go": "package lib\n",
        "dist/bundle.js": "var a;\n",
        "static/app.min.js": "var a=1;\n",
        "big.py": "x = 1\n" * 200_000,
    })
    result = walk_repository(repo, max_file_bytes=500_000)
    assert _paths(result) == {"main.py"}
    reasons = _reasons(result)
    for p in ("image.png", "blob.dat2", "latin1.txt"):
        assert reasons[p] == "binary", p
    for p in (".env", ".env.production", "certs/server.pem", "keys/deploy.key", "id_rsa", "notes.txt"):
        assert reasons[p] == "secret", p
    for p in ("package-lock.json", "Cargo.lock", "poetry.lock", "yarn.lock"):
        assert reasons[p] == "lock file", p
    assert reasons["node_modules/"] == "vendored directory"
    assert next(s for s in result.skipped if s.path == "node_modules/").files == 2
    assert reasons["vendor/"] == "vendored directory"
    assert reasons["dist/"] == "generated directory"
    assert reasons["static/app.min.js"] == "generated"
    assert reasons["big.py"] == "too large"


def test_plain_directory_fallback_honours_nested_gitignore(make_repo) -> None:  # noqa: ANN001
    repo = make_repo({
        ".gitignore": "*.tmp\n/top_only.txt\n",
        "pkg/.gitignore": "generated_*.py\n!generated_keep.py\n",
        "pkg/mod.py": "a = 1\n",
        "pkg/generated_x.py": "b = 2\n",
        "pkg/generated_keep.py": "c = 3\n",
        "pkg/top_only.txt": "kept: the pattern is anchored to the root\n",
        "top_only.txt": "ignored\n",
        "x.tmp": "ignored\n",
        ".v4coderignore": "pkg/mod.py\n",
    }, use_git=False)
    result = walk_repository(repo)
    assert not result.git
    assert _paths(result) == {".gitignore", "pkg/.gitignore", "pkg/generated_keep.py",
                              "pkg/top_only.txt", ".v4coderignore"}
    assert _reasons(result)["pkg/mod.py"] == "v4coderignore"


CASES = ["*.log", "/root.txt", "dir/", "a/**/b", "**/deep", "name?.md", "[abc].c", "!keep.log",
         "sub/*.py", "docs/**", "\\#hash", "trailing\\ "]
PATHS = ["x.log", "keep.log", "a/x.log", "root.txt", "a/root.txt", "dir/f", "a/dir/f", "a/b",
         "a/x/y/b", "q/deep", "deep", "name1.md", "name12.md", "a.c", "d.c", "sub/m.py",
         "sub/x/m.py", "docs/a/b.md", "docs", "#hash", "trailing "]


@pytest.mark.parametrize("pattern", CASES)
def test_ignore_matcher_agrees_with_git(tmp_path: Path, pattern: str) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q")
    text = pattern + "\n" if not pattern.startswith("!") else "*.log\n" + pattern + "\n"
    (repo / ".gitignore").write_text(text)
    rules = IgnoreRules(parse_rules(text))
    for p in PATHS:
        proc = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", "--no-index", p],
                              capture_output=True)
        assert rules.is_ignored(p) == (proc.returncode == 0), (pattern, p)


def test_symlink_out_of_repository_is_not_followed(make_repo, tmp_path: Path) -> None:  # noqa: ANN001
    outside = tmp_path / "outside.txt"
    outside.write_text("private\n")
    repo = make_repo({"a.py": "x = 1\n"}, commit=False)
    (repo / "link.txt").symlink_to(outside)
    (repo / "inner.py").symlink_to(repo / "a.py")
    result = walk_repository(repo)
    assert _paths(result) == {"a.py", "inner.py"}
    assert _reasons(result)["link.txt"] == "symlink outside repository"


def test_v4coder_session_directory_is_never_walked(make_repo) -> None:  # noqa: ANN001
    files = {"main.py": "x = 1\n", ".v4coderignore": "*.snap\n",
             ".v4coder/sessions/20240101-000000-abc123.jsonl": '{"kind": "header"}\n',
             ".v4coder/sessions/20240101-000000-abc123.pack.json": "{}\n",
             "sub/.v4coder/sessions/s.jsonl": "{}\n"}
    plain = walk_repository(make_repo(files, use_git=False))
    tracked = walk_repository(make_repo(files))  # even when git lists it (not gitignored)
    for result in (plain, tracked):
        assert _paths(result) == {"main.py", ".v4coderignore"}
        assert not [s for s in result.skipped if ".v4coder/" in s.path]
