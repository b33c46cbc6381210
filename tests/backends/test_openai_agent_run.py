"""A whole agent run over the OpenAI backend against a scripted loopback server: tool
calls with server ids, tool results sent back under those ids, finish."""

import json

from agent.backends.openai import OpenAIBackend
from agent.events import DoneEvent, ToolResultEvent
from agent.loop import Agent
from agent.session import Session, sessions_dir
from tools.base import ToolContext
from tools.registry import default_tools


def tool_call_stream(call_id: str, name: str, args: dict) -> list:
    text = json.dumps(args)
    head = {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": text[:5]}}]}}]}
    tail = {"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": text[5:]}}]}}]}
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
           "usage": {"prompt_tokens": 50, "completion_tokens": 9}}
    return [{"choices": [{"index": 0, "delta": {"content": f"Calling {name}."}}]}, head, tail, end]


def test_agent_run_over_openai_backend(loopback, make_repo):
    repo = make_repo({"README.md": "hi\n"})
    loopback.queue("/v1/chat/completions",
                   loopback.sse(tool_call_stream("srv-1", "write_file", {"path": "hello.txt", "content": "hello\n"})),
                   loopback.sse(tool_call_stream("srv-2", "finish", {"summary": "wrote hello.txt"})))
    session = Session.create(sessions_dir(repo), repo=str(repo))
    session.add({"role": "system", "content": "sys"})
    agent = Agent(backend=OpenAIBackend(loopback.base_url, model="m", backoff=0.01),
                  tools=default_tools(), ctx=ToolContext(repo=repo), session=session)
    events = list(agent.run("write hello.txt"))
    assert isinstance(events[-1], DoneEvent) and events[-1].finished
    assert (repo / "hello.txt").read_text() == "hello\n"
    result = next(e for e in events if isinstance(e, ToolResultEvent))
    second = [r for r in loopback.requests if r.path == "/v1/chat/completions"][1].body
    sent = second["messages"]
    assert sent[-2]["role"] == "assistant" and sent[-2]["tool_calls"][0]["id"] == "srv-1"
    assert sent[-1] == {"role": "tool", "tool_call_id": "srv-1", "content": result.output}
    assert {t["function"]["name"] for t in second["tools"]} >= {"read_file", "edit_file", "finish"}
