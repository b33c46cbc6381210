"""Expert parallelism (2 gloo ranks) and TP=2 × EP=2 (4 ranks) against the single process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from workers import ep_rank, reference_logits

from model.launch import spawn
from model.parallel import ParallelLayout, local_experts, token_slice

ATOL, RTOL = 1e-4, 1e-4
PROMPT = [0, 5, 17, 99, 123, 4000, 77, 12, 9, 31000, 64, 8, 2048, 15, 3, 77, 5, 90, 10, 11]
DECODE = [42, 7, 1000, 3]


def _spawn(layout: ParallelLayout, ckpt: Path, cases: dict, tmp: Path) -> list[dict]:
    spawn(ep_rank, layout.world, (layout, ckpt, cases, tmp), timeout_s=150)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(layout.world)]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def test_slices_and_expert_ownership():
    assert [token_slice(5, 2, i) for i in range(2)] == [slice(0, 3), slice(3, 5)]
    assert token_slice(1, 2, 1) == slice(1, 1)  # an empty slice: that rank sends no tokens
    assert list(local_experts(1, 4, 8)) == [2, 3]
    with pytest.raises(ValueError, match="divide"):
        ParallelLayout(tp=3).check(n_heads=4, o_groups=2, n_experts=8)


def test_ep2_matches_one_rank(toy_ckpt, tmp_path):
    cases = {
        "a2a": {"ids": PROMPT, "decode": DECODE, "mode": "a2a"},
        "allreduce": {"ids": PROMPT, "decode": DECODE, "mode": "allreduce"},
        "one_token": {"ids": [0], "decode": [5], "mode": "a2a"},
        "skewed": {"ids": PROMPT, "decode": DECODE[:2], "mode": "a2a", "skew": 4},
        "auto": {"ids": PROMPT * 2, "decode": DECODE[:1], "mode": "auto"},
    }
    ranks = _spawn(ParallelLayout(tp=1, ep=2), toy_ckpt, cases, tmp_path)
    for name, case in cases.items():
        ref = reference_logits(toy_ckpt, case["ids"], case["decode"], case.get("skew", 0))
        for got in ranks:
            _close(got[name]["prefill"], ref["prefill"])
            _close(got[name]["decode"], ref["decode"])
    # all tokens routed to rank 0's experts: rank 1 computed no expert rows at all
    assert all(n == 0 for n in ranks[1]["skewed"]["received_rows"])
    assert any(n > 0 for n in ranks[0]["skewed"]["received_rows"])
    # auto: the last call was one decode token → all-reduce path
    assert set(ranks[0]["auto"]["paths"]) == {"allreduce"}


def test_dp_attention_two_replicas_run_different_sequences(toy_ckpt, tmp_path):
    seqs = [(PROMPT, DECODE[:2]), (PROMPT[:7][::-1], [8, 9])]
    cases = {"dp": {"ids": [], "seq": seqs}}
    ranks = _spawn(ParallelLayout(tp=1, ep=2, dp_attention=True), toy_ckpt, cases, tmp_path)
    for rank, (ids, decode) in enumerate(seqs):
        ref = reference_logits(toy_ckpt, ids, decode)
        _close(ranks[rank]["dp"]["prefill"], ref["prefill"])
        _close(ranks[rank]["dp"]["decode"], ref["decode"])
    assert set(ranks[0]["dp"]["paths"]) == {"a2a"}


def test_tp2_ep2_on_four_ranks_matches_one_rank(toy_ckpt, tmp_path):
    cases = {
        "auto": {"ids": PROMPT, "decode": DECODE[:2], "mode": "auto"},
        "a2a": {"ids": PROMPT[:5], "decode": [7], "mode": "a2a"},
    }
    ranks = _spawn(ParallelLayout(tp=2, ep=2), toy_ckpt, cases, tmp_path)
    for name, case in cases.items():
        ref = reference_logits(toy_ckpt, case["ids"], case["decode"])
        for got in ranks:
            _close(got[name]["prefill"], ref["prefill"])
            _close(got[name]["decode"], ref["decode"])
