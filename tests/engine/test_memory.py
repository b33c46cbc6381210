"""Memory planner: tokens that fit, chunk sizes that shrink with context, clear refusals."""

from __future__ import annotations

import pytest
import torch

from model.cache import index_key_layout, kv_layout, window_capacity
from model.memory import (
    MAX_CONTEXT,
    ContextTooLong,
    cache_bytes_per_token,
    index_key_bytes,
    plan_memory,
)
from model.planner import flash_config
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


def test_native_plan_counts_packed_fp8_kv_rows(toy_lm):
    """Native numerics hold window and compressed KV rows packed: 200 B per row at the toy's
    head_dim 128 / rope 64 (64 e4m3 + 64 bf16 + 1 scale, padded to 8) instead of 128 × 4 B."""
    cfg = toy_lm.config
    assert kv_layout(cfg).row_bytes == 200
    plan = plan_memory(cfg, torch.float32, "cpu", available=64 << 30, numerics="native")
    rows_per_token = 2 / 4 + 2 / 16  # 2 CSA layers, 2 HCA layers
    index_bytes = 2 * 68 / 4          # indexer keys packed FP4: 64 B of codes + 4 scale bytes
    assert plan.bytes_per_token == rows_per_token * 200 + index_bytes
    dequant = plan_memory(cfg, torch.float32, "cpu", available=64 << 30)
    window_rows = cfg.n_layers * window_capacity(cfg.window_size)   # the window's stores
    assert dequant.fixed_bytes - plan.fixed_bytes == window_rows * (128 * 4 - 200)
    bf16 = plan_memory(cfg, torch.bfloat16, "cpu", available=64 << 30, numerics="native")
    assert bf16.bytes_per_token == rows_per_token * 200 + index_bytes  # packed: dtype-free


def test_native_plan_counts_68_byte_indexer_keys():
    """V4-Flash under native numerics: 584 B per KV row, 68 B per indexer key (fact sheet §4:
    21 CSA layers, 20 HCA layers → ≈3,514 B per token of compressed rows and keys)."""
    cfg = flash_config()
    assert index_key_layout(cfg).row_bytes == 68 and index_key_bytes(cfg, 2, "native") == 68
    assert index_key_bytes(cfg, 2) == 256  # dequant: index_head_dim 128 in bf16
    ratios = cfg.compress_ratios[:cfg.n_layers]
    csa, hca = ratios.count(4), sum(1 for r in ratios if r > 4)
    assert (csa, hca) == (21, 20)
    want = csa * (584 + 68) / 4 + hca * 584 / 128
    assert cache_bytes_per_token(cfg, 2, "native") == pytest.approx(want)
    assert cache_bytes_per_token(cfg, 2) - cache_bytes_per_token(cfg, 2, "native") == \
        pytest.approx(csa * (1024 - 584 + 256 - 68) / 4 + hca * (1024 - 584) / 128)


def test_engine_refuses_what_does_not_fit(make_engine):
    engine = make_engine(memory_bytes=32 << 20, prefix_cache=False)
    limit = engine.plan.max_tokens
    with pytest.raises(ContextTooLong, match="shorten the prompt"):
        engine.generate([5] * 10, SamplingParams(max_new_tokens=limit))
