"""bash and run_tests: one command in a new process group, scrubbed env, hard timeout.

A command runs as ``bash -c COMMAND`` in its own session (so its process group id is its
pid), with the repository as working directory, stdin from /dev/null and stderr merged
into stdout. On timeout the whole process group gets SIGKILL. When the shell exits, any
background processes it left in its group are killed too: nothing outlives the call.
Captured output is bounded in memory (head + tail); the agent loop makes the final cut.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass

from tools.base import ToolContext, ToolError, ToolResult
from tools.detect_tests import detect_test_command
from tools.environment import inherited_env, looks_like_secret_env

HEAD_BYTES = 2 * 1024 * 1024
TAIL_BYTES = 2 * 1024 * 1024
MAX_TIMEOUT_SECONDS = 3600.0
_READ_CHUNK = 65536

_FIXED_ENV = {"PAGER": "cat", "GIT_PAGER": "cat", "GIT_TERMINAL_PROMPT": "0", "NO_COLOR": "1",
              "PYTHONUNBUFFERED": "1"}
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)")


def scrubbed_env(ctx: ToolContext) -> dict[str, str]:
    """The allow-listed part of our environment plus ctx.env, minus anything secret-like."""
    env = inherited_env()
    env.update(_FIXED_ENV)
    env.update(ctx.env)
    return {k: v for k, v in env.items() if not looks_like_secret_env(k)}


class _BoundedCapture:
    """Keeps the first HEAD_BYTES and the last TAIL_BYTES of a stream."""

    def __init__(self, head_limit: int = HEAD_BYTES, tail_limit: int = TAIL_BYTES) -> None:
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.dropped = 0
        self.head_limit, self.tail_limit = head_limit, tail_limit

    def feed(self, chunk: bytes) -> None:
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self.tail.append(chunk)
        self.tail_size += len(chunk)
        while self.tail_size - len(self.tail[0]) >= self.tail_limit:
            self.tail_size -= len(self.tail[0])
            self.dropped += len(self.tail.popleft())

    def text(self) -> str:
        middle = (f"\n[… {self.dropped} bytes of output dropped …]\n".encode()
                  if self.dropped else b"")
        data = bytes(self.head) + middle + b"".join(self.tail)
        return _ANSI_ESCAPE.sub("", data.decode("utf-8", "replace"))


@dataclass(slots=True)
class CommandOutcome:
    output: str
    exit_code: int | None  # None when timed out
    timed_out: bool
    seconds: float
    timeout: float

    @property
    def succeeded(self) -> bool:
        return not self.timed_out and self.exit_code == 0

    def trailer(self) -> str:
        if self.timed_out:
            return f"[timed out after {self.timeout:g}s; process group killed]"
        if self.exit_code is not None and self.exit_code < 0:
            try:
                name = signal.Signals(-self.exit_code).name
            except ValueError:
                name = str(-self.exit_code)
            return f"[terminated by signal {name}]"
        return f"[exit code: {self.exit_code}]"

    def render(self) -> str:
        body = self.output.rstrip("\n")
        return (body + "\n" if body else "") + self.trailer()


def _kill_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, signal.SIGKILL)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _pump(stream: int, capture: _BoundedCapture) -> None:
    while chunk := os.read(stream, _READ_CHUNK):
        capture.feed(chunk)


def run_command(ctx: ToolContext, command: str, timeout: float | None = None) -> CommandOutcome:
    """Run ``command`` with bash in the repo; never raises for the command's own failure."""
    limit = ctx.command_timeout if timeout is None or timeout <= 0 else float(timeout)
    limit = min(max(limit, 0.1), MAX_TIMEOUT_SECONDS)
    capture = _BoundedCapture()
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            ["bash", "-c", command], cwd=ctx.repo, env=scrubbed_env(ctx),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise ToolError(f"could not start bash: {exc}") from exc
    assert proc.stdout is not None
    reader = threading.Thread(target=_pump, args=(proc.stdout.fileno(), capture), daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc.pid)
        proc.wait()
    finally:
        if proc.returncode is None:  # interrupted (e.g. KeyboardInterrupt): leave nothing
            _kill_group(proc.pid)
            proc.wait()
    reader.join(timeout=0.2)
    _kill_group(proc.pid)  # background jobs the shell left behind
    reader.join(timeout=2.0)
    output = capture.text()
    if reader.is_alive():
        output += ("\n[output may be incomplete: a process that left the command's process "
                   "group still holds its output open]")
    else:
        proc.stdout.close()
    return CommandOutcome(output=output, exit_code=None if timed_out else proc.returncode,
                          timed_out=timed_out, seconds=time.monotonic() - started,
                          timeout=limit)


def bash(ctx: ToolContext, command: str, timeout: float | None = None) -> ToolResult:
    """Run a shell command; ok only when it exits 0 within its time limit."""
    if not command or not command.strip():
        raise ToolError("command is empty")
    outcome = run_command(ctx, command, timeout)
    return ToolResult(ok=outcome.succeeded, output=outcome.render())


def run_tests(ctx: ToolContext, command: str | None = None) -> ToolResult:
    """Run ``command``, else ctx.test_command, else the detected one; says which ran."""
    chosen = (command or "").strip() or ctx.test_command or detect_test_command(ctx.repo)
    if not chosen:
        raise ToolError("no test command configured and none detected (looked for pytest, "
                        "package.json test script, go.mod, Cargo.toml, Makefile 'test:'); "
                        "pass command='...'")
    outcome = run_command(ctx, chosen)
    return ToolResult(ok=outcome.succeeded, output=f"$ {chosen}\n" + outcome.render())
