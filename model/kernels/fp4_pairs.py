"""The FP4 pair decoder: e2m1 codes to bf16 tensor-core operands, two codes a register.

``fp4_words_tile`` is the one decode of FP4 tiles for tensor cores, shared by the expert GEMMs'
loader (``gemm.load_fp4_mma_tile``: the ≤ 16-row GEMM, the MoE decode GEMVs and prefill GEMM)
and the indexer's FP4 keys (``fp4_keys.load_key_pairs``). Its tiles come out in
``fp4_mma_order``'s columns, values × 2^-63; the other operand is taken to that order and × 2^63
(``to_mma_order``, ``FP4_MMA_ACT_SHIFT``), which a dot product over k does not see.
"""

from __future__ import annotations

import triton
import triton.language as tl

# The tensor-core decoder (``fp4_words_tile``). A 32-bit word holds eight e2m1 codes; one
# register can hold two bf16 weights. Placing code i of the word in the low half and code i + 4
# in the high half moves both the same distance, so a code pair costs three integer operations
# (and a bf16 register pair one packed multiply by the scale) where ``gemm.place_fp4`` spends
# eight on two float32 weights, plus their multiplies and the float32 → bf16 conversion. The
# tile's columns come out in the order of the pairs (``fp4_mma_order``): the caller loads its
# activation in that order, which a dot product over k does not see.
FP4_MMA_ACT_SHIFT = tl.constexpr(2.0**63)   # × the activation: the decoded tile is weight × 2^-63
_PAIR_MASK = tl.constexpr(0x81C081C0 - (1 << 32))   # sign, exponent's low 2, mantissa's top bit
_NEG_ZERO_PAIR = tl.constexpr(0x80008000 - (1 << 32))   # bf16 (−0, −0): fma(a, b, −0) = a·b


@triton.jit
def place_fp4_pairs(words):
    """int32 words of eight e2m1 codes (code i in bits 4i..4i+3: a weight byte's low nibble first,
    little-endian bytes) → four int32 registers of two bf16 bit patterns each, (low, high) =
    codes (0, 4), (1, 5), (2, 6), (3, 7), each the code's value × 2^-126: its magnitude bits
    (e1 e0 m) at bf16 bits 8..6 (the exponent's low two and the mantissa's top bit: e = 0 lands
    in the subnormals, where m = 1 reads 0.5 × 2^-126) and its sign at bit 15. A code's
    magnitude and sign move by different distances (6 and 12 for code 0), so the pair's two
    nibbles are masked out and multiplied by 2^6 + 2^12: the two shifted copies never overlap,
    the mask keeps the wanted bits of each. Codes 2, 3, 6, 7 the same after one shift by 8."""
    upper = words >> 8   # arithmetic: the bits it smears in from the sign are masked off
    p0 = ((words & 0x000F000F) * 4160) & _PAIR_MASK
    p1 = ((words & 0x00F000F0) * 260) & _PAIR_MASK
    p2 = ((upper & 0x000F000F) * 4160) & _PAIR_MASK
    p3 = ((upper & 0x00F000F0) * 260) & _PAIR_MASK
    return p0, p1, p2, p3


@triton.jit
def fp4_mma_order(BLOCK_K: tl.constexpr):
    """The k (0 .. BLOCK_K−1, within the tile) of each column of ``fp4_words_tile``: column
    8q + 4a + 2b + c holds code a + 2b + 4c of word q (the joins' order)."""
    col = tl.arange(0, BLOCK_K)
    r = col % 8
    return (col - r) + r // 4 + 2 * ((r // 2) % 2) + 4 * (r % 2)


@triton.jit
def to_mma_order(a):
    """Rows of an activation tile [R, BLOCK_K] loaded in k order → its columns in
    ``fp4_mma_order`` (a permutation within each 8 columns, in registers: a contiguous load
    where a gather would load each element alone)."""
    R: tl.constexpr = a.shape[0]
    BLOCK_K: tl.constexpr = a.shape[1]
    return tl.reshape(tl.permute(tl.reshape(a, [R, BLOCK_K // 8, 2, 2, 2]), (0, 1, 4, 3, 2)),
                      [R, BLOCK_K])


@triton.jit
def scaled_halves(pairs, bits, BF16: tl.constexpr):
    """Registers of two bf16 bit patterns (``place_fp4_pairs``', ``fp8_pairs.place_e4m3_pairs``')
    × the power of two whose bf16 exponent field is ``bits`` >> 7 (2^(e + 63) for FP4 tiles) →
    (low, high) bf16 — one packed multiply per register, then each half read as it lies (the
    GPU, and the interpreter with ``interpret_bf16``, which emulates the instruction) — or
    float32 (the fp32 interpreter)."""
    if BF16:
        scaled = tl.inline_asm_elementwise(
            "fma.rn.bf16x2 $0, $1, $2, $3;", "=r,r,r,r",
            [pairs, bits | (bits << 16), tl.full(pairs.shape, _NEG_ZERO_PAIR, tl.int32)],
            dtype=tl.int32, is_pure=True, pack=1)
        low = scaled.to(tl.int16).to(tl.bfloat16, bitcast=True)
        high = (scaled >> 16).to(tl.int16).to(tl.bfloat16, bitcast=True)
    else:   # bf16 bits << 16 are the same value as float32
        scale = (bits << 16).to(tl.float32, bitcast=True)
        low = (pairs << 16).to(tl.float32, bitcast=True) * scale
        high = (pairs & -65536).to(tl.float32, bitcast=True) * scale
    return low, high


@triton.jit
def fp4_words_tile(words, s, BF16: tl.constexpr):
    """Rows of FP4 codes as int32 words [R, WORDS] (eight codes a word, k order) and their
    ue8m0 scale bytes as int32 [R, WORDS / 4] (one per 32 codes) → values × 2^-63, [R, 8·WORDS]
    bf16 (BF16) or float32, in ``fp4_mma_order``'s columns (``load_fp4_mma_tile``'s decode; the
    indexer's FP4 keys, ``fp4_keys.load_key_pairs``, too). Exact for every scale from 2^-62 to
    2^64; below that, bf16 tiles lose the smallest values to subnormals, then to zero."""
    WORDS: tl.constexpr = words.shape[1]
    GROUPS: tl.constexpr = s.shape[1]
    # a 32-code scale group is four words; 2^(e + 63) as a bf16 exponent field (e = s − 127)
    bits = tl.reshape(tl.broadcast_to(((s + 63) << 7)[:, :, None], [s.shape[0], GROUPS, 4]),
                      [s.shape[0], WORDS])
    p0, p1, p2, p3 = place_fp4_pairs(words)
    l0, h0 = scaled_halves(p0, bits, BF16)
    l1, h1 = scaled_halves(p1, bits, BF16)
    l2, h2 = scaled_halves(p2, bits, BF16)
    l3, h3 = scaled_halves(p3, bits, BF16)
    # each register's halves end adjacent (the last join): no repacking before the MMA
    tile = tl.join(tl.join(tl.join(l0, l1), tl.join(l2, l3)), tl.join(tl.join(h0, h1),
                                                                       tl.join(h2, h3)))
    return tl.reshape(tile, [s.shape[0], 8 * WORDS])
