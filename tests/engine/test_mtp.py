"""MTP speculative decoding: greedy output equals non-speculative greedy output."""

from __future__ import annotations

import pytest
import torch
from engine_support import token_ids

from model.engine import Engine, EngineConfig
from model.generate import load_model
from model.mtp import MTPSpeculator, main_forward, mtp_logits
from model.sampling import SamplingParams


@pytest.fixture(scope="module")
def mtp_engine(toy_ckpt, toy_tokenizer):
    lm = load_model(toy_ckpt, dtype="float32", progress=False, with_mtp=True)
    engine = Engine(lm, EngineConfig(prefix_cache=True), toy_tokenizer)
    engine.speculator = MTPSpeculator(engine)
    return engine


def test_speculative_greedy_equals_plain_greedy(mtp_engine, toy_lm):
    prompt = token_ids(40, seed=60)
    params = SamplingParams(temperature=0.0, max_new_tokens=10, stop_ids=())
    gen = mtp_engine.generate(prompt, params)
    tokens = [e.token_id for e in gen]
    assert tokens == list(toy_lm.generate(prompt, 10, temperature=0.0))
    stepper = mtp_engine.speculator.last
    assert stepper.drafted >= 8 and stepper.forwards < 2 * 10


def test_forced_acceptance_skips_forwards(mtp_engine, monkeypatch):
    """With a draft that is always right (the main model's own argmax), every second token
    costs no forward: the verify path and the rollback path give the same tokens."""
    prompt = token_ids(40, seed=61)
    params = SamplingParams(temperature=0.0, max_new_tokens=12, stop_ids=())
    plain = [e.token_id for e in Engine(mtp_engine.lm, EngineConfig(prefix_cache=False))
             .generate(prompt, params)]
    import model.mtp as mtp

    def oracle(model, hidden, next_ids, start, cache=None):  # noqa: ARG001
        seq = mtp_engine.speculator.last.seq
        cache = mtp.snapshot(seq.cache)
        logits, _ = main_forward(model, [next_ids[-1]], cache)
        return logits

    monkeypatch.setattr(mtp, "mtp_logits", oracle)
    tokens = [e.token_id for e in mtp_engine.generate(prompt, params)]
    assert tokens == plain
    stepper = mtp_engine.speculator.last
    assert stepper.accepted >= 4 and stepper.forwards <= 8


def test_mtp_block_runs(mtp_engine):
    model = mtp_engine.lm.model
    cache = model.new_cache()
    with torch.inference_mode():
        logits, hidden = main_forward(model, token_ids(8, seed=62), cache)
        out = mtp_logits(model, hidden, token_ids(8, seed=63), 0)
    assert out.shape == logits.shape and torch.isfinite(out).all()


def test_mtp_window_cache_equals_one_pass(mtp_engine):
    """The speculator runs the MTP block a few positions at a time through its window cache;
    that equals one pass over all positions (past the window: rows roll out exactly)."""
    from model.cache import LayerCache
    model = mtp_engine.lm.model
    n = model.cfg.window_size * 2 + 5
    with torch.inference_mode():
        _, hidden = main_forward(model, token_ids(n, seed=64), model.new_cache())
        nxt = token_ids(n, seed=65)
        whole = mtp_logits(model, hidden, nxt, 0)
        cache, pieces, at = LayerCache(), [], 0
        for size in (5, 1, 1, model.cfg.window_size, 3, n):
            size = min(size, n - at)
            if size:
                pieces.append(mtp_logits(model, hidden[at:at + size], nxt[at:at + size], at,
                                         cache))
                at += size
    torch.testing.assert_close(torch.cat(pieces), whole, rtol=1e-4, atol=1e-4)
    assert cache.window.shape[1] == model.cfg.window_size - 1


def test_bench_mtp_small_run(capsys):
    import json

    from model.bench_mtp import main
    assert main(["--preset", "tiny", "--prompt", "40", "--new-tokens", "6"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["same_tokens"] is True and result["drafted"] >= 3
    speed = result["speedup_at"]
    assert 0 < speed["0.5"] < speed["0.8"] < speed["0.9"]       # more acceptance, more speed
    assert 0 <= result["break_even_acceptance"] <= 1 and result["measured_speedup"] > 0
    assert main(["--new-tokens", "1"]) == 2
