"""``v4coder run``: an issue in; edits and tests on a branch; a patch, a SWE-bench
prediction and a JSONL event log out. Exit 0 only when the model called finish."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from agent.backends.base import Backend, Sampling
from agent.context.compaction import describe
from agent.context.pack import DEFAULT_BUDGET
from agent.context.session_context import (
    SessionContext,
    attach_context,
    pack_for_session,
    resume_context,
)
from agent.events import (
    CompactionEvent,
    DoneEvent,
    ErrorEvent,
    Event,
    PrefillEvent,
    StepEvent,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
)
from agent.limits import LoopLimits
from agent.loop import Agent
from agent.prompts import system_prompt, task_message
from agent.session import Session, sessions_dir
from app.patch import check_applies, working_tree_patch
from app.prefill_lines import PrefillLines
from tools.base import ToolContext
from tools.gitutil import git_out, head_commit, run_git
from tools.registry import default_tools


class UsageError(Exception):
    """Bad input from the user: one line, exit 2."""


@dataclass(slots=True)
class RunOptions:
    repo: Path
    issue: str
    instance_id: str | None = None
    base_commit: str | None = None
    branch: str | None = None
    events: Path | None = None
    patch: Path | None = None
    predictions: Path | None = None
    max_steps: int = 100
    wall_seconds: float = 3600.0
    mode: str = "full-auto"
    thinking: bool = False
    quiet: bool = False
    resume: Path | None = None       # continue this session file instead of starting anew
    context_budget: int = DEFAULT_BUDGET  # tokens of packed repository in the prompt; 0 = none
    sampling: Sampling = field(default_factory=Sampling)
    test_command: str | None = None
    allow_secrets: bool = False


def read_issue(value: str) -> str:
    """--issue takes a file path or the issue text itself."""
    path = Path(value)
    try:
        if len(value) < 4096 and "\n" not in value and path.is_file():
            return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read issue file {value}: {exc.strerror}") from None
    return value


def read_instance(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read SWE-bench instance {path}: {exc}") from None
    missing = [k for k in ("problem_statement", "base_commit", "instance_id") if not data.get(k)]
    if missing:
        raise UsageError(f"{path}: instance lacks {', '.join(missing)}")
    return data


def prepare_repo(opts: RunOptions) -> str:
    """Check the repository, move to the run's branch; return the starting commit."""
    repo = opts.repo
    if not (repo / ".git").exists():
        raise UsageError(f"{repo} is not a git repository (v4coder run works on a branch of one)")
    base = head_commit(repo)
    if base is None:
        raise UsageError(f"{repo} has no commits yet; commit something first")
    if opts.base_commit and not base.startswith(opts.base_commit) and base != opts.base_commit:
        raise UsageError(f"{repo} is at {base[:12]}, but the instance wants base_commit "
                         f"{opts.base_commit[:12]}; check it out first")
    branch = opts.branch or f"v4coder/run-{time.strftime('%Y%m%d-%H%M%S')}"
    current = git_out(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
    if current != branch:
        exists = run_git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False)
        if exists.returncode == 0:
            raise UsageError(f"branch {branch} already exists; pass another --branch")
        run_git(repo, "checkout", "-q", "-b", branch)
    return base


class ProgressPrinter:
    """A compact human-readable log on stderr."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.at_line_start = True
        self.prefill = PrefillLines()

    def __call__(self, event: Event) -> None:
        w = self.out.write
        if isinstance(event, TextDelta):
            if event.channel == "text":
                w(event.text)
                self.at_line_start = event.text.endswith("\n")
            return
        if isinstance(event, PrefillEvent) and not self.prefill.wants(event):
            return
        if not self.at_line_start:
            w("\n")
            self.at_line_start = True
        if isinstance(event, StepEvent):
            w(f"── step {event.step}\n")
        elif isinstance(event, ToolCallEvent):
            args = json.dumps(event.arguments, ensure_ascii=False)
            w(f"→ {event.tool}({args[:160]}{'…' if len(args) > 160 else ''})\n")
        elif isinstance(event, ToolResultEvent):
            lines = [ln for ln in event.output.strip().splitlines() if ln.strip()] or [""]
            shown = lines[0][:120] + (f" … {lines[-1].strip()[:100]}" if len(lines) > 1 else "")
            w(f"  {'ok' if event.ok else 'FAILED'}: {shown}\n")
        elif isinstance(event, ErrorEvent):
            w(f"error: {event.message}\n")
        elif isinstance(event, CompactionEvent):
            w(f"── {describe(event)}\n")
        elif isinstance(event, DoneEvent):
            w(f"── done: {event.reason} after {event.steps} steps\n")
        elif isinstance(event, PrefillEvent):
            w(f"  {event.describe()}\n")
        self.out.flush()


def _open_session(opts: RunOptions, backend: Backend,
                  model_name: str) -> tuple[Session, str, SessionContext]:
    if opts.resume is not None:
        try:
            session = Session.load(opts.resume)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot resume {opts.resume}: {exc}") from None
        base = session.header.get("base_commit")
        if not base:
            raise UsageError(f"{opts.resume} records no starting commit")
        session.note(note="resumed", backend=backend.name)
        return session, base, resume_context(session, opts.repo)
    base = prepare_repo(opts)
    try:
        live = pack_for_session(opts.repo, opts.context_budget, opts.issue)
    except OSError as exc:
        raise UsageError(f"cannot pack {opts.repo}: {exc}") from None
    session = Session.create(sessions_dir(opts.repo), repo=str(opts.repo), backend=backend.name,
                             model=model_name, task=opts.issue, base_commit=base, purpose="run",
                             instance_id=opts.instance_id, context=live.stats() if live else None)
    session.add({"role": "system",
                 "content": system_prompt(opts.repo, opts.mode, live.text if live else "")})
    return session, base, attach_context(session, live)


def check_outputs(opts: RunOptions) -> None:
    """Fail before any work starts if an output file cannot be written."""
    for flag, path in (("--events", opts.events), ("--patch", opts.patch), ("--predictions", opts.predictions)):
        if path is not None and not path.resolve().parent.is_dir():
            raise UsageError(f"{flag} {path}: directory {path.resolve().parent} does not exist")


def run_headless(opts: RunOptions, backend: Backend, model_name: str) -> int:
    repo = opts.repo
    session, base, context = _open_session(opts, backend, model_name)
    ctx = ToolContext(repo=repo.resolve(), mode=opts.mode, headless=True,
                      allow_secrets=opts.allow_secrets, test_command=opts.test_command)
    agent = Agent(backend=backend, tools=[*default_tools(), *context.tools], ctx=ctx, session=session,
                  limits=LoopLimits(max_steps=opts.max_steps, wall_seconds=opts.wall_seconds),
                  thinking=opts.thinking, sampling=opts.sampling, compactor=context.compactor,
                  prepare_messages=context.prepare_messages)
    first_message = None if opts.resume is not None else task_message(opts.issue)
    printer = None if opts.quiet else ProgressPrinter(sys.stderr)
    events_file = open(opts.events, "w", encoding="utf-8") if opts.events else None
    done: DoneEvent | None = None
    try:
        for event in agent.run(first_message):
            if events_file:
                events_file.write(event.to_json() + "\n")
                events_file.flush()
            if printer:
                printer(event)
            if isinstance(event, DoneEvent):
                done = event
    finally:
        if events_file:
            events_file.close()
    patch = working_tree_patch(repo, base)
    ok, message = check_applies(repo, base, patch)
    if opts.patch:
        opts.patch.write_text(patch, encoding="utf-8", errors="surrogateescape")
    if opts.predictions:
        instance = opts.instance_id or session.header.get("instance_id") or repo.name
        line = {"instance_id": instance, "model_name_or_path": model_name,
                "model_patch": patch}
        with open(opts.predictions, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
    if not ok:
        print(f"v4coder: the patch does not apply to {base[:12]}: {message}", file=sys.stderr)
        return 1
    finished = done is not None and done.finished
    if not opts.quiet:
        print(f"v4coder: {'finished' if finished else 'stopped: ' + (done.reason if done else '?')}; "
              f"patch {len(patch.splitlines())} lines; session {session.path}", file=sys.stderr)
    return 0 if finished else 1
