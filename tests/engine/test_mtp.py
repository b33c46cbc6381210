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

    def oracle(model, hidden, next_ids, start):  # noqa: ARG001
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
