"""Compaction archives large tool-call arguments too, and recall returns them exactly."""

from __future__ import annotations

import json
from pathlib import Path

from agent.backends.replay import ReplayBackend
from agent.context.archive import PAGE_NOTE, RECALL_PAGE_CHARS, Archive, recall_tool
from agent.context.archive_args import ARG_STUB_PREFIX
from agent.context.compaction import Compactor, compact, describe
from agent.encoding import encode_messages
from agent.events import CompactionEvent, ToolResultEvent
from agent.limits import LoopLimits
from agent.loop import Agent
from agent.session import Session, sessions_dir
from tools.base import ToolContext
from tools.registry import default_tools


def _content(tag: str, n: int) -> str:
    return "".join(f"{tag} = {i}  # a line of generated code, long enough to add up ✓\n" for i in range(n))


def _args(message: dict, k: int = 0) -> dict:
    return json.loads(message["tool_calls"][k]["function"]["arguments"])


def test_write_file_content_is_archived_in_the_loop_and_recalled_exactly(make_repo, make_replay):
    repo = make_repo({"c.txt": "small\n"})
    big = _content("x", 3300)  # over 200 KB
    assert len(big) > 200_000
    old, new = big[:1200], _content("y", 20)
    replay = make_replay([
        ("", [("write_file", {"path": "big.py", "content": big})]),                  # message 2
        ("", [("edit_file", {"path": "big.py", "old_string": old, "new_string": new})]),  # 4
        ("", [("read_file", {"path": "c.txt"})]),                                     # 6
        ("", [("read_file", {"path": "c.txt"})]),                                     # 8
        *[("", [("recall", {"id": "arg-2-0-0", "offset": off})])                     # 10, ...
          for off in range(0, len(big), RECALL_PAGE_CHARS)],
        ("", [("finish", {"summary": "done"})]),
    ])
    session = Session.create(sessions_dir(repo), repo=str(repo))
    session.add({"role": "system", "content": "Rules."})
    archive = Archive.for_session(session.path)
    agent = Agent(backend=ReplayBackend(replay), tools=[*default_tools(), recall_tool(archive)],
                  ctx=ToolContext(repo=repo.resolve(), headless=True, mode="full-auto"),
                  session=session, limits=LoopLimits(), compactor=Compactor(limit=3_000, archive=archive))
    events = list(agent.run("Write big.py."))
    assert events[-1].finished
    assert (repo / "big.py").read_text(encoding="utf-8") == new + big[1200:]  # the tools really ran
    compactions = [e for e in events if isinstance(e, CompactionEvent)]
    ids = [i for c in compactions for i in c.ids]
    assert ids[:3] == ["arg-2-0-0", "arg-4-0-0", "arg-4-0-1"]
    # The transcript keeps valid arguments with the same keys; the big strings are stubs.
    write = _args(session.messages[2])
    assert write["path"] == "big.py" and write["content"].startswith(ARG_STUB_PREFIX + "arg-2-0-0 (content): 3300 lines")
    edit = _args(session.messages[4])
    assert edit["path"] == "big.py" and edit["old_string"].startswith(ARG_STUB_PREFIX + "arg-4-0-0 (old_string)")
    assert edit["new_string"].startswith(ARG_STUB_PREFIX + "arg-4-0-1 (new_string)")
    encode_messages(session.messages, [])  # the chat encoding still parses every call
    # recall(id) in the loop brought the 200 KB argument back, page by page, character for
    # character (one tool output is cut at 30,000 characters, so long text comes in pages).
    outputs = [e.output for e in events if isinstance(e, ToolResultEvent)]
    pages = outputs[4:-1]
    assert len(pages) == -(-len(big) // RECALL_PAGE_CHARS) > 1
    assert all(p.rsplit("\n" + PAGE_NOTE, 1)[1].startswith("characters ") for p in pages)
    assert "".join(p.rsplit("\n" + PAGE_NOTE, 1)[0] for p in pages) == big
    assert pages[0].endswith(f'call recall(id="arg-2-0-0", offset={RECALL_PAGE_CHARS}) for the rest]')
    assert Archive.for_session(session.path).get("arg-4-0-0") == old
    assert Archive.for_session(session.path).get("arg-4-0-1") == new
    assert "tool-call argument(s)" in describe(compactions[0])
    assert Session.load(session.path).messages == session.messages


def test_manual_compact_archives_nested_and_dict_arguments_and_keeps_the_newest(tmp_path: Path):
    session = Session.create(tmp_path / "sessions", repo=str(tmp_path))
    session.add({"role": "system", "content": "SYSTEM"})
    session.add({"role": "user", "content": "TASK"})
    edits = [{"old": _content("a", 10), "new": "short"}, {"old": "tiny", "new": _content("b", 12)}]
    calls = [
        {"name": "multi_edit", "arguments": json.dumps({"path": "m.py", "edits": edits})},  # string form
        {"name": "write_file", "arguments": {"path": "d.py", "content": _content("d", 10)}},  # dict form
        {"name": "write_file", "arguments": "{not json " + "z" * 500},                # left alone
        {"name": "write_file", "arguments": json.dumps({"path": "n1.py", "content": _content("n", 10)})},
        {"name": "write_file", "arguments": json.dumps({"path": "n2.py", "content": _content("n", 10)})},
    ]
    for k, call in enumerate(calls):
        session.add({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{k}", "type": "function", "function": call}]})
        session.add({"role": "tool", "tool_call_id": f"c{k}", "content": "ok"})
    originals = [json.loads(json.dumps(m)) for m in session.messages]
    event = compact(session)
    assert event is not None and event.ids == ["arg-2-0-0", "arg-2-0-1", "arg-4-0-0"]
    multi = _args(session.messages[2])
    assert multi["path"] == "m.py" and multi["edits"][0]["new"] == "short" and multi["edits"][1]["old"] == "tiny"
    assert multi["edits"][0]["old"].startswith(ARG_STUB_PREFIX + "arg-2-0-0 (edits.0.old)")
    assert multi["edits"][1]["new"].startswith(ARG_STUB_PREFIX + "arg-2-0-1 (edits.1.new)")
    as_dict = session.messages[4]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(as_dict, dict) and as_dict["content"].startswith(ARG_STUB_PREFIX)
    for i in (6, 8, 10):  # invalid JSON and the two newest calls are untouched
        assert session.messages[i] == originals[i]
    tool = recall_tool(Archive.for_session(session.path))
    assert tool.run(None, {"id": "arg-2-0-0"}).output == edits[0]["old"]
    assert tool.run(None, {"id": "arg-2-0-1"}).output == edits[1]["new"]
    assert tool.run(None, {"id": "arg-4-0-0"}).output == calls[1]["arguments"]["content"]
    assert "arg-4-0-0" in tool.run(None, {"id": "arg-9-9-9"}).output  # listed as known
    assert not tool.run(None, {"id": "arg-2-0-0", "offset": -1}).ok
    assert event.tokens_after < event.tokens_before
    assert compact(session) is None  # nothing left to archive
    assert Session.load(session.path).messages == session.messages
