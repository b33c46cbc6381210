"""Continuous batching: a ragged forward equals one forward per sequence; the Batcher's
requests give what Engine.generate gives alone, join and leave between steps, respect memory,
and survive a consumer that walks away or a request that fails."""

from __future__ import annotations

import threading

import pytest
import torch
from engine_support import token_ids

from agent.dsml import parse_completion
from model.batcher import Batcher
from model.engine import EngineError
from model.memory import plan_memory
from model.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6, stop_ids=())


def test_ragged_forward_equals_one_forward_per_sequence(toy_lm):
    model = toy_lm.model
    # three sequences at different places: fresh, mid-prompt (past several compressed blocks
    # and the window), and one decode token far in; chunks cross 4- and 16-token blocks
    prompts = [token_ids(37, seed=10), token_ids(150, seed=11), token_ids(90, seed=12)]
    alone, together = [], []
    for caches in (alone, together):
        for p in prompts:
            cache = model.new_cache()
            if len(p) > 37:
                model(torch.tensor([p[:-23 if len(p) > 100 else -1]]), cache)
            caches.append(cache)
    news = [prompts[0], prompts[1][-23:], prompts[2][-1:]]
    expected = [model(torch.tensor([ids]), c, last_only=True)[0] for ids, c in zip(news, alone, strict=True)]
    got = model.forward_batch(news, together)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=1e-4)
    assert [c.length for c in together] == [37, 150, 90]
    # the caches advanced identically: the next token of each agrees too
    nxt = [[5], [6], [7]]
    expected = [model(torch.tensor([ids]), c, last_only=True)[0] for ids, c in zip(nxt, alone, strict=True)]
    torch.testing.assert_close(model.forward_batch(nxt, together), torch.stack(expected),
                               rtol=1e-4, atol=1e-4)
    # two decode tokens (attending together) beside a chunk of the third
    mixed = [[8], [9], [10, 11, 12, 13, 14]]
    expected = [model(torch.tensor([ids]), c, last_only=True)[0]
                for ids, c in zip(mixed, alone, strict=True)]
    torch.testing.assert_close(model.forward_batch(mixed, together), torch.stack(expected),
                               rtol=1e-4, atol=1e-4)
    assert [c.length for c in together] == [39, 152, 96]


def test_ragged_forward_refuses_an_empty_sequence(toy_lm):
    model = toy_lm.model
    with pytest.raises(ValueError, match="at least one token"):
        model.forward_batch([[3], []], [model.new_cache(), model.new_cache()])


def _run_concurrently(batcher, prompts, params_list):
    gens = [batcher.submit(p, params) for p, params in zip(prompts, params_list, strict=True)]
    results = [None] * len(gens)

    def consume(i):
        results[i] = [e.token_id for e in gens[i]]

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(gens))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results, gens


def test_batched_requests_match_one_at_a_time(make_engine):
    prompts = [token_ids(n, seed=20 + n) for n in (12, 140, 40, 300, 75)]
    params = [GREEDY, GREEDY.with_(max_new_tokens=3),
              SamplingParams(temperature=0.8, top_p=0.9, seed=5, max_new_tokens=8, stop_ids=()),
              GREEDY.with_(max_new_tokens=9), GREEDY]
    alone = make_engine(prefix_cache=False, chunk_tokens=64)
    expected = [list(alone.generate(p, sp)) for p, sp in zip(prompts, params, strict=True)]
    engine = make_engine(prefix_cache=False, chunk_tokens=64)
    batcher = Batcher(engine, max_batch=8)
    try:
        got, gens = _run_concurrently(batcher, prompts, params)
    finally:
        batcher.close()
    assert got == [[e.token_id for e in events] for events in expected]
    for gen, events, p in zip(gens, expected, prompts, strict=True):
        assert gen.stats.finish_reason == events[-1].finish_reason == "length"
        assert gen.stats.prompt_tokens == len(p) and gen.stats.completion_tokens == len(events)
    c = batcher.counters
    assert c.max_batch_seen >= 3               # requests really shared forwards
    assert c.decode_tokens == sum(len(e) for e in expected) - len(prompts)
    assert c.prefill_tokens == sum(map(len, prompts))
    assert c.steps < c.decode_tokens + sum(-(-len(p) // 64) for p in prompts)
    assert engine.counters.completion_tokens == sum(len(e) for e in expected)


def test_short_prompts_arriving_together_prefill_together(make_engine):
    prompts = [token_ids(20, seed=80 + i) for i in range(12)]
    params = GREEDY.with_(max_new_tokens=3)
    alone = make_engine(prefix_cache=False, chunk_tokens=64)
    expected = [[e.token_id for e in alone.generate(p, params)] for p in prompts]
    engine = make_engine(prefix_cache=False, chunk_tokens=64)
    batcher = Batcher(engine)
    try:
        got, _ = _run_concurrently(batcher, prompts, [params] * 12)
    finally:
        batcher.close()
    assert got == expected
    # a 64-token budget holds 3 of these prompts: ≈ 4 prefill steps (one more if the scheduler
    # wakes after the first submission) + 2 decode steps, against 12 + 2 one prompt per step
    assert batcher.counters.steps <= 8 and batcher.counters.max_batch_seen >= 9


def test_requests_sharing_a_prefix_compute_it_once(make_engine):
    """Sent together, before anything is cached: the first computes the shared prefix, the
    others reuse its blocks (each matches the prefix cache only when its prefill starts)."""
    engine = make_engine(chunk_tokens=64)
    batcher = Batcher(engine)
    try:
        shared = token_ids(300, seed=30)
        gens = [batcher.submit(shared + [7 + i], GREEDY) for i in range(4)]
        for g in gens:
            list(g)
    finally:
        batcher.close()
    assert gens[0].stats.reused_tokens == 0
    assert all(g.stats.reused_tokens >= 256 for g in gens[1:])
    assert engine.counters.computed_tokens <= 301 + 3 * (301 - 256)


def test_a_consumer_that_leaves_does_not_stall_the_rest(make_engine):
    engine = make_engine(prefix_cache=False)
    batcher = Batcher(engine)
    try:
        long = batcher.submit(token_ids(20, seed=40), GREEDY.with_(max_new_tokens=200))
        short = batcher.submit(token_ids(25, seed=41), GREEDY.with_(max_new_tokens=30))
        it = iter(long)
        next(it)
        it.close()                                   # the client went away
        assert len(list(short)) == 30
    finally:
        batcher.close()
    assert long.stats.completion_tokens < 30         # dropped at once, not run to the end


def test_memory_admission_waits_instead_of_overcommitting(make_engine, toy_lm):
    cfg = toy_lm.config
    probe = plan_memory(cfg, torch.float32, available=1 << 40)
    # room for one 200-token request beside the fixed costs, not two
    need_one = probe.fixed_bytes + probe.bytes_per_token * 200 + probe.activation_bytes(64, 200)
    available = int((need_one + probe.sequence_bytes // 2) / 0.9)
    engine = make_engine(prefix_cache=False, memory_bytes=available)
    assert engine.plan.fits_batch([200]) and not engine.plan.fits_batch([200, 200])
    batcher = Batcher(engine)
    try:
        got, _ = _run_concurrently(batcher, [token_ids(190, seed=50), token_ids(190, seed=51)],
                                   [GREEDY.with_(max_new_tokens=10)] * 2)
    finally:
        batcher.close()
    assert [len(g) for g in got] == [10, 10]
    assert batcher.counters.max_batch_seen == 1      # the second waited for the first


def test_bad_requests_fail_alone(make_engine):
    engine = make_engine(prefix_cache=False)
    batcher = Batcher(engine)
    try:
        with pytest.raises(ValueError, match="tokens"):
            batcher.submit(token_ids(10), GREEDY.with_(max_new_tokens=2_000_000))
        bad = batcher.submit([3, 10**9], GREEDY)
        good = batcher.submit(token_ids(15, seed=60), GREEDY)
        with pytest.raises(EngineError, match="vocabulary"):
            list(bad)
        assert len(list(good)) == 6
    finally:
        batcher.close()
    with pytest.raises(EngineError, match="shutting down"):
        batcher.submit(token_ids(5), GREEDY)


def test_grammar_constrained_requests_batch_together(make_engine):
    engine = make_engine(prefix_cache=False)
    tools = [{"type": "function", "function": {
        "name": "read_file", "parameters": {"type": "object", "properties": {
            "path": {"type": "string"}}, "required": ["path"]}}}]
    prompts = [token_ids(30, seed=70 + i) for i in range(2)]
    params = SamplingParams(temperature=1.0, seed=3, max_new_tokens=150, stop_ids=())
    def grammar():
        return engine.tool_grammar(tools, force_open=True, max_value_tokens=2)

    alone = [engine.decode([e.token_id for e in engine.generate(p, params, grammar())])
             for p in prompts]
    batcher = Batcher(engine)
    try:
        gens = [batcher.submit(p, params, grammar()) for p in prompts]
        got = [engine.decode([e.token_id for e in g]) for g in gens]
    finally:
        batcher.close()
    assert got == alone
    for text in got:   # every one is a well-formed call of the offered tool
        calls = parse_completion(text, tools).tool_calls
        assert calls and all(c.name == "read_file" for c in calls), text


def test_bench_batch_small_run():
    from model.bench_batch import bench_batch
    result = bench_batch(requests=3, prompt_tokens=24, new_tokens=3, preset="tiny")
    assert result["same_tokens"] is True                 # batched = one at a time, greedy
    assert result["max_batch_seen"] == 3
    assert result["throughput_ratio"] > 0 and result["step_ratio"] > 0
    assert set(result) >= {"decode_step_1_s", "decode_step_3_s", "batched_tokens_per_s"}
    graphs = result["graphs"]   # the batched run again, decode steps as (emulated) graph pieces
    assert graphs["mode"] == "emulate" and graphs["disabled"] is None
    assert graphs["same_tokens"] is True and graphs["step_speedup_3"] > 0
    overlapped = result["overlapping"]   # and captured with every launch overlapping
    assert overlapped["same_tokens"] is True and overlapped["step_speedup_3"] > 0
