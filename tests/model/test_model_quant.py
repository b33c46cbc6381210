"""Bit-level checks of the V4 number formats against hand-computed values (fact sheet §8)."""

import struct

import pytest
import torch

from model.kernels import ops, quant


def u8(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


def test_e8m0_scales():
    s = u8(127, 130, 120, 0).view(torch.float8_e8m0fnu)
    assert quant.e8m0_to_float(s).tolist() == [1.0, 8.0, 2.0**-7, 2.0**-127]
    assert quant.float_to_e8m0(torch.tensor([1.0, 8.0, 2.0**-7])).view(torch.uint8).tolist() == [127, 130, 120]


def test_fp8_block_dequant_with_partial_blocks():
    # e4m3: 0x38 = 1.0, 0x40 = 2.0, 0x3C = 1.5, 0xC0 = -2.0, 0x7E = 448
    w = torch.full((3, 130), 0x38, dtype=torch.uint8)
    w[0, 0], w[1, 1], w[2, 129], w[0, 128] = 0x40, 0x3C, 0xC0, 0x7E
    scale = u8(129, 126).view(torch.float8_e8m0fnu).view(1, 2)  # ×4 | ×0.5
    out = quant.dequant_fp8_block(w.view(torch.float8_e4m3fn), scale)
    assert out.shape == (3, 130)
    assert out[0, 0] == 8.0 and out[1, 1] == 6.0 and out[2, 5] == 4.0
    assert out[2, 129] == -1.0 and out[0, 128] == 224.0 and out[1, 128] == 0.5


def test_fp4_unpack_low_nibble_is_even_index():
    packed = u8(0x21, 0xF9).view(torch.int8).view(1, 2)
    assert quant.unpack_fp4(packed).tolist() == [[0.5, 1.0, -0.5, -6.0]]
    scale = u8(128).view(torch.float8_e8m0fnu).view(1, 1)
    packed32 = torch.full((1, 16), 0x21, dtype=torch.uint8).view(torch.int8)
    deq = quant.dequant_fp4(packed32, scale)
    assert deq.shape == (1, 32) and deq[0, :4].tolist() == [1.0, 2.0, 1.0, 2.0]


def test_fp4_rounding_ties_to_even_code_and_saturates():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.3, -2.6, 0.0])
    assert quant.round_fp4(x).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -0.5, -3.0, 0.0]


def test_fp4_weight_quant_packs_hand_computed_bytes():
    w = torch.zeros(1, 32)
    w[0, :4] = torch.tensor([0.5, 1.0, -0.5, -6.0])  # amax 6 → scale 1 (ue8m0 127)
    packed, scale = quant.quant_fp4(w)
    assert packed.view(torch.uint8)[0, :3].tolist() == [0x21, 0xF9, 0x00]
    assert scale.view(torch.uint8).tolist() == [[127]]
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 64, generator=gen)
    packed, scale = quant.quant_fp4(w)
    step = quant.e8m0_to_float(scale).repeat_interleave(32, -1)
    assert ((quant.dequant_fp4(packed, scale) - w).abs() <= step).all()


def _pow2_ceil_reference(amax: float, inv: float) -> float:
    """2^ceil(log2(fp32(amax·fp32(inv)))) from the float32 bit pattern, in plain Python."""
    r = struct.unpack("<f", struct.pack("<f", amax * struct.unpack("<f", struct.pack("<f", inv))[0]))[0]
    bits = struct.unpack("<I", struct.pack("<f", r))[0]
    exponent = ((bits >> 23) & 0xFF) - 127 + (1 if bits & 0x7FFFFF else 0)
    return 2.0**exponent


@pytest.mark.parametrize("amax", [448.0, 300.0, 1.0, 5e-3, 0.0, 448.0 * 1.5, 3.0e4])
def test_activation_scale_is_power_of_two_from_float_bits(amax):
    x = torch.zeros(1, 128)
    x[0, 7] = amax
    _, s = ops.act_quant_scales(x, 128)
    assert s.item() == _pow2_ceil_reference(max(amax, 1e-4), 1.0 / 448.0)


def test_activation_fp8_rounding_is_round_half_even():
    x = torch.zeros(128)
    x[:4] = torch.tensor([300.0, 1.0625, 1.1875, -0.01])  # amax 300 → scale 1
    q, s = ops.act_quant_scales(x, 128)
    assert s.item() == 1.0
    # [256,512): step 32 → 288; 1.0625 tie → 1.0; 1.1875 tie → 1.25; -0.01 → subnormal grid 2^-9
    assert q[:4].tolist() == [288.0, 1.0, 1.25, -5 * 2.0**-9]
    assert torch.equal(ops.fp8_fake_quant(x, 128)[:4], q[:4])


def test_trailing_partial_block_equals_zero_padding():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 200, generator=gen)
    padded = torch.nn.functional.pad(x, (0, 56))
    assert torch.equal(ops.fp8_fake_quant(x, 128), ops.fp8_fake_quant(padded, 128)[:, :200])


def test_kv_fake_quant_uses_independent_64_blocks():
    x = torch.ones(128)
    x[64:] = 96.0  # second block: scale 2^ceil(log2(96/448)) = 0.25, 96/0.25 = 384 exact
    out = ops.fp8_fake_quant(x, 64)
    assert out[:64].eq(1.0).all() and out[64:].eq(96.0).all()
    x[71] = 100.0  # 400 is a tie between 384 (even mantissa) and 416 → 384 → 96
    assert ops.fp8_fake_quant(x, 64)[71].item() == 96.0
    x[70] = 101.0  # 101/0.25 = 404 → e4m3 step 32 in [256,512) → 416 → 104
    assert ops.fp8_fake_quant(x, 64)[70].item() == 104.0


def test_fp4_activation_quant():
    x = torch.zeros(32)
    x[:4] = torch.tensor([12.0, 5.0, -2.9, 0.4])  # amax 12 → scale 2; /2 → 6, 2.5, -1.45, 0.2
    assert quant.fp4_fake_quant(x, 32)[:4].tolist() == [12.0, 4.0, -3.0, 0.0]


def test_hadamard_is_orthonormal():
    e0 = torch.zeros(1, 128)
    e0[0, 0] = 1.0
    assert torch.allclose(ops.hadamard(e0), torch.full((1, 128), 128**-0.5))
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ops.hadamard(ops.hadamard(x)), x, atol=1e-5)
