"""Quantised GEMMs (fact sheet §2.8, §3): y = x · Wᵀ with fp32 accumulation.

- ``fp8_gemm``: FP8 e4m3 weight [N, K] with one ue8m0 scale per 128×128 block; the activation is
  quantised in-kernel per 1×128 block to e4m3 with a power-of-two scale (FP8×FP8 dot). With
  ``glu`` the activation is first an expert's clamped SwiGLU of two inputs (``clamped_swiglu``,
  the one jit form of it; ``swiglu_reference`` the torch one): the shared expert's down
  projection reads gate and up, with no activation kernel before it. With ``norm`` it is first
  RMSNorm'd (a first pass over K per row tile): attention's q_norm.
- ``fp4_gemm``: W4A16. e2m1 weight packed two per int8 [N, K/2] (low nibble = even k), one ue8m0
  scale per 1×32; decoded in registers, the activation stays in its own dtype. The packed
  columns are split into even / odd k so no interleave is needed: y = x_even·W_evenᵀ + x_odd·W_oddᵀ.
  At decode the K axis is split over programs (``plan_split_k``) and the fp32 partials summed.

``load_fp4_tile`` and ``place_fp4`` are the register decoder of FP4 tiles to float32 (e2m1
nibbles × ue8m0 scales, by bit placement), used here and by the MoE kernels (moe.py);
``decode_fp4_tile`` is the two with the scale multiplied in, for ``tl.dot``.
``load_fp4_mma_tile`` decodes for tensor cores instead: two bf16 weights placed in one register,
one packed multiply by their scale, the tile's columns in the pairs' order (the activation is
loaded in that order) — about half the instructions a weight; the GEMMs of up to 16 rows and
the MoE decode GEMVs use it as a launch choice (``mma``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from model.kernels import quant
from model.kernels.cache_rows import round_bf16
from model.kernels.fp4_pairs import FP4_MMA_ACT_SHIFT, fp4_words_tile, to_mma_order
from model.kernels.launch import (
    arrivals,
    grid_entry,
    grid_entry_prefetching,
    interpreter_fp32,
    interpreting,
    last_to_arrive,
    pdl,
    rows_of,
)
from model.kernels.norm_rope import rms_norm_reference
from model.kernels.quant_triton import SIGN_BIT
from model.kernels.residency import TARGET_PROGRAMS, Launch, plan_by_residency, split_k


@dataclass(frozen=True, slots=True)
class SplitK:
    """A grouped GEMV's product left unsummed: its K splits' fp32 partial sums ``parts``
    [S, G, M, N] of x [*lead, G, K] against G groups of N weight rows. ``dtype``: what the sum
    is stored as. The kernel that reads the product sums it as it loads its input (the FP8
    GEMM's prologue: ``wo_a`` → ``wo_b``); anything else calls ``sum()``."""
    parts: torch.Tensor
    lead: tuple[int, ...]
    dtype: torch.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """The summed product's shape: [*lead, G·N]."""
        return (*self.lead, self.parts.shape[1] * self.parts.shape[3])

    def sum(self) -> torch.Tensor:
        """[*lead, G·N] in ``dtype``: the splits summed in a fixed order."""
        y = sum_splits(self.parts)   # [G, M, N]
        return y.transpose(0, 1).reshape(self.shape).to(self.dtype)


def sum_splits(parts: torch.Tensor) -> torch.Tensor:
    """A GEMV's K-split partial sums [S, ...] summed over S in a fixed order (S = 1: the one
    split itself, no copy) — what every reader of unsummed partials computes."""
    return parts[0] if parts.shape[0] == 1 else parts.sum(0)


SUM_CHUNK = tl.constexpr(8)   # partials a finish's sum loads before it adds them


@triton.jit
def sum_parts(ptr, S, part_stride, offs, mask):
    """Σ_s ptr[s · part_stride + offs] (fp32 K-split partials, any tile shape of ``offs``), in
    split order (deterministic): the kernels' form of ``sum_splits`` (``sum_part_sets``)."""
    (acc,) = sum_part_sets((ptr,), S, part_stride, offs, mask)
    return acc


@triton.jit
def sum_parts_pair(ptr, other_ptr, S, part_stride, offs, mask):
    """``sum_parts`` of two sets of partials at the same offsets (a GLU's gate and up, a
    compressor's kv and gate) → (Σ at ptr, Σ at other_ptr): each chunk's loads of both go out
    together, one wait a chunk where two sums in turn took two."""
    return sum_part_sets((ptr, other_ptr), S, part_stride, offs, mask)


@triton.jit
def sum_part_sets(ptrs, S, part_stride, offs, mask):
    """For each pointer of ``ptrs`` (a tuple), Σ_s ptr[s · part_stride + offs] in split order
    → a tuple of sums. SUM_CHUNK splits' loads of every set are issued before the first is
    added: a finish waits for memory once per SUM_CHUNK splits, where it waited once a split
    (a split past S adds +0.0, which changes no sum)."""
    firsts = ()
    sums = ()
    for p in tl.static_range(len(ptrs)):
        firsts = firsts + (ptrs[p] + offs,)
        sums = sums + (tl.zeros(offs.shape, dtype=tl.float32),)
    for s0 in range(0, S, SUM_CHUNK):
        parts = ()
        for i in tl.static_range(SUM_CHUNK):
            there = mask & (s0 + i + 0 * offs < S)   # a tensor: the interpreter masks
            step = ((s0 + i) * part_stride).to(tl.int64)
            for p in tl.static_range(len(ptrs)):
                parts = parts + (tl.load(firsts[p] + step, mask=there, other=0.0),)
        added = ()
        for p in tl.static_range(len(ptrs)):
            total = sums[p]
            for i in tl.static_range(SUM_CHUNK):
                total += parts[i * len(ptrs) + p]
            added = added + (total,)
        sums = added
    return sums


@triton.jit
def sum_parts_unrolled(ptr, S: tl.constexpr, part_stride, offs, mask):
    """``sum_parts`` for S known when compiling: unrolled, so that a loop around it stays an
    innermost loop, the only kind Triton's software pipeliner takes."""
    acc = tl.zeros(offs.shape, dtype=tl.float32)
    for s in tl.static_range(S):
        acc += tl.load(ptr + s * part_stride + offs, mask=mask, other=0.0)
    return acc


def fp8_gemm_reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                       glu: tuple[torch.Tensor, float] | None = None,
                       norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """``glu`` = (up, limit): of swiglu(x, up); ``norm`` = (weight, eps): of RMSNorm(x) — each
    in x's dtype, as the separate op stores it."""
    if glu is not None:
        x = swiglu_reference(x, glu[0], glu[1], None, x.dtype)
    if norm is not None:
        x = rms_norm_reference(x, norm[0], norm[1])
    w = quant.dequant_fp8_block(weight, scale)
    return F.linear(quant.fp8_fake_quant(x.float(), 128), w).to(x.dtype)


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor, limit: float,
                     weights: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """An expert's activation: silu(gate clamped ≤ limit) · (up clamped to ±limit) (× weights
    [..., 1]), computed in fp32 → ``dtype``."""
    gate, up = gate.float(), up.float()
    if limit > 0:
        up = up.clamp(-limit, limit)
        gate = gate.clamp(max=limit)
    h = F.silu(gate) * up
    if weights is not None:
        h = weights * h
    return h.to(dtype)


@triton.jit
def clamped_swiglu(gate, up, rw, limit):
    """An expert's activation in fp32 (× the routing weight rw): THE one of the kernels."""
    if limit > 0:
        up = tl.minimum(tl.maximum(up, -limit), limit)
        gate = tl.minimum(gate, limit)
    return rw * (gate * tl.sigmoid(gate) * up)


def fp4_gemm_reference(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return F.linear(x.float(), quant.dequant_fp4(packed, scale)).to(x.dtype)


@triton.jit
def e8m0_scale(byte):
    """A ue8m0 scale byte → 2^(byte − 127) as float32 (byte 0 → 0.0); shared by the kernels."""
    return (byte.to(tl.int32) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _pow2_ceil(x):
    bits = x.to(tl.int32, bitcast=True)
    exp = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(tl.int32)
    return (exp << 23).to(tl.float32, bitcast=True)


@triton.jit
def _round_e4m3(v):
    """Round float32 (|v| ≤ 448) to the nearest e4m3 value, ties to even, in fp32 arithmetic.
    The interpreter's fp32→fp8 cast drops the carry into the exponent (126.4 → 64, not 128);
    pre-rounding makes that cast exact. Triton's GPU cast (cvt.rn) needs no help."""
    bits = v.to(tl.int32, bitcast=True)
    exp = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # e4m3 subnormals share 2^-6's ulp
    ulp = ((exp - 3 + 127) << 23).to(tl.float32, bitcast=True)
    return ((v / ulp + 12582912.0) - 12582912.0) * ulp  # 1.5·2^23: round-to-nearest-even


# e2m1 → float32 by placement: a nibble's 3 magnitude bits (e1 e0 m) put at float32 bits 24..22
# and its sign at bit 31 read as 2^-126 × its e2m1 value (e = 0 lands in the subnormals, where
# m = 1 is 2^-127 = 0.5 × 2^-126; fp32 multiplies keep subnormals: no ftz). 3 integer ops per
# weight where a table-free decode took about 12. Of the 2^126, 2^63 is folded into the block's
# scale and 2^63 into the caller's result, so the decoded tile holds weight × 2^-63: normal
# floats (bf16 too, for tl.dot) and no overflow for every ue8m0 scale from 2^-62 to 2^64.
FP4_TILE_SHIFT = tl.constexpr(2.0**63)    # × the scale: the decoded tile is weight / 2^63
FP4_UNSHIFT = tl.constexpr(2.0**63)       # × a result of decoded tiles: back to weight units
# The GEMV (moe.py) keeps the codes as placed and puts 2^100 of the 2^126 on the activation it
# reads (exact for |a| < 2^28) and 2^26 on the scale it multiplies in after the products.
FP4_ACT_SHIFT = tl.constexpr(2.0**100)
FP4_GEMV_SCALE_SHIFT = tl.constexpr(2.0**26)
_E2M1_MAG = tl.constexpr(0x01C00000)      # float32 bits 24..22


NORM_LOADS = tl.constexpr(4)   # K blocks of the norm prologue's first pass loaded together


@triton.jit
def _fp8_gemm_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, KB, stride_x, u_ptr, stride_u, limit,
                     nw_ptr, eps, stride_part, stride_group, group_k, kb_per_split,
                     acc_ptr, cnt_ptr,
                     GLU: tl.constexpr, NORM: tl.constexpr, SPLITK: tl.constexpr,
                     BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     EXACT_CAST: tl.constexpr, K_SPLITS: tl.constexpr = False,
                     PARTS: tl.constexpr = 1, X_ROWS: tl.constexpr = 0,
                     PDL: tl.constexpr = False):
    """Prologues (the activation before it is quantised; rounded to bf16 when BF16, where the
    separate op would have stored it): GLU — the clamped SwiGLU of x (gate) and u (up); NORM —
    RMSNorm of x with weight nw (a first pass over K sums each row's squares); SPLITK — the sum
    of a grouped GEMV's PARTS K-split partials (x [PARTS, G, M, group_k] fp32: column k of row
    m is group k // group_k's column k % group_k), summed in split order — unrolled, so that
    the K loop's loads are pipelined (a loop inside it would stop that: run 3's ``wo_b``).

    K_SPLITS (decode: few output tiles over a long K): program (m tile, n tile, split) takes
    ``kb_per_split`` of the K blocks and stores its fp32 tile in acc [split, M, N]; the last
    split of a tile to arrive (its count in ``cnt``, ``launch.arrivals``) sums the tile's
    splits in split order (deterministic) and stores y. Each K block's activation scale is its
    own, so a split's products are the unsplit kernel's.

    X_ROWS = 1 (0: BLOCK_M): the activation side — prologue, scale, quantisation — on the
    tile's first row only, broadcast to BLOCK_M for the MMA (whose M is at least 16): a decode
    of one row computes one row's worth, not 16 (the rows past M are masked at the store
    either way). Only 1: a 4-row form (the rows' e4m3 tile repeated to 16 by a reshape) cut
    triton 3.9's step 316 → 189 instructions but took 3.6's 313 → 404."""
    BLOCK_K: tl.constexpr = 128
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    kb_lo = pid_k * kb_per_split
    kb_hi = tl.minimum(KB, kb_lo + kb_per_split)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    # the weight rows' first bytes into L2 while the launch before runs (PDL)
    grid_entry_prefetching(w_ptr + offs_n.to(tl.int64) * K + kb_lo * BLOCK_K,
                           tl.minimum(K, kb_hi * BLOCK_K) - kb_lo * BLOCK_K, mask_n, PDL)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    XM: tl.constexpr = X_ROWS if X_ROWS > 0 else BLOCK_M   # the activation side's rows
    offs_xm = pid_m * BLOCK_M + tl.arange(0, XM)
    mask_xm = offs_xm < M
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if NORM:
        # NORM_LOADS blocks' loads a step, issued together (a loop without a dot is not
        # pipelined: one block a step waited for each load in turn); the same order of sums
        squares = tl.zeros([XM, BLOCK_K], dtype=tl.float32)
        for kb0 in range(0, KB, NORM_LOADS):
            for j in tl.static_range(NORM_LOADS):
                offs_k = (kb0 + j) * BLOCK_K + tl.arange(0, BLOCK_K)
                x = tl.load(x_ptr + offs_xm[:, None].to(tl.int64) * stride_x + offs_k[None, :],
                            mask=mask_xm[:, None] & (offs_k < K)[None, :], other=0.0)
                squares += x.to(tl.float32) * x.to(tl.float32)
        inv = tl.rsqrt(tl.sum(squares, 1) / K + eps)
    for kb in range(kb_lo, kb_hi):
        offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        mask_x = mask_xm[:, None] & mask_k[None, :]
        if SPLITK:
            at = (offs_xm[:, None].to(tl.int64) * stride_x + (offs_k // group_k)[None, :]
                  * stride_group + (offs_k % group_k)[None, :])
            x = sum_parts_unrolled(x_ptr, PARTS, stride_part, at, mask_x)
            if BF16:
                x = round_bf16(x)
        else:
            x = tl.load(x_ptr + offs_xm[:, None].to(tl.int64) * stride_x + offs_k[None, :],
                        mask=mask_x, other=0.0).to(tl.float32)
        if GLU:
            u = tl.load(u_ptr + offs_xm[:, None].to(tl.int64) * stride_u + offs_k[None, :],
                        mask=mask_x, other=0.0).to(tl.float32)
            x = clamped_swiglu(x, u, 1.0, limit)
            if BF16:
                x = round_bf16(x)
        if NORM:
            x = tl.load(nw_ptr + offs_k, mask=mask_k, other=0.0)[None, :] * (x * inv[:, None])
            if BF16:
                x = round_bf16(x)
        if XM == 1:
            # one row, as a vector (a [1, K] tile would take the MMA operand's layout, 16 rows
            # replicated, on triton 3.9); its e4m3 values and scale for every row of the MMA
            # (the rows past M are not stored)
            x1 = tl.reshape(x, [BLOCK_K])
            s1 = _pow2_ceil(tl.maximum(tl.max(tl.abs(x1), 0), 1e-4) * (1.0 / 448.0))
            xs1 = tl.clamp(x1 / s1, -448.0, 448.0)
            if EXACT_CAST:
                xs1 = _round_e4m3(xs1)
            xq = tl.broadcast_to(xs1.to(tl.float8e4nv)[None, :], [BLOCK_M, BLOCK_K])
            sx = tl.zeros([BLOCK_M], dtype=tl.float32) + s1
        else:
            amax = tl.maximum(tl.max(tl.abs(x), 1), 1e-4)
            sx = _pow2_ceil(amax * (1.0 / 448.0))
            xs = tl.clamp(x / sx[:, None], -448.0, 448.0)
            if EXACT_CAST:
                xs = _round_e4m3(xs)
            xq = xs.to(tl.float8e4nv)
        wq = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * K + offs_k[None, :],
                     mask=mask_n[:, None] & mask_k[None, :], other=0).to(tl.float8e4nv,
                                                                         bitcast=True)
        sw = e8m0_scale(tl.load(s_ptr + (offs_n // 128) * KB + kb, mask=mask_n, other=0))
        acc += tl.dot(xq, tl.trans(wq)) * sx[:, None] * sw[None, :]
    tile = offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if K_SPLITS:
        splits = tl.num_programs(2)
        tl.store(acc_ptr + pid_k.to(tl.int64) * M * N + tile, acc, mask=mask)
        # the last split of the tile to arrive sees every split's partial
        if last_to_arrive(cnt_ptr + pid_m * tl.num_programs(1) + pid_n, splits):
            acc = sum_parts(acc_ptr, splits, M * N, tile, mask)
            tl.store(y_ptr + tile, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(y_ptr + tile, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def decode_fp4_tile(w_base, s_base, offs_n, mask_n, col, col0, mask_j, K,
                    FULL: tl.constexpr = False):
    """THE register decoder of FP4 weight tiles for ``tl.dot`` (``fp4_gemm`` here, the MoE
    grouped GEMM in moe.py): ``place_fp4``'s codes times their scales → (even k, odd k)
    float32 halves [BLOCK_N, BLOCK_K/2] of weight / 2^63, zero where masked: a caller multiplies
    what it computes from them by ``FP4_UNSHIFT`` (see ``FP4_TILE_SHIFT``)."""
    byte, s = load_fp4_tile(w_base, s_base, offs_n, mask_n, col, col0, mask_j, K, FULL)
    even, odd, sc = place_fp4(byte, s, FP4_TILE_SHIFT, FULL)
    return even * sc, odd * sc


@triton.jit
def load_fp4_tile(w_base, s_base, offs_n, mask_n, col, col0, mask_j, K,
                  FULL: tl.constexpr = False):
    """Rows ``offs_n`` of an FP4 weight [N, K] whose packed bytes (int8 [N, K/2], low nibble =
    even k) start at ``w_base`` and ue8m0 scales (one per 1×32, [N, K/32]) at ``s_base``; byte
    columns ``col`` [BLOCK_K/2] (``col0`` + 0, 1, ...: the caller's k0 / 2, passed as a scalar
    too) → (packed bytes int32 [BLOCK_N, BLOCK_K/2], scale bytes: [BLOCK_N, BLOCK_K/32] when
    FULL, else one per byte column), zero where masked: what ``place_fp4`` decodes, loaded a
    step ahead by the GEMV (moe.py). One byte load per two weights, one scale byte per 16.
    FULL (the caller's promise: both bases 16-byte aligned, K % 32 == 0, ``col`` whole runs of
    16 from a multiple of 16, every column in range — ``mask_j`` is not read): the bytes load as
    vectors (the compiler is told the row stride, K/32 · 16, is a multiple of 16, and the
    columns' runs; sm_90 PTX: 8-byte loads or ``cp.async`` copies), and each row's scales as one
    small [BLOCK_N, BLOCK_K/32] tile — not a byte load per weight byte and per scale."""
    row = offs_n[:, None].to(tl.int64)
    if FULL:
        RUNS: tl.constexpr = col.shape[0] // 16
        col = tl.max_contiguous(tl.multiple_of(col, 16), 16)
        w_row = (K // 32) * 16                      # = K / 2, known to be a multiple of 16
        byte = tl.load(w_base + row * w_row + col[None, :], mask=mask_n[:, None], other=0)
        s_col = col0 // 16 + tl.arange(0, RUNS)    # arithmetic, not a reduction over col
        s = tl.load(s_base + row * (K // 32) + s_col[None, :], mask=mask_n[:, None], other=0)
    else:
        mw = mask_n[:, None] & mask_j[None, :]
        byte = tl.load(w_base + row * (K // 2) + col[None, :], mask=mw, other=0)
        s = tl.load(s_base + row * (K // 32) + (col // 16)[None, :], mask=mw, other=0)
    return byte.to(tl.int32), s


@triton.jit
def place_fp4(byte, s, SCALE_SHIFT: tl.constexpr, FULL: tl.constexpr = False):
    """``load_fp4_tile``'s bytes → (even k, odd k) e2m1 values × 2^-126 as placed
    (``FP4_TILE_SHIFT``'s comment) and their scales × SCALE_SHIFT, float32 [BLOCK_N, BLOCK_K/2]
    each (FULL: each scale spread over its 16 byte columns in registers). ``decode_fp4_tile``
    multiplies the scale in before its dot; the GEMV (moe.py) after its products."""
    sc = e8m0_scale(s) * SCALE_SHIFT
    if FULL:
        RUNS: tl.constexpr = s.shape[1]
        sc = tl.reshape(tl.broadcast_to(sc[:, :, None], [sc.shape[0], RUNS, 16]),
                        [sc.shape[0], RUNS * 16])
    even = ((byte << 22) & _E2M1_MAG) | ((byte << 28) & SIGN_BIT)    # low nibble
    odd = ((byte << 18) & _E2M1_MAG) | ((byte << 24) & SIGN_BIT)     # high nibble
    return even.to(tl.float32, bitcast=True), odd.to(tl.float32, bitcast=True), sc


@triton.jit
def load_fp4_mma_tile(w_base, s_base, offs_n, mask_n, k0, K, BLOCK_K: tl.constexpr,
                      BF16: tl.constexpr):
    """Rows ``offs_n`` (zero where not ``mask_n``), k0 .. k0 + BLOCK_K of an FP4 weight [N, K]
    (packed bytes int8 [N, K/2] at ``w_base``, ue8m0 [N, K/32] at ``s_base``; ``mma_fp4_tiles``:
    K and k0 multiples of BLOCK_K, a multiple of 32, and both bases 4-byte aligned — the
    caller's pointers known as such, as ``_slot_base``'s FULL tells) → weight × 2^-63,
    [BLOCK_N, BLOCK_K] bf16 (BF16) or float32, in ``fp4_mma_order``'s columns: a tl.dot
    operand, against an activation tile loaded at k0 + fp4_mma_order(BLOCK_K) × FP4_MMA_ACT_SHIFT.
    Exact for every ue8m0 scale from 2^-62 to 2^64 (the products stay normal bf16)."""
    WORDS: tl.constexpr = BLOCK_K // 8
    GROUPS: tl.constexpr = BLOCK_K // 32
    row = offs_n[:, None].to(tl.int64)
    # told to the compiler as the promise has it — rows of K/8 words, a multiple of 4, and runs
    # of 4 words (16 bytes) — so the words load as vectors
    q = tl.max_contiguous(tl.multiple_of(k0 // 8 + tl.arange(0, WORDS), 4), 4)
    words = tl.load(w_base.to(tl.pointer_type(tl.int32)) + row * ((K // 32) * 4) + q[None, :],
                    mask=mask_n[:, None], other=0)
    if GROUPS % 4 == 0:   # K a multiple of 128 too: each row's scale bytes in aligned runs of 4
        g = tl.max_contiguous(tl.multiple_of(k0 // 32 + tl.arange(0, GROUPS), 4), 4)
        s = tl.load(s_base + row * ((K // 128) * 4) + g[None, :], mask=mask_n[:, None], other=0)
    else:
        s = tl.load(s_base + row * (K // 32) + k0 // 32 + tl.arange(0, GROUPS)[None, :],
                    mask=mask_n[:, None], other=0)
    return fp4_words_tile(words, s.to(tl.int32), BF16)


def mma_fp4_tiles(k: int, k_per_split: int, block_k: int, *parts: torch.Tensor) -> bool:
    """Whether ``load_fp4_mma_tile`` can read these weights: every K tile whole (K and each
    split multiples of BLOCK_K ≥ 32) and every part's bytes 4-byte aligned (``parts``: tensors,
    or the ``aligned`` flags of a bank's parts: 16-byte)."""
    return whole_k_tiles(k, k_per_split, block_k) and all(
        p if isinstance(p, bool) else p.data_ptr() % 4 == 0 for p in parts)


@triton.jit
def _fp4_gemm_kernel(x_ptr, w_ptr, s_ptr, out_ptr, M, N, K, K_PER_SPLIT,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     PREC: tl.constexpr, FULL: tl.constexpr = False, PDL: tl.constexpr = False):
    """Program (m tile, n tile, k split) → out[split] tile = x[:, k slice] · W[:, k slice]ᵀ in
    fp32. With one split ``out`` is y itself; with several it holds fp32 partials [S, M, N]."""
    grid_entry(PDL)
    HALF: tl.constexpr = BLOCK_K // 2
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, HALF)  # byte column within the tile
    mask_m = offs_m < M
    mask_n = offs_n < N
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(K, k_lo + K_PER_SPLIT)
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * K
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        col = k0 // 2 + offs_j
        mask_j = col < k_hi // 2
        if FULL:   # one contiguous row slice, split into even / odd k in registers
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None], other=0.0)
            x_even, x_odd = tl.split(tl.reshape(x, [BLOCK_M, HALF, 2]))
        else:
            mx = mask_m[:, None] & mask_j[None, :]
            x_even = tl.load(x_rows + 2 * col[None, :], mask=mx, other=0.0)
            x_odd = tl.load(x_rows + 2 * col[None, :] + 1, mask=mx, other=0.0)
        w_even, w_odd = decode_fp4_tile(w_ptr, s_ptr, offs_n, mask_n, col, k0 // 2, mask_j, K,
                                        FULL)
        acc += tl.dot(x_even, tl.trans(w_even.to(x_even.dtype)), input_precision=PREC)
        acc += tl.dot(x_odd, tl.trans(w_odd.to(x_even.dtype)), input_precision=PREC)
    out = out_ptr + pid_k.to(tl.int64) * M * N
    tl.store(out + offs_m[:, None].to(tl.int64) * N + offs_n[None, :],
             (acc * FP4_UNSHIFT).to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _fp4_gemm_mma_kernel(x_ptr, w_ptr, s_ptr, out_ptr, M, N, K, K_PER_SPLIT,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BF16: tl.constexpr,
                         PREC: tl.constexpr, PDL: tl.constexpr = False):
    """Program (n tile, k split) of a GEMM with at most 16 rows, on tensor cores with the
    operands swapped: the decoded weight tile (``load_fp4_mma_tile``) is the MMA's M side and
    x's rows its 16 N columns, so no MMA row is padding when M = 16 (and 15 columns are at
    decode). out[split] tile = (W[n tile, k slice] · x[:, k slice]ᵀ)ᵀ in fp32."""
    grid_entry(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, 16)
    mask_n = offs_n < N
    mask_m = offs_m < M
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(K, k_lo + K_PER_SPLIT)
    acc = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * K + offs_k[None, :],
                    mask=mask_m[:, None], other=0.0).to(tl.float32)
        w = load_fp4_mma_tile(w_ptr, s_ptr, offs_n, mask_n, k0, K, BLOCK_K, BF16)
        xt = tl.trans(to_mma_order(x * FP4_MMA_ACT_SHIFT).to(w.dtype))
        acc = tl.dot(w, xt, acc, input_precision=PREC)
    out = out_ptr + pid_k.to(tl.int64) * M * N
    tl.store(out + offs_m[None, :].to(tl.int64) * N + offs_n[:, None],
             acc.to(out_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_m[None, :])


MMA_BLOCK_N = 128   # weight rows a tensor-core program here and in gemv.py (2 × 64-row MMAs)
MMA_BLOCK_K = 128


def whole_k_tiles(k: int, k_per_split: int, block_k: int) -> bool:
    """The tile half of ``decode_fp4_tile``'s FULL promise: every K tile whole (K and each
    split a multiple of BLOCK_K ≥ 32)."""
    return block_k >= 32 and k % block_k == 0 and k_per_split % block_k == 0


def full_fp4_tiles(k: int, k_per_split: int, block_k: int, *parts: torch.Tensor) -> bool:
    """Whether ``decode_fp4_tile``'s FULL promise holds: whole K tiles and each part's bytes
    16-byte aligned."""
    return whole_k_tiles(k, k_per_split, block_k) and all(p.data_ptr() % 16 == 0 for p in parts)


PARTIAL_TRAFFIC_K = 128  # split-K cap: fp32 partial bytes ≤ 1/8 of the FP4 weight bytes



def _rows_and_output(x: torch.Tensor, n: int, half_or_fp32: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] as contiguous rows [M, K] in the dtype the kernel reads — fp32 under the
    interpreter; with ``half_or_fp32`` any dtype but bf16/fp16 becomes fp32 — and the empty
    [M, N] output in that dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    if interpreter_fp32() or (half_or_fp32 and x2.dtype not in (torch.bfloat16, torch.float16)):
        x2 = x2.float()
    x2 = x2.contiguous()
    return x2, torch.empty(x2.shape[0], n, dtype=x2.dtype, device=x.device)


DECODE_BLOCK_N = (32, 64)   # the FP8 GEMM's decode tile rows: 32, or 64 past TARGET_PROGRAMS


def _blocks(m: int, n: int, block_n: int | None = None) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) of the FP8 GEMM: skinny decode tiles spread N over many programs —
    32 rows, or 64 where 32-row tiles would be more than TARGET_PROGRAMS, i.e. more than one
    round of an H200's SMs (the query up-projections: 1,280 tiles at 8 programs an SM run in
    two rounds, the second a fifth full; run 3 timed them at twice ``wq_b``'s 1,024, 37.5
    against 18.4 µs); ``block_n`` (a launch choice) sets it."""
    if m > 16:
        return 64, 64
    if block_n is None:
        block_n = DECODE_BLOCK_N[triton.cdiv(n, DECODE_BLOCK_N[0]) > TARGET_PROGRAMS]
    if block_n not in DECODE_BLOCK_N:
        raise ValueError(f"the FP8 GEMM's decode tile is 32 or 64 rows, not {block_n}")
    return 16, block_n


def fp8_gemm_triton(x: torch.Tensor | SplitK, weight: torch.Tensor, scale: torch.Tensor,
                    glu: tuple[torch.Tensor, float] | None = None,
                    norm: tuple[torch.Tensor, float] | None = None,
                    k_splits: bool = True, block_n: int | None = None,
                    rounds: bool = True, one_row: bool = True) -> torch.Tensor:
    """x [..., K] · FP8 weight [N, K]ᵀ → [..., N] in x.dtype. ``glu`` = (up, limit): the
    activation is swiglu(x, up) (an expert's down projection); ``norm`` = (weight, eps): it is
    RMSNorm(x) (attention's q_norm before the query up-projections); a ``SplitK`` x is summed
    (``wo_a``'s K splits, before ``wo_b``) — no separate launch any way. Rows of unit stride are
    read where they lie (a stacked projection's column slices). ``k_splits`` (a launch choice):
    at decode, K split over programs where the output tiles are few (``fp8_k_splits``), the
    last split of each tile summing them; ``block_n`` (a launch choice): the decode tile's rows
    (``_blocks``: by default 64 where 32-row tiles would fill the SMs more than once);
    ``rounds`` (a launch choice): the K splits from the compiled kernel's residency
    (``fp8_k_splits``' ``slots``), else about TARGET_PROGRAMS programs; ``one_row`` (a launch
    choice): a decode of one row computes its activation side (prologue, scale, quantisation)
    on that row, not on the MMA's 16 (``X_ROWS``; bit-equal)."""
    assert glu is None or norm is None
    split = x if isinstance(x, SplitK) else None
    n = weight.shape[0]
    cast = torch.float32 if interpreter_fp32() else None
    if split is not None:
        assert glu is None and norm is None
        parts = split.parts.contiguous()                       # [S, G, M, Ng] fp32
        n_parts, _, m, group_k = parts.shape
        x2, dtype, lead, k = parts, split.dtype, split.lead, split.shape[-1]
        stride_x, part_strides = group_k, (parts.stride(0), parts.stride(1), group_k)
    else:
        k, dtype, lead = x.shape[-1], x.dtype, tuple(x.shape[:-1])
        x2 = rows_of(x.to(cast) if cast else x)
        m, stride_x, part_strides, n_parts = x2.shape[0], x2.stride(0), (0, 0, k), 1
    u2 = rows_of(glu[0].to(cast) if cast else glu[0]) if glu is not None else x2
    y = torch.empty(m, n, dtype=cast or (dtype if split is not None else x2.dtype),
                    device=weight.device)
    if m and n:
        bm, bn = _blocks(m, n, block_n)
        tiles = (triton.cdiv(m, bm), triton.cdiv(n, bn))
        kb = triton.cdiv(k, 128)
        w8, s8 = weight.contiguous().view(torch.uint8), scale.contiguous().view(torch.uint8)
        norm_w = norm[0].float().contiguous() if norm is not None else x2

        def options(splits: int) -> dict:
            return dict(GLU=glu is not None, NORM=norm is not None, SPLITK=split is not None,
                        BF16=dtype == torch.bfloat16, BLOCK_M=bm, BLOCK_N=bn,
                        EXACT_CAST=interpreting(), K_SPLITS=splits > 1, PARTS=n_parts,
                        X_ROWS=1 if one_row and m == 1 else 0,
                        num_stages=SPLITK_STAGES if split is not None else 3, **pdl(x2.device))

        def arguments(splits: int, kb_per_split: int) -> tuple:
            acc, counts = ((torch.empty(splits, m, n, dtype=torch.float32, device=y.device),
                            arrivals(tiles[0] * tiles[1], y.device)) if splits > 1 else (y, y))
            return (x2, w8, s8, y, m, n, k, kb, stride_x, u2, u2.stride(0),
                    float(glu[1]) if glu is not None else 0.0, norm_w,
                    float(norm[1]) if norm is not None else 0.0, *part_strides, kb_per_split,
                    acc, counts)

        splits, kb_per_split = plan_by_residency(   # the splits the compiled kernel runs best
            lambda slots: fp8_k_splits(m, n, k, block_n, slots) if k_splits else (1, kb),
            lambda plan: Launch(_fp8_gemm_kernel, options(plan[0]),
                                (x2.dtype, u2.dtype, y.dtype), lambda: arguments(*plan))
            if plan[0] > 1 else None, y.device, rounds)
        _fp8_gemm_kernel[(*tiles, splits)](*arguments(splits, kb_per_split), **options(splits))
    return y.to(dtype).reshape(*lead, n)


# The pipeline's stages when the GEMM sums a grouped GEMV's splits as it reads them: each
# stage holds the PARTS fp32 partial tiles [16, 128] (32 KB at 4 parts, though a decode uses
# one row of 16) beside the 4 KB weight tile, so 3 stages (78 KB) leave 2 programs an SM and
# 24 KB of weights in flight; 2 stages (40 KB) leave 5 programs and 40 KB (triton 3.6, sm_90).
SPLITK_STAGES = 2


def fp8_k_splits(m: int, n: int, k: int, block_n: int | None = None,
                 slots: int | None = None) -> tuple[int, int]:
    """(splits, K blocks of 128 per split) of the FP8 GEMM's K: at decode (m ≤ 16, one row
    tile) K is split over programs — wo_b's 4,096 rows are 128 tiles of 32, each 64 K blocks in
    a row where ``wq_b``'s 1,024 tiles run 8 (run 3: 90 µs against 18 for the same bytes) — at
    least 2 K blocks a split, as many splits as take the fewest rounds of the GPU's ``slots``
    resident programs (``residency.split_k``; None: about TARGET_PROGRAMS programs).
    A function of (n, k) and the kernel's residency for every decode batch: a row's result
    does not depend on the rows beside it. Prefill tiles (m > 16) are enough programs
    already: one split."""
    kb = triton.cdiv(k, 128)
    if m > 16:
        return 1, kb
    return split_k(triton.cdiv(n, _blocks(m, n, block_n)[1]), kb, kb // 2, slots)


def plan_split_k(tiles: int, rows: int, k: int, block_k: int, splits: int | None = None,
                 slots: int | None = None) -> tuple[int, int]:
    """(splits, k_per_split) for a W4A16 GEMM with ``tiles`` output programs and ``rows``
    activation rows per weight read: host ints only, no device value is read (no sync).

    Split-K multiplies the programs — as many as take the fewest rounds of the GPU's
    ``slots`` resident programs (``residency.split_k``; None: until about TARGET_PROGRAMS
    stream the weight) — but not so far that the fp32 partials (S·rows·N·4 bytes written and read
    back) exceed 1/8 of the weight bytes (N·K/2): S ≤ K / (128·rows). ``splits`` forces a
    count (tests); either way every split gets a whole number of BLOCK_K tiles and no split is
    empty (the last may be shorter, K need not divide evenly)."""
    k_blocks = triton.cdiv(k, block_k)
    if splits is None:
        splits, per = split_k(tiles, k_blocks, k // (PARTIAL_TRAFFIC_K * max(rows, 1)), slots)
        return splits, per * block_k
    blocks_per_split = triton.cdiv(k_blocks, max(1, min(splits, k_blocks)))
    return triton.cdiv(k_blocks, blocks_per_split), blocks_per_split * block_k


def _fp4_blocks(m: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): at decode (m ≤ 16) one M tile, narrow N tiles and long K
    tiles (128 contiguous weight bytes per row and step), the K axis split over programs."""
    return (16, 32, 256) if m <= 16 else (64, 64, 64)


def fp4_gemm_plan(m: int, n: int, k: int, block_k: int | None = None,
                  split_k: int | None = None, slots: int | None = None
                  ) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, splits, k_per_split) of ``fp4_gemm_triton`` for x [m, k] ·
    W [n, k]ᵀ: from the shapes (and ``slots``: ``plan_split_k``) alone (pure; also reported
    by the kernel bench)."""
    bm, bn, bk = _fp4_blocks(m)
    bk = block_k or bk
    splits, k_per_split = plan_split_k(triton.cdiv(m, bm) * triton.cdiv(n, bn), m, k, bk,
                                       split_k, slots)
    return bm, bn, bk, splits, k_per_split


def fp4_mma_plan(m: int, n: int, k: int, block_k: int | None = None,
                 split_k: int | None = None, slots: int | None = None
                 ) -> tuple[int, int, int]:
    """(BLOCK_K, splits, k_per_split) of ``fp4_gemm_triton``'s tensor-core path (m ≤ 16)."""
    bk = block_k or MMA_BLOCK_K
    return bk, *plan_split_k(triton.cdiv(n, MMA_BLOCK_N), m, k, bk, split_k, slots)


def fp4_gemm_triton(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor,
                    block_k: int | None = None, split_k: int | None = None,
                    mma: bool = False, rounds: bool = True) -> torch.Tensor:
    """x [..., K] · FP4 weight (int8 [N, K/2], ue8m0 [N, K/32])ᵀ → [..., N] in x.dtype.

    Grid (M tiles, N tiles, K splits) from ``fp4_gemm_plan`` (``split_k`` forces the splits).
    At decode (m = 1, V4-Flash w1/w3 2048×4096) the N axis alone gives 64 programs, each
    streaming 32 weight rows × 2 KB — far too few to keep HBM busy; split-K gives each program
    32 rows × one K slice, so ~1024 programs load the 4 MB weight in parallel. Split partials
    are fp32 [S, M, N], summed in a fixed order by one torch reduction (deterministic, no
    atomics). ``mma`` (a launch choice, untimed): up to 16 rows on tensor cores
    (``_fp4_gemm_mma_kernel``, 128-row weight tiles) where ``mma_fp4_tiles`` allows;
    ``rounds`` (a launch choice): the splits from the compiled kernel's residency
    (``plan_split_k``'s ``slots``), else about TARGET_PROGRAMS programs."""
    k, n = x.shape[-1], packed.shape[0]
    assert packed.shape[1] * 2 == k and k % 32 == 0, (x.shape, packed.shape)
    x2, y = _rows_and_output(x, n, half_or_fp32=True)
    m = x2.shape[0]
    w8, s8 = packed.contiguous().view(torch.uint8), scale.contiguous().view(torch.uint8)
    prec = "ieee" if x2.dtype == torch.float32 else "tf32"

    def partials(splits: int) -> torch.Tensor:
        return y if splits == 1 else torch.empty(splits, m, n, dtype=torch.float32,
                                                 device=x.device)

    if mma and 0 < m <= 16 and n:
        bk, splits, k_per_split = fp4_mma_plan(m, n, k, block_k, split_k)
        # (whole K tiles at one split are whole at any: a split is a number of tiles)
        if mma_fp4_tiles(k, k_per_split, bk, packed, scale):
            mma_options = dict(BLOCK_N=MMA_BLOCK_N, BLOCK_K=bk, BF16=x2.dtype == torch.bfloat16,
                               PREC=prec, **pdl(x2.device))
            bk, splits, k_per_split = plan_by_residency(
                lambda slots: fp4_mma_plan(m, n, k, block_k, split_k, slots),
                lambda plan: Launch(_fp4_gemm_mma_kernel, mma_options, (x2.dtype, y.dtype),
                                    lambda: (x2, w8, s8, partials(plan[1]), m, n, k, plan[2]))
                if split_k is None and plan[1] > 1 else None, x2.device, rounds)
            out = partials(splits)
            _fp4_gemm_mma_kernel[(triton.cdiv(n, MMA_BLOCK_N), splits)](
                x2, w8, s8, out, m, n, k, k_per_split, **mma_options)
            y = out if splits == 1 else out.sum(0)
            return y.to(x.dtype).reshape(*x.shape[:-1], n)
    if m and n:
        def options(plan: tuple[int, int, int, int, int]) -> dict:
            bm, bn, bk, _, k_per_split = plan
            return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PREC=prec,
                        FULL=full_fp4_tiles(k, k_per_split, bk, packed, scale),
                        **pdl(x2.device))

        plan = plan_by_residency(
            lambda slots: fp4_gemm_plan(m, n, k, block_k, split_k, slots),
            lambda plan: Launch(_fp4_gemm_kernel, options(plan), (x2.dtype, y.dtype),
                                lambda: (x2, w8, s8, partials(plan[3]), m, n, k, plan[4]))
            if split_k is None and plan[3] > 1 else None, x2.device, rounds)
        bm, bn, _, splits, k_per_split = plan
        out = partials(splits)
        _fp4_gemm_kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn), splits)](
            x2, w8, s8, out, m, n, k, k_per_split, **options(plan))
        if splits > 1:
            y = out.sum(0)
    return y.to(x.dtype).reshape(*x.shape[:-1], n)
