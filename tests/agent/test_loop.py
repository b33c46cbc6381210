"""The agent loop on real tools in real git repositories, driven by replay transcripts."""

import json

import pytest

from agent.backends.replay import ReplayBackend
from agent.events import DoneEvent, ToolResultEvent
from agent.limits import LoopLimits, cut_output
from agent.loop import Agent
from agent.session import Session, sessions_dir
from tools.base import ToolContext
from tools.registry import default_tools


def run_agent(repo, replay, **limits):
    session = Session.create(sessions_dir(repo), repo=str(repo))
    session.add({"role": "system", "content": "test"})
    agent = Agent(backend=ReplayBackend(replay), tools=default_tools(),
                  ctx=ToolContext(repo=repo.resolve(), headless=True), session=session,
                  limits=LoopLimits(**limits))
    events = list(agent.run("do the task"))
    return events, session


def results(events):
    return [e for e in events if isinstance(e, ToolResultEvent)]


def test_finish_ends_the_run_with_its_summary(make_repo, make_replay):
    repo = make_repo({"a.txt": "hello\n"})
    replay = make_replay([("Reading.", [("read_file", {"path": "a.txt"})]),
                          ("Done.", [("finish", {"summary": "all good"})])])
    events, session = run_agent(repo, replay)
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finished and done.summary and done.steps == 2
    assert "hello" in results(events)[0].output
    # The transcript on disk is the conversation: system, user, then assistant/tool pairs.
    reloaded = Session.load(session.path)
    assert [m["role"] for m in reloaded.messages] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert reloaded.messages[3]["content"] == results(events)[0].output


def test_malformed_block_runs_nothing_and_three_in_a_row_end_the_run(make_repo, make_replay):
    repo = make_repo({"a.txt": "old\n"})
    broken = ("Writing.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"write_file\">\n"
              "<｜DSML｜parameter name=\"path\" string=\"true\">a.txt</｜DSML｜parameter>\n"
              "<｜DSML｜parameter name=\"content\" string=\"true\">new</｜DSML｜parameter>\n")
    events, session = run_agent(repo, make_replay([broken, broken, broken]))
    assert (repo / "a.txt").read_text() == "old\n"
    assert events[-1].reason == "format_errors" and not events[-1].finished
    out = results(events)
    assert len(out) == 3 and not any(r.ok for r in out)
    assert "not closed" in out[0].output and "No tool of this reply was run" in out[0].output
    # The model is told as a user turn; its broken text is kept verbatim in the transcript.
    assert session.messages[2]["content"].startswith("Writing.")
    assert session.messages[3]["role"] == "user" and session.messages[3]["content"] == out[0].output


def test_one_bad_call_blocks_the_whole_reply(make_repo, make_replay):
    repo = make_repo({"a.txt": "old\n"})
    replay = make_replay([
        ("Two calls.", [("write_file", {"path": "a.txt", "content": "new\n"}), ("explode", {"x": 1})]),
        ("Done.", [("finish", {"summary": "s"})])])
    events, session = run_agent(repo, replay)
    assert (repo / "a.txt").read_text() == "old\n"
    first, second = results(events)[:2]
    assert not first.ok and "another call in the same reply was malformed" in first.output
    assert not second.ok and "unknown tool 'explode'" in second.output
    assert events[-1].finished


def test_format_error_counter_resets_after_a_good_reply(make_repo, make_replay):
    repo = make_repo({"a.txt": "x\n"})
    bad = ("Bad.", [("nope", {})])
    good = ("Good.", [("read_file", {"path": "a.txt"})])
    events, _ = run_agent(repo, make_replay([bad, bad, good, bad, bad, ("End.", [("finish", {"summary": "s"})])]))
    assert events[-1].finished


def test_repeated_identical_calls_end_the_run(make_repo, make_replay):
    repo = make_repo({"a.txt": "x\n"})
    same = ("Again.", [("read_file", {"path": "a.txt"})])
    events, _ = run_agent(repo, make_replay([same] * 5))
    assert events[-1].reason == "repeated_calls"
    assert len([r for r in results(events) if r.ok]) == 2


def test_step_limit(make_repo, make_replay):
    repo = make_repo({"a.txt": "x\n"})
    replies = [(f"Step {i}.", [("read_file", {"path": "a.txt", "start_line": 1 + i % 2})]) for i in range(10)]
    events, _ = run_agent(repo, make_replay(replies), max_steps=3)
    assert events[-1].reason == "step_limit" and events[-1].steps == 3


def test_text_only_reply_is_nudged_in_headless_mode(make_repo, make_replay):
    repo = make_repo({"a.txt": "x\n"})
    events, session = run_agent(repo, make_replay(["I think it is fine.", ("Ok.", [("finish", {"summary": "s"})])]))
    assert events[-1].finished
    assert any("without calling a tool" in m.get("content", "") for m in session.messages if m["role"] == "user")


def test_large_output_is_cut_to_head_and_tail(make_repo, make_replay):
    repo = make_repo({"a.txt": "x\n"})
    cmd = "python3 -c \"print('\\n'.join('line %d' % i for i in range(20000)))\""
    events, _ = run_agent(repo, make_replay([("Big.", [("bash", {"command": cmd})]),
                                             ("Ok.", [("finish", {"summary": "s"})])]))
    out = results(events)[0].output
    assert len(out) <= 30_500
    assert "line 0" in out and "line 19999" in out and "cut from the middle" in out


def test_destructive_command_is_refused_in_headless_mode(make_repo, make_replay):
    repo = make_repo({"a.txt": "committed\n"})
    (repo / "a.txt").write_text("user's uncommitted work\n")
    events, _ = run_agent(repo, make_replay([("Reset.", [("bash", {"command": "git reset --hard"})]),
                                             ("Ok.", [("finish", {"summary": "s"})])]))
    out = results(events)[0]
    assert not out.ok and out.output.startswith("refused")
    assert (repo / "a.txt").read_text() == "user's uncommitted work\n"


def test_backend_running_dry_is_a_clean_error(make_repo, make_replay):
    repo = make_repo({"a.txt": "x\n"})
    events, _ = run_agent(repo, make_replay([("Look.", [("read_file", {"path": "a.txt"})])]))
    assert events[-2].type == "error" and "no completion left" in events[-2].message
    assert events[-1].reason == "backend_error"


def test_events_serialise_to_json_lines(make_repo, make_replay):
    repo = make_repo({"a.txt": "x\n"})
    events, _ = run_agent(repo, make_replay([("Done.", [("finish", {"summary": "s"})])]))
    for event in events:
        data = json.loads(event.to_json())
        assert data["type"] == event.type
    tr = [json.loads(e.to_json()) for e in events if e.type == "tool_result"][0]
    assert set(tr) >= {"type", "tool", "ok", "output"}


@pytest.mark.parametrize("limit", [100, 1000])
def test_cut_output_respects_the_limit(limit):
    text = "x" * 10 + "\n" * 5000 + "y" * 10
    out = cut_output(text, limit + 200)
    assert len(out) <= limit + 200 + 200
    assert out.startswith("x" * 10) and out.endswith("y" * 10)
