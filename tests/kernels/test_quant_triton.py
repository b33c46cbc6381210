"""Quantisation kernels (quant_triton.py, interpreter) vs the torch references, bit for bit."""

from __future__ import annotations

import pytest
import torch
from row_checks import wide_values

from model.kernels import ops, quant
from model.kernels import quant_triton as qt
from model.op_audit import OpAudit

INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def _same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal shape, dtype and bit patterns (so −0 ≠ +0 and NaN = NaN)."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape,
                                                                got.dtype, want.dtype)
    if want.dtype in INT_VIEW:
        got, want = got.view(INT_VIEW[want.dtype]), want.view(INT_VIEW[want.dtype])
    diff = (got != want).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} differ, first at {diff[0].tolist()}"


SHAPES = [(6, 256), (3, 4, 160), (2, 3, 2, 64), (5, 300)]   # 2-D / 3-D / 4-D, partial blocks


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fp4,block", [(False, 128), (False, 64), (True, 32), (True, 16)])
def test_fake_quant_matches_reference(shape, dtype, fp4, block):
    x = wide_values(shape).to(dtype)
    if dtype == torch.float16:
        x = x.clamp(-6e4, 6e4)
    reference = quant.fp4_fake_quant if fp4 else quant.fp8_fake_quant
    _same_bits(qt.fake_quant_triton(x, block, fp4), reference(x, block))


def _scale_one_block(values: list[float], amax: float, width: int) -> torch.Tensor:
    """One block of ``width`` whose amax puts the scale at exactly 1: values, then padding
    zeros, then the amax element last."""
    x = torch.zeros(width)
    x[: len(values)] = torch.tensor(values)
    x[-1] = amax
    return x


def test_fp8_ties_round_to_even_and_subnormals():
    # amax 400 → scale 2^ceil(log2(400/448)) = 1: the values land on the e4m3 grid as given
    ties = [1.0625, 1.1875, -1.0625, 2**-10, 1.5 * 2**-9, 2.5 * 2**-9, 7.5 * 2**-9, -2**-11,
            300.0, 440.0]
    want = [1.0, 1.25, -1.0, 0.0, 2**-8, 2 * 2**-9, 2**-6, -0.0, 288.0, 448.0]
    x = _scale_one_block(ties, 400.0, 128)
    got = qt.fp8_fake_quant_triton(x, 128)
    expected = _scale_one_block(want, 384.0, 128)  # 400 itself rounds to 384
    _same_bits(got, expected)
    _same_bits(quant.fp8_fake_quant(x, 128), expected)


def test_fp4_ties_round_to_even_code():
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -5.0, 0.2]
    want = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -0.0, -4.0, 0.0]
    x = _scale_one_block(ties, 5.5, 32)   # amax 5.5 → scale 1
    expected = _scale_one_block(want, 6.0, 32)
    _same_bits(qt.fake_quant_triton(x, 32, True), expected)
    _same_bits(quant.fp4_fake_quant(x, 32), expected)


@pytest.mark.parametrize("fp4,qmax,block", [(False, 448.0, 128), (True, 6.0, 32)])
def test_saturation_edges(fp4, qmax, block):
    """amax at qmax·2^k and a few fp32 ulps either side: the block maximum lands on (or rounds
    to) ±qmax exactly, the top of the format."""
    base = torch.tensor([qmax * 2.0**k for k in (-20, -3, 0, 5, 30)])
    rows = [base]
    for direction in (float("inf"), 0.0):
        edge = base.clone()
        for _ in range(3):
            edge = torch.nextafter(edge, torch.tensor(direction))
            rows.append(edge.clone())
    amax = torch.stack(rows).flatten()
    x = (torch.rand(amax.numel(), block) * 2 - 1) * amax.unsqueeze(-1)
    x[:, 0] = amax
    x[::2, 1] = -amax[::2]
    reference = quant.fp4_fake_quant if fp4 else quant.fp8_fake_quant
    want = reference(x, block)
    _same_bits(qt.fake_quant_triton(x, block, fp4), want)
    exact = slice(0, base.numel())  # amax = qmax·2^k: the scale is 2^k, amax maps to qmax
    assert torch.equal(want[exact, 0], base) and torch.equal(want[exact, 1][::2], -base[::2])


@pytest.mark.parametrize("fp4,block", [(False, 128), (True, 32)])
def test_amax_floor(fp4, block):
    """Blocks whose amax is below the floor (1e-4 for FP8, 6·2^−126 for FP4), zero included."""
    x = torch.zeros(4, 2 * block)
    x[1, :block] = torch.linspace(-3e-5, 5e-5, block)
    x[2, block:] = 1e-38
    x[3] = torch.linspace(-1e-6, 1e-6, 2 * block)
    reference = quant.fp4_fake_quant if fp4 else quant.fp8_fake_quant
    want = reference(x, block)
    _same_bits(qt.fake_quant_triton(x, block, fp4), want)
    assert want[1].abs().sum() > 0 and not want[0].any()


def test_strided_rows_are_read_in_place():
    x = wide_values((4, 512))[:, 64:320]        # rows with a stride, unit last stride
    _same_bits(qt.fp8_fake_quant_triton(x, 128), quant.fp8_fake_quant(x, 128))
    _same_bits(qt.fake_quant_triton(x, 32, True), quant.fp4_fake_quant(x, 32))


def _counted(fn, *args):
    with OpAudit() as audit:
        out = fn(*args)
    return out, audit


@pytest.mark.parametrize("op,reference,args", [
    (ops.fp8_fake_quant, quant.fp8_fake_quant, (128,)),
])
def test_ops_dispatch_is_one_launch(monkeypatch, op, reference, args):
    x = wide_values((3, 128), seed=5)
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    got, audit = _counted(op, x, *args)
    assert sum(audit.triton.values()) == 1 and audit.torch_launches() == 0, (audit.triton,
                                                                             audit.ops)
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")
    want, audit = _counted(op, x, *args)
    assert not audit.triton
    assert torch.equal(got, want) and torch.equal(want, reference(x, *args))


def test_ops_fall_back_for_other_dtypes(monkeypatch):
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    x = wide_values((2, 128)).double()
    got, audit = _counted(ops.fp8_fake_quant, x, 128)
    assert not audit.triton and torch.equal(got, quant.fp8_fake_quant(x, 128))
