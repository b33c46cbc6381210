"""The decode path's activation / KV / indexer-key quantisation, one Triton launch each.

Why: a decode step is host-bound and every small torch op is a kernel launch. The references in
quant.py, kv_fp8.py and fp4_keys.py (which stay, and define the numerics) spend 15–30 launches
per call: padding, amax, clamp, the bit-level ``pow2_ceil``, the casts, the byte packing.
Here each call reads its input once and writes its output once:

- ``fake_quant_triton(x, block, fp4)``: ``quant.fp8_fake_quant`` / ``quant.fp4_fake_quant``
  (quantise per 1×block with a power-of-two scale, dequantise, x's dtype).
- ``pack_kv_fp8_triton(kv, layout)``: ``kv_fp8.pack_kv_fp8`` (e4m3 codes, bf16 RoPE bytes,
  ue8m0 scales, zero padding: the whole row).
- ``pack_index_keys_triton(keys, layout)``: ``fp4_keys.pack_index_keys`` (e2m1 nibbles, ue8m0).

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

from model.kernels.launch import TILE_ELEMENTS, interpreting, rows_per_program
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
                       SEGS: tl.constexpr, BLOCK: tl.constexpr):
    """One program: SEGS quantisation blocks (a row's 1×QBLOCK pieces, the last maybe partial)."""
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


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, last dim] with unit last stride (a view when possible)."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _kernel_input(x: torch.Tensor) -> torch.Tensor:
    return x.float() if interpreting() and x.dtype != torch.float32 else x


def fake_quant_triton(x: torch.Tensor, block: int, fp4: bool) -> torch.Tensor:
    """``quant.fp4_fake_quant`` (fp4) / ``quant.fp8_fake_quant`` in one launch; x fp32/bf16/fp16."""
    n = x.shape[-1]
    if x.numel() == 0:
        return torch.empty_like(x)
    src = _kernel_input(_rows(x))
    out = torch.empty(src.shape, dtype=src.dtype, device=x.device)
    segs_per_row = triton.cdiv(n, block)
    n_segs = src.shape[0] * segs_per_row
    tile = triton.next_power_of_2(block)
    segs = max(1, min(TILE_ELEMENTS // tile, triton.next_power_of_2(n_segs)))
    consts = FP4_CONSTANTS if fp4 else FP8_CONSTANTS
    _fake_quant_kernel[(triton.cdiv(n_segs, segs),)](
        src, out, n_segs, segs_per_row, n, src.stride(0), QBLOCK=block, FP4=fp4, **consts,
        SEGS=segs, BLOCK=tile)
    return out.view(x.shape).to(x.dtype)


def fp8_fake_quant_triton(x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """``quant.fp8_fake_quant`` in one launch."""
    return fake_quant_triton(x, block, fp4=False)


def fp4_fake_quant_triton(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """``quant.fp4_fake_quant`` in one launch."""
    return fake_quant_triton(x, block, fp4=True)


# ---------------------------------------------------------------- packed rows

@triton.jit
def _bf16_bytes(x):
    """fp32 → bf16 bits (round to nearest even, NaN → 0x7FC0) as (low byte, high byte)."""
    bits = x.to(tl.int32, bitcast=True)
    mag_bits = bits & 0x7FFFFFFF
    rounded = (mag_bits + 0x7FFF + ((mag_bits >> 16) & 1)) >> 16
    rounded = tl.where(mag_bits > 0x7F800000, 0x7FC0, rounded | ((bits >> 16) & 0x8000))
    return (rounded & 0xFF).to(tl.uint8), ((rounded >> 8) & 0xFF).to(tl.uint8)


@triton.jit
def _pack_kv_fp8_kernel(kv_ptr, out_ptr, n_rows, row_stride, NOPE: tl.constexpr,
                        ROPE: tl.constexpr, QBLOCK: tl.constexpr, N_SCALES: tl.constexpr,
                        ROW_BYTES: tl.constexpr, FLOOR_BITS: tl.constexpr,
                        INV_MAX_BITS: tl.constexpr, QMAX: tl.constexpr, ROWS: tl.constexpr,
                        SCALES_P: tl.constexpr, BLOCK: tl.constexpr, ROPE_P: tl.constexpr,
                        PAD_P: tl.constexpr):
    """One program: ROWS whole cache rows (layout in kv_fp8.py)."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    src = kv_ptr + rows * row_stride
    dst = out_ptr + rows * ROW_BYTES
    # no-RoPE dims: [ROWS, scale blocks, block] → e4m3 codes + one ue8m0 byte per block
    g = tl.arange(0, SCALES_P)
    j = tl.arange(0, BLOCK)
    col = g[None, :, None] * QBLOCK + j[None, None, :]
    mask = (row_mask[:, None, None] & (g < N_SCALES)[None, :, None]
            & (j < QBLOCK)[None, None, :] & (col < NOPE))
    x = tl.load(src[:, None, None] + col, mask=mask, other=0.0).to(tl.float32)
    e = _scale_exponent(tl.max(tl.abs(x), 2), FLOOR_BITS, INV_MAX_BITS)
    rounded = _round_e4m3(_scaled(x, e[:, :, None], QMAX))
    tl.store(dst[:, None, None] + col, _code(rounded, 3, 120, 0.001953125, 0x80).to(tl.uint8),
             mask=mask)
    scale_mask = row_mask[:, None] & (g < N_SCALES)[None, :]
    tl.store(dst[:, None] + NOPE + 2 * ROPE + g[None, :], _e8m0_byte(e), mask=scale_mask)
    # RoPE dims: bf16, little-endian
    i = tl.arange(0, ROPE_P)
    rope_mask = row_mask[:, None] & (i < ROPE)[None, :]
    r = tl.load(src[:, None] + NOPE + i[None, :], mask=rope_mask, other=0.0).to(tl.float32)
    low, high = _bf16_bytes(r)
    tl.store(dst[:, None] + NOPE + 2 * i[None, :], low, mask=rope_mask)
    tl.store(dst[:, None] + NOPE + 2 * i[None, :] + 1, high, mask=rope_mask)
    # zero padding up to ROW_BYTES
    if PAD_P > 0:
        k = NOPE + 2 * ROPE + N_SCALES + tl.arange(0, PAD_P)
        pad_mask = row_mask[:, None] & (k < ROW_BYTES)[None, :]
        tl.store(dst[:, None] + k[None, :], tl.zeros([ROWS, PAD_P], dtype=tl.uint8),
                 mask=pad_mask)


def _padded(n: int) -> int:
    return triton.next_power_of_2(n) if n > 0 else 0


def _packing_io(x: torch.Tensor, dim: int, row_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., dim] as the rows a packing kernel reads, and its uint8 [..., row_bytes] output."""
    assert x.shape[-1] == dim, (x.shape, dim)
    out = torch.empty(*x.shape[:-1], row_bytes, dtype=torch.uint8, device=x.device)
    return _kernel_input(_rows(x)), out


def pack_kv_fp8_triton(kv: torch.Tensor, layout) -> torch.Tensor:
    """``kv_fp8.pack_kv_fp8`` in one launch: kv [..., head_dim] fp32/bf16/fp16 → uint8
    [..., layout.row_bytes], every byte of the row written by the kernel."""
    src, out = _packing_io(kv, layout.head_dim, layout.row_bytes)
    n_rows = src.shape[0]
    if n_rows == 0:
        return out
    scales_p, block = _padded(layout.n_scales), triton.next_power_of_2(layout.block)
    rows = rows_per_program(n_rows, scales_p * block)
    pad = layout.row_bytes - layout.scale_offset - layout.n_scales
    _pack_kv_fp8_kernel[(triton.cdiv(n_rows, rows),)](
        src, out, n_rows, src.stride(0), NOPE=layout.nope, ROPE=layout.rope_dim,
        QBLOCK=layout.block, N_SCALES=layout.n_scales, ROW_BYTES=layout.row_bytes,
        **FP8_CONSTANTS, ROWS=rows, SCALES_P=scales_p, BLOCK=block,
        ROPE_P=_padded(layout.rope_dim), PAD_P=_padded(pad))
    return out


@triton.jit
def _e2m1_code(x, e, QMAX: tl.constexpr):
    return _code(_round_e2m1(_scaled(x, e, QMAX)), 1, 126, 0.5, 8)


@triton.jit
def _pack_index_keys_kernel(k_ptr, out_ptr, n_rows, row_stride, DIM: tl.constexpr,
                            QBLOCK: tl.constexpr, FLOOR_BITS: tl.constexpr,
                            INV_MAX_BITS: tl.constexpr, QMAX: tl.constexpr,
                            ROWS: tl.constexpr, SCALES_P: tl.constexpr, HALF_P: tl.constexpr):
    """One program: ROWS key rows (layout in fp4_keys.py); even / odd dims are loaded as two
    tiles [ROWS, blocks, block/2] so each byte's two nibbles meet in registers."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    src = k_ptr + rows * row_stride
    dst = out_ptr + rows * (DIM // 2 + DIM // QBLOCK)
    g = tl.arange(0, SCALES_P)
    k = tl.arange(0, HALF_P)
    byte = g[None, :, None] * (QBLOCK // 2) + k[None, None, :]
    mask = (row_mask[:, None, None] & (g < DIM // QBLOCK)[None, :, None]
            & (k < QBLOCK // 2)[None, None, :])
    even = tl.load(src[:, None, None] + 2 * byte, mask=mask, other=0.0).to(tl.float32)
    odd = tl.load(src[:, None, None] + 2 * byte + 1, mask=mask, other=0.0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(even), 2), tl.max(tl.abs(odd), 2))
    e = _scale_exponent(amax, FLOOR_BITS, INV_MAX_BITS)
    codes = _e2m1_code(even, e[:, :, None], QMAX) | (_e2m1_code(odd, e[:, :, None], QMAX) << 4)
    tl.store(dst[:, None, None] + byte, codes.to(tl.uint8), mask=mask)
    scale_mask = row_mask[:, None] & (g < DIM // QBLOCK)[None, :]
    tl.store(dst[:, None] + DIM // 2 + g[None, :], _e8m0_byte(e), mask=scale_mask)


def pack_index_keys_triton(keys: torch.Tensor, layout) -> torch.Tensor:
    """``fp4_keys.pack_index_keys`` in one launch: keys [..., dim] fp32/bf16/fp16 → uint8
    [..., layout.row_bytes]."""
    src, out = _packing_io(keys, layout.dim, layout.row_bytes)
    n_rows = src.shape[0]
    if n_rows == 0:
        return out
    scales_p, half_p = _padded(layout.n_scales), triton.next_power_of_2(layout.block // 2)
    rows = rows_per_program(n_rows, 2 * scales_p * half_p)
    _pack_index_keys_kernel[(triton.cdiv(n_rows, rows),)](
        src, out, n_rows, src.stride(0), DIM=layout.dim, QBLOCK=layout.block, **FP4_CONSTANTS,
        ROWS=rows, SCALES_P=scales_p, HALF_P=half_p)
    return out
