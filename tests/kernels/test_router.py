"""MoE router: the fused Triton kernel (interpreter, fp32) against ``route_reference``, and Gate's
reference path bit-identical to the torch math Gate.forward had before the kernel existed."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from model.config import ModelConfig
from model.kernels import ops
from model.kernels.router import route_reference, route_triton
from model.layers.moe import Gate
from model.toy import preset_config


def _inputs(n, dim, n_exp, topk, vocab=50, seed=0, bf16_weight=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    weight = torch.randn(n_exp, dim, generator=g) * dim**-0.5
    if bf16_weight:
        weight = weight.bfloat16()
    bias = torch.randn(n_exp, generator=g) * 0.1
    ids = torch.randint(0, vocab, (n,), generator=g)
    tid2eid = torch.stack([torch.randperm(n_exp, generator=g)[:topk] for _ in range(vocab)])
    return x, weight, bias, ids, tid2eid


def _assert_tie_free(x, weight, bias, topk, score_func):
    """Guard: the oracle's k-th and (k+1)-th biased scores differ (else top-k is ill-defined)."""
    logits = F.linear(x.float(), weight.float())
    scores = {"softmax": logits.softmax(-1), "sigmoid": logits.sigmoid()}.get(
        score_func, F.softplus(logits).sqrt())
    top = (scores + bias).topk(min(topk + 1, scores.shape[1]), dim=-1).values
    assert (top[:, :-1] - top[:, 1:]).min() > 1e-5


def _check(n, dim, n_exp, topk, score_func, hashed, block_t=None, split=None, seed=0):
    x, weight, bias, ids, tid2eid = _inputs(n, dim, n_exp, topk, seed=seed)
    args = (x, weight, None if hashed else bias, ids, tid2eid if hashed else None, topk,
            score_func, 1.5)
    if not hashed:
        _assert_tie_free(x, weight, bias, topk, score_func)
    got_w, got_i = route_triton(*args, block_t=block_t, split=split)
    want_w, want_i = route_reference(*args)
    assert got_i.dtype == torch.int64 and got_w.dtype == torch.float32
    assert got_i.shape == got_w.shape == (n, topk)
    assert torch.equal(got_i, want_i)
    assert torch.allclose(got_w, want_w, rtol=1e-5, atol=1e-6), (got_w - want_w).abs().max()


@pytest.mark.parametrize("score_func", ["sqrtsoftplus", "sigmoid", "softmax"])
@pytest.mark.parametrize("n", [1, 5, 37])  # split decode pair (< 16 tokens); dot, 37 % 16 != 0
def test_score_routing_matches_reference(score_func, n):
    _check(n, 64, 24, 6, score_func, hashed=False)  # 24 experts: not a power of two


@pytest.mark.parametrize("score_func", ["sqrtsoftplus", "softmax"])
@pytest.mark.parametrize("n", [1, 5])
def test_fused_gemv_decode_matches_reference(score_func, n):
    _check(n, 64, 24, 6, score_func, hashed=False, split=False)


@pytest.mark.parametrize("n,split", [(1, None), (3, False), (20, None), (20, True)])
def test_hash_routing_matches_reference(n, split):
    _check(n, 32, 12, 4, "sqrtsoftplus", hashed=True, split=split)


@pytest.mark.parametrize("n", [3, 17])
def test_top1_matches_reference(n):
    _check(n, 32, 8, 1, "sqrtsoftplus", hashed=False)


def test_dot_tiles_on_few_tokens_and_gemv_on_many():
    _check(7, 48, 20, 6, "sqrtsoftplus", hashed=False, block_t=16)  # one ragged dot tile
    _check(19, 48, 20, 6, "sigmoid", hashed=False, block_t=1)       # GEMV, one token / program
    _check(19, 48, 20, 6, "sigmoid", hashed=False, split=True)      # split pair on many tokens


@pytest.mark.parametrize("hashed", [False, True])
def test_split_decode_over_many_groups_and_steps(monkeypatch, hashed):
    """The one-launch split decode with a small tile: 23 experts in 12 groups of 2 (the last
    half empty) and dim 100 in 4 steps of 32 (the last ragged); programs run in shuffled order
    (interpret_order), so any group may arrive last. Repeated launches give the same answer
    and leave the arrival counts at zero."""
    from model.kernels import launch, router

    monkeypatch.setattr(router, "SPLIT_TILE", 64)
    for seed in range(3):
        _check(3, 100, 23, 5, "sqrtsoftplus", hashed=hashed, split=True, seed=seed)
    x, weight, bias, ids, tid2eid = _inputs(4, 100, 23, 5, seed=7)
    args = (x, weight, None if hashed else bias, ids, tid2eid if hashed else None, 5,
            "sigmoid", 1.0)
    first = route_triton(*args, split=True)
    for _ in range(3):
        again = route_triton(*args, split=True)
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    assert not launch.arrivals(4, x.device).any()


@pytest.mark.parametrize("score_func", ["sqrtsoftplus", "sigmoid", "softmax"])
def test_score_functions_are_stable_at_extreme_logits(score_func):
    """softplus written as max(x,0) + log1p(exp(−|x|)): no overflow at +100, no flush to 0 at
    −30 (torch gives ≈ exp(x) > 0); softmax subtracts the row max (exp(100) overflows fp32)."""
    dim, n_exp = 16, 8
    x = torch.zeros(1, dim)
    x[0, 0] = 1.0
    weight = torch.zeros(n_exp, dim)
    weight[:, 0] = torch.tensor([100.0, -30.0, -20.0, 25.0, 0.0, 3.0, -5.0, 10.0])
    bias = torch.zeros(n_exp)
    ids, tid2eid = torch.zeros(1, dtype=torch.long), torch.tensor([[1, 2, 6]])
    cases = [(split, args) for split in (True, False)
             for args in ((x, weight, bias, ids, None, 3, score_func, 1.0),
                          (x, weight, None, ids, tid2eid, 3, score_func, 1.0))]
    for split, args in cases:
        got_w, got_i = route_triton(*args, split=split)
        want_w, want_i = route_reference(*args)
        assert torch.equal(got_i, want_i)
        assert torch.isfinite(got_w).all()
        assert torch.allclose(got_w, want_w, rtol=1e-5, atol=1e-30), (got_w, want_w)
        if score_func == "sqrtsoftplus":
            assert (got_w > 0).all()


def test_ties_come_out_in_ascending_expert_order():
    """The kernel's documented tie rule (torch.topk documents none): lowest expert index first."""
    dim, n_exp = 16, 8
    x = torch.ones(2, dim)
    weight = torch.zeros(n_exp, dim)
    bias = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0, 0.5, 0.9, 0.0])
    ids = torch.zeros(2, dtype=torch.long)
    for split in (True, False):
        weights, indices = route_triton(x, weight, bias, ids, None, 4, "sqrtsoftplus", 1.0,
                                        split=split)
        assert indices.tolist() == [[6, 1, 3, 5]] * 2
        assert torch.allclose(weights, torch.full((2, 4), 0.25))


def test_dispatch_uses_the_kernel_when_forced(monkeypatch):
    x, weight, bias, ids, _ = _inputs(3, 32, 8, 2)
    seen = []
    monkeypatch.setattr(ops._router, "route_triton",
                        lambda *a: seen.append("triton") or route_triton(*a))
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    got = ops.route(x, weight, bias, ids, None, 2, "sigmoid", 2.0)
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")
    want = ops.route(x, weight, bias, ids, None, 2, "sigmoid", 2.0)
    assert seen == ["triton"]
    assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0], rtol=1e-5)


def _old_gate_math(gate, x, input_ids):
    """Gate.forward as it was before ops.route (the oracle, written out again on purpose)."""
    logits = F.linear(x.float(), gate.weight.float())
    if gate.score_func == "softmax":
        scores = logits.softmax(dim=-1)
    elif gate.score_func == "sigmoid":
        scores = logits.sigmoid()
    else:
        scores = F.softplus(logits).sqrt()
    if gate.hash_routed:
        indices = gate.tid2eid[input_ids].long()
    else:
        indices = (scores + gate.bias.float()).topk(gate.topk, dim=-1).indices
    weights = scores.gather(1, indices)
    if gate.score_func != "softmax":
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * gate.route_scale, indices


def _gate(score_func, hashed, dim=32, n_exp=12, topk=3, vocab=40):
    cfg = replace(ModelConfig.from_hf(preset_config("tiny")), n_activated_experts=topk,
                  score_func=score_func, route_scale=2.5, n_routed_experts=n_exp, dim=dim,
                  vocab_size=vocab)
    gate = Gate(cfg, hash_routed=hashed).to_empty(device="cpu")
    x, weight, bias, ids, tid2eid = _inputs(9, dim, n_exp, topk, vocab=vocab, seed=3)
    gate.weight.copy_(weight)
    if hashed:
        gate.tid2eid.copy_(tid2eid)
    else:
        gate.bias.copy_(bias)
    return gate, x.bfloat16(), ids


@pytest.mark.parametrize("score_func,hashed", [("sqrtsoftplus", False), ("sqrtsoftplus", True),
                                               ("sigmoid", False), ("softmax", False)])
def test_gate_reference_path_is_bit_identical_to_old_gate(monkeypatch, score_func, hashed):
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")
    gate, x, ids = _gate(score_func, hashed)
    weights, indices = gate(x, ids)
    want_w, want_i = _old_gate_math(gate, x, ids)
    assert torch.equal(indices, want_i) and torch.equal(weights, want_w)
    assert weights.dtype == torch.float32 and indices.dtype == torch.int64


def test_gate_margins_diagnostics_still_recorded(monkeypatch):
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")
    gate, x, ids = _gate("sqrtsoftplus", hashed=False)
    gate.margins = []
    weights, indices = gate(x, ids)
    want_w, want_i = _old_gate_math(gate, x, ids)
    assert torch.equal(indices, want_i) and torch.equal(weights, want_w)
    assert len(gate.margins) == 1 and 0 < gate.margins[0] < float("inf")


def test_bench_router_rows_run_on_cpu():
    from model import bench_kernels as bk

    assert {"router_decode", "router_prefill"} <= {c.args[0] for c in bk.cases(False, "cpu")}
    case = bk._router_case("router", 5, "cpu", torch.float32, n_exp=24, dim=64, topk=6)
    row = bk.run_case(case, "cpu", None)
    assert row["kernel"] == "router" and row["bytes"] > 24 * 64 * 2 and row["reference_ms"] > 0
    got, want = case.triton(), case.reference()  # the interpreter stands in for the GPU here
    assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0], rtol=1e-5)
