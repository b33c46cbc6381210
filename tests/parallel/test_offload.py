"""Expert offload with an artificial device budget: same logits as fully resident."""

from __future__ import annotations

import pytest
import torch

from model.bench_offload import bench_offload
from model.generate import load_model
from model.offload import ExpertCache, OffloadTransform, offloaded

PROMPT = [0, 5, 17, 99, 123, 4000, 77, 12, 9, 31000, 64, 8, 2048, 15, 3, 77, 5, 90, 10, 11]
DECODE = [42, 7, 1000, 3, 5, 5, 19]


def _run(lm, ids, decode):
    cache = lm.new_cache()
    return [lm.logits(ids, cache)] + [lm.logits([t], cache) for t in decode]


@pytest.mark.parametrize("host", ["pinned", "mmap"])
def test_offloaded_logits_equal_resident(toy_ckpt, host):
    resident = _run(load_model(toy_ckpt, progress=False), PROMPT, DECODE)
    transform = OffloadTransform(budget_bytes=6_000, host=host)  # ≈ 2 of the 40 experts
    lm = load_model(toy_ckpt, progress=False, transforms=[transform])
    got = _run(lm, PROMPT, DECODE)
    for a, b in zip(resident, got, strict=True):
        assert torch.equal(a, b)  # same tensors, same order of operations: bit-identical
    cache = offloaded(lm.model)
    assert cache is transform.cache and cache.used_bytes <= 6_000
    assert cache.stats.tokens == len(PROMPT) + len(DECODE)
    assert cache.stats.evictions > 0 and 0 < cache.stats.hit_rate < 1
    assert not any(n.endswith("experts.0.w1.weight") for n, _ in lm.model.named_buffers())


def test_hot_profile_is_pinned_and_never_evicted(toy_ckpt):
    transform = OffloadTransform(budget_bytes=8_000, hot={2: [0, 1]})
    lm = load_model(toy_ckpt, progress=False, transforms=[transform])
    _run(lm, PROMPT, DECODE)
    assert {(2, 0), (2, 1)} <= set(transform.cache.resident)
    profile = transform.cache.hot_profile(top=2)
    assert set(profile) == set(range(5)) and all(len(v) == 2 for v in profile.values())


def test_bench_offload_reports_hit_rate_and_bytes_per_token():
    full = bench_offload(budget_fraction=1.0, prompt_tokens=8, decode_tokens=4)
    small = bench_offload(budget_fraction=0.2, prompt_tokens=8, decode_tokens=4)
    for r in (full, small):
        assert r["max_abs_logit_diff"] == 0.0
        assert {"hit_rate", "bytes_moved_per_token", "prefill", "decode"} <= set(r)
    # everything fits: each expert is copied at most once, so decode moves almost nothing
    assert full["decode"]["hit_rate"] > small["decode"]["hit_rate"]
    assert full["decode"]["bytes_moved_per_token"] < small["decode"]["bytes_moved_per_token"]
    assert small["resident_expert_bytes"] <= small["device_budget_bytes"]


def _cache(budget_experts: int) -> ExpertCache:
    cache = ExpertCache(budget_bytes=0, device=torch.device("cpu"), dim=64, inter_dim=32,
                        swiglu_limit=10.0)
    for e in range(4):
        cache.host[(0, e)] = {"w1.weight": torch.zeros(100, dtype=torch.int8)}
    cache.budget_bytes = budget_experts * 100
    return cache


def test_eviction_prefers_frequency_then_recency_and_respects_pins():
    cache = _cache(2)
    for key in [(0, 0), (0, 0), (0, 0), (0, 1)]:
        cache.get(key, protect=set())
    cache.get((0, 2), protect=set())  # evicts expert 1 (used once), not the older expert 0
    assert set(cache.resident) == {(0, 0), (0, 2)}
    cache.pin([(0, 2)])
    cache.get((0, 3), protect=set())
    assert (0, 2) in cache.resident and cache.used_bytes <= 200
    cache.prefetch([(0, 1)])  # never used more than a resident expert: no room is made
    assert (0, 1) not in cache.resident and cache.stats.prefetched == 0
