"""The prefix cache's disk tier stays under its byte budget, least recently used first, and a
restarted engine still reuses the prefix it used last."""

from __future__ import annotations

import os

import torch
from engine_support import token_ids

from model.prefix_disk import DiskBlocks


def _payload(n: int) -> dict:
    return {"rows": torch.arange(n, dtype=torch.float32)}


def _size(tmp_path) -> int:
    return sum(p.stat().st_size for p in tmp_path.glob("*.pt"))


def test_oldest_blocks_go_first_and_a_load_counts_as_use(tmp_path):
    one = DiskBlocks(tmp_path, budget_bytes=1 << 40)
    one.save("a", _payload(1000))
    size = _size(tmp_path)
    disk = DiskBlocks(tmp_path, budget_bytes=3 * size + size // 2)
    for key in "bc":
        disk.save(key, _payload(1000))
    assert disk.load("a") is not None            # a is now the most recent
    disk.save("d", _payload(1000))               # over budget: b (least recent) goes
    assert sorted(p.stem for p in tmp_path.glob("*.pt")) == ["a", "c", "d"]
    assert disk.used_bytes == _size(tmp_path) <= disk.budget_bytes
    assert disk.load("b") is None


def test_a_restart_keeps_the_order_and_applies_a_smaller_budget(tmp_path):
    disk = DiskBlocks(tmp_path, budget_bytes=1 << 40)
    for key in "abcd":
        disk.save(key, _payload(500))
    disk.touch(["b"])                            # b newest, then d, c, a
    size = _size(tmp_path) // 4
    smaller = DiskBlocks(tmp_path, budget_bytes=2 * size)
    assert list(smaller.files) == ["d", "b"]
    assert sorted(p.stem for p in tmp_path.glob("*.pt")) == ["b", "d"]


def test_a_torn_file_is_a_miss_and_is_forgotten(tmp_path):
    disk = DiskBlocks(tmp_path, budget_bytes=1 << 40)
    disk.save("a", _payload(100))
    with open(disk.path("a"), "r+b") as f:
        f.truncate(10)
    assert disk.load("a") is None
    assert "a" not in disk.files and disk.used_bytes == 0


def test_engine_disk_cache_respects_its_budget_across_restarts(make_engine, toy_lm, tmp_path):
    first = make_engine(cache_dir=tmp_path)
    first.prefill(token_ids(400, seed=60))
    block_bytes = max(p.stat().st_size for p in tmp_path.rglob("*.pt"))
    budget = 4 * block_bytes
    engine = make_engine(cache_dir=tmp_path, cache_dir_bytes=budget)
    for seed in (61, 62, 63):                    # three other 3-block prefixes
        engine.prefill(token_ids(400, seed=seed))
        assert sum(p.stat().st_size for p in tmp_path.rglob("*.pt")) <= budget
    last = token_ids(400, seed=63)
    restarted = make_engine(cache_dir=tmp_path, cache_dir_bytes=budget)
    prompt = last + token_ids(10, seed=64)
    _, logits = restarted.prefill(prompt)
    assert restarted.counters.reused_tokens == 384   # the newest prefix survived whole
    torch.testing.assert_close(logits, toy_lm.logits(prompt)[-1], rtol=1e-4, atol=1e-4)
    assert not os.listdir(tmp_path) or all(p.suffix == ".pt" for p in tmp_path.rglob("*.*"))
