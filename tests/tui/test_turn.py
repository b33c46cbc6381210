"""Pilot tests: a full turn with approval, Esc cancelling, /undo, resuming a session."""

from __future__ import annotations

import pytest
from tui_support import HELLO, SIZE, wait_until

from agent.session import Session, sessions_dir
from app.tui.approval import ApprovalScreen
from app.tui.tool_card import ToolCard
from app.tui.transcript import AssistantReply, Notice, UserMessage


def _cards(app) -> list[ToolCard]:
    return list(app.transcript.query(ToolCard))


@pytest.mark.asyncio
async def test_full_turn_with_approval(repo, edit_turn, make_app):
    app = make_app(repo, edit_turn)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"greet people warmly", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ApprovalScreen))
        modal = app.screen
        assert modal.call.name == "edit_file"
        assert "+    return 'hello, ' + name" in modal.diff
        assert (repo / "hello.py").read_text() == HELLO          # nothing ran yet
        await pilot.press("y")
        await wait_until(pilot, lambda: isinstance(app.screen, ApprovalScreen)
                         and app.screen is not modal)
        assert app.screen.call.name == "bash"
        await pilot.press("y")
        await wait_until(pilot, lambda: not app.running)

        assert "'hello, ' + name" in (repo / "hello.py").read_text()
        users = [w for w in app.transcript.query(UserMessage)]
        assert str(users[0].render()) == "greet people warmly"
        replies = [w.source for w in app.transcript.query(AssistantReply)]
        assert replies[0].startswith("I'll make the greeting **friendlier**.")
        assert replies[-1] == "Done: `greet` now says *hello*."
        edit, bash = _cards(app)
        assert edit.tool == "edit_file" and edit.ok and not edit.collapsed
        assert "-    return 'hi ' + name" in edit.diff
        assert bash.ok and "hello, world" in str(bash._output.render())
        state = app.status.state
        assert state.step == 3 and state.prompt_tokens > 0 and not state.running


@pytest.mark.asyncio
async def test_declining_and_always(repo, make_replay, make_app):
    replay = make_replay([
        ("first", [("bash", {"command": "echo one"})]),
        ("second", [("bash", {"command": "echo two"})]),
        ("third", [("bash", {"command": "echo three"})]),
        "ok",
    ])
    app = make_app(repo, replay)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"go", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ApprovalScreen))
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, ApprovalScreen)
                         and "two" in app.screen.call.arguments["command"])
        await pilot.press("a")                      # always: the third call runs unasked
        await wait_until(pilot, lambda: not app.running)
        one, two, three = _cards(app)
        assert not one.ok and "declined" in str(one._output.render())
        assert two.ok and three.ok
        assert app.host.always == {"bash"}


@pytest.mark.asyncio
async def test_escape_cancels_a_slow_turn(repo, make_replay, make_app):
    long_text = "word " * 400
    replay = make_replay([long_text, "second answer"])
    app = make_app(repo, replay, tokens_per_second=40)   # ~50 s if not cancelled
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"talk", "enter")
        await wait_until(pilot, lambda: len(app.transcript.reply_source) > 20)
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.running, timeout=5)
        notices = [str(n.render()) for n in app.transcript.query(Notice)]
        assert any("cancelled" in n for n in notices)
        assert app.screen is app.screen_stack[0]               # the app is still there
        # The next turn works.
        app.host.backend.tokens_per_second = 0
        await pilot.press(*"again", "enter")
        await wait_until(pilot, lambda: not app.running and len(app.transcript.query(UserMessage)) == 2)
        await wait_until(pilot, lambda: any(r.source == "second answer"
                                            for r in app.transcript.query(AssistantReply)))


@pytest.mark.asyncio
async def test_undo_restores_files(repo, make_replay, make_app):
    replay = make_replay([
        ("Rewriting.", [("write_file", {"path": "hello.py", "content": "print('replaced')\n"}),
                        ("write_file", {"path": "new.txt", "content": "new\n"})]),
        "Rewritten.",
    ])
    app = make_app(repo, replay, mode="full-auto")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"rewrite", "enter")
        await wait_until(pilot, lambda: not app.running)
        assert (repo / "hello.py").read_text() == "print('replaced')\n"
        assert (repo / "new.txt").exists()
        await pilot.press(*"/undo", "enter")
        await wait_until(pilot, lambda: "restored" in str(list(app.transcript.query(Notice))[-1].render()))
        assert not (repo / "new.txt").exists()              # undid the second write
        await pilot.press(*"/undo", "enter")
        await pilot.pause()
        assert (repo / "hello.py").read_text() == HELLO     # and the first
        await pilot.press(*"/undo", "enter")
        await pilot.pause()
        assert "nothing to undo" in str(list(app.transcript.query(Notice))[-1].render())
        assert app.pending_notice.startswith("[The user ran /undo")


@pytest.mark.asyncio
async def test_resume_renders_the_last_session(repo, edit_turn, make_app):
    app = make_app(repo, edit_turn, mode="full-auto")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"first session", "enter")
        await wait_until(pilot, lambda: not app.running)
    saved = Session.latest(sessions_dir(repo))
    assert saved is not None and any(m.get("role") == "tool" for m in saved.messages)

    again = make_app(repo, None, resume=True)
    async with again.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: len(again.transcript.query(ToolCard)) == 2)
        assert again.host.session.id == saved.id
        assert str(again.transcript.query(UserMessage).first().render()) == "first session"
        edit, bash = _cards(again)
        assert edit.tool == "edit_file" and edit.ok and "'hello, ' + name" in edit.diff
        assert bash.ok
        sources = [r.source for r in again.transcript.query(AssistantReply)]
        assert sources[-1] == "Done: `greet` now says *hello*."


@pytest.mark.asyncio
async def test_status_bar_shows_how_far_the_model_is_into_a_long_prompt(repo, make_replay,
                                                                        monkeypatch):
    import threading

    from agent import loop
    from agent.backends.replay import ReplayBackend
    from agent.events import PrefillEvent
    from app.tui.app import CoderApp

    monkeypatch.setattr(loop, "PREFILL_EVERY_S", 0.0)   # pass every event on
    release = threading.Event()

    class SlowPrompt(ReplayBackend):   # a long prompt on the embedded engine, paused halfway
        def stream(self, request):
            yield PrefillEvent(done=200_000, total=1_000_000, cached=200_000)
            yield PrefillEvent(done=500_000, total=1_000_000, cached=200_000)
            release.wait(10)
            yield PrefillEvent(done=1_000_000, total=1_000_000, cached=200_000)
            yield from super().stream(request)

    replay = make_replay(["All read."])
    app = CoderApp(repo=repo, backend_spec=f"replay:{replay}", backend=SlowPrompt(replay))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"what is here", "enter")
        await wait_until(pilot, lambda: "50%" in app.status.state.prefill)
        bar = str(app.status.render())
        assert "reading the prompt: 50% (500.0k of 1.00M tokens, 200.0k from the prefix cache)" in bar
        release.set()
        await wait_until(pilot, lambda: not app.running)
        assert app.status.state.prefill == "" and "reading the prompt" not in str(app.status.render())
