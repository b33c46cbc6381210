"""Whole-repository context in the TUI: the packed system prompt, /context, /compact with a
recall round trip, the automatic-compaction card, and the embedded model's loading bar."""

from __future__ import annotations

import pytest
from tui_support import SIZE, wait_until

from agent.context.render import PREAMBLE
from app.tui.tool_card import ToolCard
from app.tui.transcript import CompactionCard, Notice

SEQ = "seq 1 300"   # about 1.1k characters of output: worth archiving


def _notices(app) -> list[str]:
    return [str(n.render()) for n in app.transcript.query(Notice)]


def _three_calls(final: str = "done") -> list:
    """One turn: a long output, then two short ones (the two newest are never archived)."""
    return [("First the numbers.", [("bash", {"command": SEQ})]),
            ("Then one.", [("bash", {"command": "echo one"})]),
            ("Then two.", [("bash", {"command": "echo two"})]),
            final]


async def _turn(app, pilot, text: str) -> None:
    turns = app.turns
    await pilot.press(*text, "enter")
    await wait_until(pilot, lambda: app.turns > turns and not app.running)


@pytest.mark.asyncio
async def test_new_session_prompt_holds_the_packed_repository(repo, make_replay, make_app):
    app = make_app(repo, make_replay(["Hi."]), mode="full-auto")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.context_ready)
        assert app.host.session is None and app.host.prepacked is not None
        assert not app.status.state.activity                 # the packing note is gone
        await _turn(app, pilot, "hello")
        session = app.host.session
        system = session.messages[0]["content"]
        assert PREAMBLE in system and "### hello.py\n1 def greet(name):\n" in system
        assert "### pkg/util.py\n1 X = 1\n" in system
        assert session.header["context"]["files"] == 3
        agent = app.host.agent
        assert "recall" in agent._by_name
        assert agent.compactor is app.host.context.compactor
        assert agent.prepare_messages == app.host.context.prepare_messages
        await pilot.press(*"/context", "enter")
        await pilot.pause()
        shown = _notices(app)[-1]
        assert "3 files whole, 0 outlined, 0 omitted" in shown
        assert "skipped: 0 files" in shown and "last prompt ▕" in shown


@pytest.mark.asyncio
async def test_compact_then_recall_round_trip(repo, make_replay, make_app):
    replay = make_replay([*_three_calls(), ("Looking again.", [("recall", {"id": "out-3"})]),
                          "Same numbers."])
    app = make_app(repo, replay, mode="full-auto")
    async with app.run_test(size=SIZE) as pilot:
        await _turn(app, pilot, "count")
        messages = app.host.session.messages
        original = messages[3]["content"]
        assert messages[3]["role"] == "tool" and "300" in original
        await pilot.press(*"/compact", "enter")
        await wait_until(pilot, lambda: bool(app.transcript.query(CompactionCard)))
        card = app.transcript.query(CompactionCard).last()
        assert card.event.ids == ["out-3"] and card.event.manual
        assert card.event.tokens_after < card.event.tokens_before
        shown = str(card.render())
        assert "/compact: archived 1 tool output out-3" in shown and "→" in shown
        assert messages[3]["content"].startswith("[archived tool output out-3")
        assert app.status.state.prompt_tokens == card.event.tokens_after

        await _turn(app, pilot, "show the numbers again")
        recall = [c for c in app.transcript.query(ToolCard) if c.tool == "recall"]
        assert len(recall) == 1 and recall[0].ok
        assert str(recall[0]._output.render()).startswith("1\n2\n3\n")
        assert app.host.session.messages[-2] == {"role": "tool", "tool_call_id": recall[0].call_id,
                                                 "content": original}


@pytest.mark.asyncio
async def test_automatic_compaction_shows_a_card(repo, make_replay, make_app):
    app = make_app(repo, make_replay(_three_calls()), mode="full-auto")
    app.host.compact_limit = 1          # every request is over the limit
    async with app.run_test(size=SIZE) as pilot:
        await _turn(app, pilot, "count")
        cards = list(app.transcript.query(CompactionCard))
        assert len(cards) == 1 and cards[0].event.ids == ["out-3"] and not cards[0].event.manual
        assert str(cards[0].render()).startswith("⇣ compacted: archived 1 tool output out-3")
        # It sits after the card of the call whose output it archived, before the reply.
        widgets = list(app.transcript.children)
        assert widgets.index(cards[0]) > widgets.index(app.transcript.query(ToolCard).last())
        assert app.host.session.messages[3]["content"].startswith("[archived tool output")


@pytest.mark.asyncio
async def test_embedded_model_loads_with_a_progress_bar(repo, tmp_path, make_app):
    from model.toy import write_toy_checkpoint
    toy = tmp_path / "toy-ckpt"
    write_toy_checkpoint(toy, seed=0, preset="tiny")
    from app.tui.app import CoderApp
    app = CoderApp(repo=repo, backend_spec=f"embedded:{toy}")
    seen: list[float] = []
    report = app.report_load_progress

    def spy(fraction: float, label: str = "") -> None:
        seen.append(fraction)
        report(fraction, label)

    app.report_load_progress = spy
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.load_bar.display or app.host.backend is not None)
        await wait_until(pilot, lambda: app.host.backend is not None, timeout=60)
        await wait_until(pilot, lambda: not app.load_bar.display)
        assert seen[-1] == 1.0 and seen == sorted(seen)
        assert len([f for f in seen if 0 < f < 1]) >= 10           # per tensor, not one jump
        assert app.status.state.model == "toy-ckpt" and "loading" not in app.status.state.activity


@pytest.mark.asyncio
async def test_resume_reattaches_the_saved_pack(repo, make_replay, make_app):
    replay = make_replay(["Hi.", "Again."])
    first = make_app(repo, replay)
    async with first.run_test(size=SIZE) as pilot:
        await _turn(first, pilot, "hello")
        sid = first.host.session.id
    (repo / "hello.py").write_text("print('changed')\n")
    app = make_app(repo, replay, resume=True)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.context_ready)
        assert app.host.session.id == sid and app.host.context.live is not None
        extra = app.host.context.prepare_messages(app.host.session.messages)[-1]["content"]
        assert "print('changed')" in extra          # a delta against the saved snapshot


def test_first_question_ranks_an_over_budget_pack(make_repo):
    """A repository over the budget is pre-packed before any question (outlines for what does
    not fit); the session's first question re-ranks it, so a file it names comes whole."""
    from app.tui.host import AgentHost

    body = "".join(f"def f{i}(x):\n    return x * {i} + {i}\n\n" for i in range(40))
    repo = make_repo({f"mod_{c}.py": body for c in "abcdefgh"})
    host = AgentHost(repo=repo, backend_spec="replay:none.jsonl", context_budget=4_000)
    live = host.prepack()
    assert live.packed.outlined and "mod_h.py" not in live.packed.files
    session = host.new_session("why does mod_h.py multiply?")
    system = session.messages[0]["content"]
    assert "### mod_h.py\n1 def f0(x):\n" in system          # whole, with line numbers
    assert session.header["context"]["files"] >= 1
    host.forget_session()
    plain = host.new_session()                              # no question: the plain ranking
    assert "### mod_h.py\n1 def f0(x):\n" not in plain.messages[0]["content"]
