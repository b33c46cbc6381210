"""Smoke test: the real ``v4coder`` command in tmux (120x35) on a temp repository with a
replay backend; keys go in with send-keys and the screen comes back with capture-pane."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

TMUX = shutil.which("tmux")
V4CODER = Path(sys.executable).with_name("v4coder")


SOCKET = f"v4coder-smoke-{uuid.uuid4().hex[:8]}"   # a private server: its own size and options


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", "-L", SOCKET, "-f", "/dev/null", *args], capture_output=True,
                          text=True, timeout=10).stdout


def _wait_for(session: str, needle: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _tmux("capture-pane", "-t", session, "-p")
        if needle in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} never appeared; the screen was:\n{screen}")


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
@pytest.mark.skipif(not V4CODER.exists(), reason="the v4coder command is not installed")
def test_v4coder_in_tmux(repo, edit_turn, tmp_path):
    session = f"v4coder-smoke-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit-code"
    # A detached server may size the pane after the command starts: wait for 120x35 first.
    settle = 'export COLUMNS=120 LINES=35; for i in $(seq 50); do [ "$(stty size)" = "35 120" ] && break; sleep 0.1; done; '
    command = (settle + f"cd {shlex.quote(str(repo))} && {shlex.quote(str(V4CODER))} "
               f"--backend replay:{shlex.quote(str(edit_turn))}; echo $? > {shlex.quote(str(done))}")
    subprocess.run(["tmux", "-L", SOCKET, "-f", "/dev/null", "new-session", "-d", "-s", session,
                    "-x", "120", "-y", "35", command], check=True, timeout=10)
    try:
        _wait_for(session, "○ idle")
        _tmux("send-keys", "-t", session, "-l", "make the greeting friendlier")
        _tmux("send-keys", "-t", session, "Enter")
        screen = _wait_for(session, "Approve edit_file hello.py")
        assert "+    return 'hello, ' + name" in screen
        _tmux("send-keys", "-t", session, "y")
        _wait_for(session, "Approve bash python hello.py")
        _tmux("send-keys", "-t", session, "y")
        screen = _wait_for(session, "Done: greet now says hello.")
        assert "✓ edit_file hello.py  +1 -1" in screen
        assert "✓ bash python hello.py" in screen
        assert "step 3" in screen and "○ idle" in screen
        assert "'hello, ' + name" in (repo / "hello.py").read_text()
        _tmux("send-keys", "-t", session, "C-q")
        deadline = time.monotonic() + 10
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done.read_text().strip() == "0"
    finally:
        _tmux("kill-server")
