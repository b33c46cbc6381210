from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import pytest
from tools_testkit import write

from tools.base import ToolContext, ToolError
from tools.detect_tests import detect_test_command
from tools.shell import _BoundedCapture, bash, run_tests


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def _wait_dead(pid: int, seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_bash_reports_exit_code_and_merges_stderr(ctx):
    result = bash(ctx, "echo out; echo err >&2; exit 3")
    assert not result.ok
    assert result.output.splitlines() == ["out", "err", "[exit code: 3]"]
    ok = bash(ctx, "pwd; test -t 0 || echo 'no tty stdin'; cat")  # stdin is /dev/null
    assert ok.ok and ok.output.splitlines() == [str(ctx.repo), "no tty stdin", "[exit code: 0]"]


def test_timeout_kills_the_whole_process_group(ctx, tmp_path):
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    result = bash(ctx, f"sleep 60 & echo $! > {shlex.quote(str(pid_file))}; wait", timeout=1)
    assert time.monotonic() - started < 10
    assert not result.ok
    assert result.output.endswith("[timed out after 1s; process group killed]")
    child = int(pid_file.read_text())
    assert _wait_dead(child), "the background sleep survived the timeout"


def test_background_jobs_do_not_outlive_the_call(ctx, tmp_path):
    pid_file = tmp_path / "bg.pid"
    started = time.monotonic()
    result = bash(ctx, f"sleep 60 & echo $! > {shlex.quote(str(pid_file))}; echo started")
    assert time.monotonic() - started < 10  # did not wait for the sleep's open stdout
    assert result.ok and result.output.startswith("started")
    assert _wait_dead(int(pid_file.read_text()))


def test_child_environment_is_scrubbed(repo, monkeypatch):
    monkeypatch.setenv("FAKE_API_KEY", "sk-leak-1")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://leak-2")
    monkeypatch.setenv("DB_PASSWORD", "leak-3")
    monkeypatch.setenv("V4CODER_API_KEY", "leak-4")
    monkeypatch.setenv("SOME_RANDOM_SETTING", "leak-5")
    monkeypatch.setenv("LC_ALL", "C")
    ctx = ToolContext(repo=repo, env={"PROJECT_MODE": "test", "GITHUB_TOKEN": "leak-6"})
    out = bash(ctx, "env").output
    for leaked in ("leak-1", "leak-2", "leak-3", "leak-4", "leak-5", "leak-6"):
        assert leaked not in out
    assert "PROJECT_MODE=test" in out
    assert f"HOME={os.environ['HOME']}" in out
    assert "LC_ALL=C" in out


def test_captured_output_is_bounded(ctx):
    result = bash(ctx, "head -c 20000000 /dev/zero | tr '\\0' a; echo; echo END")
    assert len(result.output) < 5_000_000
    assert "bytes of output dropped" in result.output
    assert result.output.rstrip().endswith("END\n[exit code: 0]")


def test_bounded_capture_keeps_head_and_tail():
    capture = _BoundedCapture(head_limit=4, tail_limit=6)
    for chunk in (b"abc", b"defgh", b"ijklmnop", b"qr"):
        capture.feed(chunk)
    text = capture.text()
    assert text.startswith("abcd") and text.endswith("mnopqr")
    assert "dropped" in text


def test_run_tests_autodetects_pytest_and_says_what_it_ran(new_repo):
    repo = new_repo({"tests/test_math.py": "def test_ok():\n    assert 1 + 1 == 2\n\n"
                                            "def test_bad():\n    assert 1 + 1 == 3\n"})
    fast = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # the venv's plugins only slow startup
    result = run_tests(ToolContext(repo=repo, command_timeout=60, env=fast))
    first = result.output.splitlines()[0]
    assert first == f"$ {shlex.quote(sys.executable)} -m pytest -q"
    assert "1 failed, 1 passed" in result.output
    assert result.output.endswith("[exit code: 1]")
    assert not result.ok


def test_run_tests_prefers_the_configured_then_the_given_command(repo):
    ctx = ToolContext(repo=repo, test_command="echo configured")
    assert run_tests(ctx).output.splitlines()[:2] == ["$ echo configured", "configured"]
    assert run_tests(ctx, "echo given").output.splitlines()[:2] == ["$ echo given", "given"]
    with pytest.raises(ToolError, match="no test command"):
        run_tests(ToolContext(repo=repo))


@pytest.mark.parametrize(("files", "expected"), [
    ({"package.json": '{"scripts": {"test": "jest"}}'}, "npm test"),
    ({"package.json": '{"scripts": {"test": "echo \\"Error: no test specified\\" && exit 1"}}'},
     None),
    ({"go.mod": "module x\n"}, "go test ./..."),
    ({"Cargo.toml": "[package]\n"}, "cargo test"),
    ({"Makefile": "build:\n\tcc x.c\ntest: build\n\t./run\n"}, "make test"),
    ({"Makefile": "build:\n\tcc x.c\n"}, None),
    ({"pyproject.toml": "[tool.pytest.ini_options]\n"}, "PY -m pytest -q"),
    ({"pyproject.toml": "[project]\n", "tests/test_a.py": ""}, "PY -m pytest -q"),
    ({".venv/bin/python": "", "pytest.ini": "[pytest]\n"}, ".venv/bin/python -m pytest -q"),
    ({"README.md": "hi"}, None),
])
def test_detect_test_command(tmp_path, files, expected):
    write(tmp_path, files)
    if expected:
        expected = expected.replace("PY", shlex.quote(sys.executable))
    assert detect_test_command(Path(tmp_path)) == expected
