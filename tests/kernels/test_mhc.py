"""mHC pre (RMS + mixing projection + Sinkhorn + collapse) and post: Triton vs torch.

hc_pre has two paths: prefill (partials over (token block, K-slice) programs, then a finish
kernel over (token, d-block)) and decode (partials over (token, K-slice) programs, the token's
last of which finishes it; or the finish kernel, a launch choice); all are checked here."""

from __future__ import annotations

import pytest
import torch

from model.kernels import mhc
from model.kernels.launch import FINISHES
from model.kernels.mhc import hc_post_reference, hc_post_triton, hc_pre_reference, hc_pre_triton

ITERS, EPS, NORM_EPS = 20, 1e-6, 1e-6


def _inputs(b: int, s: int, hc: int, d: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(d + 7 * s + hc)
    x = torch.randn(b, s, hc, d, generator=g).to(dtype)
    fn = torch.randn((2 + hc) * hc, hc * d, generator=g) * 0.05
    scale, base = torch.rand(3, generator=g) + 0.5, torch.randn((2 + hc) * hc, generator=g)
    return x, fn, scale, base


def _assert_matches(got, want, y_tol: float = 1e-5) -> None:
    for a, w, tol in zip(got, want, (y_tol, 1e-5, 1e-5), strict=True):
        assert a.shape == w.shape and a.dtype == w.dtype
        assert torch.allclose(a.float(), w.float(), atol=tol, rtol=max(tol, 1e-4)), \
            (a.float() - w.float()).abs().max()
    ones = torch.ones(got[2].shape[:-1])
    assert torch.allclose(got[2].sum(-2), ones, atol=1e-4)  # comb columns sum to 1


@pytest.mark.parametrize("b,s,hc,d", [
    (1, 1, 4, 64),     # one token in a block of 64
    (2, 3, 4, 100),    # hc·d = 400: not a whole number of 64-value steps
    (1, 70, 4, 24),    # 70 tokens: two token blocks, the second partly empty
    (1, 2, 2, 1100),   # hc·d = 2200: two K-slices of 2048, the second short
])
def test_hc_pre_prefill_matches_reference(b, s, hc, d):
    """The prefill path: token-block partials (x · fnᵀ tiles), then the decode path's finish."""
    x, fn, scale, base = _inputs(b, s, hc, d)
    got = hc_pre_triton(x, fn, scale, base, ITERS, EPS, NORM_EPS, decode=False)
    _assert_matches(got, hc_pre_reference(x, fn, scale, base, ITERS, EPS, NORM_EPS))


@pytest.mark.parametrize("finish", FINISHES)
@pytest.mark.parametrize("b,s,hc,d,k_slice,d_block", [
    (1, 1, 4, 64, 128, 512),   # 1 token: hc·d = 256 → 2 slices, one (clamped) d-block
    (1, 3, 4, 100, 64, 32),    # 3 tokens; hc·d = 400 not a multiple of the slice, d of the block
    (1, 1, 4, 100, 2, 64),     # 200 slices: the partial sum loops twice over 128-slice blocks
    (2, 1, 2, 96, 64, 64),     # hc = 2
])
def test_hc_pre_decode_matches_reference(b, s, hc, d, k_slice, d_block, finish):
    x, fn, scale, base = _inputs(b, s, hc, d)
    got = hc_pre_triton(x, fn, scale, base, ITERS, EPS, NORM_EPS, decode=True, k_slice=k_slice,
                        d_block=d_block, finish=finish)
    _assert_matches(got, hc_pre_reference(x, fn, scale, base, ITERS, EPS, NORM_EPS))


def test_fused_finish_collapses_in_steps_and_leaves_no_count(monkeypatch):
    """The token's last partial program finishes it, 32 columns a step (d = 100: four steps,
    the last ragged), whichever program arrives last (shuffled order, several seeds of
    inputs); the result equals the finish kernel's bit for bit, and the counts are zero after."""
    from model.kernels import launch

    monkeypatch.setattr(mhc, "FINISH_D_BLOCK", 32)
    for seed in range(3):
        x, fn, scale, base = _inputs(1, 3 + seed, 4, 100)
        args = (x, fn, scale, base, ITERS, EPS, NORM_EPS)
        fused = hc_pre_triton(*args, decode=True, k_slice=64)
        apart = hc_pre_triton(*args, decode=True, k_slice=64, finish="kernel")
        for a, w in zip(fused, apart, strict=True):
            assert torch.equal(a, w)
        _assert_matches(fused, hc_pre_reference(*args))
    y, post, comb = _post_inputs(1, 2, 4, 128)   # and the post, then the pre, in one launch
    residual, fn, scale, base = _inputs(1, 2, 4, 128)
    both = (y, residual, post, comb, fn, scale, base, ITERS, EPS, NORM_EPS)
    fused, apart = mhc.hc_post_pre_triton(*both), mhc.hc_post_pre_triton(*both, finish="kernel")
    for a, w in zip(fused, apart, strict=True):
        assert torch.equal(a, w)
    assert not launch.arrivals(8, x.device).any()
    with pytest.raises(ValueError, match="finish"):
        hc_pre_triton(*args, decode=True, finish="combine")


def test_hc_pre_decode_bf16_input():
    """bf16 stream (computed in fp32 under the interpreter); y comes back in bf16."""
    x, fn, scale, base = _inputs(1, 2, 4, 80, torch.bfloat16)
    got = hc_pre_triton(x, fn, scale, base, ITERS, EPS, NORM_EPS, decode=True, k_slice=64,
                        d_block=64)
    _assert_matches(got, hc_pre_reference(x, fn, scale, base, ITERS, EPS, NORM_EPS),
                    y_tol=1e-2)


def test_hc_pre_paths_agree():
    x, fn, scale, base = _inputs(1, 3, 4, 72)
    dec = hc_pre_triton(x, fn, scale, base, ITERS, EPS, NORM_EPS, decode=True, k_slice=32,
                        d_block=32)
    pre = hc_pre_triton(x, fn, scale, base, ITERS, EPS, NORM_EPS, decode=False)
    for a, w in zip(dec, pre, strict=True):
        assert torch.allclose(a, w, atol=1e-5, rtol=1e-5), (a - w).abs().max()


def test_hc_pre_auto_choice_at_threshold(monkeypatch):
    calls: list[str] = []
    for name in ("_launch_decode", "_launch_prefill", "_launch_finish"):
        real = getattr(mhc, name)
        monkeypatch.setattr(mhc, name,
                            lambda *a, _n=name, _f=real, **kw: (calls.append(_n), _f(*a, **kw))[1])
    monkeypatch.setattr(mhc, "DECODE_MAX_TOKENS", 2)
    for s in (2, 3):
        x, fn, scale, base = _inputs(1, s, 4, 32)
        got = hc_pre_triton(x, fn, scale, base, ITERS, EPS, NORM_EPS)
        _assert_matches(got, hc_pre_reference(x, fn, scale, base, ITERS, EPS, NORM_EPS))
    # the decode path finishes in its partials' launch; the prefill path's partials end in the
    # finish kernel
    assert calls == ["_launch_decode", "_launch_prefill", "_launch_finish"]


def test_hc_post_matches_reference():
    g = torch.Generator().manual_seed(1)
    b, s, hc, d = 2, 2, 4, 80
    y, x = torch.randn(b, s, d, generator=g), torch.randn(b, s, hc, d, generator=g)
    post, comb = torch.rand(b, s, hc, generator=g), torch.rand(b, s, hc, hc, generator=g)
    got = hc_post_triton(y, x, post, comb, block=64)
    assert torch.allclose(got, hc_post_reference(y, x, post, comb), atol=1e-5, rtol=1e-5)


def _post_inputs(b: int, s: int, hc: int, d: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(3 * d + s)
    y = torch.randn(b, s, d, generator=g).to(dtype)
    post, comb = torch.rand(b, s, hc, generator=g) * 2, torch.rand(b, s, hc, hc, generator=g)
    return y, post, comb


@pytest.mark.parametrize("finish", FINISHES)
@pytest.mark.parametrize("b,s,hc,d", [(1, 1, 4, 256), (2, 3, 4, 96), (1, 2, 2, 64),
                                      (1, 1, 4, 40)])
def test_post_then_pre_in_one_launch_matches_the_two_ops(b, s, hc, d, finish):
    """Decode: the post writes the next pre's partial sums (whole slices of every stream: 128,
    32 and 64 columns here; 40 has none ≥ 16 and runs post, then pre, apart) and its last
    program finishes the pre (``finish="kernel"``: the finish kernel does)."""
    from model.op_audit import OpAudit

    residual, fn, scale, base = _inputs(b, s, hc, d)
    y, post, comb = _post_inputs(b, s, hc, d)
    x = hc_post_reference(y, residual, post, comb)
    want = (x, *hc_pre_reference(x, fn, scale, base, ITERS, EPS, NORM_EPS))
    with OpAudit() as audit:
        got = mhc.hc_post_pre_triton(y, residual, post, comb, fn, scale, base, ITERS, EPS,
                                     NORM_EPS, finish=finish)
    assert torch.allclose(got[0], want[0], atol=1e-5, rtol=1e-5)
    _assert_matches(got[1:], want[1:])
    fused = mhc.post_pre_slice(d) is not None
    assert fused == (d != 40)
    launches = (1 if fused else 2) + (finish == "kernel")
    assert sum(audit.triton.values()) == launches


def test_post_then_pre_bf16_rounds_the_streams_before_the_pre():
    """The pre reads the streams as the post stored them (bf16), as the two ops do."""
    residual, fn, scale, base = _inputs(1, 2, 4, 128, torch.bfloat16)
    y, post, comb = _post_inputs(1, 2, 4, 128, torch.bfloat16)
    x = hc_post_reference(y, residual, post, comb)
    got = mhc.hc_post_pre_triton(y, residual, post, comb, fn, scale, base, ITERS, EPS, NORM_EPS)
    assert got[0].dtype == torch.bfloat16
    assert (got[0] != x).float().mean() < 0.01      # a rare last-bit flip (sum order)
    _assert_matches(got[1:], hc_pre_reference(got[0], fn, scale, base, ITERS, EPS, NORM_EPS),
                    y_tol=1e-2)


def test_post_then_pre_prefill_runs_the_two_kernels():
    residual, fn, scale, base = _inputs(1, 5, 4, 64)
    y, post, comb = _post_inputs(1, 5, 4, 64)
    x = hc_post_reference(y, residual, post, comb)
    got = mhc.hc_post_pre_triton(y, residual, post, comb, fn, scale, base, ITERS, EPS, NORM_EPS,
                                 decode=False)
    assert torch.allclose(got[0], x, atol=1e-5, rtol=1e-5)
    _assert_matches(got[1:], hc_pre_reference(x, fn, scale, base, ITERS, EPS, NORM_EPS))


@pytest.mark.parametrize("finish_d_block", [32, mhc.FINISH_D_BLOCK])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_norm_after_the_collapse_is_rms_norm_of_it(dtype, finish_d_block, monkeypatch):
    """``norm``: the collapsed output comes back RMS-normalised, as ``rms_norm`` of the
    collapse — in the fused finish at decode (pre, and post → pre; in 4 collapse steps of 32,
    so the norm's two passes cross blocks, and in one pass over the whole row in registers),
    by the finish kernel's path and at prefill via ``rms_norm_triton``; a bf16 stream
    normalises the collapse as stored (rounded to bf16)."""
    from model.kernels.norm_rope import rms_norm_reference
    from model.op_audit import OpAudit

    monkeypatch.setattr(mhc, "FINISH_D_BLOCK", finish_d_block)
    x, fn, scale, base = _inputs(1, 3, 4, 100, dtype)
    nw = (torch.rand(100) + 0.5).to(torch.bfloat16)
    args = (x, fn, scale, base, ITERS, EPS, NORM_EPS)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for kw in (dict(decode=True), dict(decode=True, finish="kernel"), dict(decode=False)):
        y, post, comb = hc_pre_triton(*args, **kw)
        with OpAudit() as audit:
            got = hc_pre_triton(*args, norm=(nw, 1e-5), **kw)
        assert sum(audit.triton.values()) == {"fused": 1, "kernel": 3}.get(
            kw.get("finish", "fused") if kw["decode"] else "kernel"), kw
        assert torch.equal(got[1], post) and torch.equal(got[2], comb)
        want = rms_norm_reference(y, nw, 1e-5)
        assert got[0].dtype == dtype
        torch.testing.assert_close(got[0].float(), want.float(), rtol=tol, atol=tol)
    residual, fn2, scale2, base2 = _inputs(1, 2, 4, 128, dtype)
    y2, post2, comb2 = _post_inputs(1, 2, 4, 128, dtype)
    nw2 = (torch.rand(128) + 0.5).to(torch.bfloat16)
    both = (y2, residual, post2, comb2, fn2, scale2, base2, ITERS, EPS, NORM_EPS)
    plain = mhc.hc_post_pre_triton(*both)
    normed = mhc.hc_post_pre_triton(*both, norm=(nw2, 1e-5))
    assert torch.equal(normed[0], plain[0])
    torch.testing.assert_close(normed[1].float(), rms_norm_reference(plain[1], nw2, 1e-5).float(),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_whole_row_finish_equals_the_stepped_one(dtype, monkeypatch):
    """The fused finish over a whole row (its loads issued together, the collapse normalised in
    registers) gives what it gives a step of 32 columns at a time, bit for bit — pre alone
    and post → pre, with and without the norm; and, without, the finish kernel's result."""
    x, fn, scale, base = _inputs(1, 3, 4, 100, dtype)
    nw = (torch.rand(100, generator=torch.Generator().manual_seed(1)) + 0.5).to(torch.bfloat16)
    args = (x, fn, scale, base, ITERS, EPS, NORM_EPS)
    y, post, comb = _post_inputs(1, 2, 4, 128, dtype)
    residual, fn2, scale2, base2 = _inputs(1, 2, 4, 128, dtype)
    both = (y, residual, post, comb, fn2, scale2, base2, ITERS, EPS, NORM_EPS)
    nw2 = (torch.rand(128, generator=torch.Generator().manual_seed(2)) + 0.5).to(torch.bfloat16)

    def runs():
        return [hc_pre_triton(*args, decode=True, k_slice=64),
                hc_pre_triton(*args, decode=True, k_slice=64, norm=(nw, 1e-5)),
                mhc.hc_post_pre_triton(*both), mhc.hc_post_pre_triton(*both, norm=(nw2, 1e-5))]

    whole = runs()
    monkeypatch.setattr(mhc, "FINISH_D_BLOCK", 32)
    stepped = runs()
    for a_run, b_run in zip(whole, stepped, strict=True):
        for a, b in zip(a_run, b_run, strict=True):
            assert torch.equal(a, b)
    apart = hc_pre_triton(*args, decode=True, k_slice=64, finish="kernel")
    for a, b in zip(whole[0], apart, strict=True):
        assert torch.equal(a, b)
