"""v4coder serve on 127.0.0.1 with the tiny toy model: the agent's OpenAI backend and the
official ``openai`` client stream through it (usage, cached_tokens, a tool call), tool calls are
grammar-constrained, bad requests get 400, 20 concurrent clients all get well-formed replies
(batched together)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from agent.backends.base import Completion, CompletionRequest, Sampling
from agent.backends.openai import OpenAIBackend
from agent.backends.sse import ChunkAccumulator, iter_chunks
from agent.events import PrefillEvent, TextDelta
from app.serve import start_server

SYSTEM = "You are a careful coding assistant. " * 30   # > 128 tokens: a reusable prefix
TOOLS = [{"type": "function", "function": {
    "name": "read_file", "description": "Read a file",
    "parameters": {"type": "object", "required": ["path"],
                   "properties": {"path": {"type": "string"}}}}}]


@pytest.fixture
def served(make_engine):
    """(base URL, the Server) of a running server over the toy engine."""
    srv = start_server(make_engine(), port=0, model_name="toy", default_max_tokens=4,
                       max_value_tokens=3, max_invokes=1)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    host, port = srv.server_address[:2]
    yield f"http://{host}:{port}/v1", srv
    srv.shutdown()
    thread.join(timeout=30)
    srv.server_close()


@pytest.fixture
def server(served):
    return served[0]


def test_agent_openai_backend_streams_with_usage_and_cache(server):
    backend = OpenAIBackend(server, max_retries=0)
    assert backend.model == "toy"
    request = CompletionRequest(
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}],
        tools=[], sampling=Sampling(temperature=0.0, max_tokens=3, seed=1))
    events = list(backend.stream(request))
    done = events[-1]
    progress = [e for e in events if isinstance(e, PrefillEvent)]   # the server's comments
    assert progress and progress[-1].done == progress[-1].total == done.usage.prompt_tokens
    assert events[:len(progress)] == progress
    assert isinstance(done, Completion) and all(isinstance(e, TextDelta)
                                                for e in events[len(progress):-1])
    assert done.usage.prompt_tokens > 128 and done.usage.completion_tokens <= 3
    assert done.usage.cached_tokens == 0
    again = list(backend.stream(request))[-1]
    assert again.content == done.content                     # greedy, same prompt
    assert again.usage.cached_tokens >= 128                  # the prefix was reused
    assert again.usage.cached_tokens % 128 == 0
    backend.close()


def test_forced_tool_call_is_well_formed(server):
    body = {"model": "toy", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "read setup.py"}], "tools": TOOLS,
            "tool_choice": "required", "temperature": 1.0, "seed": 3, "max_tokens": 200}
    acc = ChunkAccumulator()
    with httpx.stream("POST", f"{server}/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for chunk in iter_chunks(r.iter_lines()):
            if chunk is None:
                acc.done = True
                break
            if not isinstance(chunk, PrefillEvent):
                acc.feed(chunk)
    completion = acc.completion(TOOLS)
    assert acc.done and completion.finish_reason == "tool_calls"
    assert len(completion.tool_calls) == 1
    call = completion.tool_calls[0]
    assert call.name == "read_file" and call.error is None and "path" in call.arguments


def test_bad_requests_get_400(server):
    post = f"{server}/chat/completions"
    r = httpx.post(post, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(post, json={"messages": [{"role": "user", "content": "x"}], "temperature": 9})
    assert r.status_code == 400 and "temperature" in r.json()["error"]["message"]
    r = httpx.post(post, json={"messages": []})
    assert r.status_code == 400
    r = httpx.post(post, json={"messages": [{"role": "user", "content": "x"}],
                               "max_tokens": 10**9})
    assert r.status_code == 400 and "tokens" in r.json()["error"]["message"]
    assert httpx.get(f"{server}/nope").status_code == 404


def test_concurrent_clients_are_batched(served):
    server, srv = served

    def one(i: int) -> dict:
        r = httpx.post(f"{server}/completions", timeout=300,
                       json={"prompt": f"client {i}", "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(one, range(20)))
    for reply in replies:
        assert reply["object"] == "text_completion"
        assert reply["usage"]["completion_tokens"] == 2
        json.dumps(reply)
    stats = httpx.get(f"{server.removesuffix('/v1')}/stats").json()
    assert stats["batching"]["max_batch_seen"] > 1    # they shared forwards
    assert stats["engine"]["completion_tokens"] == 40
    for i in (0, 7, 19):                               # alone, each gets the same greedy text
        assert one(i)["choices"][0]["text"] == replies[i]["choices"][0]["text"]


# -- the official openai client (a real client: what users' own tools would use) -----------------
def _official(base_url: str):
    import openai  # a dev dependency: the real client, not ours
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)


def test_official_openai_client_streams_a_tool_call(server):
    client = _official(server)
    assert [m.id for m in client.models.list()] == ["toy"]
    stream = client.chat.completions.create(
        model="toy", messages=[{"role": "user", "content": "read setup.py"}], tools=TOOLS,
        tool_choice="required", temperature=1.0, seed=3, max_tokens=200, stream=True,
        stream_options={"include_usage": True})
    calls: dict[int, dict] = {}
    finish, usage = None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for frag in choice.delta.tool_calls or []:
                call = calls.setdefault(frag.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = frag.id or call["id"]
                if frag.function is not None:
                    call["name"] += frag.function.name or ""
                    call["arguments"] += frag.function.arguments or ""
    assert finish == "tool_calls" and list(calls) == [0]
    call = calls[0]
    assert call["id"] and call["name"] == "read_file"
    assert isinstance(json.loads(call["arguments"])["path"], str)
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.prompt_tokens_details.cached_tokens == 0
    client.close()


def test_twenty_concurrent_official_clients_get_well_formed_replies(served):
    server, _ = served

    def one(i: int):
        client = _official(server)
        try:
            messages = [{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": f"client {i}"}]
            if i % 2:   # half stream, half do not; a third are offered a tool
                text, finish = "", None
                for chunk in client.chat.completions.create(
                        model="toy", messages=messages, max_tokens=3, temperature=0, stream=True,
                        tools=TOOLS if i % 3 == 0 else None):
                    for choice in chunk.choices:
                        text += choice.delta.content or ""
                        finish = choice.finish_reason or finish
                return finish, text
            reply = client.chat.completions.create(model="toy", messages=messages, max_tokens=3,
                                                   temperature=0)
            return reply.choices[0].finish_reason, reply.choices[0].message.content or ""
        finally:
            client.close()

    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(one, range(20)))
    assert all(finish in ("stop", "length", "tool_calls") for finish, _ in replies)
    stats = httpx.get(f"{server.removesuffix('/v1')}/stats").json()
    assert stats["batching"]["max_batch_seen"] > 1
    assert stats["engine"]["reused_tokens"] >= 128    # the shared system prompt, computed once


def test_a_long_prompt_streams_prefill_progress_comments(make_engine):
    """Each prefill chunk sends an SSE comment: progress for our clients, ignored by others
    (the official client parses the same stream), and bytes on a connection that would
    otherwise wait minutes for a 1M-token prompt."""
    import dataclasses

    engine = make_engine()
    engine.plan = dataclasses.replace(engine.plan, chunk_tokens=64)
    srv = start_server(engine, port=0, model_name="toy", default_max_tokens=2)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        host, port = srv.server_address[:2]
        base = f"http://{host}:{port}/v1"
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
        body = {"model": "toy", "stream": True, "messages": messages, "max_tokens": 2,
                "temperature": 0}
        with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=120) as r:
            lines = list(r.iter_lines())
        comments = [json.loads(line.removeprefix(": prefill "))
                    for line in lines if line.startswith(": prefill ")]
        total = comments[0]["total"]
        assert total > 2 * 64 and [c["done"] for c in comments] == [*range(0, total, 64), total]
        first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
        assert lines.index(": prefill " + json.dumps(comments[-1])) > first_data  # after the role chunk
        client = _official(base)
        stream = client.chat.completions.create(model="toy", messages=messages, max_tokens=2,
                                                temperature=0, stream=True)
        assert sum(1 for chunk in stream for c in chunk.choices if c.finish_reason) == 1
        client.close()
    finally:
        srv.shutdown()
        thread.join(timeout=30)
        srv.server_close()
