"""The agent loop: ask the model, run the tools it calls, send the results back, repeat.

State is the session's linear message list (the transcript is the prompt). ``Agent.run``
is a generator of typed events; the TUI, headless mode and the tests all consume it.
A run ends on ``finish``, on a limit (steps, wall time, consecutive format errors,
repeated identical calls), on a backend error, on cancellation, or — interactive sessions
only — when the model answers without calling a tool.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from agent.backends.base import (
    Backend,
    BackendError,
    Completion,
    CompletionRequest,
    Sampling,
    ToolCall,
)
from agent.events import (
    DoneEvent,
    ErrorEvent,
    Event,
    PrefillEvent,
    StepEvent,
    TextDelta,
    ToolCallEvent,
    ToolResultEvent,
    UsageEvent,
)
from agent.limits import LoopLimits, cut_output
from agent.session import Session
from tools.base import Tool, ToolContext, ToolError, ToolResult
from tools.checkpoint import create_checkpoint
from tools.gitutil import is_git_repo
from tools.policy import decide
from tools.registry import run_tool

# Called when policy says "ask": (tool call, reason) -> approved?
Approver = Callable[[ToolCall, str], bool]

PREFILL_EVERY_S = 0.5   # prefill progress passed on at most this often

NO_TOOL_CALL = ("You replied without calling a tool. Continue the task by calling tools; when the "
                "task is complete, call finish(summary).")


def _not_run(reason: str) -> str:
    return f"error: {reason}. No tool of this reply was run; fix the call and send it again."


@dataclass
class Agent:
    backend: Backend
    tools: list[Tool]
    ctx: ToolContext
    session: Session
    limits: LoopLimits = field(default_factory=LoopLimits)
    sampling: Sampling = field(default_factory=Sampling)
    thinking: bool = False
    interactive: bool = False       # a reply without tool calls ends the turn (waits for the user)
    approver: Approver | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    steps: int = 0
    # Hooks for whole-repository context (agent.context): the messages of one request, built
    # from the stored transcript (e.g. + a trailing delta of the repository, never stored);
    # and compaction of the stored transcript before each request (an event when it acted).
    prepare_messages: Callable[[list[dict]], list[dict]] | None = None
    compactor: Callable[[Session], Event | None] | None = None

    def __post_init__(self) -> None:
        self._by_name = {t.name: t for t in self.tools}
        self._schemas = [t.openai_schema() for t in self.tools]

    def run(self, user_text: str | None = None) -> Iterator[Event]:
        """Add the user's message (if any) and step until the run ends. Yields events."""
        self.cancel.clear()
        if user_text is not None:
            self.session.add({"role": "user", "content": user_text})
        started = time.monotonic()
        format_errors = repeats = 0
        last_signature = None
        while True:
            if reason := self._limit_reached(started):
                yield from self._done(reason)
                return
            self.steps += 1
            yield StepEvent(step=self.steps)
            completion, reason = yield from self._query()
            if completion is None:
                yield from self._done(reason)
                return
            if completion.has_errors or not completion.tool_calls:
                if not completion.has_errors and self.interactive:
                    self._record_assistant(completion)  # a plain answer ends the turn
                    yield from self._done("answered")
                    return
                format_errors += 1
                yield from (self._reject(completion) if completion.has_errors else self._nudge(completion))
                if format_errors >= self.limits.max_format_errors:
                    yield from self._done("format_errors")
                    return
                continue
            format_errors = 0
            signature = json.dumps([[c.name, c.arguments] for c in completion.tool_calls], sort_keys=True)
            repeats = repeats + 1 if signature == last_signature else 1
            last_signature = signature
            if repeats >= self.limits.max_repeats:
                self._record_assistant(completion)
                for call in completion.tool_calls:
                    self._add_result(call, f"not run: this exact call was repeated {repeats} times in a row")
                yield from self._done("repeated_calls")
                return
            summary = None
            for event in self._execute(completion):
                if isinstance(event, ToolResultEvent) and event.tool == "finish" and event.ok:
                    summary = event.output
                yield event
            if summary is not None:
                yield from self._done("finished", summary=summary)
                return

    # -- steps ---------------------------------------------------------------------------

    def _query(self) -> Iterator[Event]:
        """Ask the model once, streaming its text. Returns (completion, None) or (None, reason)."""
        t0 = time.monotonic()
        if self.compactor is not None and (compacted := self.compactor(self.session)) is not None:
            yield compacted
        messages = self.session.messages
        if self.prepare_messages is not None:
            messages = self.prepare_messages(messages)
        completion = None
        try:
            request = CompletionRequest(messages, self._schemas, self.sampling, self.thinking)
            shown = 0.0   # when a prefill event was last passed on
            for piece in self.backend.stream(request):
                if self.cancel.is_set():
                    break
                if isinstance(piece, PrefillEvent):
                    # the first, then at most every PREFILL_EVERY_S, and the last (a 1M-token
                    # prompt is read in ~500 chunks; the event log need not hold them all)
                    now = time.monotonic()
                    if not shown or piece.done == piece.total or now - shown >= PREFILL_EVERY_S:
                        shown = now
                        yield piece
                elif isinstance(piece, TextDelta):
                    yield piece
                else:
                    completion = piece
        except BackendError as exc:
            yield ErrorEvent(message=str(exc), fatal=True)
            return None, "backend_error"
        if self.cancel.is_set() or completion is None:
            return None, "cancelled"
        u = completion.usage
        yield UsageEvent(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                         cached_tokens=u.cached_tokens, seconds=round(time.monotonic() - t0, 3))
        return completion, None

    def _nudge(self, completion: Completion) -> Iterator[Event]:
        """A headless reply without a tool call: record it and ask for tool calls."""
        self._record_assistant(completion)
        self.session.add({"role": "user", "content": NO_TOOL_CALL})
        yield ToolResultEvent(id="", tool="", ok=False, output=NO_TOOL_CALL)

    def _limit_reached(self, started: float) -> str | None:
        if self.cancel.is_set():
            return "cancelled"
        if self.steps >= self.limits.max_steps:
            return "step_limit"
        if time.monotonic() - started > self.limits.wall_seconds:
            return "time_limit"
        return None

    def _record_assistant(self, completion: Completion) -> None:
        msg: dict = {"role": "assistant", "content": completion.content}
        if completion.reasoning:
            msg["reasoning_content"] = completion.reasoning
        if completion.tool_calls:
            msg["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                for c in completion.tool_calls
            ]
        self.session.add(msg)

    def _assign_ids(self, completion: Completion) -> None:
        for i, call in enumerate(completion.tool_calls):
            if not call.id or call.id.startswith("call_") and completion.raw:
                call.id = f"call_{self.steps}_{i}"

    def _add_result(self, call: ToolCall, output: str) -> None:
        self.session.add({"role": "tool", "tool_call_id": call.id, "content": output})

    def _reject(self, completion: Completion) -> Iterator[Event]:
        """A malformed reply: run nothing, record what the model wrote, tell it why."""
        self._assign_ids(completion)
        reasons = [c.error for c in completion.tool_calls if c.error]
        if completion.format_error:
            reasons.insert(0, completion.format_error)
        text = _not_run("; ".join(reasons))
        if completion.raw and completion.format_error:
            # The block could not be read: keep the model's text verbatim, answer as the user.
            body = completion.raw.split("<｜end▁of▁sentence｜>")[0]
            if completion.reasoning:
                body = body[len(completion.reasoning) + len("</think>"):]
            msg = {"role": "assistant", "content": body}
            if completion.reasoning:
                msg["reasoning_content"] = completion.reasoning
            self.session.add(msg)
            self.session.add({"role": "user", "content": text})
            yield ToolResultEvent(id="", tool="", ok=False, output=text)
            return
        self._record_assistant(completion)
        for call in completion.tool_calls:
            output = _not_run(call.error) if call.error else _not_run(
                "another call in the same reply was malformed (" + "; ".join(reasons) + ")")
            self._add_result(call, output)
            yield ToolResultEvent(id=call.id, tool=call.name, ok=False, output=output)

    def _execute(self, completion: Completion) -> Iterator[Event]:
        self._assign_ids(completion)
        self._record_assistant(completion)
        for call in completion.tool_calls:
            yield ToolCallEvent(id=call.id, tool=call.name, arguments=call.arguments)
            if self.cancel.is_set():
                result = ToolResult(ok=False, output="cancelled by the user before it ran")
            else:
                result = self._run_one(call)
            output = cut_output(result.output, self.limits.output_chars)
            self._add_result(call, output)
            yield ToolResultEvent(id=call.id, tool=call.name, ok=result.ok, output=output)

    def _run_one(self, call: ToolCall) -> ToolResult:
        tool = self._by_name[call.name]
        decision = decide(tool, call.arguments, self.ctx)
        if decision.action == "deny":
            return ToolResult(ok=False, output=f"refused: {decision.reason}")
        if decision.action == "ask":
            if self.approver is None:
                return ToolResult(ok=False, output=f"refused: needs the user's approval ({decision.reason}) "
                                                   "and no one is there to approve it")
            if not self.approver(call, decision.reason):
                return ToolResult(ok=False, output="refused: the user declined this call")
        if tool.mutating:
            if is_git_repo(self.ctx.repo):  # outside git there is nowhere to checkpoint to
                try:
                    create_checkpoint(self.ctx.repo, f"before {call.name}")
                except ToolError as exc:  # no undo point: do not mutate
                    return ToolResult(ok=False, output=f"refused: could not checkpoint first ({exc})")
        return run_tool(tool, self.ctx, call.arguments)

    def _done(self, reason: str, summary: str = "") -> Iterator[Event]:
        self.session.note(note="done", reason=reason, steps=self.steps)
        yield DoneEvent(reason=reason, finished=reason == "finished", steps=self.steps, summary=summary)
