"""Quantisation kernels (quant_triton.py, interpreter) vs the torch references, bit for bit."""

from __future__ import annotations

import pytest
import torch

from model.kernels import fp4_keys, kv_fp8, ops, quant
from model.kernels import quant_triton as qt
from model.kernels.fp4_keys import IndexKeyLayout
from model.kernels.kv_fp8 import KVLayout
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


def _wide(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Random data over ~20 decades: each last-dim column and each row at its own scale, with
    an all-zero row, an all-negative row, exact zeros and signed zeros sprinkled in."""
    gen = torch.Generator().manual_seed(seed)
    n = shape[-1]
    x = torch.randn(shape, generator=gen) * torch.logspace(-9, 4, n)
    rows = x.view(-1, n)
    rows *= torch.logspace(-6, 6, rows.shape[0]).unsqueeze(-1)  # rows of different scales
    rows[0] = 0.0                                   # all-zero row: scales from the amax floor
    if rows.shape[0] > 2:
        rows[1] = -rows[1].abs()                    # all negative
        rows[2, ::7] = 0.0
        rows[2, 1::7] = -0.0
    return x


SHAPES = [(6, 256), (3, 4, 160), (2, 3, 2, 64), (5, 300)]   # 2-D / 3-D / 4-D, partial blocks


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fp4,block", [(False, 128), (False, 64), (True, 32), (True, 16)])
def test_fake_quant_matches_reference(shape, dtype, fp4, block):
    x = _wide(shape).to(dtype)
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
    _same_bits(qt.fp4_fake_quant_triton(x, 32), expected)
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
    x = _wide((4, 512))[:, 64:320]        # rows with a stride, unit last stride
    _same_bits(qt.fp8_fake_quant_triton(x, 128), quant.fp8_fake_quant(x, 128))
    _same_bits(qt.fp4_fake_quant_triton(x, 32), quant.fp4_fake_quant(x, 32))


KV_LAYOUTS = [KVLayout(), KVLayout(128, 64, 64), KVLayout(200, 40, 64)]


@pytest.mark.parametrize("layout", KV_LAYOUTS, ids=["v4", "toy", "partial-block"])
@pytest.mark.parametrize("shape", [(5,), (2, 3), (2, 2, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pack_kv_fp8_matches_reference(layout, shape, dtype):
    kv = _wide((*shape, layout.head_dim), seed=len(shape)).to(dtype)
    got = qt.pack_kv_fp8_triton(kv, layout)
    assert torch.equal(got, kv_fp8.pack_kv_fp8(kv, layout))


def test_pack_kv_fp8_slices_and_bf16_rounding():
    layout = KVLayout(128, 64, 64)
    big = _wide((3, 2 * layout.head_dim), seed=3)
    big[:, -64:] = 1.0 + torch.arange(64) * 2.0**-9  # bf16 ties in the RoPE dims
    kv = big[:, layout.head_dim :]                    # a strided view
    got = qt.pack_kv_fp8_triton(kv, layout)
    assert torch.equal(got, kv_fp8.pack_kv_fp8(kv, layout))
    assert not got[:, layout.scale_offset + layout.n_scales :].any()


INDEX_LAYOUTS = [IndexKeyLayout(), IndexKeyLayout(64, 32), IndexKeyLayout(96, 16)]


@pytest.mark.parametrize("layout", INDEX_LAYOUTS, ids=["v4", "dim64", "block16"])
@pytest.mark.parametrize("shape", [(7,), (2, 3), (2, 2, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pack_index_keys_matches_reference(layout, shape, dtype):
    keys = _wide((*shape, layout.dim), seed=layout.dim).to(dtype)
    got = qt.pack_index_keys_triton(keys, layout)
    assert torch.equal(got, fp4_keys.pack_index_keys(keys, layout))


def _counted(fn, *args):
    with OpAudit() as audit:
        out = fn(*args)
    return out, audit


@pytest.mark.parametrize("op,reference,args", [
    (ops.fp8_fake_quant, quant.fp8_fake_quant, (128,)),
    (ops.fp4_fake_quant, quant.fp4_fake_quant, (32,)),
    (ops.pack_kv_fp8, kv_fp8.pack_kv_fp8, (KVLayout(128, 64, 64),)),
    (ops.pack_index_keys, fp4_keys.pack_index_keys, (IndexKeyLayout(),)),
])
def test_ops_dispatch_is_one_launch(monkeypatch, op, reference, args):
    x = _wide((3, 128), seed=5)
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
    x = _wide((2, 128)).double()
    got, audit = _counted(ops.fp8_fake_quant, x, 128)
    assert not audit.triton and torch.equal(got, quant.fp8_fake_quant(x, 128))
