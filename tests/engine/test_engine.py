"""Engine: chunked prefill from any start, sampling, stops, streaming, counters."""

from __future__ import annotations

import torch
from engine_support import token_ids

from model.sampling import SamplingParams, generation_defaults, sample_token


def test_chunked_prefill_matches_one_shot(make_engine, toy_lm):
    ids = token_ids(200, seed=1)
    cold = toy_lm.logits(ids)[-1]
    for chunk in (48, 4096):
        engine = make_engine(chunk_tokens=chunk, prefix_cache=False)
        seq, logits = engine.prefill(ids)
        assert seq.cache.length == 200
        torch.testing.assert_close(logits, cold, rtol=1e-4, atol=1e-4)


def test_generation_defaults_and_greedy(make_engine, toy_ckpt, toy_lm):
    defaults = generation_defaults(toy_ckpt)
    assert (defaults.temperature, defaults.top_p, defaults.stop_ids) == (1.0, 1.0, (1,))
    engine = make_engine(prefix_cache=False)
    ids = token_ids(40, seed=2)
    gen = engine.generate(ids, SamplingParams(temperature=0.0, max_new_tokens=5, stop_ids=()))
    events = list(gen)
    assert [e.finish_reason for e in events] == [None] * 4 + ["length"]
    expected = list(toy_lm.generate(ids, 5, temperature=0.0))
    assert gen.tokens == expected
    assert gen.stats.completion_tokens == 5 and gen.stats.prompt_tokens == 40
    assert "".join(e.text for e in events) == engine.decode(expected)


def test_seeded_sampling_is_reproducible_and_top_p_narrows(make_engine):
    engine = make_engine(prefix_cache=False)
    ids = token_ids(30, seed=3)
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=7, max_new_tokens=4, stop_ids=())
    a = engine.generate(ids, params)
    b = engine.generate(ids, params)
    assert list(e.token_id for e in a) == list(e.token_id for e in b)
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    picks = {sample_token(logits, 1.0, 1e-6, gen) for _ in range(20)}
    assert picks == {int(logits.argmax())}


def test_stop_on_eos_and_stop_string(make_engine):
    engine = make_engine(prefix_cache=False)
    ids = token_ids(30, seed=4)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6, stop_ids=())
    tokens = [e.token_id for e in engine.generate(ids, greedy)]
    stop = greedy.with_(stop_ids=(tokens[2],))
    gen = engine.generate(ids, stop)
    events = list(gen)
    assert len(events) == 3 and events[-1].finish_reason == "stop"
    text = engine.decode(tokens[:2])
    gen = engine.generate(ids, greedy.with_(stop_strings=(text,)))
    events = list(gen)
    assert len(events) == 2 and events[-1].finish_reason == "tool_calls"


def test_bad_prompts_are_refused(make_engine):
    import pytest

    from model.engine import EngineError
    engine = make_engine(prefix_cache=False)
    with pytest.raises(EngineError, match="empty"):
        list(engine.generate([], SamplingParams(max_new_tokens=1)))
    with pytest.raises(EngineError, match="vocabulary"):
        list(engine.generate([5, 10**7], SamplingParams(max_new_tokens=1)))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0).validated()


def test_prefill_chunk_near_the_1m_limit(make_engine):
    """Positions up to 1,048,576 run (RoPE/YaRN, block indices); a full 1M prefill is a GPU job."""
    from model.engine import Sequence_
    engine = make_engine(prefix_cache=False)
    seq = Sequence_([0] * 1_048_000, engine.lm.new_cache())
    seq.cache.length = 1_048_000
    logits = engine.forward(seq, token_ids(64, seed=5))
    assert torch.isfinite(logits).all() and seq.cache.length == 1_048_064
    assert engine.plan.max_tokens >= 1_048_576 or engine.plan.available_bytes < 8 << 30


def test_tool_grammar_helper(make_engine):
    engine = make_engine(prefix_cache=False)
    tools = [{"type": "function", "function": {"name": "finish", "parameters": {}}}]
    grammar = engine.tool_grammar(tools, force_open=True)
    params = SamplingParams(temperature=1.0, seed=0, max_new_tokens=60)
    gen = engine.generate(token_ids(8, seed=6), params, constraint=grammar)
    text = "".join(e.text for e in gen)
    assert text.endswith("</｜DSML｜tool_calls>") and 'name="finish"' in text


def test_bench_engine_small_run(capsys):
    from model.bench_engine import main
    assert main(["--long", "512", "--short", "256", "--new-tokens", "8", "--chunk-tokens",
                 "256", "--preset", "tiny"]) == 0
    import json
    result = json.loads(capsys.readouterr().out)
    assert result["turn2_reused_tokens"] == 512 and result["turn2_computed_tokens"] == 16
    assert result["ttft_ratio"] < 1.0 and result["prefill_ratio"] > 0
    assert 2.0 < result["predicted_ratio"] < 4.0  # 512/256: quadratic parts still small
    assert abs(sum(result["long_flops_split"].values()) - 1.0) < 0.01
    assert result["long_logits_finite"] is True and result["peak_rss_bytes"] > 0
    assert main(["--long", "300", "--short", "150", "--preset", "tiny", "--prefill-only"]) == 0
    only = json.loads(capsys.readouterr().out)
    assert "ttft_ratio" not in only and only["prefill_long_s"] > 0
    assert main(["--long", "10", "--short", "20"]) == 2


def test_warm_up_leaves_prefix_cache_and_counters_alone(make_engine):
    engine = make_engine(chunk_tokens=128)
    engine.prefill(token_ids(300, seed=70))
    blocks, counters = list(engine.prefix.blocks), engine.counters
    before = (counters.requests, counters.prompt_tokens, counters.computed_tokens)
    seconds = engine.warm_up(200)                # a full and a ragged chunk, then decode
    assert seconds > 0
    assert list(engine.prefix.blocks) == blocks
    c = engine.counters
    assert (c.requests, c.prompt_tokens, c.computed_tokens) == before
    _, logits = engine.prefill(token_ids(300, seed=70) + token_ids(5, seed=71))
    assert engine.counters is counters and counters.reused_tokens == 256  # cache still serves


def test_stream_reports_prefill_progress_before_the_first_token(make_engine):
    from model.engine import PrefillProgress, TokenEvent

    engine = make_engine(chunk_tokens=64)
    ids = token_ids(300, seed=11)     # 300 tokens in chunks of 64: 5 forwards
    greedy = SamplingParams(temperature=0.0, max_new_tokens=2, stop_ids=())
    gen = engine.generate(ids, greedy)
    events = list(gen.stream())
    progress = [e for e in events if isinstance(e, PrefillProgress)]
    assert [p.done for p in progress] == [0, 64, 128, 192, 256, 300]
    assert all(p.total == 300 and p.reused == 0 for p in progress)
    first_token = next(i for i, e in enumerate(events) if isinstance(e, TokenEvent))
    assert all(isinstance(e, PrefillProgress) for e in events[:first_token])
    assert gen.tokens == [e.token_id for e in events if isinstance(e, TokenEvent)]
    # the next turn restores the cached prefix first: its first report says so
    again = engine.generate(ids + gen.tokens + token_ids(20, seed=12), greedy)
    first, *rest = again.stream()
    assert isinstance(first, PrefillProgress) and first.reused == first.done >= 256
    assert again.stats.reused_tokens == first.reused
    assert sum(isinstance(e, TokenEvent) for e in rest) == 2
    # plain iteration yields the tokens only
    assert all(isinstance(e, TokenEvent) for e in engine.generate(ids, greedy))
