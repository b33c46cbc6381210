"""The decode path's activation / KV / indexer-key quantisation, one Triton launch each.

Why: a decode step is host-bound and every small torch op is a kernel launch. The references in
quant.py, kv_fp8.py and fp4_keys.py (which stay, and define the numerics) spend 15–30 launches
per call: padding, amax, clamp, the bit-level ``pow2_ceil``, the casts, the byte packing.
Here each call reads its input once and writes its output once:

- ``fake_quant_triton(x, block, fp4)``: ``quant.fp8_fake_quant`` / ``quant.fp4_fake_quant``
  (quantise per 1×block with a power-of-two scale, dequantise, x's dtype). The model runs the
  FP8 one (``ops.fp8_fake_quant``); the FP4 one is where the tests pin the e2m1 rounding that
  ``cache_rows.store_row`` writes the indexer's keys and queries with.
- the bit-level pieces every kernel that writes a quantised value shares: the scale exponent,
  e4m3 / e2m1 rounding and codes, ue8m0 bytes, bf16 bytes. The packed cache rows (the FP8 KV
  row, the FP4 key row) are written by ``cache_rows.store_row``, from registers, at the end of
  the kernel that computes them (``kv_fp8.pack_kv_fp8`` / ``fp4_keys.pack_index_keys`` define
  those bytes).

Bit-exact by construction, all integer / bit arithmetic on fp32 (no libdevice, no log2):
scale = 2^ceil(log2(max(amax, floor) · fp32(1/MAX))) with the exponent read from the fp32 bits
(= ``quant.pow2_ceil``); x · 2^−e is x / scale exactly; e4m3 / e2m1 rounding to nearest-even
on the fp32 bits for normals (add half an ulp of the target, keep the target's mantissa bits)
and with the 2^23 magic-number add for the fixed-quantum subnormal range; the sign is carried
as a bit, so −0 stays −0. NaN / ±inf inputs are outside the contract (the references disagree
with themselves there). Under TRITON_INTERPRET=1 low-precision inputs are given to the kernels
as fp32 copies (the interpreter mishandles bf16) and outputs cast back, which rounds exactly as
the references do.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from model.kernels.launch import TILE_ELEMENTS, grid_entry, interpreter_fp32, pdl, rows_of
from model.kernels.quant import FP4_MAX, FP8_MAX

SIGN_BIT = tl.constexpr(-2147483648)  # 0x80000000 as int32 (a constexpr: kernels may read it)
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _fp32_bits(value: float) -> int:
    """The int32 bit pattern of fp32(value) (round to nearest, as torch's fp32 scalars)."""
    return struct.unpack("<i", struct.pack("<f", value))[0]


FP8_CONSTANTS = dict(FLOOR_BITS=_fp32_bits(1e-4), INV_MAX_BITS=_fp32_bits(1.0 / FP8_MAX),
                     QMAX=FP8_MAX)
FP4_CONSTANTS = dict(FLOOR_BITS=_fp32_bits(FP4_MAX * 2.0**-126),
                     INV_MAX_BITS=_fp32_bits(1.0 / FP4_MAX), QMAX=FP4_MAX)


def supported(x: torch.Tensor) -> bool:
    """Whether the kernels take x (others run the reference)."""
    return x.dtype in KERNEL_DTYPES



# ---------------------------------------------------------------- shared device helpers

@triton.jit
def _fp32_from_bits(bits):
    return tl.full([1], bits, tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _exp2_int(e):
    """ldexp(1, e) for int32 e in the normal range (what finite inputs give), inf above 2^127."""
    normal = ((tl.maximum(tl.minimum(e, 127), -126) + 127) << 23).to(tl.float32, bitcast=True)
    return tl.where(e > 127, float("inf"), normal)


@triton.jit
def _scale_exponent(amax, FLOOR_BITS: tl.constexpr, INV_MAX_BITS: tl.constexpr):
    """e with 2^e = pow2_ceil(max(amax, floor) · fp32(1/MAX)), from the fp32 bits."""
    v = tl.maximum(amax, _fp32_from_bits(FLOOR_BITS)) * _fp32_from_bits(INV_MAX_BITS)
    bits = v.to(tl.int32, bitcast=True)
    return ((bits >> 23) & 0xFF) - 127 + ((bits & 0x7FFFFF) != 0).to(tl.int32)


@triton.jit
def _scaled(x, e, QMAX: tl.constexpr):
    """x / 2^e (exact) clamped to ±QMAX, as int32 bits."""
    v = tl.minimum(tl.maximum(x * _exp2_int(-e), -QMAX), QMAX)
    return v.to(tl.int32, bitcast=True)


@triton.jit
def _round_bits(bits, MANT: tl.constexpr, MIN_NORMAL_BITS: tl.constexpr,
                SUB_QUANTUM: tl.constexpr):
    """fp32 bits → bits of the nearest value with MANT mantissa bits (ties to even), values
    below the format's smallest normal on the fixed grid of SUB_QUANTUM; sign kept."""
    mag_bits = bits & 0x7FFFFFFF
    half = (1 << (22 - MANT)) - 1 + ((mag_bits >> (23 - MANT)) & 1)
    normal = (mag_bits + half) & ~((1 << (23 - MANT)) - 1)
    mag = mag_bits.to(tl.float32, bitcast=True)
    sub = ((mag * (1.0 / SUB_QUANTUM) + 8388608.0) - 8388608.0) * SUB_QUANTUM
    rounded = tl.where(mag_bits < MIN_NORMAL_BITS, sub.to(tl.int32, bitcast=True), normal)
    return rounded | (bits & SIGN_BIT)


@triton.jit
def _round_e4m3(bits):
    """Nearest e4m3fn value (|x| ≤ 448 already): 3 mantissa bits, subnormals k·2^−9."""
    return _round_bits(bits, 3, 0x3C800000, 0.001953125)


@triton.jit
def _e4m3_values(x, e, QMAX: tl.constexpr):
    """x put on the e4m3 grid of scale 2^e (fake quantisation), as fp32."""
    return _round_e4m3(_scaled(x, e, QMAX)).to(tl.float32, bitcast=True) * _exp2_int(e)


@triton.jit
def _round_e2m1(bits):
    """Nearest e2m1 value (|x| ≤ 6 already): 1 mantissa bit, 0 and 0.5 below 1."""
    return _round_bits(bits, 1, 0x3F800000, 0.5)


@triton.jit
def _code(rounded, MANT: tl.constexpr, BIAS_SHIFT: tl.constexpr, SUB_QUANTUM: tl.constexpr,
          SIGN: tl.constexpr):
    """Rounded value bits → the format's code: sign | biased exponent | mantissa (subnormals:
    the multiple of SUB_QUANTUM)."""
    mag_bits = rounded & 0x7FFFFFFF
    exp = (mag_bits >> 23) - BIAS_SHIFT
    normal = (exp << MANT) | ((mag_bits >> (23 - MANT)) & ((1 << MANT) - 1))
    sub = (mag_bits.to(tl.float32, bitcast=True) * (1.0 / SUB_QUANTUM)).to(tl.int32)
    return tl.where(exp >= 1, normal, sub) | tl.where(rounded < 0, SIGN, 0)


@triton.jit
def _e8m0_byte(e):
    return (tl.minimum(tl.maximum(e + 127, 0), 254)).to(tl.uint8)


# ---------------------------------------------------------------- fake quantisation

@triton.jit
def _fake_quant_kernel(x_ptr, out_ptr, n_segs, segs_per_row, n, row_stride,
                       QBLOCK: tl.constexpr, FP4: tl.constexpr, FLOOR_BITS: tl.constexpr,
                       INV_MAX_BITS: tl.constexpr, QMAX: tl.constexpr,
                       SEGS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    """One program: SEGS quantisation blocks (a row's 1×QBLOCK pieces, the last maybe partial)."""
    grid_entry(PDL)
    seg = tl.program_id(0).to(tl.int64) * SEGS + tl.arange(0, SEGS)
    row = seg // segs_per_row
    j = tl.arange(0, BLOCK)
    col = (seg % segs_per_row)[:, None] * QBLOCK + j[None, :]
    mask = (seg < n_segs)[:, None] & (j < QBLOCK)[None, :] & (col < n)
    x = tl.load(x_ptr + row[:, None] * row_stride + col, mask=mask, other=0.0).to(tl.float32)
    e = _scale_exponent(tl.max(tl.abs(x), 1), FLOOR_BITS, INV_MAX_BITS)[:, None]
    if FP4:
        rounded = _round_e2m1(_scaled(x, e, QMAX))
    else:
        rounded = _round_e4m3(_scaled(x, e, QMAX))
    y = rounded.to(tl.float32, bitcast=True) * _exp2_int(e)
    tl.store(out_ptr + row[:, None] * n + col, y.to(out_ptr.dtype.element_ty), mask=mask)


def _kernel_input(x: torch.Tensor) -> torch.Tensor:
    return x.float() if interpreter_fp32() and x.dtype != torch.float32 else x


def fake_quant_triton(x: torch.Tensor, block: int, fp4: bool) -> torch.Tensor:
    """``quant.fp4_fake_quant`` (fp4) / ``quant.fp8_fake_quant`` in one launch; x fp32/bf16/fp16."""
    n = x.shape[-1]
    if x.numel() == 0:
        return torch.empty_like(x)
    src = _kernel_input(rows_of(x))
    out = torch.empty(src.shape, dtype=src.dtype, device=x.device)
    segs_per_row = triton.cdiv(n, block)
    n_segs = src.shape[0] * segs_per_row
    tile = triton.next_power_of_2(block)
    segs = max(1, min(TILE_ELEMENTS // tile, triton.next_power_of_2(n_segs)))
    consts = FP4_CONSTANTS if fp4 else FP8_CONSTANTS
    _fake_quant_kernel[(triton.cdiv(n_segs, segs),)](
        src, out, n_segs, segs_per_row, n, src.stride(0), QBLOCK=block, FP4=fp4, **consts,
        SEGS=segs, BLOCK=tile, **pdl(x.device))
    return out.view(x.shape).to(x.dtype)


def fp8_fake_quant_triton(x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """``quant.fp8_fake_quant`` in one launch."""
    return fake_quant_triton(x, block, fp4=False)


# ------------------------------------- bytes of packed rows (cache_rows.store_row writes them)

@triton.jit
def _bf16_bytes(x):
    """fp32 → bf16 bits (round to nearest even, NaN → 0x7FC0) as (low byte, high byte)."""
    bits = x.to(tl.int32, bitcast=True)
    mag_bits = bits & 0x7FFFFFFF
    rounded = (mag_bits + 0x7FFF + ((mag_bits >> 16) & 1)) >> 16
    rounded = tl.where(mag_bits > 0x7F800000, 0x7FC0, rounded | ((bits >> 16) & 0x8000))
    return (rounded & 0xFF).to(tl.uint8), ((rounded >> 8) & 0xFF).to(tl.uint8)


@triton.jit
def _e2m1_code(x, e, QMAX: tl.constexpr):
    return _code(_round_e2m1(_scaled(x, e, QMAX)), 1, 126, 0.5, 8)
