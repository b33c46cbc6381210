"""The embedded backend (the engine) on a tiny random checkpoint in the official format."""

import pytest
import torch

from agent.backends.base import BackendError, Completion, CompletionRequest, Sampling
from agent.backends.embedded import EmbeddedBackend
from agent.events import PrefillEvent, TextDelta
from model.toy import write_toy_checkpoint


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model decodes faster on one thread
    out = tmp_path_factory.mktemp("toy")
    write_toy_checkpoint(out, seed=0, preset="tiny")
    yield out
    torch.set_num_threads(before)  # leave the rest of the session as it was


def collect(backend, messages, max_tokens=6):
    pieces = list(backend.stream(CompletionRequest(messages, [], Sampling(max_tokens=max_tokens))))
    assert isinstance(pieces[-1], Completion)
    progress = [p for p in pieces if isinstance(p, PrefillEvent)]
    assert pieces[:len(progress)] == progress and progress[-1].done == progress[-1].total
    assert all(isinstance(p, TextDelta) for p in pieces[len(progress):-1])
    return pieces[-1]


def test_generates_a_completion_with_usage(toy):
    backend = EmbeddedBackend(toy, progress=False)
    c = collect(backend, [{"role": "user", "content": "hello there"}])
    assert 1 <= c.usage.completion_tokens <= 6 and c.usage.cached_tokens == 0
    assert c.usage.prompt_tokens > 3


def test_second_turn_reuses_the_cached_prefix_and_matches_a_cold_run(toy):
    long_text = " ".join(f"word{i}" for i in range(200))  # well over one 128-token block
    first = [{"role": "system", "content": long_text}, {"role": "user", "content": "summarise"}]
    backend = EmbeddedBackend(toy, progress=False)
    c1 = collect(backend, first)
    second = first + [{"role": "assistant", "content": "Sure."}, {"role": "user", "content": "more"}]
    c2 = collect(backend, second)
    assert c2.usage.cached_tokens >= 128
    cold = EmbeddedBackend(toy, progress=False)
    c3 = collect(cold, second)
    assert c3.usage.cached_tokens == 0 and c3.raw == c2.raw
    assert c1.usage.prompt_tokens < c2.usage.prompt_tokens


def test_load_progress_is_reported(toy):
    seen = []
    EmbeddedBackend(toy, progress=False, progress_callback=lambda f, label: seen.append(f))
    assert seen[-1] == 1.0 and len(seen) > 2 and seen == sorted(seen)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        EmbeddedBackend(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="cannot load"):
        EmbeddedBackend(tmp_path / "empty", progress=False)


def test_prefill_progress_streams_before_the_text(toy, monkeypatch, tmp_path):
    import dataclasses

    from agent import loop
    from agent.limits import LoopLimits
    from agent.loop import Agent
    from agent.session import Session
    from tools.base import ToolContext

    backend = EmbeddedBackend(toy, progress=False)
    backend.engine.plan = dataclasses.replace(backend.engine.plan, chunk_tokens=64)
    long_text = " ".join(f"word{i}" for i in range(150))
    messages = [{"role": "system", "content": long_text}, {"role": "user", "content": "go"}]
    pieces = list(backend.stream(CompletionRequest(messages, [], Sampling(max_tokens=3))))
    progress = [p for p in pieces if isinstance(p, PrefillEvent)]
    total = progress[0].total
    assert total > 3 * 64 and [p.done for p in progress] == [*range(0, total, 64), total]
    assert pieces[:len(progress)] == progress and isinstance(pieces[-1], Completion)
    assert "reading the prompt: 100%" in progress[-1].describe()
    # the agent loop passes them on (the TUI's status bar and the headless log show them)
    session = Session.create(tmp_path, repo=".", backend="embedded", model="toy", task="t")
    session.add({"role": "system", "content": long_text})
    agent = Agent(backend=backend, tools=[], session=session, interactive=True,
                  ctx=ToolContext(repo=tmp_path, mode="read-only", headless=True),
                  limits=LoopLimits(max_steps=1), sampling=Sampling(max_tokens=3))
    monkeypatch.setattr(loop, "PREFILL_EVERY_S", 3600.0)   # the loop passes the first and last
    events = [e for e in agent.run("go") if isinstance(e, PrefillEvent)]
    assert len(events) == 2 and events[0].done < events[-1].done == events[-1].total
