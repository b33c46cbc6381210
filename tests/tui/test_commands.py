"""Slash commands, the prompt (history, newline, @-picker) and pruning."""

from __future__ import annotations

import subprocess

import pytest
from tui_support import HELLO, SIZE, wait_until

from app.tui.sessions_screen import SessionPicker
from app.tui.transcript import Notice, UserMessage


def _last_notice(app) -> str:
    return str(list(app.transcript.query(Notice))[-1].render())


async def _command(pilot, line: str) -> None:
    await pilot.press(*line, "enter")
    await pilot.pause()


@pytest.mark.asyncio
async def test_info_commands(repo, edit_turn, make_app):
    app = make_app(repo, edit_turn)
    async with app.run_test(size=SIZE) as pilot:
        await _command(pilot, "/help")
        assert "/undo" in _last_notice(app) and "ctrl+j" in _last_notice(app)
        await wait_until(pilot, lambda: app.context_ready)
        await _command(pilot, "/compact")
        assert _last_notice(app) == "/compact: nothing to compact yet"
        await _command(pilot, "/mode full-auto")
        assert app.host.ctx.mode == "full-auto" and app.status.state.mode == "full-auto"
        await _command(pilot, "/mode sideways")
        assert "unknown mode" in _last_notice(app) and app.host.ctx.mode == "full-auto"
        await _command(pilot, "/model")
        assert "replay" in _last_notice(app)
        await _command(pilot, "/nope")
        assert "unknown command /nope" in _last_notice(app)
        await _command(pilot, "/diff")
        assert _last_notice(app) == "/diff: no changes"
        await _command(pilot, "/sessions")
        assert _last_notice(app) == "/sessions: no saved sessions"
        await _command(pilot, "/context")
        assert "messages" in _last_notice(app)


@pytest.mark.asyncio
async def test_diff_commit_clear_and_sessions(repo, edit_turn, make_app):
    app = make_app(repo, edit_turn, mode="full-auto")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"friendlier", "enter")
        await wait_until(pilot, lambda: not app.running)
        first_id = app.host.session.id
        await _command(pilot, "/diff")
        assert _last_notice(app) == "/diff: +1 -1"
        await _command(pilot, "/commit greet warmly")
        assert "committed" in _last_notice(app)
        log = subprocess.run(["git", "log", "-1", "--format=%s"], cwd=repo, capture_output=True,
                             text=True).stdout.strip()
        assert log == "greet warmly"
        await _command(pilot, "/clear")
        assert len(app.transcript.query(UserMessage)) == 0
        assert app.host.session is None     # the next turn starts it: no empty session files
        await wait_until(pilot, lambda: app.context_ready)      # packed again for it
        await _command(pilot, "/sessions")
        assert isinstance(app.screen, SessionPicker)
        assert len(app.screen.sessions) == 1
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.host.session.id == first_id)
        await wait_until(pilot, lambda: len(app.transcript.query(UserMessage)) == 1)


@pytest.mark.asyncio
async def test_prompt_history_newline_and_file_picker(repo, edit_turn, make_app):
    app = make_app(repo, edit_turn)
    async with app.run_test(size=SIZE) as pilot:
        prompt = app.prompt
        await _command(pilot, "/help")
        await _command(pilot, "/mode ask")
        await pilot.press("up")
        assert prompt.text == "/mode ask"
        await pilot.press("up")
        assert prompt.text == "/help"
        await pilot.press("down", "down")
        assert prompt.text == ""
        await pilot.press(*"line one", "ctrl+j", *"line two")
        assert prompt.text == "line one\nline two"
        prompt.load_text("")
        await wait_until(pilot, lambda: bool(app.picker.files))
        await pilot.press(*"look at @utl")
        assert app.picker.display and app.picker.choice == "pkg/util.py"
        await pilot.press("tab")
        assert prompt.text == "look at @pkg/util.py "
        assert not app.picker.display
        await pilot.press("@", *"hel")
        assert app.picker.choice == "hello.py"
        await pilot.press("escape")
        assert not app.picker.display and prompt.text.endswith("@hel")


@pytest.mark.asyncio
async def test_old_widgets_are_pruned(repo, edit_turn, make_app):
    app = make_app(repo, edit_turn)
    app.max_widgets = 10
    async with app.run_test(size=SIZE) as pilot:
        for i in range(25):
            await app.transcript.add_notice(f"line {i}")
        await pilot.pause()
        notices = [str(n.render()) for n in app.transcript.query(Notice)]
        assert len(app.transcript.children) == 10
        assert notices[-1] == "line 24" and notices[0] == "line 15"
        assert (repo / "hello.py").read_text() == HELLO


@pytest.mark.asyncio
async def test_load_progress_hook(repo, edit_turn, make_app):
    from app.tui.messages import LoadProgress
    app = make_app(repo, edit_turn)
    async with app.run_test(size=SIZE) as pilot:
        assert not app.load_bar.display
        app.report_load_progress(0.5, "loading shards")     # what a loading backend calls
        await pilot.pause()
        assert app.load_bar.display and app.load_bar.progress == 0.5
        app.post_message(LoadProgress(1.0, done=True))
        await pilot.pause()
        assert not app.load_bar.display
