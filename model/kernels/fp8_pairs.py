"""FP8 cache rows to bf16 by bit placement, two values a register (attention's FP8 rows).

An e4m3 code's seven magnitude bits (exponent, mantissa) are a bf16's exponent low four and
mantissa top three once shifted left by 4, and its sign moves by 8: the pattern then reads the
code's value × 2^-120 (the two biases differ by 120), subnormal codes included (they land in
bf16's subnormals at the same factor). A 32-bit word of four codes gives two such registers —
codes (0, 2) and (1, 3), each half in place — in three integer operations, and one packed
``fma.rn.bf16x2`` (``fp4_pairs.scaled_halves``) puts on the row's block scale. The cast path
(``sparse_attn._load_kv_rows``) converts each code to float32 (an unpack to f16 per two codes
then a conversion per code), multiplies it by a scale shifted out per column, selects it
against the RoPE dims' conversion (both are computed for every column), and packs the result
back to bf16. On sm_90 attention's decode step over 16 FP8 rows is 1,317 instructions that way
and 1,022 this way, where bf16 rows take 621 (docs/PERF.md, session 16).

``load_fp8_row_pairs`` returns the tile as value × 2^-60: every ue8m0 scale from 2^-127 to 2^67
is then one bf16 multiplier (exponent field e + 60); the caller puts ``FP8_PAIRS_UNSHIFT`` back
where it is exact (the scores' fp32 multiplier, the probabilities before their cast). bf16 or
float32 tiles only: × 2^-60 is below every fp16 value.
"""

from __future__ import annotations

import triton
import triton.language as tl

from model.kernels.fp4_pairs import scaled_halves

FP8_PAIRS_UNSHIFT = tl.constexpr(2.0**60)   # the decoded tile is value / FP8_PAIRS_UNSHIFT
_MAGNITUDES = tl.constexpr(0x07F007F0)     # both halves' exponent low 4 and mantissa top 3
_SIGNS = tl.constexpr(0x80008000 - (1 << 32))
_LOW_HALF = tl.constexpr(0xFFFF)
_HIGH_HALF = tl.constexpr(-65536)          # 0xFFFF0000 as an int32


@triton.jit
def place_e4m3_pairs(words):
    """int32 words of four e4m3 codes (code i in byte i) → two int32 registers of two bf16 bit
    patterns each, (low, high) = codes (0, 2) and (1, 3), each the code's value × 2^-120."""
    p02 = ((words << 4) & _MAGNITUDES) | ((words << 8) & _SIGNS)
    p13 = ((words >> 4) & _MAGNITUDES) | (words & _SIGNS)   # arithmetic shift: masked off
    return p02, p13


@triton.jit
def load_fp8_row_pairs(kv_ptr, rows, valid, col0, D, BLOCK: tl.constexpr, ROW: tl.constexpr,
                       NOPE: tl.constexpr, QB: tl.constexpr, SCALE_OFF: tl.constexpr,
                       BF16: tl.constexpr):
    """Columns col0 .. col0 + BLOCK (col0 a multiple of 4) of the FP8 cache rows ``rows``
    (int64 row numbers from the uint8 ``kv_ptr``; ``valid`` false: a zero row) → [rows, BLOCK]
    value × 2^-60, bf16 (BF16) or float32. A row (kv_fp8's layout): NOPE e4m3 codes, the RoPE
    dims as bf16, then ue8m0 scales, one per QB codes. The host promises (``fp8_row_pairs``)
    rows and their starts 8-byte aligned, NOPE a multiple of 8, QB of 4, at most 8 scales:
    a column quad is one word of codes or four RoPE dims (8 bytes), and a row's scales one
    8-byte word."""
    R: tl.constexpr = rows.shape[0]
    quad = col0 // 4 + tl.arange(0, BLOCK // 4)
    code = quad < NOPE // 4
    rope = (quad >= NOPE // 4) & (quad < D // 4)
    words = tl.load(kv_ptr.to(tl.pointer_type(tl.int32)) + (rows * (ROW // 4))[:, None]
                    + quad[None, :], mask=valid[:, None] & code[None, :], other=0)
    dims = tl.load(kv_ptr.to(tl.pointer_type(tl.int64)) + (rows * (ROW // 8) + NOPE // 8)[:, None]
                   + (quad - NOPE // 4)[None, :], mask=valid[:, None] & rope[None, :], other=0)
    scales = tl.load((kv_ptr + rows * ROW + SCALE_OFF).to(tl.pointer_type(tl.int64)),
                     mask=valid, other=0)
    shift = (tl.minimum(quad * 4 // QB, 7) * 8).to(tl.int64)
    e = ((scales[:, None] >> shift[None, :]) & 0xFF).to(tl.int32)
    # bf16 multipliers: 2^(e − 67) on the codes (× their 2^-120: the value × 2^-60), 2^-60 on
    # the RoPE dims
    bits = tl.where(code[None, :], (e + 60) << 7, 67 << 7)
    p02, p13 = place_e4m3_pairs(words)
    first = dims.to(tl.int32)            # RoPE dims 4r, 4r + 1 of the quad
    second = (dims >> 32).to(tl.int32)   # 4r + 2, 4r + 3
    r02 = (first & _LOW_HALF) | (second << 16)
    r13 = ((first >> 16) & _LOW_HALF) | (second & _HIGH_HALF)
    low0, high0 = scaled_halves(tl.where(code[None, :], p02, r02), bits, BF16)
    low1, high1 = scaled_halves(tl.where(code[None, :], p13, r13), bits, BF16)
    # column 4q + 2i + j: register j's half i (a join's operand is the new last index) — the
    # quad's four values in order
    return tl.reshape(tl.join(tl.join(low0, high0), tl.join(low1, high1)), [R, BLOCK])
