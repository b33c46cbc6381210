"""Memory planner: tokens that fit, chunk sizes that shrink with context, clear refusals."""

from __future__ import annotations

import pytest
import torch

from model.memory import MAX_CONTEXT, ContextTooLong, plan_memory
from model.sampling import SamplingParams


def test_plan_counts_compressed_rows(toy_lm):
    cfg = toy_lm.config
    plan = plan_memory(cfg, torch.float32, "cpu", available=64 << 30)
    # tiny: 2 CSA layers (128/4 main + 128/4 indexer) and 2 HCA layers (128/16), fp32
    assert plan.bytes_per_token == (2 * (32 + 32) + 2 * 8) * 4
    assert plan.max_tokens == MAX_CONTEXT            # 1M tokens fit in 64 GiB
    assert plan.chunk_for(0) == 2048
    assert plan.chunk_for(1_000_000) < plan.chunk_for(0)  # long contexts get smaller chunks
    small = plan_memory(cfg, torch.float32, "cpu", available=64 << 20)
    assert 0 < small.max_tokens < 200_000
    with pytest.raises(ContextTooLong, match="fit in"):
        small.check(small.max_tokens, 1)
    small.check(small.max_tokens - 10, 10)
    with pytest.raises(ContextTooLong, match="context is 1,048,576"):
        plan.check(MAX_CONTEXT, 1)


def test_engine_refuses_what_does_not_fit(make_engine):
    engine = make_engine(memory_bytes=32 << 20, prefix_cache=False)
    limit = engine.plan.max_tokens
    with pytest.raises(ContextTooLong, match="shorten the prompt"):
        engine.generate([5] * 10, SamplingParams(max_new_tokens=limit))
