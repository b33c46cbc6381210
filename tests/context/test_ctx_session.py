"""Packed context in a real `v4coder run`, deltas after edits, and compaction that loses nothing.

Real git repositories in temp dirs, the real tokenizer, the replay backend; the only test
double is a thin wrapper that records each request the loop sends to the real backend.
"""

from __future__ import annotations

from pathlib import Path

from agent.backends.replay import ReplayBackend
from agent.context.archive import Archive, recall_tool
from agent.context.compaction import STUB_PREFIX, Compactor, compact
from agent.context.live import DELTA_INTRO, LiveContext, pack_path
from agent.context.session_context import resume_context
from agent.context.tokens import count_tokens
from agent.encoding import encode_messages
from agent.events import CompactionEvent, ToolResultEvent, event_from_dict
from agent.limits import LoopLimits
from agent.loop import Agent
from agent.session import Session, sessions_dir
from app.headless import RunOptions, run_headless
from tools.base import ToolContext
from tools.registry import default_tools


class Recording:
    """The real replay backend, with every request kept for inspection."""

    name = "replay"

    def __init__(self, path: Path) -> None:
        self.inner = ReplayBackend(path)
        self.model = self.inner.model
        self.requests: list = []

    def stream(self, request):  # noqa: ANN001, ANN201
        self.requests.append(request)
        yield from self.inner.stream(request)


FILES = {
    "AGENTS.md": "Always run the tests.\n",
    "shop/cart.py": "def total(items):\n    return sum(i.price for i in items)\n",
    "shop/money.py": "def fmt(cents):\n    return f'{cents / 100:.2f}'\n",
    "tests/test_cart.py": "from shop.cart import total\n\ndef test_empty():\n    assert total([]) == 0\n",
}


def test_run_packs_the_repository_and_sends_edits_only_as_a_trailing_delta(make_repo, make_replay):
    repo = make_repo(FILES)
    backend = Recording(make_replay([
        ("Look.", [("read_file", {"path": "shop/cart.py"})]),
        ("Fix.", [("edit_file", {"path": "shop/cart.py", "old_string": "sum(i.price for i in items)",
                                 "new_string": "sum(i.price * i.qty for i in items)"})]),
        ("Check.", [("read_file", {"path": "shop/money.py"})]),
        ("Done.", [("finish", {"summary": "quantities counted"})]),
    ]))
    opts = RunOptions(repo=repo, issue="total() in shop/cart.py ignores quantities", quiet=True)
    assert run_headless(opts, backend, "replay") == 0
    reqs = backend.requests
    assert len(reqs) == 4
    system = reqs[0].messages[0]["content"]
    # Instructions first, then the packed repository with numbered lines.
    assert system.index("Always run the tests.") < system.index("# Repository snapshot")
    assert "### shop/cart.py\n1 def total(items):\n2     return sum(i.price for i in items)\n" in system
    # The prompt prefix (system message, tools included) is byte-identical at every step.
    prefix = encode_messages(reqs[0].messages[:1], reqs[0].tools)
    for r in reqs:
        assert r.messages[0]["content"] == system
        assert encode_messages(r.messages[:1], r.tools) == prefix
    # No delta before the edit; after it, exactly one trailing message with only the change.
    assert not any(DELTA_INTRO in str(m.get("content")) for r in reqs[:2] for m in r.messages)
    for r in reqs[2:]:
        delta = r.messages[-1]
        assert delta["role"] == "user" and delta["content"].startswith(DELTA_INTRO)
        body = delta["content"][len(DELTA_INTRO):]
        assert body == ("### shop/cart.py (edited since packing)\n@@ lines 2-2 now (were 2-2) @@\n"
                        "2     return sum(i.price * i.qty for i in items)\n")
        assert sum(DELTA_INTRO in str(m.get("content")) for m in r.messages) == 1
    # The transcript grows append-only under the delta: request 3's messages minus the delta
    # are a prefix of request 4's, so the engine's prefix cache covers everything before it.
    assert reqs[3].messages[: len(reqs[2].messages) - 1] == reqs[2].messages[:-1]
    # The delta is never stored: the session on disk is the plain transcript.
    session = Session.latest(sessions_dir(repo))
    assert session is not None and session.messages[0]["content"] == system
    assert not any(DELTA_INTRO in str(m.get("content")) for m in session.messages)
    assert session.header["context"]["files"] == 4 and pack_path(session.path).is_file()
    # A resumed session computes its delta against the same snapshot, and its compactor
    # knows the system message's size without tokenizing the packed repository again.
    live = LiveContext.load(session.path, repo)
    assert live is not None and "i.qty" in live.delta() and "money.py" not in live.delta()
    resumed = resume_context(Session.load(session.path), repo)
    assert resumed.live is not None and system.endswith(resumed.live.packed.text)
    assert resumed.prepare_messages is not None and [t.name for t in resumed.tools] == ["recall"]
    assert abs(resumed.compactor.counter.cache[system] - count_tokens([system])[0]) <= 2


def test_context_budget_zero_packs_nothing(make_repo, make_replay):
    repo = make_repo(FILES)
    backend = Recording(make_replay([("Done.", [("finish", {"summary": "s"})])]))
    opts = RunOptions(repo=repo, issue="x", quiet=True, context_budget=0)
    assert run_headless(opts, backend, "replay") == 0
    system = backend.requests[0].messages[0]["content"]
    assert "# Repository snapshot" not in system and "Always run the tests." in system


def _big(tag: str, n: int = 400) -> str:
    return "".join(f"{tag} line {i}: some text to make the output long enough\n" for i in range(n))


def _agent(repo: Path, replay: Path, limit: int) -> tuple[Agent, Session]:
    session = Session.create(sessions_dir(repo), repo=str(repo))
    session.add({"role": "system", "content": "Rules and the packed repository would be here."})
    archive = Archive.for_session(session.path)
    agent = Agent(backend=ReplayBackend(replay), tools=[*default_tools(), recall_tool(archive)],
                  ctx=ToolContext(repo=repo.resolve(), headless=True), session=session,
                  limits=LoopLimits(), compactor=Compactor(limit=limit, archive=archive))
    return agent, session


def test_compaction_in_the_loop_then_recall_returns_the_output_exactly(make_repo, make_replay):
    repo = make_repo({"a.txt": _big("a"), "b.txt": _big("b"), "c.txt": "small\n"})
    replay = make_replay([
        ("", [("read_file", {"path": "a.txt"})]),           # message 3
        ("", [("read_file", {"path": "b.txt"})]),           # message 5
        ("", [("read_file", {"path": "c.txt"})]),           # message 7
        ("", [("recall", {"id": "out-3"})]),                # message 9
        ("", [("finish", {"summary": "done"})]),
    ])
    agent, session = _agent(repo, replay, limit=2_000)
    task = "Read the files. Remember: never touch c.txt."
    events = list(agent.run(task))
    assert events[-1].finished
    outputs = [e.output for e in events if isinstance(e, ToolResultEvent)]
    compactions = [e for e in events if isinstance(e, CompactionEvent)]
    assert [c.ids for c in compactions] == [["out-3"], ["out-5"]]
    assert all(c.tokens_after < c.tokens_before for c in compactions)
    assert event_from_dict(compactions[0].to_dict()) == compactions[0]
    # recall brought back a.txt's read_file output, character for character.
    assert outputs[3] == outputs[0] and session.messages[9]["content"] == outputs[0]
    assert "a line 399" in outputs[0]
    # The transcript holds stubs; pinned messages are untouched.
    stub = session.messages[3]["content"]
    assert stub.startswith(STUB_PREFIX + "out-3: 401 lines, first line: a.txt (400 lines);")
    assert 'recall(id="out-3")' in stub and session.messages[5]["content"].startswith(STUB_PREFIX)
    assert session.messages[0]["content"] == "Rules and the packed repository would be here."
    assert session.messages[1] == {"role": "user", "content": task}
    assert Archive.for_session(session.path).get("out-5") == outputs[1]
    # Resuming reproduces the compacted transcript exactly.
    assert Session.load(session.path).messages == session.messages


def test_manual_compact_keeps_pinned_messages_and_resumes(make_repo):
    repo = make_repo({"x.py": "x = 1\n"})
    session = Session.create(sessions_dir(repo), repo=str(repo))
    pinned = [{"role": "system", "content": "SYSTEM " + _big("s", 50)},
              {"role": "user", "content": "TASK " + _big("t", 50)}]
    for m in pinned:
        session.add(m)
    for k in range(4):
        session.add({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{k}", "type": "function", "function": {"name": "bash", "arguments": "{}"}}]})
        session.add({"role": "tool", "tool_call_id": f"c{k}", "content": _big(f"o{k}", 60)})
        session.add({"role": "user", "content": f"user instruction {k} " + _big("u", 30)})
    originals = [dict(m) for m in session.messages]
    assert compact(session, limit=10**9) is None  # under budget: nothing happens
    event = compact(session)                        # /compact: everything but the 2 newest
    assert event is not None and event.manual and event.ids == ["out-3", "out-6"]
    assert compact(session) is None                 # already compacted
    for i, (now, was) in enumerate(zip(session.messages, originals, strict=True)):
        if i in (3, 6):
            assert now["content"].startswith(STUB_PREFIX) and now["tool_call_id"] == was["tool_call_id"]
        else:
            assert now == was
    tool = recall_tool(Archive.for_session(session.path))
    assert tool.run(None, {"id": "out-6"}).output == originals[6]["content"]
    missing = tool.run(None, {"id": "out-99"})
    assert not missing.ok and "out-3" in missing.output
    assert Session.load(session.path).messages == session.messages


def test_compaction_repacks_the_repository_and_resets_the_delta(make_repo):
    from agent.context.session_context import attach_context, pack_for_session

    repo = make_repo(FILES)
    live = pack_for_session(repo, 100_000, "shop/cart.py")
    assert live is not None
    session = Session.create(sessions_dir(repo), repo=str(repo))
    session.add({"role": "system", "content": "Rules.\n" + live.text})
    session.add({"role": "user", "content": "count quantities"})
    sc = attach_context(session, live)
    for k in range(3):
        session.add({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{k}", "type": "function", "function": {"name": "bash", "arguments": "{}"}}]})
        session.add({"role": "tool", "tool_call_id": f"c{k}", "content": _big(f"o{k}", 60)})
    old_system = session.messages[0]["content"]
    (repo / "shop/cart.py").write_text("def total(items):\n    return sum(i.price * i.qty for i in items)\n")
    (repo / "shop/tax.py").write_text("RATE = 20\n")
    assert "i.qty" in sc.live.delta()
    assert sc.prepare_messages(session.messages)[-1]["content"].startswith(DELTA_INTRO)
    # Under the limit: no compaction, so no re-pack; the prefix stays as it was.
    assert sc.compactor(session) is None and session.messages[0]["content"] == old_system
    sc.compactor.limit = 500
    event = sc.compactor(session)
    assert event is not None and event.ids
    system = session.messages[0]["content"]
    assert system != old_system and system.startswith("Rules.\n# Repository snapshot")
    assert "### shop/cart.py\n1 def total(items):\n2     return sum(i.price * i.qty for i in items)\n" in system
    assert "### shop/tax.py\n1 RATE = 20\n" in system
    assert sc.live.delta() == "" and sc.prepare_messages(session.messages) is session.messages
    record = session.compactions[-1]
    assert record["pack"] == f"{session.path.stem}.pack-1.json"
    assert pack_path(session.path, record["pack"]).is_file() and pack_path(session.path).is_file()
    # A second compaction with no edits since re-packs nothing.
    n = len(session.compactions)
    assert sc.compact_now(session) is None and len(session.compactions) == n
    # Resume: same system message, same (empty) delta; later edits show against the re-pack.
    loaded = Session.load(session.path)
    assert loaded.messages == session.messages
    resumed = resume_context(loaded, repo)
    assert resumed.live is not None and resumed.live.delta() == ""
    assert system.endswith(resumed.live.packed.text) and resumed.live.question == "shop/cart.py"
    (repo / "shop/money.py").write_text("def fmt(cents):\n    return str(cents)\n")
    delta = resumed.live.delta()
    assert delta.startswith("### shop/money.py (edited since packing)") and "cart.py" not in delta
    # /compact re-packs too, as a second snapshot.
    resumed_session = loaded
    resumed_session.add({"role": "assistant", "content": "", "tool_calls": [
        {"id": "c9", "type": "function", "function": {"name": "bash", "arguments": "{}"}}]})
    resumed_session.add({"role": "tool", "tool_call_id": "c9", "content": _big("o9", 60)})
    assert resumed.compact_now(resumed_session, keep_recent=0) is not None
    assert resumed_session.compactions[-1]["pack"].endswith(".pack-2.json")
    assert "2     return str(cents)\n" in resumed_session.messages[0]["content"]
    assert resumed.live.delta() == ""
    again = resume_context(Session.load(session.path), repo)
    assert again.live is not None and again.live.delta() == ""
