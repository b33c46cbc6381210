"""Prefix reuse: restored blocks give the logits of a cold run; short and long prefixes hit;
agent turns reuse the previous turn (prompt + reply); the disk cache survives a restart."""

from __future__ import annotations

import torch
from engine_support import token_ids

from model.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=20, stop_ids=())


def _prefill_logits(engine, ids):
    seq, logits = engine.prefill(ids)
    return seq, logits


def test_restored_prefix_equals_cold_run(make_engine, toy_lm):
    engine = make_engine(chunk_tokens=200)
    assert engine.prefix.block_tokens == 128
    first = token_ids(420, seed=10)
    engine.prefill(first)
    assert engine.counters.reused_tokens == 0
    second = first[:400] + token_ids(30, seed=11)
    seq, logits = engine.prefill(second)
    assert seq.cache.length == len(second)
    # 3 full blocks of the shared 400 tokens: 384 reused, the rest recomputed
    stats = engine.generate(second, GREEDY.with_(max_new_tokens=1))
    list(stats)
    assert (stats.stats.reused_tokens, stats.stats.computed_tokens) == (384, 46)
    cold = toy_lm.logits(second)[-1]
    torch.testing.assert_close(logits, cold, rtol=1e-4, atol=1e-4)
    # a continuation of the restored cache decodes like a cold cache
    nxt = token_ids(3, seed=12)
    cold_cache = toy_lm.new_cache()
    toy_lm.logits(second, cold_cache)
    torch.testing.assert_close(engine.forward(seq, nxt), toy_lm.logits(nxt, cold_cache)[-1],
                               rtol=1e-4, atol=1e-4)


def test_short_prefix_hits(make_engine):
    engine = make_engine()
    engine.prefill(token_ids(300, seed=20))
    short = token_ids(300, seed=20)[:140] + token_ids(20, seed=21)
    gen = engine.generate(short, GREEDY.with_(max_new_tokens=1))
    list(gen)
    assert gen.stats.reused_tokens == 128 and gen.stats.computed_tokens == 32
    miss = token_ids(100, seed=22)
    gen = engine.generate(miss, GREEDY.with_(max_new_tokens=1))
    list(gen)
    assert gen.stats.reused_tokens == 0


def test_agent_turn_reuses_prompt_and_reply(make_engine, toy_lm):
    engine = make_engine()
    turn1 = token_ids(240, seed=30)
    gen = engine.generate(turn1, GREEDY)
    reply = [e.token_id for e in gen]
    assert len(reply) == 20
    turn2 = turn1 + reply + token_ids(5, seed=31)
    gen2 = engine.generate(turn2, GREEDY.with_(max_new_tokens=3))
    tokens2 = [e.token_id for e in gen2]
    # the reply crossed the 256 boundary while decoding: that block was stored too
    assert gen2.stats.reused_tokens == 256
    assert gen2.stats.computed_tokens == len(turn2) - 256
    assert tokens2 == list(toy_lm.generate(turn2, 3, temperature=0.0))
    assert engine.counters.reused_tokens == 256


def test_disk_cache_survives_restart(make_engine, toy_lm, tmp_path):
    ids = token_ids(400, seed=40)
    first = make_engine(cache_dir=tmp_path)
    first.prefill(ids)
    assert len(list(tmp_path.rglob("*.pt"))) == 3
    restarted = make_engine(cache_dir=tmp_path)   # empty memory, same disk
    assert not restarted.prefix.blocks
    prompt = ids + token_ids(10, seed=41)
    seq, logits = restarted.prefill(prompt)
    assert restarted.counters.reused_tokens == 384
    torch.testing.assert_close(logits, toy_lm.logits(prompt)[-1], rtol=1e-4, atol=1e-4)
    # another checkpoint fingerprint (other numerics) never sees these blocks
    other = make_engine(cache_dir=tmp_path)
    other.prefix.root = "0" * 32
    other.prefill(prompt)
    assert other.counters.reused_tokens == 0


def test_lru_budget_and_sparse_state(make_engine):
    engine = make_engine(cache_bytes=1, state_every=4)
    engine.prefill(token_ids(600, seed=50))
    assert len(engine.prefix.blocks) == 1        # budget: only the newest block stays
    sparse = make_engine(state_every=2, chunk_tokens=1000)
    sparse.prefill(token_ids(800, seed=51))
    # LRU order after a prefill: deepest block least recent, the root most recent
    states = [b.has_state for b in reversed(sparse.prefix.blocks.values())]
    assert states == [False, True, False, True, False, True]
