"""``interpret_bf16``: Triton's interpreter computing bf16 as a GPU does (values, not raw bits;
one rounding to nearest even), and its emulation of ``fma.rn.bf16x2`` — the instrument the
bf16-branch tests (test_bf16_branches.py) stand on, checked here against torch's own bf16."""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from model.kernels import interpret_bf16
from model.kernels.launch import BF16_ENV, interpreter_bf16, interpreter_fp32


def test_the_switch_is_the_environment_variable(monkeypatch):
    monkeypatch.delenv(BF16_ENV, raising=False)
    assert interpreter_fp32() and not interpreter_bf16()
    monkeypatch.setenv(BF16_ENV, "1")
    assert interpreter_bf16() and not interpreter_fp32()


def _bf16_sample(n: int, seed: int, lo: float = -30, hi: float = 30) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp2(torch.empty(n).uniform_(lo, hi, generator=g))
    return (mag * torch.randn(n, generator=g).sign()).to(torch.bfloat16)


def test_rounding_to_bf16_is_torchs_nearest_even_including_ties_and_subnormals():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4096, generator=g) * torch.exp2(torch.randint(-140, 120, (4096,),
                                                                  generator=g).float())
    bits = torch.randint(0, 1 << 16, (512,), generator=g, dtype=torch.int32) << 16
    ties = (bits | 0x8000).view(torch.float32)            # exactly halfway between two bf16
    x = torch.cat([x, ties, torch.tensor([3.0e38, -0.0, 2.0**-133, 2.0**-134])])
    want = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(interpret_bf16.bf16_bits(x.numpy()), want)
    # float64 rounds once: a value a hair above a tie goes up, where float32 would make it a tie
    above_tie = 1.0 + 2.0**-8 + 2.0**-40
    assert interpret_bf16.bf16_values(interpret_bf16.bf16_bits(np.array([above_tie])))[0] \
        == np.float32(1.0 + 2.0**-7)


def _nearest_bf16(exact: torch.Tensor) -> torch.Tensor:
    """The oracle: of torch's bf16 cast and its two bf16 neighbours, the one nearest the float64
    value (differences exact at these spans), ties to the even mantissa."""
    guess = exact.to(torch.bfloat16).view(torch.int16).int()
    cands = torch.stack([guess - 1, guess, guess + 1]).to(torch.int16)
    vals = cands.view(torch.bfloat16).double()
    dist = (vals - exact).abs()
    best = dist.min(0).values
    odd = (cands.int() & 1).bool()
    pick = torch.where(dist == best, torch.where(odd, 1, 0), 9).argmin(0)   # even wins ties
    return cands.gather(0, pick[None])[0].view(torch.bfloat16)


def _fma(a, b, c):
    out = interpret_bf16.fma_bf16x2(*(t.view(torch.int32).numpy() for t in (a, b, c)))
    return torch.from_numpy(out).view(torch.bfloat16)


def test_fma_bf16x2_rounds_each_half_once_and_keeps_subnormals():
    a, b, c = (_bf16_sample(4096, seed, -8, 8) for seed in (2, 3, 4))
    exact = a.double() * b.double() + c.double()       # 47 bits at most: exact in float64
    assert torch.equal(_fma(a, b, c), _nearest_bf16(exact))
    # a·b = 3 + 1.5 ulp, a tie: to even with c = 0, and to the side c leans however small c is
    # (float64 arithmetic would lose the 2^-60 and round the tie)
    a = torch.tensor([3.0] * 6, dtype=torch.bfloat16)
    b = torch.tensor([1 + 2.0**-7] * 6, dtype=torch.bfloat16)
    tiny = 2.0**-60
    c = torch.tensor([0.0, -tiny, tiny, -0.0, -tiny, tiny], dtype=torch.bfloat16)  # both halves
    up, down = 3 + 2.0**-5, 3 + 2.0**-6
    assert _fma(a, b, c).tolist() == [up, down, up, up, down, up]
    # the FP4 decoder's case: subnormal codes (0.5 and −1.5, × 2^-126) times 2^(e+63), + (−0)
    sub = torch.tensor([2.0**-127, -1.5 * 2.0**-126], dtype=torch.bfloat16)
    scale = torch.tensor([2.0**64, 2.0**64], dtype=torch.bfloat16)
    neg_zero = torch.tensor([-0.0, -0.0], dtype=torch.bfloat16)
    assert _fma(sub, scale, neg_zero).tolist() == [2.0**-63, -1.5 * 2.0**-62]


@triton.jit
def _elementwise_kernel(a_ptr, b_ptr, out_ptr, mx_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    a = tl.load(a_ptr + i)
    b = tl.load(b_ptr + i)
    tl.store(out_ptr + i, tl.where(a < b, a * b, a - b))
    tl.store(out_ptr + N + i, (a / b).to(tl.float32).to(tl.bfloat16))
    tl.store(out_ptr + 2 * N + i, tl.fma(a, b, a))
    tl.store(mx_ptr, tl.max(a, axis=0))
    tl.store(mx_ptr + 1, tl.min(b, axis=0))


def test_bf16_arithmetic_comparisons_and_reductions_are_on_values(bf16_interpreter):
    a, b = _bf16_sample(64, 5, -4, 4), _bf16_sample(64, 6, -4, 4)
    out = torch.empty(192, dtype=torch.bfloat16)
    mx = torch.empty(2, dtype=torch.bfloat16)
    _elementwise_kernel[(1,)](a, b, out, mx, N=64)
    assert torch.equal(out[:64], torch.where(a < b, a * b, a - b))
    assert torch.equal(out[64:128], (a.float() / b.float()).to(torch.bfloat16))
    assert torch.equal(out[128:], _nearest_bf16(a.double() * b.double() + a.double()))
    assert mx.tolist() == [a.max().item(), b.min().item()]


@triton.jit
def _dot_kernel(a_ptr, b_ptr, out_ptr, N: tl.constexpr, PREC: tl.constexpr = "tf32"):
    r = tl.arange(0, N)
    a = tl.load(a_ptr + r[:, None] * N + r[None, :])
    b = tl.load(b_ptr + r[:, None] * N + r[None, :])
    tl.store(out_ptr + r[:, None] * N + r[None, :], tl.dot(a, b, input_precision=PREC))


def test_bf16_dot_multiplies_values_and_accumulates_in_fp32(bf16_interpreter):
    a = _bf16_sample(256, 7, -3, 3).view(16, 16)
    b = _bf16_sample(256, 8, -3, 3).view(16, 16)
    out = torch.empty(16, 16)
    _dot_kernel[(1,)](a, b, out, N=16)
    assert torch.allclose(out, a.float() @ b.float(), rtol=1e-6, atol=1e-6)


def test_tf32_rounds_to_nearest_ties_away_and_the_tensor_core_truncates():
    x = np.array([1 + 2.0**-11, -(1 + 2.0**-11), 1 + 3 * 2.0**-11, 1 + 2.0**-11 - 2.0**-23,
                  2.0 - 2.0**-23, np.inf, np.nan], dtype=np.float32)
    got = interpret_bf16.tf32_rounded(x)
    assert got[:5].tolist() == [1 + 2.0**-10, -(1 + 2.0**-10), 1 + 2.0**-9, 1.0, 2.0]
    assert got[5] == np.inf and np.isnan(got[6])
    assert interpret_bf16.tf32_truncated(x[:5]).tolist() == [1.0, -1.0, 1 + 2.0**-10, 1.0,
                                                              2.0 - 2.0**-10]


def test_float32_dots_at_tf32_precisions_compute_as_the_tensor_cores_do(bf16_interpreter,
                                                                        monkeypatch):
    """"tf32": the operands as the tensor core reads them (up to 2^-10 of each dropped), float32
    sums; "tf32x3": Triton's three tf32 dots, near float32; "ieee": float32."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(32, 32, generator=g), torch.randn(32, 32, generator=g)
    exact = a.double() @ b.double()
    out = {}
    for prec in ("ieee", "tf32", "tf32x3"):
        out[prec] = torch.empty(32, 32)
        _dot_kernel[(1,)](a, b, out[prec], N=32, PREC=prec)
    truncated = [torch.from_numpy(interpret_bf16.tf32_truncated(t.numpy())).double()
                 for t in (a, b)]
    assert torch.allclose(out["tf32"].double(), truncated[0] @ truncated[1], rtol=1e-6,
                          atol=1e-5)
    err = {p: float((o.double() - exact).abs().max()) for p, o in out.items()}
    assert 1e-3 < err["tf32"] < 3e-2 and err["tf32x3"] < 2e-5 and err["ieee"] < 2e-5, err
    assert not torch.equal(out["tf32x3"], out["ieee"])   # three dots, not one
    monkeypatch.delenv(BF16_ENV)   # the switch off (the patch stays): float32 dots as before
    _dot_kernel[(1,)](a, b, out["tf32"], N=32, PREC="tf32")
    assert torch.equal(out["tf32"], out["ieee"])


@triton.jit
def _asm_kernel(a_ptr, b_ptr, out_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    out = tl.inline_asm_elementwise("fma.rn.bf16x2 $0, $1, $2, $3;", "=r,r,r,r",
                                    [tl.load(a_ptr + i), tl.load(b_ptr + i),
                                     tl.full([N], 0, tl.int32)],
                                    dtype=tl.int32, is_pure=True, pack=1)
    tl.store(out_ptr + i, out)


def test_the_inline_ptx_runs_in_the_interpreter_and_other_assembly_still_raises(
        bf16_interpreter):
    a, b = _bf16_sample(64, 9), _bf16_sample(64, 10)
    out = torch.empty(32, dtype=torch.int32)
    _asm_kernel[(1,)](a.view(torch.int32), b.view(torch.int32), out, N=32)
    assert torch.equal(out.view(torch.bfloat16), (a.double() * b.double()).to(torch.bfloat16))
    assert interpret_bf16._ASM.keys() == {"fma.rn.bf16x2 $0, $1, $2, $3;"}
