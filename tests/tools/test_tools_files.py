from __future__ import annotations

import os
import stat

import pytest
from tools_testkit import write

from tools import files
from tools.base import ToolContext, ToolError
from tools.files import list_files, read_file, search, write_file


def test_read_file_numbers_lines_with_a_header(ctx, repo):
    write(repo, {"m.py": "one\ntwo\nthree\n"})
    out = read_file(ctx, "m.py")
    assert out.splitlines() == ["m.py (3 lines)", "   1| one", "   2| two", "   3| three"]


def test_read_file_range_and_errors(ctx, repo):
    write(repo, {"m.py": "".join(f"line {i}\n" for i in range(1, 21))})
    out = read_file(ctx, "m.py", start_line=5, end_line=7)
    assert out.splitlines() == ["m.py (lines 5-7 of 20)", "   5| line 5", "   6| line 6",
                                "   7| line 7"]
    with pytest.raises(ToolError, match="past the end"):
        read_file(ctx, "m.py", start_line=30)
    with pytest.raises(ToolError, match="before start_line"):
        read_file(ctx, "m.py", start_line=7, end_line=3)
    with pytest.raises(ToolError, match="does not exist"):
        read_file(ctx, "missing.py")
    with pytest.raises(ToolError, match="directory"):
        read_file(ctx, "src")


def test_read_file_caps_long_files_and_says_how_to_page(ctx, repo, monkeypatch):
    monkeypatch.setattr(files, "MAX_READ_LINES", 10)
    write(repo, {"big.txt": "".join(f"{i}\n" for i in range(1, 26))})
    out = read_file(ctx, "big.txt")
    assert "  10| 10" in out and "  11| 11" not in out
    assert "start_line=11" in out
    out = read_file(ctx, "big.txt", start_line=21)
    assert "  25| 25" in out and "continue" not in out


def test_read_file_refuses_binary_and_secrets(ctx, repo):
    write(repo, {"blob.bin": b"\x00\x01\x02binary", ".env": "API_KEY=hunter2\n"})
    with pytest.raises(ToolError, match="binary"):
        read_file(ctx, "blob.bin")
    with pytest.raises(ToolError, match="secret") as info:
        read_file(ctx, ".env")
    assert "hunter2" not in str(info.value)
    allowed = ToolContext(repo=repo, allow_secrets=True)
    assert "hunter2" in read_file(allowed, ".env")


def test_list_files_honours_gitignore_and_skips_git(ctx, repo):
    write(repo, {".gitignore": "build/\n*.log\n", "build/out.o": "x", "debug.log": "x",
                 "notes/todo.txt": "untracked\n"})
    listed = list_files(ctx).splitlines()
    assert listed == [".gitignore", "README.md", "notes/todo.txt", "src/app.py"]
    assert list_files(ctx, glob="*.py").splitlines() == ["src/app.py"]
    assert list_files(ctx, path="notes").splitlines() == ["notes/todo.txt"]
    assert list_files(ctx, glob="src/**/*.py").splitlines() == ["src/app.py"]
    assert list_files(ctx, glob="*.{md,txt}").splitlines() == ["README.md", "notes/todo.txt"]


def test_list_files_outside_git_walks_and_skips_vcs_dirs(tmp_path):
    root = (tmp_path / "plain").resolve()
    write(root, {"a.py": "", "pkg/b.py": "", ".git/config": "", "node_modules/x/y.js": ""})
    assert list_files(ToolContext(repo=root)).splitlines() == ["a.py", "pkg/b.py"]


def test_search_regex_literal_fallback_secrets_and_cap(ctx, repo, monkeypatch):
    write(repo, {"a.py": "def alpha():\n    return beta(1)\n", "b.py": "beta = (1\n",
                 ".env": "beta=secret\n", "img.bin": b"\x00beta"})
    out = search(ctx, r"beta\(\d\)")
    assert out.splitlines() == ["a.py:2:    return beta(1)", "[1 secret files not searched]"]
    literal = search(ctx, "beta = (1")
    assert "invalid regex" in literal and "b.py:1:beta = (1" in literal
    everywhere = search(ctx, "beta")
    assert "secret" not in everywhere.replace("1 secret files not searched", "")
    assert "[1 secret files not searched]" in everywhere
    assert "img.bin" not in everywhere
    assert search(ctx, "beta", glob="b.*").splitlines() == ["b.py:1:beta = (1"]
    assert search(ctx, "beta", path=".env").startswith("no matches")
    monkeypatch.setattr(files, "MAX_SEARCH_HITS", 1)
    capped = search(ctx, "beta")
    assert capped.splitlines()[0].startswith("a.py:2:")
    assert "[2 matches in 2 files; showing the first 1" in capped
    assert search(ctx, "zzz-not-there").startswith("no matches for 'zzz-not-there'")


def test_write_file_creates_parents_and_reports(ctx, repo):
    out = write_file(ctx, "deep/er/new.txt", "x\ny\n")
    assert out.startswith("created deep/er/new.txt (2 lines")
    assert (repo / "deep/er/new.txt").read_text() == "x\ny\n"
    assert write_file(ctx, "deep/er/new.txt", "z\n").startswith("wrote deep/er/new.txt")


def test_write_file_is_atomic_and_keeps_mode_and_crlf(ctx, repo):
    target = repo / "run.sh"
    target.write_bytes(b"#!/bin/sh\r\necho old\r\n")
    target.chmod(0o754)
    inode = target.stat().st_ino
    write_file(ctx, "run.sh", "#!/bin/sh\necho new\n")
    assert target.read_bytes() == b"#!/bin/sh\r\necho new\r\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o754
    assert target.stat().st_ino != inode  # replaced, not rewritten in place
    assert sorted(os.listdir(repo)) == [".git", "README.md", "run.sh", "src"]


def test_failed_write_leaves_the_old_file_and_no_temp_file(ctx, repo, monkeypatch):
    target = repo / "keep.txt"
    target.write_text("precious\n")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_file(ctx, "keep.txt", "half-written")
    assert target.read_text() == "precious\n"
    assert sorted(os.listdir(repo)) == [".git", "README.md", "keep.txt", "src"]


def test_new_files_get_the_umask_mode(ctx, repo):
    write_file(ctx, "fresh.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((repo / "fresh.txt").stat().st_mode) == 0o666 & ~mask


def test_file_tools_never_write_inside_git(ctx, repo):
    with pytest.raises(ToolError, match=".git"):
        write_file(ctx, ".git/hooks/pre-commit", "#!/bin/sh\necho pwned\n")
    assert not (repo / ".git/hooks/pre-commit").exists()
