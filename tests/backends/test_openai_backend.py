"""OpenAIBackend against a real HTTP server on 127.0.0.1 (see conftest.py)."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from agent.backends.base import BackendError, Completion, CompletionRequest, Sampling
from agent.backends.openai import OpenAIBackend
from agent.backends.sse import iter_chunks, iter_sse_data
from agent.events import TextDelta

CHAT = "/v1/chat/completions"
MODELS = "/v1/models"

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "start_line": {"type": "integer"}},
                "required": ["path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the repository.",
            "parameters": {
                "type": "object",
                "properties": {"pattern": {"type": "string"}},
                "required": ["pattern"],
            },
        },
    },
]


def chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [choice], **extra}


def text_chunks(*pieces: str, finish: str = "stop") -> list[dict[str, Any]]:
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": p}) for p in pieces]
    return chunks + [chunk(finish=finish)]


def call_frag(
    index: int, args: str, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    fn: dict[str, Any] = {"arguments": args}
    if name:
        fn["name"] = name
    frag: dict[str, Any] = {"index": index, "function": fn}
    if call_id:
        frag["id"] = call_id
        frag["type"] = "function"
    return chunk({"tool_calls": [frag]})


def request(tools: list[dict[str, Any]] | None = None, **kw: Any) -> CompletionRequest:
    messages = [
        {"role": "system", "content": "You are v4coder."},
        {"role": "user", "content": "hi"},
    ]
    return CompletionRequest(messages=messages, tools=TOOLS if tools is None else tools, **kw)


def backend(server: Any, **kw: Any) -> OpenAIBackend:
    kw.setdefault("model", "v4-flash")
    kw.setdefault("backoff", 0.001)
    kw.setdefault("timeout", 5.0)
    return OpenAIBackend(server.base_url, **kw)


def run(
    b: OpenAIBackend, req: CompletionRequest | None = None
) -> tuple[list[TextDelta], Completion]:
    events = list(b.stream(req or request()))
    assert isinstance(events[-1], Completion)
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    return events[:-1], events[-1]  # type: ignore[return-value]


def texts(deltas: list[TextDelta], channel: str = "text") -> str:
    return "".join(d.text for d in deltas if d.channel == channel)


# -- streaming ----------------------------------------------------------------------------


def test_streams_text_and_sends_openai_request(loopback: Any) -> None:
    loopback.queue(CHAT, loopback.sse(text_chunks("Hel", "lo ", "world")))
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q", "_step": 3},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "think",
            "tool_calls": [
                {"id": "a", "function": {"name": "search", "arguments": {"pattern": "x"}}}
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": "found"},
    ]
    req = CompletionRequest(
        messages, TOOLS, Sampling(temperature=0.3, top_p=0.9, max_tokens=77, seed=5)
    )
    with backend(loopback) as b:
        deltas, done = run(b, req)
    assert [d.text for d in deltas] == ["Hel", "lo ", "world"]
    assert done.content == "Hello world" and done.tool_calls == [] and done.finish_reason == "stop"
    sent = loopback.requests[0]
    assert sent.method == "POST" and sent.path == CHAT
    body = sent.body
    assert body["model"] == "v4-flash" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (
        0.3,
        0.9,
        77,
        5,
    )
    assert body["chat_template_kwargs"] == {"thinking": False}
    assert body["tools"] == TOOLS
    assert "_step" not in body["messages"][1]
    assistant = body["messages"][2]
    assert assistant["reasoning_content"] == "think"
    assert assistant["tool_calls"][0]["function"]["arguments"] == '{"pattern": "x"}'
    assert assistant["tool_calls"][0]["type"] == "function"
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "a", "content": "found"}
    assert "authorization" not in sent.headers or sent.headers["authorization"].startswith(
        "Bearer "
    )


def test_no_tools_and_no_seed_are_left_out(loopback: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("V4CODER_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    loopback.queue(CHAT, loopback.sse(text_chunks("ok")))
    with backend(loopback) as b:
        run(b, request(tools=[]))
    body = loopback.requests[0].body
    assert "tools" not in body and "seed" not in body
    assert "authorization" not in loopback.requests[0].headers


def test_tool_calls_split_across_chunks(loopback: Any) -> None:
    chunks = [
        chunk({"role": "assistant", "content": "Let me look."}),
        call_frag(0, '{"pa', call_id="call_A", name="read_file"),
        call_frag(0, 'th": "src/ma'),
        call_frag(1, "", call_id="call_B", name="search"),
        call_frag(0, 'in.py", "start_'),
        call_frag(1, '{"pattern": '),
        call_frag(0, 'line": 10}'),
        call_frag(1, '"def main"}'),
        chunk(finish="tool_calls"),
    ]
    loopback.queue(CHAT, loopback.sse(chunks))
    with backend(loopback) as b:
        deltas, done = run(b)
    assert texts(deltas) == "Let me look."
    assert done.finish_reason == "tool_calls" and not done.has_errors
    first, second = done.tool_calls
    assert (first.id, first.name, first.arguments) == (
        "call_A",
        "read_file",
        {"path": "src/main.py", "start_line": 10},
    )
    assert first.raw_arguments == '{"path": "src/main.py", "start_line": 10}'
    assert (second.id, second.name, second.arguments) == (
        "call_B",
        "search",
        {"pattern": "def main"},
    )


def test_reasoning_deltas_and_thinking_flag(loopback: Any) -> None:
    chunks = [
        chunk({"role": "assistant", "reasoning_content": "First, "}),
        chunk({"reasoning": "think."}),  # the other spelling some servers use
        chunk({"content": "Answer."}),
        chunk(finish="stop"),
    ]
    loopback.queue(CHAT, loopback.sse(chunks))
    with backend(loopback) as b:
        deltas, done = run(b, request(thinking=True))
    assert [(d.channel, d.text) for d in deltas] == [
        ("reasoning", "First, "),
        ("reasoning", "think."),
        ("text", "Answer."),
    ]
    assert done.reasoning == "First, think." and done.content == "Answer."
    assert loopback.requests[0].body["chat_template_kwargs"] == {"thinking": True}


def test_usage_with_cached_tokens(loopback: Any) -> None:
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 34,
        "total_tokens": 1234,
        "prompt_tokens_details": {"cached_tokens": 1024},
    }
    chunks = text_chunks("hi") + [{"id": "c1", "choices": [], "usage": usage}]
    loopback.queue(CHAT, loopback.sse(chunks))
    with backend(loopback) as b:
        _, done = run(b)
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.cached_tokens) == (
        1200,
        34,
        1024,
    )


def test_sse_comments_multiline_events_and_crlf(loopback: Any) -> None:
    raw = [
        ": keep-alive\r\n\r\n",
        'event: message\r\nid: 1\r\ndata: {"choices": [{"index": 0,\r\ndata:  "delta": {"content": "a"}}]}\r\n\r\n',
        'data:{"choices": [{"index": 0, "delta": {"content": "b"}}]}\r\n\r\n',
        'data: {"choices": [{"index": 0, "delta": {"content": "c"}}]}\n'
        'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}\n\n',
    ]
    loopback.queue(CHAT, loopback.sse(raw, newline="\r\n"))
    with backend(loopback) as b:
        deltas, done = run(b)
    assert texts(deltas) == "abc" and done.finish_reason == "length"


def test_plain_json_body_when_server_ignores_stream(loopback: Any) -> None:
    body = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Sure.",
                    "reasoning_content": "hmm",
                    "tool_calls": [
                        {
                            "id": "x1",
                            "type": "function",
                            "function": {"name": "search", "arguments": '{"pattern": "a"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2},
    }
    loopback.queue(CHAT, loopback.json(body))
    with backend(loopback) as b:
        deltas, done = run(b)
    assert texts(deltas) == "Sure." and texts(deltas, "reasoning") == "hmm"
    assert done.tool_calls[0].arguments == {"pattern": "a"} and not done.has_errors
    assert done.usage.prompt_tokens == 5


# -- tool-call validation -----------------------------------------------------------------


def test_bad_json_arguments_become_a_call_error(loopback: Any) -> None:
    chunks = [
        call_frag(0, '{"path": "a.py"', call_id="c", name="read_file"),
        chunk(finish="tool_calls"),
    ]
    loopback.queue(CHAT, loopback.sse(chunks))
    with backend(loopback) as b:
        _, done = run(b)
    (call,) = done.tool_calls
    assert call.error is not None and call.error.startswith("arguments are not valid JSON: ")
    assert call.raw_arguments == '{"path": "a.py"' and call.arguments == {} and done.has_errors


def test_unknown_tool_and_schema_errors(loopback: Any) -> None:
    chunks = [
        call_frag(0, '{"cmd": "ls"}', call_id="c1", name="shell"),
        call_frag(1, '{"start_line": 3}', call_id="c2", name="read_file"),
        call_frag(2, '{"path": 7}', call_id="c3", name="read_file"),
        chunk(finish="tool_calls"),
    ]
    loopback.queue(CHAT, loopback.sse(chunks))
    with backend(loopback) as b:
        _, done = run(b)
    unknown, missing, wrong_type = done.tool_calls
    assert unknown.error is not None and "unknown tool 'shell'" in unknown.error
    assert missing.error is not None and "missing required parameter 'path'" in missing.error
    assert wrong_type.error is not None and "must be of type string" in wrong_type.error


def test_missing_call_id_is_generated(loopback: Any) -> None:
    chunks = [call_frag(0, '{"pattern": "x"}', name="search"), chunk(finish="tool_calls")]
    loopback.queue(CHAT, loopback.sse(chunks))
    with backend(loopback) as b:
        _, done = run(b)
    assert done.tool_calls[0].id.startswith("call_") and not done.has_errors


# -- retries and failures -----------------------------------------------------------------


def test_500_then_success(loopback: Any) -> None:
    loopback.queue(CHAT, loopback.json({"error": {"message": "overloaded"}}, status=500))
    loopback.queue(CHAT, loopback.sse(text_chunks("fine")))
    with backend(loopback) as b:
        deltas, done = run(b)
    assert done.content == "fine" and texts(deltas) == "fine"
    assert loopback.count(CHAT) == 2


def test_429_with_retry_after_then_success(loopback: Any) -> None:
    loopback.queue(
        CHAT, loopback.json({"error": "slow down"}, status=429, headers={"Retry-After": "0"})
    )
    loopback.queue(CHAT, loopback.sse(text_chunks("ok")))
    start = time.monotonic()
    with backend(loopback, backoff=10.0) as b:  # Retry-After: 0 beats the 10 s backoff
        _, done = run(b)
    assert done.content == "ok" and loopback.count(CHAT) == 2
    assert time.monotonic() - start < 3


def test_persistent_500_gives_up_with_one_line(loopback: Any) -> None:
    for _ in range(3):
        loopback.queue(
            CHAT, loopback.json({"error": {"message": "CUDA out of\nmemory"}}, status=503)
        )
    with backend(loopback, max_retries=2) as b, pytest.raises(BackendError) as info:
        run(b)
    message = str(info.value)
    assert "HTTP 503" in message and "CUDA out of memory" in message and "3 tries" in message
    assert "\n" not in message and loopback.count(CHAT) == 3


def test_read_timeout_retries_then_fails_fast(loopback: Any) -> None:
    for _ in range(3):
        loopback.queue(CHAT, loopback.stall(3.0))
    start = time.monotonic()
    with backend(loopback, timeout=0.2, max_retries=2) as b, pytest.raises(BackendError) as info:
        run(b)
    assert "timed out after 0.2s" in str(info.value)
    assert loopback.count(CHAT) == 3
    assert time.monotonic() - start < 2.5


def test_dropped_stream_is_retried_without_repeating_text(loopback: Any) -> None:
    full = text_chunks("Hel", "lo ", "world")
    loopback.queue(CHAT, loopback.sse(full[:3], done=False, drop=True))  # "Hel", "lo "
    loopback.queue(CHAT, loopback.sse(full))
    with backend(loopback) as b:
        deltas, done = run(b)
    assert texts(deltas) == "Hello world" and done.content == "Hello world"
    assert loopback.count(CHAT) == 2


def test_stream_closed_before_done_is_retried(loopback: Any) -> None:
    full = text_chunks("abc", "def")
    # Connection: close framing: the body just ends, cleanly, without finish_reason/[DONE].
    loopback.queue(
        CHAT, loopback.sse([*full[:2], chunk({"content": "d"})], done=False, framing="eof")
    )
    loopback.queue(CHAT, loopback.sse(full, framing="eof"))
    with backend(loopback) as b:
        deltas, done = run(b)
    assert [d.text for d in deltas] == ["abc", "d", "ef"]
    assert done.content == "abcdef" and loopback.count(CHAT) == 2


def test_drop_after_finish_reason_keeps_the_reply(loopback: Any) -> None:
    loopback.queue(CHAT, loopback.sse(text_chunks("done"), done=False, drop=True))
    with backend(loopback) as b:
        _, done = run(b)
    assert done.content == "done" and loopback.count(CHAT) == 1


def test_400_is_not_retried(loopback: Any) -> None:
    msg = {
        "object": "error",
        "message": "This model's maximum context length is 8192 tokens.",
        "code": 400,
    }
    loopback.queue(CHAT, loopback.json(msg, status=400))
    with backend(loopback) as b, pytest.raises(BackendError) as info:
        run(b)
    assert "HTTP 400" in str(info.value) and "maximum context length is 8192" in str(info.value)
    assert loopback.count(CHAT) == 1


def test_error_inside_the_stream(loopback: Any) -> None:
    loopback.queue(
        CHAT, loopback.sse([chunk({"content": "x"}), {"error": {"message": "engine died"}}])
    )
    with backend(loopback) as b, pytest.raises(BackendError, match="engine died"):
        run(b)
    assert loopback.count(CHAT) == 1


def test_unreachable_server(loopback: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with OpenAIBackend(f"http://127.0.0.1:{port}/v1", model="m", max_retries=1, backoff=0.001) as b:
        with pytest.raises(BackendError) as info:
            run(b)
    assert str(info.value).startswith(f"server at http://127.0.0.1:{port}/v1 unreachable: ")
    assert time.monotonic() - start < 3


# -- model discovery and auth -------------------------------------------------------------


def test_model_discovery_asks_once(loopback: Any) -> None:
    models = {"object": "list", "data": [{"id": "deepseek-ai/DeepSeek-V4-Flash"}, {"id": "other"}]}
    loopback.queue(MODELS, loopback.json(models))
    loopback.queue(CHAT, loopback.sse(text_chunks("a")), loopback.sse(text_chunks("b")))
    with backend(loopback, model=None) as b:
        run(b)
        run(b)
        assert b.model == "deepseek-ai/DeepSeek-V4-Flash" and b.name == "openai"
    assert loopback.count(MODELS) == 1
    assert [r.body["model"] for r in loopback.requests if r.path == CHAT] == [
        "deepseek-ai/DeepSeek-V4-Flash"
    ] * 2


def test_model_discovery_empty_list(loopback: Any) -> None:
    loopback.queue(MODELS, loopback.json({"data": []}))
    with backend(loopback, model=None) as b, pytest.raises(BackendError, match="lists no models"):
        run(b)


def test_authorization_header(loopback: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai-env")
    monkeypatch.setenv("V4CODER_API_KEY", "from-v4-env")
    loopback.queue(CHAT, *(loopback.sse(text_chunks("x")) for _ in range(2)))
    with backend(loopback, api_key="sk-arg") as b:
        run(b)
    with backend(loopback) as b:
        run(b)
    assert [r.headers["authorization"] for r in loopback.requests] == [
        "Bearer sk-arg",
        "Bearer from-v4-env",
    ]


def test_401_mentions_the_key(loopback: Any) -> None:
    loopback.queue(CHAT, loopback.json({"error": {"message": "invalid api key"}}, status=401))
    with backend(loopback) as b, pytest.raises(BackendError, match="invalid api key.*API key"):
        run(b)


# -- SSE parsing units --------------------------------------------------------------------


def test_iter_sse_data_unit() -> None:
    lines = [": c", "data: a", "data:b", "", "event: x", "", "data: [DONE]", "", "data: tail"]
    assert list(iter_sse_data(lines)) == ["a\nb", "[DONE]", "tail"]
    assert list(iter_chunks(['data: {"a": 1}', 'data: {"b": 2}', "data: [DONE]"])) == [
        {"a": 1},
        {"b": 2},
        None,
    ]


def test_prefill_progress_comments_become_events() -> None:
    from agent.events import PrefillEvent

    lines = [': prefill {"done": 64, "total": 300, "cached": 0}', ": keep-alive",
             ": prefill {not json", ': prefill {"done": 300}', "data: {\"a\": 1}", "",
             ': prefill {"done": 300, "total": 300, "cached": 128}', "data: [DONE]"]
    assert list(iter_chunks(lines)) == [PrefillEvent(64, 300, 0), {"a": 1},
                                        PrefillEvent(300, 300, 128), None]
