"""Slash commands. Each takes the app and the rest of the line and writes to the transcript."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from rich.text import Text
from textual.widgets import Static

from app.tui.diffs import diff_stats, working_tree_diff
from app.tui.host import MODES, list_sessions
from app.tui.status import CONTEXT_WINDOW, human, meter
from app.tui.tool_card import diff_renderable
from app.tui.transcript import Notice

if TYPE_CHECKING:
    from app.tui.app import CoderApp

HELP = """\
Enter sends · ctrl+j (or shift+enter) new line · up/down at the edges: history
@ opens the file picker (tab/enter inserts) · esc cancels the running turn · ctrl+q quits
Approvals: y yes · a always (this tool, this session) · n no

/undo           restore the files to the checkpoint before the last change
/diff           show the working-tree diff (untracked files included)
/commit [msg]   commit all changes (git add -A; git commit)
/clear          start a new session (the old one stays saved)
/compact        archive old tool outputs now (recall(id) brings one back)
/context        what the context holds: the packed repository, the transcript, the meter
/model [spec]   show the backend, or switch: replay:FILE | openai[:URL] | embedded:DIR
/mode [m]       show or set the approval mode: read-only | ask | auto-edit | full-auto
/sessions       pick a saved session to resume
/help           this help"""

Command = Callable[["CoderApp", str], Awaitable[None]]
BUSY_OK = {"help", "context", "diff", "mode", "model"}
NEEDS_CONTEXT = {"clear", "compact", "sessions"}   # wait while the repository is being packed


async def cmd_help(app: CoderApp, rest: str) -> None:
    await app.transcript.add_notice(HELP)


async def cmd_undo(app: CoderApp, rest: str) -> None:
    from tools.checkpoint import undo_last
    sha = undo_last(app.host.repo)
    if sha is None:
        await app.transcript.add_notice("/undo: nothing to undo (no checkpoints yet)", "yellow")
        return
    if app.host.session is not None:
        app.host.session.note(note="undo", checkpoint=sha)
    app.pending_notice = (f"[The user ran /undo: the working tree was restored to checkpoint "
                          f"{sha[:12]}, taken before the last change.]\n")
    await app.transcript.add_notice(f"/undo: restored the working tree to checkpoint {sha[:12]}",
                                    "green")


async def cmd_diff(app: CoderApp, rest: str) -> None:
    diff = working_tree_diff(app.host.repo)
    if not diff.strip():
        await app.transcript.add_notice("/diff: no changes")
        return
    added, removed = diff_stats(diff)
    await app.transcript.add_notice(f"/diff: +{added} -{removed}")
    await app.transcript.add_widget(Static(diff_renderable(diff), classes="diff-view"))


async def cmd_commit(app: CoderApp, rest: str) -> None:
    from tools.base import ToolError
    from tools.git_tools import git_commit
    sid = app.host.session.id if app.host.session else "?"
    message = rest.strip() or f"v4coder: changes from session {sid}"
    try:
        result = git_commit(app.host.ctx, message)
    except ToolError as exc:
        await app.transcript.add_notice(f"/commit: {exc}", "red")
        return
    await app.transcript.add_notice(f"/commit: {result}", "green")


async def cmd_clear(app: CoderApp, rest: str) -> None:
    await app.transcript.clear()
    app.host.forget_session()
    app.reset_status()
    await app.transcript.add_notice("New session (the previous one is saved; /sessions).")
    app.start_context()     # packs the repository for the new session in a worker


async def cmd_compact(app: CoderApp, rest: str) -> None:
    host = app.host
    if host.session is None or host.context is None:
        await app.transcript.add_notice("/compact: nothing to compact yet", "yellow")
        return
    event = host.context.compact_now(host.session)
    if event is None:
        from agent.context.compaction import KEEP_RECENT, MIN_ARCHIVE_CHARS
        await app.transcript.add_notice(
            f"/compact: nothing to archive (the {KEEP_RECENT} newest tool outputs stay, and so "
            f"do outputs under {MIN_ARCHIVE_CHARS} characters)")
        return
    await app.transcript.add_compaction(event)
    s = app.status.state
    app.status.refresh_state(prompt_tokens=event.tokens_after,
                             cached_tokens=min(s.cached_tokens, event.tokens_after))


def _pack_lines(app: CoderApp) -> list[str]:
    host = app.host
    if app.context_busy:
        return ["packed repository: packing…"]
    stats = host.context_stats()
    if host.pack_error:
        return [f"packed repository: none (packing failed: {host.pack_error})"]
    if not stats:
        why = "context budget 0" if host.context_budget <= 0 else "none saved with this session"
        return [f"packed repository: none ({why})"]
    took = f" (packed in {stats['seconds']:.2f} s)" if "seconds" in stats else ""
    lines = [f"packed repository: {stats.get('files', 0)} files whole, "
             f"{stats.get('outlined', 0)} outlined, {stats.get('omitted', 0)} omitted · "
             f"{human(stats.get('tokens', 0))} tokens of a {human(stats.get('budget', 0))} "
             f"budget{took}"]
    skipped = stats.get("skipped")
    if isinstance(skipped, dict):
        total = sum(skipped.values())
        reasons = ", ".join(f"{reason} {n}" for reason, n in skipped.items())
        lines.append(f"skipped: {total} files" + (f" ({reasons})" if reasons else ""))
    return lines


async def cmd_context(app: CoderApp, rest: str) -> None:
    s = app.status.state
    host = app.host
    session = host.session
    messages = session.messages if session else []
    lines = [f"/context: {len(messages)} messages", *_pack_lines(app)]
    context = host.context
    if context is not None and session is not None and not app.context_busy:
        tokens = context.compactor.counter.total(messages)
        lines.append(f"transcript: {human(tokens)} tokens (automatic compaction above "
                     f"{human(context.compactor.limit)}) · {len(context.archive.entries)} "
                     "archived tool outputs (recall)")
    else:
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        lines.append(f"transcript: about {human(chars // 4)} tokens of text")
    text = Text("\n".join(lines) + "\nlast prompt ")
    text.append(meter(s.prompt_tokens, s.cached_tokens))
    text.append(f" {human(s.prompt_tokens)} of {CONTEXT_WINDOW // 1_000_000}M tokens: cached prefix "
                f"{human(s.cached_tokens)}, new {human(max(0, s.prompt_tokens - s.cached_tokens))}"
                f"\nsession {session.path if session else '(none yet)'}")
    await app.transcript.add_widget(Notice(text))


async def cmd_model(app: CoderApp, rest: str) -> None:
    spec = rest.strip()
    if not spec:
        s = app.status.state
        await app.transcript.add_notice(f"/model: {s.backend} · {s.model} ({app.host.backend_spec})")
        return
    if app.running:
        await app.transcript.add_notice("/model: wait for the turn to end (esc cancels it)", "yellow")
        return
    app.load_backend(spec)


async def cmd_mode(app: CoderApp, rest: str) -> None:
    mode = rest.strip()
    if not mode:
        await app.transcript.add_notice(f"/mode: {app.host.mode} (one of {', '.join(MODES)})")
        return
    try:
        app.host.set_mode(mode)
    except ValueError as exc:
        await app.transcript.add_notice(f"/mode: {exc}", "red")
        return
    app.status.refresh_state(mode=mode)
    await app.transcript.add_notice(f"/mode: approval mode is now {mode}")


async def cmd_sessions(app: CoderApp, rest: str) -> None:
    sessions = list_sessions(app.host.repo)
    if not sessions:
        await app.transcript.add_notice("/sessions: no saved sessions")
        return
    app.open_session_picker(sessions)


COMMANDS: dict[str, Command] = {
    "help": cmd_help, "undo": cmd_undo, "diff": cmd_diff, "commit": cmd_commit,
    "clear": cmd_clear, "compact": cmd_compact, "context": cmd_context, "model": cmd_model,
    "mode": cmd_mode, "sessions": cmd_sessions,
}


async def run_command(app: CoderApp, line: str) -> None:
    name, _, rest = line[1:].partition(" ")
    command = COMMANDS.get(name.lower())
    if command is None:
        await app.transcript.add_notice(Text(f"unknown command /{name}; /help lists them").plain,
                                        "red")
        return
    if app.running and name.lower() not in BUSY_OK:
        await app.transcript.add_notice(f"/{name}: a turn is running; esc cancels it first",
                                        "yellow")
        return
    if app.context_busy and name.lower() in NEEDS_CONTEXT:
        await app.transcript.add_notice(f"/{name}: the repository is still being packed; "
                                        "try again in a moment", "yellow")
        return
    try:
        await command(app, rest)
    except Exception as exc:  # a failing command must not take the session down
        await app.transcript.add_notice(f"/{name} failed: {type(exc).__name__}: {exc}", "red")
