"""Compaction that loses nothing: old tool outputs move to an archive, behind a stub.

When the transcript would overflow its budget, the oldest tool outputs (role ``tool``)
are replaced by a one-line stub::

    [archived tool output out-3: 120 lines, first line: def main():…; call recall(id="out-3") to see it again]

and their full text goes to the session's archive (agent.context.archive), from which the
``recall`` tool returns it exactly. Large strings inside old tool calls' *arguments* (a
write_file's content, an edit's old and new text) are archived the same way, in place
inside the arguments (agent.context.archive_args), oldest message first together with the
outputs. Pinned facts are never touched: the system message (instructions, AGENTS.md, the
packed repository), every user message (the task and the user's instructions), and the
assistant's own text and reasoning. The most recent ``keep_recent`` tool outputs and tool
calls stay, and so does text too short for a stub to save anything.

Order of writes: archive first (fsynced), then a ``{"kind": "compaction"}`` record in the
session file, so ``Session.load`` reproduces the compacted transcript and a crash between
the two loses nothing. The caller gets a :class:`agent.events.CompactionEvent` with the
ids and the token counts before and after, so the user sees what was dropped.

Token counts: the real V4 tokenizer on each message's text (content, reasoning, tool-call
arguments) plus :data:`MESSAGE_OVERHEAD` tokens per message for the chat template; counts
are cached per string, so the (large) system message is tokenized once per session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.context.archive import Archive, archived_stub
from agent.context.archive_args import ARG_ID_PREFIX, archive_call, has_large_arguments
from agent.context.pack import CONTEXT_WINDOW
from agent.context.tokens import count_tokens
from agent.events import CompactionEvent
from agent.session import Session, apply_replacements

MESSAGE_OVERHEAD = 4          # role markers and separators of the chat template
KEEP_RECENT = 2               # the newest tool outputs are never archived
MIN_ARCHIVE_CHARS = 400       # shorter outputs cost about as much as their stub
DEFAULT_LIMIT = CONTEXT_WINDOW - 40_000  # room for the tool schemas, the delta and the reply
STUB_PREFIX = "[archived tool output "


def message_text(msg: dict[str, Any]) -> str:
    """The text of one message that the model is sent (what the token count measures)."""
    content = msg.get("content") or ""
    if not msg.get("reasoning_content") and not msg.get("tool_calls") and isinstance(content, str):
        return content  # the same object: its hash is cached, so the lookup stays cheap
    parts = [str(content), str(msg.get("reasoning_content") or "")]
    for call in msg.get("tool_calls") or ():
        fn = call.get("function", {})
        parts.append(str(fn.get("name", "")) + str(fn.get("arguments", "")))
    return "".join(parts)


@dataclass(slots=True)
class TokenCounter:
    """Per-message token counts with a cache keyed by the message text."""

    cache: dict[str, int] = field(default_factory=dict)

    def counts(self, messages: list[dict[str, Any]]) -> list[int]:
        texts = [message_text(m) for m in messages]
        todo = sorted({t for t in texts if t not in self.cache})
        for text, n in zip(todo, count_tokens(todo), strict=True):
            self.cache[text] = n
        if len(self.cache) > 4 * len(texts) + 64:  # forget texts no longer in the transcript
            keep = set(texts)
            self.cache = {t: n for t, n in self.cache.items() if t in keep}
        return [self.cache[t] + MESSAGE_OVERHEAD for t in texts]

    def seed(self, text: str, tokens: int) -> None:
        """Record a count known already (the packed system message: no second tokenization)."""
        self.cache[text] = tokens

    def total(self, messages: list[dict[str, Any]]) -> int:
        return sum(self.counts(messages))


def is_pinned(msg: dict[str, Any]) -> bool:
    """System and user messages (instructions, packed repository, task) are never compacted."""
    return msg.get("role") in ("system", "user", "developer")


def stub(aid: str, text: str) -> str:
    return archived_stub(f"{STUB_PREFIX}{aid}", aid, text)


def candidates(messages: list[dict[str, Any]], keep_recent: int = KEEP_RECENT,
               min_chars: int = MIN_ARCHIVE_CHARS) -> list[int]:
    """Indices of archivable tool outputs, oldest first."""
    tools = [i for i, m in enumerate(messages) if m.get("role") == "tool"]
    old = tools[: max(0, len(tools) - keep_recent)]
    return [i for i in old if len(str(messages[i].get("content") or "")) >= min_chars
            and not str(messages[i].get("content") or "").startswith(STUB_PREFIX)]


def argument_candidates(messages: list[dict[str, Any]], keep_recent: int = KEEP_RECENT,
                        min_chars: int = MIN_ARCHIVE_CHARS) -> dict[int, list[int]]:
    """``{message index: [call indices]}`` of old tool calls with archivable arguments."""
    calls = [(i, k) for i, m in enumerate(messages) if m.get("role") == "assistant"
             for k in range(len(m.get("tool_calls") or ()))]
    out: dict[int, list[int]] = {}
    for i, k in calls[: max(0, len(calls) - keep_recent)]:
        if has_large_arguments(messages[i]["tool_calls"][k], min_chars):
            out.setdefault(i, []).append(k)
    return out


def compact(session: Session, *, limit: int | None = None, keep_recent: int = KEEP_RECENT,
            min_chars: int = MIN_ARCHIVE_CHARS, counter: TokenCounter | None = None,
            archive: Archive | None = None) -> CompactionEvent | None:
    """Archive old tool outputs and large tool-call arguments of ``session``; None when
    nothing was archived.

    ``limit=None`` (the TUI's /compact): archive everything eligible. With a limit: do
    nothing while the transcript fits; otherwise archive oldest first until the unpinned
    part uses at most half of the room the pinned part leaves (so compaction is rare).
    """
    counter = counter or TokenCounter()
    messages = session.messages
    counts = counter.counts(messages)
    before = sum(counts)
    if limit is not None and before <= limit:
        return None
    pinned = sum(n for m, n in zip(messages, counts, strict=True) if is_pinned(m))
    target = -1 if limit is None else pinned + max(0, limit - pinned) // 2
    archive = archive or Archive.for_session(session.path)
    outputs = candidates(messages, keep_recent, min_chars)
    arguments = argument_candidates(messages, keep_recent, min_chars)
    replaced: list[tuple[int, str]] = []
    replaced_args: list[tuple[int, int, Any]] = []
    ids: list[str] = []
    total = before
    for i in sorted(set(outputs) | set(arguments)):
        if limit is not None and total <= target:
            break
        if i in arguments:
            for k in arguments[i]:
                done = archive_call(archive, i, k, messages[i]["tool_calls"][k], min_chars)
                if done is not None:
                    replaced_args.append((i, k, done.arguments))
                    ids.extend(done.ids)
                    total -= done.chars_saved // 3  # refined by the recount below
            continue
        text = str(messages[i].get("content") or "")
        aid = archive.put(text, i, str(messages[i].get("tool_call_id") or ""))
        short = stub(aid, text)
        replaced.append((i, short))
        ids.append(aid)
        total -= counts[i] - (len(short) // 3 + MESSAGE_OVERHEAD)  # refined by the recount below
    if not ids:
        return None
    preview = list(messages)
    apply_replacements(preview, {"replaced": replaced, "replaced_arguments": replaced_args})
    after = counter.total(preview)
    session.replace_contents(replaced, arguments=replaced_args, ids=ids, tokens_before=before,
                             tokens_after=after)
    return CompactionEvent(ids=ids, tokens_before=before, tokens_after=after,
                           manual=limit is None, archive=str(archive.path))


@dataclass(slots=True)
class Compactor:
    """The loop's hook (``Agent.compactor``): compact when over ``limit`` tokens."""

    limit: int = DEFAULT_LIMIT
    keep_recent: int = KEEP_RECENT
    min_chars: int = MIN_ARCHIVE_CHARS
    counter: TokenCounter = field(default_factory=TokenCounter)
    archive: Archive | None = None  # share it with recall_tool(); default: the session's
    after: Callable[[Session], None] | None = None  # run after each compaction (re-pack)

    def __call__(self, session: Session) -> CompactionEvent | None:
        event = compact(session, limit=self.limit, keep_recent=self.keep_recent,
                        min_chars=self.min_chars, counter=self.counter, archive=self.archive)
        if event is not None and self.after is not None:
            self.after(session)
        return event


def describe(event: CompactionEvent) -> str:
    """One human-readable line for logs and the TUI."""
    args = sum(1 for i in event.ids if i.startswith(ARG_ID_PREFIX))
    what = f"{len(event.ids) - args} tool output(s)" + (f" and {args} tool-call argument(s)" if args else "")
    return (f"compacted: archived {what} {', '.join(event.ids)} "
            f"({event.tokens_before} -> {event.tokens_after} tokens; recall(id) brings one back)")

