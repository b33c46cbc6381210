"""Snapshots (pytest-textual-snapshot) of the main screen after a turn, the approval modal
and a diff card. Deterministic: replay backend, fixed terminal size, no cursor blink, the
timing-dependent tokens/s pinned. Regenerate with ``pytest tests/tui --snapshot-update``."""

from __future__ import annotations

from tui_support import SIZE, wait_until

from agent.backends.base import ToolCall
from app.tui.approval import ApprovalScreen
from app.tui.diffs import call_diff
from app.tui.tool_card import ToolCard


def test_main_screen_after_a_turn(snap_compare, repo, edit_turn, make_app):
    app = make_app(repo, edit_turn, mode="full-auto")

    async def run_before(pilot) -> None:
        await wait_until(pilot, lambda: app.context_ready)   # packed: the status bar is quiet
        await pilot.press(*"make the greeting friendlier", "enter")
        await wait_until(pilot, lambda: not app.running)
        app.status.refresh_state(tokens_per_second=200.0)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_approval_modal(snap_compare, repo, edit_turn, make_app):
    app = make_app(repo, edit_turn)
    args = {"path": "hello.py", "old_string": "'hi ' + name", "new_string": "'hello, ' + name"}

    async def run_before(pilot) -> None:
        await wait_until(pilot, lambda: app.context_ready)   # packed: the status bar is quiet
        call = ToolCall(id="call_1_0", name="edit_file", arguments=args)
        app.push_screen(ApprovalScreen(call, "edit_file changes files",
                                       call_diff(repo, "edit_file", args)))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_diff_card(snap_compare, repo, edit_turn, make_app):
    app = make_app(repo, edit_turn)
    args = {"path": "hello.py", "content": "def greet(name):\n    return f'hello, {name}'\n"}

    async def run_before(pilot) -> None:
        await wait_until(pilot, lambda: app.context_ready)   # packed: the status bar is quiet
        card = ToolCard("call_1_0", "write_file", args, call_diff(repo, "write_file", args))
        await app.transcript.add_card(card)
        card.set_result(True, "wrote hello.py (2 lines)")
        await wait_until(pilot, lambda: card.ok)
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
