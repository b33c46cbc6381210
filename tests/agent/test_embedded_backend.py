"""The embedded backend on a tiny random checkpoint in the official format."""

import pytest

from agent.backends.base import BackendError, Completion, CompletionRequest, Sampling
from agent.backends.embedded import EmbeddedBackend
from agent.events import TextDelta
from model.toy import write_toy_checkpoint


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    write_toy_checkpoint(out, seed=0, preset="tiny")
    return out


def collect(backend, messages, max_tokens=6):
    pieces = list(backend.stream(CompletionRequest(messages, [], Sampling(max_tokens=max_tokens))))
    assert isinstance(pieces[-1], Completion)
    assert all(isinstance(p, TextDelta) for p in pieces[:-1])
    return pieces[-1]


def test_generates_and_reuses_the_previous_turn(toy):
    backend = EmbeddedBackend(toy, dtype="float32", progress=False)
    first = [{"role": "user", "content": "hello there"}]
    c1 = collect(backend, first)
    assert c1.usage.completion_tokens >= 1 and c1.usage.cached_tokens == 0
    second = first + [{"role": "assistant", "content": c1.raw}, {"role": "user", "content": "again"}]
    c2 = collect(backend, second)
    assert c2.usage.prompt_tokens > c1.usage.prompt_tokens
    # Greedy decoding: the same conversation gives the same reply, reused or cold.
    cold = EmbeddedBackend(toy, dtype="float32", progress=False)
    assert collect(cold, second).raw == c2.raw


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        EmbeddedBackend(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="cannot load"):
        EmbeddedBackend(tmp_path / "empty", progress=False)


def test_prefix_reuse_computes_only_the_new_tokens_and_matches_a_cold_run(toy):
    backend = EmbeddedBackend(toy, dtype="float32", progress=False)
    first = [{"role": "user", "content": "hello"}]
    c1 = collect(backend, first, max_tokens=1)  # the cache then holds exactly the prompt
    second = first + [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "more"}]
    c2 = collect(backend, second, max_tokens=5)
    assert c2.usage.cached_tokens == c1.usage.prompt_tokens > 0
    cold = EmbeddedBackend(toy, dtype="float32", progress=False)
    c3 = collect(cold, second, max_tokens=5)
    assert c3.usage.cached_tokens == 0 and c3.raw == c2.raw
