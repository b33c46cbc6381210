"""Sibling linears stacked into one GEMM (model/layers/linear.py ``StackedLinear``): the same
outputs as the members one by one, one launch instead of one each, the members re-pointed at
their rows of the stack (no second copy), and every case it must refuse."""

from __future__ import annotations

import pytest
import torch

from model.generate import load_model
from model.kernels import ops, quant
from model.layers.linear import Linear, Numerics, StackedLinear
from model.op_audit import OpAudit
from model.parallel import shard_attention
from model.toy import write_toy_checkpoint


def _linear(k: int, n: int, fmt: str, numerics: Numerics, seed: int,
            fp32_compute: bool = False) -> Linear:
    g = torch.Generator().manual_seed(seed)
    lin = Linear(k, n, fmt=fmt, fp32_compute=fp32_compute)
    w = torch.randn(n, k, generator=g) * torch.logspace(-2, 1, k)   # scale blocks differ
    if fmt == "fp8":
        lin.weight, lin.scale = quant.quant_fp8_block(w)
    else:
        lin.weight = w.to(torch.bfloat16 if fmt == "bf16" else torch.float32)
    lin.prepare(numerics)
    return lin


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


@pytest.mark.parametrize("fmt,mode,rows", [("fp8", "native", (256, 128)),
                                           ("fp8", "dequant", (128, 384, 128)),
                                           ("bf16", "dequant", (96, 40, 8))])
@pytest.mark.parametrize("tokens", [1, 5])
def test_a_stack_gives_each_member_its_own_output_in_one_launch(monkeypatch, fmt, mode, rows,
                                                                tokens):
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    numerics = Numerics(mode, torch.float32)
    members = [_linear(256, n, fmt, numerics, seed=i) for i, n in enumerate(rows)]
    x = torch.randn(1, tokens, 256) * 2
    want = [m(x) for m in members]
    stack = StackedLinear(*members)
    with OpAudit() as alone:
        stack(x)
    assert stack.stack()
    with OpAudit() as stacked:
        got = stack(x)
    for g, w, m in zip(got, want, members, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)
        assert _storage(m.weight) == _storage(stack.fused.weight)   # a view, not a copy
        torch.testing.assert_close(m(x), g, rtol=1e-5, atol=1e-4)  # members still work alone
    assert sum(stacked.triton.values()) == sum(alone.triton.values()) // len(members)
    assert stacked.launches() < alone.launches()


def test_a_member_keeps_its_output_dtype(monkeypatch):
    """The indexer's head weights (bf16 out in bf16 numerics) stack with the compressors'
    projections (fp32 compute): the stack computes in fp32, each member gets its own dtype."""
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    numerics = Numerics("dequant", torch.bfloat16)
    pool = [_linear(128, 64, "bf16", numerics, seed=i, fp32_compute=True) for i in range(2)]
    heads = _linear(128, 8, "bf16", numerics, seed=5)
    x = torch.randn(1, 1, 128).to(torch.bfloat16)
    want = [m(x) for m in (*pool, heads)]
    stack = StackedLinear(*pool, heads)
    assert stack.stack() and stack.fused.fp32_compute
    got = stack(x)
    assert [g.dtype for g in got] == [torch.float32, torch.float32, torch.bfloat16]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), rtol=1e-2, atol=1e-2)


def test_what_cannot_stack_runs_member_by_member(monkeypatch):
    numerics = Numerics("native", torch.float32)
    x = torch.randn(1, 1, 256)
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    partial_block = [_linear(256, 128, "fp8", numerics, 0), _linear(256, 64, "fp8", numerics, 1)]
    formats = [_linear(256, 128, "fp8", numerics, 2), _linear(256, 128, "bf16", numerics, 3)]
    widths = [_linear(256, 128, "bf16", numerics, 4), _linear(128, 128, "bf16", numerics, 5)]
    dense = [_linear(256, 128, "fp8", numerics, 6), _linear(256, 128, "fp8", numerics, 7)]
    dense[0].prepare(numerics, resident=False)              # one dense, one as mapped
    for members in (partial_block, formats, dense, [members[0] for members in (formats,)]):
        stack = StackedLinear(*members)
        assert not stack.stack() and stack.fused is None
        outs = stack(x)
        for out, m in zip(outs, members, strict=True):
            torch.testing.assert_close(out, m(x))
    assert not StackedLinear(*widths).stack()
    assert not StackedLinear().stack()
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")        # zero-copy on the reference path
    ok = [_linear(256, 128, "fp8", numerics, 8), _linear(256, 128, "fp8", numerics, 9)]
    assert StackedLinear(*ok).stackable() and not StackedLinear(*ok).stack()


def test_the_model_stacks_where_the_kernels_run_and_restacks_after_a_shard(tmp_path,
                                                                           monkeypatch):
    ckpt = write_toy_checkpoint(tmp_path / "small", seed=0, preset="small")
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")
    plain = load_model(ckpt, dtype="float32", numerics="native", progress=False).model
    assert all(g.fused is None for b in plain.layers for g in (b.attn.x_proj, b.attn.q_proj))
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    lm = load_model(ckpt, dtype="float32", numerics="native", progress=False).model
    attn = next(b.attn for b in lm.layers if b.attn.indexer is not None)
    groups = (attn.x_proj, attn.q_proj, attn.pool_proj, lm.layers[0].ffn.shared_experts.w13)
    assert all(g.fused is not None for g in groups)
    assert all(e.w13.fused is None for b in lm.layers for e in b.ffn.experts)
    wq_b = attn.wq_b.dense_weight().clone()
    shard_attention(attn, 2, 1, None)    # rank 1 of 2: wq_b becomes its dense half
    assert attn.q_proj.fused is None and attn.x_proj.fused is not None
    half = attn.n_heads * attn.head_dim
    torch.testing.assert_close(attn.wq_b.dense, wq_b[half:])


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_partials_sum_to_the_members_outputs_side_by_side(monkeypatch, backend):
    """``partials``: the decode GEMV's K splits left unsummed (for the consuming kernel), or
    the outputs themselves (S = 1) where nothing splits; not rounded to a member's dtype."""
    monkeypatch.setenv(ops.BACKEND_ENV, backend)
    numerics = Numerics("dequant", torch.bfloat16)
    members = [_linear(512, 64, "bf16", numerics, seed=i, fp32_compute=True) for i in range(2)]
    members.append(_linear(512, 8, "bf16", numerics, seed=9))
    x = torch.randn(1, 1, 512).to(torch.bfloat16)
    want = torch.cat([m(x).float() if m.fp32_compute else
                      ops.dequant_linear(x, m.weight, None, torch.float32) for m in members], -1)
    stack = StackedLinear(*members)
    assert stack.stack() == (backend == "triton")
    parts = stack.partials(x)
    assert parts.dtype == torch.float32 and parts.shape[1:] == (1, 1, 136)
    assert (parts.shape[0] > 1) == (backend == "triton")
    torch.testing.assert_close(parts.sum(0), want, rtol=1e-5, atol=1e-4)
    assert stack.bounds == [(0, 64), (64, 128), (128, 136)]


@pytest.mark.parametrize("rows", [(256,), (256, 128)])
def test_a_norm_before_the_stack_is_the_fp8_gemms_prologue(monkeypatch, rows):
    """q_norm then the query up-projections: stacked (or one member alone), the FP8 GEMM norms
    its input as it reads it — one launch, the values of the norm then the GEMM."""
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    numerics = Numerics("native", torch.float32)
    members = [_linear(256, n, "fp8", numerics, seed=i) for i, n in enumerate(rows)]
    norm = (torch.rand(256) + 0.5, 1e-6)
    x = torch.randn(1, 1, 256) * 5
    normed = ops.rms_norm(x, *norm)
    want = [m(normed) for m in members]
    stack = StackedLinear(*members)
    assert stack.stack() == (len(rows) > 1)
    with OpAudit() as audit:
        got = stack(x, norm=norm)
    assert audit.launches() == 1 and sum(audit.triton.values()) == 1
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)
