"""Routed experts (fact sheet §2.6) over FP4 experts (W4A16), two Triton paths, no host sync on
either (every grid is sized from host ints: T, k, the bank's shapes):

- decode (few pairs, ``T·k ≤ DECODE_MAX_PAIRS``): no sorting at all — every (token, slot) pair is
  its own row. Grid (pair, N tile, K split) GEMV programs (``_moe_gemv_kernel``); a dropped pair
  (slot −1) exits at once. One token at V4-Flash shapes (k = 6, w1/w3 2048×4096, w2 4096×2048):
  gate/up has 6·64 N tiles of 32 rows, split-K (``decode_plan`` → ``gemm.plan_split_k``) halves
  each K = 4096 row → 768 programs, each streaming 32 rows × 1 KB of w1 and of w3; down has
  6·128 N tiles, 768 programs with no split. So the ≈ 80 MB of the 6 experts is read by
  hundreds of programs at once, with no sort, no padded empty tiles and no host sync before the
  first launch. fp32 partials [S, pairs, N] are reduced in a fixed order by the epilogues,
  each run by the last program of its group to arrive (or, a launch choice, by a kernel of its
  own): gate/up → ``_swiglu_block`` (sum splits, clamped SwiGLU × routing weight → h, per 128
  columns of a pair), down → ``_combine_row`` (sum splits and the token's slots → y, per N
  tile of a token): 2 launches. In native numerics the gate/up programs put x on its FP8 grid
  as they read it and the SwiGLU epilogue puts h on the down projection's, so quantisation
  costs no launch of its own. A pair re-reads its
  expert even when another pair of the batch chose it too (rare at small T·k; L2 absorbs it).
- grouped (prefill): align the pairs by expert on the device (``moe_align``: padded per expert to
  BLOCK_M rows, sized by the host bound T·k + n_experts·(BLOCK_M − 1)), so each M tile belongs to
  one expert; grouped gate/up tl.dot GEMM with the SwiGLU fused, grouped down GEMM, combine.
  Tiles past the last expert's group are marked −1 and exit at once.

FP4 tiles are decoded in registers by ``gemm.load_fp4_tile`` / ``place_fp4`` (``decode_fp4_tile``
for the grouped GEMM's dots), or, with ``mma`` (a launch choice), by ``gemm.load_fp4_mma_tile``
for the decode GEMVs on tensor cores (``_fp4_mma_row_dots``).
Expert weights come as an ``ExpertBank`` (model/kernels/expert_bank.py): per part a base byte
tensor and each slot's byte offset in it — views of the mapped checkpoint, or one stacked copy —
so the kernels read w1, w3 int8 [inter, dim/2] + ue8m0 [inter, dim/32] and w2 int8
[dim, inter/2] + ue8m0 [dim, inter/32] of slot e at base + offset[e].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from model.kernels import quant, quant_triton
from model.kernels.expert_bank import ExpertBank, PartBank
from model.kernels.fp4_pairs import FP4_MMA_ACT_SHIFT, fp4_mma_order, to_mma_order
from model.kernels.gemm import (
    FP4_ACT_SHIFT,
    FP4_GEMV_SCALE_SHIFT,
    FP4_UNSHIFT,
    SUM_CHUNK,
    clamped_swiglu,
    decode_fp4_tile,
    load_fp4_mma_tile,
    load_fp4_tile,
    mma_fp4_tiles,
    place_fp4,
    plan_split_k,
    sum_parts_pair,
    whole_k_tiles,
)
from model.kernels.launch import (
    arrivals,
    finish_fused,
    grid_entry,
    interpreter_fp32,
    last_to_arrive,
    pdl,
)
from model.kernels.quant_triton import _e4m3_values, _scale_exponent
from model.kernels.residency import Launch, plan_by_residency

DECODE_MAX_PAIRS = 64  # T·k up to this: unsorted per-pair GEMV path
DECODE_BLOCK_N = 32    # GEMV tile: 32 weight rows × 64 bytes per step
DECODE_BLOCK_K = 128
ACT_QUANT_BLOCK = 128  # native numerics' FP8 activation block (1×128, power-of-two scales)
EPILOGUE_BLOCK = ACT_QUANT_BLOCK   # the decode epilogue quantises h in place, block by block
GROUP_BLOCK_N = 32     # the grouped GEMM's weight rows a tile
GROUP_BLOCK_K = 64     # and K a step


def _linear(x: torch.Tensor, w: torch.Tensor, quantize_input: bool) -> torch.Tensor:
    """``ops.linear``: x · wᵀ, x first FP8-quantised per 1×128 in native numerics."""
    if quantize_input:
        x = quant.fp8_fake_quant(x, 128)
    if x.dtype == torch.bfloat16 and w.dtype == torch.bfloat16:
        return F.linear(x, w)
    return F.linear(x.to(w.dtype), w).to(x.dtype)


def _dequant(w: PartBank, s: PartBank, slot: int, dtype: torch.dtype) -> torch.Tensor:
    return quant.dequant_fp4(w.slot(slot), s.slot(slot)).to(dtype)


def moe_fp4_reference(x: torch.Tensor, weights: torch.Tensor, slots: torch.Tensor,
                      bank: ExpertBank, limit: float, quantize_input: bool = False,
                      dtype: torch.dtype | None = None, add: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """x [T, dim], weights [T, k] fp32, slots [T, k] (−1 = none) → fp32 [T, dim] (routed
    experts, + ``add`` when given: the shared expert's output).

    A loop over the slots that received tokens, in ascending order, each expert dequantised to
    the compute ``dtype`` (default x.dtype) and run exactly as ``Expert.forward`` does — so the
    logits equal the per-expert path bit for bit (expert offload relies on it). On CPU this is
    also the faster reference: nothing is computed for experts no token chose."""
    dtype = dtype or x.dtype
    y = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    hit = torch.bincount(slots[slots >= 0].flatten(), minlength=bank.n_slots).tolist()
    for e, count in enumerate(hit):
        if count == 0:
            continue
        rows, k = torch.where(slots == e)
        xe = x[rows]
        gate = _linear(xe, _dequant(bank.w1, bank.s1, e, dtype), quantize_input).float()
        up = _linear(xe, _dequant(bank.w3, bank.s3, e, dtype), quantize_input).float()
        if limit > 0:
            up, gate = up.clamp(-limit, limit), gate.clamp(max=limit)
        h = weights[rows, k, None] * (F.silu(gate) * up)
        out = _linear(h.to(x.dtype), _dequant(bank.w2, bank.s2, e, dtype), quantize_input)
        y.index_add_(0, rows, out.float())
    return y if add is None else y + add.float()


def moe_align(indices: torch.Tensor, n_experts: int, block_m: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """→ (sorted_pairs [P_pad] pair ids t·k+slot, −1 = padding; tile_expert [P_pad/block_m],
    −1 = unused tile; pair_pos [T·k] position of each pair in sorted order, −1 = dropped).

    Device-only torch (no .item / bincount / boolean indexing: no host sync): P_pad is the host
    bound T·k + n_experts·(block_m − 1) rounded up to block_m; dropped pairs are scattered into a
    spare last slot that is cut off."""
    flat = indices.reshape(-1).long()
    p = flat.numel()
    dev = flat.device
    valid = (flat >= 0) & (flat < n_experts)
    expert = torch.where(valid, flat, n_experts)            # invalid pairs sort last, dropped
    order = torch.argsort(expert, stable=True)
    counts = torch.zeros(n_experts + 1, dtype=torch.long, device=dev).scatter_add_(
        0, expert, torch.ones_like(expert))[:n_experts]
    padded = (counts + block_m - 1) // block_m * block_m
    starts = torch.cumsum(padded, 0) - padded                # padded group start per expert
    first = torch.cumsum(counts, 0) - counts                 # unpadded group start
    cap = (p + n_experts * (block_m - 1) + block_m - 1) // block_m * block_m
    e_sorted = expert.gather(0, order)
    ok = e_sorted < n_experts
    e_clamped = e_sorted.clamp(max=n_experts - 1)
    rank = torch.arange(p, device=dev) - first.gather(0, e_clamped)
    pos = torch.where(ok, starts.gather(0, e_clamped) + rank, -1)
    sorted_pairs = torch.full((cap + 1,), -1, dtype=torch.int32, device=dev)
    sorted_pairs.scatter_(0, torch.where(ok, pos, cap), order.to(torch.int32))
    sorted_pairs = sorted_pairs[:cap]
    pair_pos = torch.empty(p, dtype=torch.int32, device=dev).scatter_(0, order, pos.to(torch.int32))
    tile_start = torch.arange(0, cap, block_m, device=dev)
    ends = torch.cumsum(padded, 0)
    tile_expert = torch.searchsorted(ends, tile_start, right=True)
    tile_expert = torch.where(tile_expert < n_experts, tile_expert, -1).to(torch.int32)
    return sorted_pairs, tile_expert, pair_pos


@triton.jit
def _slot_base(ptr, off_ptr, e, FULL: tl.constexpr = False):
    """Where slot e's bytes of one bank part start. FULL: the bank's promise that every slot's
    offset is a multiple of 16 (``whole_tiles``), told to the compiler for vector loads."""
    off = tl.load(off_ptr + e)
    if FULL:
        off = tl.multiple_of(off, 16)
    return ptr + off


@triton.jit
def _fp4_row_dot(a_row, w_base, s_base, offs_n, mask_n, k_lo, k_hi, K,
                 QUANT: tl.constexpr, FLOOR_BITS: tl.constexpr, INV_MAX_BITS: tl.constexpr,
                 QMAX: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 FULL: tl.constexpr = False, AHEAD: tl.constexpr = False):
    """Σ_{k_lo ≤ k < k_hi} a[k]·W[n, k] for the rows ``offs_n`` of one FP4 weight → float32
    [BLOCK_N]: a GEMV slice for one activation row (``a_row`` points at a[0]). No tl.dot (it
    needs M ≥ 16): the decoded tile is multiplied by the broadcast row and summed over k.
    ``k_lo`` is a multiple of BLOCK_K; ``k_hi`` a multiple of 32 (or K). ``QUANT`` (BLOCK_K =
    128, the FP8 activation block): a is put on its FP8 grid as it is loaded — native numerics'
    input quantisation of the experts, with no launch of its own. FULL: every tile whole and
    the parts aligned (``decode_fp4_tile``'s FULL): the row slice loads contiguously and splits
    into even / odd k in registers. AHEAD (a launch choice, untimed): each step asks for the
    next tile's bytes before its own arithmetic — two tiles of loads in flight a program, for
    about 35 more registers a thread on triton 3.6.
    The codes stay as placed (``gemm.place_fp4``): 2^100 of their 2^126 goes on the
    activation as it is read (exact for |a| < 2^28), 2^26 on the scale, which multiplies each
    byte's two products once."""
    offs_j = tl.arange(0, BLOCK_K // 2)
    # products accumulate per (row, byte column) and are summed over k once, after the loop:
    # no cross-lane reduction per step
    acc = tl.zeros([BLOCK_N, BLOCK_K // 2], dtype=tl.float32)
    if AHEAD:
        col = k_lo // 2 + offs_j
        rows = mask_n & ((k_lo + 0 * offs_n) < k_hi)
        byte, s = load_fp4_tile(w_base, s_base, offs_n, rows, col, k_lo // 2, col < k_hi // 2,
                                K, FULL)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        col = k0 // 2 + offs_j
        mask_j = col < k_hi // 2
        if AHEAD:   # the next tile's bytes asked for before this tile's arithmetic
            ahead = col + BLOCK_K // 2
            rows = mask_n & ((k0 + BLOCK_K + 0 * offs_n) < k_hi)
            next_byte, next_s = load_fp4_tile(w_base, s_base, offs_n, rows, ahead,
                                              k0 // 2 + BLOCK_K // 2, ahead < k_hi // 2, K, FULL)
        else:
            byte, s = load_fp4_tile(w_base, s_base, offs_n, mask_n, col, k0 // 2, mask_j, K,
                                    FULL)
        # a × FP4_ACT_SHIFT (the codes stay as placed), while it is one value a thread or two,
        # before the split and the broadcast over the tile's rows
        if FULL:
            a = tl.load(a_row + k0 + tl.arange(0, BLOCK_K)).to(tl.float32)
            if not QUANT:
                a = a * FP4_ACT_SHIFT
            a_even, a_odd = tl.split(tl.reshape(a, [BLOCK_K // 2, 2]))
        else:
            a_even = tl.load(a_row + 2 * col, mask=mask_j, other=0.0).to(tl.float32)
            a_odd = tl.load(a_row + 2 * col + 1, mask=mask_j, other=0.0).to(tl.float32)
            if not QUANT:
                a_even, a_odd = a_even * FP4_ACT_SHIFT, a_odd * FP4_ACT_SHIFT
        if QUANT:   # this chunk is one 1×128 block: amax of both halves, one pow2 scale
            ex = _scale_exponent(tl.maximum(tl.max(tl.abs(a_even), 0), tl.max(tl.abs(a_odd), 0)),
                                 FLOOR_BITS, INV_MAX_BITS)
            a_even = _e4m3_values(a_even, ex, QMAX) * FP4_ACT_SHIFT
            a_odd = _e4m3_values(a_odd, ex, QMAX) * FP4_ACT_SHIFT
        w_even, w_odd, sc = place_fp4(byte, s, FP4_GEMV_SCALE_SHIFT, FULL)
        # the scale once per byte (two weights), after their products
        acc += (w_even * a_even[None, :] + w_odd * a_odd[None, :]) * sc
        if AHEAD:
            byte, s = next_byte, next_s
    return tl.sum(acc, axis=1)


@triton.jit
def _moe_gemv_kernel(a_ptr, slots_ptr, w_ptr, w_off_ptr, s_ptr, s_off_ptr, w3_ptr, w3_off_ptr,
                     s3_ptr, s3_off_ptr, part_ptr, out_ptr, rw_ptr, add_ptr, cnt_ptr, TOPK, P, N,
                     K, K_PER_SPLIT, N_SLOTS, limit, UP: tl.constexpr, QUANT: tl.constexpr,
                     FLOOR_BITS: tl.constexpr, INV_MAX_BITS: tl.constexpr, QMAX: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FULL: tl.constexpr = False,
                     AHEAD: tl.constexpr = False, MMA: tl.constexpr = False,
                     BF16: tl.constexpr = False, PREC: tl.constexpr = "ieee",
                     FINISH: tl.constexpr = False, EPILOGUE: tl.constexpr = 1,
                     QUANT_H: tl.constexpr = False, ADD: tl.constexpr = False,
                     PDL: tl.constexpr = False):
    """Decode program (pair, N tile, K split); the pair's expert is slots[pair] (−1: nothing
    to compute). UP: a = x, row pair // TOPK; partial gate → part[0, split, pair], up →
    part[1, split, pair]. Else: a = h, row pair; partial down → part[0, split, pair]. part:
    fp32 [2|1, S, P, N]. QUANT: a is FP8-quantised per 1×128 as it is read (``_fp4_row_dot``).
    MMA (a launch choice, untimed): on tensor cores (``_fp4_mma_row_dots``; BF16 / PREC its
    operands).

    FINISH: the last program of a group to arrive (``cnt``, ``launch.arrivals``; a dropped
    pair's programs arrive too) runs the epilogue the group's partials feed, with no launch of
    its own. UP: group (pair, EPILOGUE columns: EPILOGUE_BLOCK, a multiple of BLOCK_N), its
    N tiles × S programs — ``_swiglu_block`` into out = h (× rw, QUANT_H: on the FP8 grid).
    Down: group (token, N tile), the token's TOPK × S programs — ``_combine_row`` into out = y
    (+ add when ADD)."""
    grid_entry(PDL)
    pair = tl.program_id(0)
    pid_k = tl.program_id(2)
    splits = tl.num_programs(2)
    e = tl.load(slots_ptr + pair)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    out = part_ptr + (pid_k * P + pair).to(tl.int64) * N + offs_n
    if (e >= 0) & (e < N_SLOTS):
        if UP:
            a_row = a_ptr + (pair // TOPK).to(tl.int64) * K
        else:
            a_row = a_ptr + pair.to(tl.int64) * K
        k_lo = pid_k * K_PER_SPLIT
        k_hi = tl.minimum(K, k_lo + K_PER_SPLIT)
        w_base = _slot_base(w_ptr, w_off_ptr, e, FULL)
        s_base = _slot_base(s_ptr, s_off_ptr, e, FULL)
        w3_base = _slot_base(w3_ptr, w3_off_ptr, e, FULL)
        s3_base = _slot_base(s3_ptr, s3_off_ptr, e, FULL)
        if MMA:
            acc, acc3 = _fp4_mma_row_dots(a_row, w_base, s_base, w3_base, s3_base, offs_n,
                                          mask_n, k_lo, k_hi, K, UP, QUANT, FLOOR_BITS,
                                          INV_MAX_BITS, QMAX, BLOCK_N, BLOCK_K, BF16, PREC)
        else:
            acc = _fp4_row_dot(a_row, w_base, s_base, offs_n, mask_n, k_lo, k_hi, K, QUANT,
                               FLOOR_BITS, INV_MAX_BITS, QMAX, BLOCK_N, BLOCK_K, FULL, AHEAD)
            if UP:
                acc3 = _fp4_row_dot(a_row, w3_base, s3_base, offs_n, mask_n, k_lo, k_hi, K,
                                    QUANT, FLOOR_BITS, INV_MAX_BITS, QMAX, BLOCK_N, BLOCK_K,
                                    FULL, AHEAD)
        tl.store(out, acc, mask=mask_n)
        if UP:
            tl.store(out + (splits * P).to(tl.int64) * N, acc3, mask=mask_n)
    else:   # a dropped pair: its partials are zeros, so the epilogues' sums add numbers
        zeros = tl.zeros([BLOCK_N], dtype=tl.float32)
        tl.store(out, zeros, mask=mask_n)
        if UP:
            tl.store(out + (splits * P).to(tl.int64) * N, zeros, mask=mask_n)
    if FINISH:
        if UP:   # the group: this pair's N tiles of one EPILOGUE of columns, all splits
            TILES: tl.constexpr = EPILOGUE // BLOCK_N
            block = tl.program_id(1) // TILES
            tiles = tl.minimum(TILES, tl.num_programs(1) - block * TILES)
            group = cnt_ptr + pair * tl.cdiv(tl.num_programs(1), TILES) + block
            if last_to_arrive(group, tiles * splits):   # sees the group's partials
                _swiglu_block(part_ptr, slots_ptr, rw_ptr, out_ptr, pair,
                              block * EPILOGUE + tl.arange(0, EPILOGUE), P, N,
                              N_SLOTS, splits, limit, QUANT_H, FLOOR_BITS, INV_MAX_BITS, QMAX)
        else:    # the group: token t's TOPK pairs × splits of this N tile
            t = pair // TOPK
            group = cnt_ptr + t * tl.num_programs(1) + tl.program_id(1)
            if last_to_arrive(group, TOPK * splits):   # sees the group's partials
                cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
                _combine_row(part_ptr, slots_ptr, add_ptr, out_ptr, t, cols, cols < N, TOPK, N,
                             P, splits, N_SLOTS, True, ADD)


@triton.jit
def _fp4_mma_row_dots(a_row, w_base, s_base, w3_base, s3_base, offs_n, mask_n, k_lo, k_hi, K,
                      UP: tl.constexpr, QUANT: tl.constexpr, FLOOR_BITS: tl.constexpr,
                      INV_MAX_BITS: tl.constexpr, QMAX: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, BF16: tl.constexpr, PREC: tl.constexpr):
    """``_fp4_row_dot`` on tensor cores, for W and (UP) W3 at once → float32 [BLOCK_N] each
    (W3's zero without UP): the weight tile is the MMA's M side (``gemm.load_fp4_mma_tile``,
    two weights a register), the activation its N side, 16 columns of which only column 0 is
    non-zero (tl.dot's least N), read in the tile's column order and shared by W and W3.
    Needs ``mma_fp4_tiles``."""
    order = fp4_mma_order(BLOCK_K)
    first = (tl.arange(0, 16) == 0)[None, :]
    acc = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        a = tl.load(a_row + k0 + order).to(tl.float32)
        if QUANT:   # this tile is one 1×128 block (in another order: the same amax)
            a = _e4m3_values(a, _scale_exponent(tl.max(tl.abs(a), 0), FLOOR_BITS,
                                                INV_MAX_BITS), QMAX)
        w = load_fp4_mma_tile(w_base, s_base, offs_n, mask_n, k0, K, BLOCK_K, BF16)
        b = tl.where(first, (a * FP4_MMA_ACT_SHIFT)[:, None], 0.0).to(w.dtype)
        acc = tl.dot(w, b, acc, input_precision=PREC)
        if UP:
            w3 = load_fp4_mma_tile(w3_base, s3_base, offs_n, mask_n, k0, K, BLOCK_K, BF16)
            acc3 = tl.dot(w3, b, acc3, input_precision=PREC)
    return tl.sum(acc, axis=1), tl.sum(acc3, axis=1)


@triton.jit
def _swiglu_kernel(gate_ptr, up_ptr, w_ptr, out_ptr, N, stride_g, stride_u, limit,
                   HAS_WEIGHTS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    """One row's BLOCK columns: out = clamped SwiGLU(gate, up) (× the row's weight)."""
    grid_entry(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    gate = tl.load(gate_ptr + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_WEIGHTS:
        rw = tl.load(w_ptr + row).to(tl.float32)
    else:
        rw = 1.0
    h = clamped_swiglu(gate, up, rw, limit)
    tl.store(out_ptr + row * N + cols, h.to(out_ptr.dtype.element_ty), mask=mask)


def swiglu_triton(gate: torch.Tensor, up: torch.Tensor, limit: float,
                  weights: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The reference in one launch: gate, up [..., N] (rows of unit stride, any float dtype),
    weights [...] or [..., 1] per row."""
    n = gate.shape[-1]
    g2, u2 = gate.reshape(-1, n), up.reshape(-1, n)
    if interpreter_fp32():   # the interpreter mishandles bf16
        g2, u2 = g2.float(), u2.float()
    g2 = g2 if g2.stride(-1) == 1 else g2.contiguous()
    u2 = u2 if u2.stride(-1) == 1 else u2.contiguous()
    rows = g2.shape[0]
    out_dtype = torch.float32 if interpreter_fp32() else dtype
    out = torch.empty(rows, n, dtype=out_dtype, device=gate.device)
    w = weights.reshape(rows).float().contiguous() if weights is not None else out
    if rows and n:
        _swiglu_kernel[(rows, triton.cdiv(n, EPILOGUE_BLOCK))](
            g2, u2, w, out, n, g2.stride(0), u2.stride(0), float(limit),
            HAS_WEIGHTS=weights is not None, BLOCK=EPILOGUE_BLOCK, **pdl(g2.device))
    return out.view(*gate.shape[:-1], n).to(dtype)


@triton.jit
def _moe_swiglu_kernel(part_ptr, slots_ptr, rw_ptr, h_ptr, P, N, N_SLOTS, SPLITS, limit,
                       QUANT: tl.constexpr, FLOOR_BITS: tl.constexpr,
                       INV_MAX_BITS: tl.constexpr, QMAX: tl.constexpr, BLOCK: tl.constexpr,
                       PDL: tl.constexpr = False):
    """Decode gate/up epilogue, program (pair, BLOCK columns): ``_swiglu_block``."""
    grid_entry(PDL)
    _swiglu_block(part_ptr, slots_ptr, rw_ptr, h_ptr, tl.program_id(0),
                  tl.program_id(1) * BLOCK + tl.arange(0, BLOCK), P, N, N_SLOTS, SPLITS, limit,
                  QUANT, FLOOR_BITS, INV_MAX_BITS, QMAX)


@triton.jit
def _swiglu_block(part_ptr, slots_ptr, rw_ptr, h_ptr, pair, cols, P, N, N_SLOTS, SPLITS, limit,
                  QUANT: tl.constexpr, FLOOR_BITS: tl.constexpr, INV_MAX_BITS: tl.constexpr,
                  QMAX: tl.constexpr):
    """h[pair, cols] = clamped SwiGLU(Σ_split gate, Σ_split up) × rw[pair], splits summed in
    order (deterministic); 0 for a dropped pair. part: fp32 [2, S, P, N]. QUANT (native
    numerics): h leaves on the FP8 grid, the down projection's input quantisation (e4m3 per
    1×128 — ``cols`` is one such block — power-of-two scale), as ``fp8_fake_quant`` would
    make it. The epilogue kernel's body, and the gate/up GEMV's last programs' (FINISH)."""
    mask = cols < N
    e = tl.load(slots_ptr + pair)
    rw = tl.load(rw_ptr + pair)
    # the gate's and the up's partials, loaded beside the slot (a dropped pair's GEMV
    # programs stored zeros; its h is 0 whatever), a chunk of splits of both a wait
    base = part_ptr + pair.to(tl.int64) * N
    gate, up = sum_parts_pair(base, base + (SPLITS * P).to(tl.int64) * N, SPLITS, P * N, cols,
                              mask)
    h = tl.zeros(cols.shape, dtype=tl.float32)
    if (e >= 0) & (e < N_SLOTS):
        h = clamped_swiglu(gate, up, rw, limit)
    if QUANT:
        ex = _scale_exponent(tl.max(tl.abs(h), 0), FLOOR_BITS, INV_MAX_BITS)
        h = _e4m3_values(h, ex, QMAX)
    tl.store(h_ptr + pair.to(tl.int64) * N + cols, h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _moe_gemm_kernel(a_ptr, pairs_ptr, tile_e_ptr, rw_ptr, w_ptr, w_off_ptr, s_ptr, s_off_ptr,
                     w3_ptr, w3_off_ptr, s3_ptr, s3_off_ptr, out_ptr, TOPK, N, K, limit,
                     UP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, PREC: tl.constexpr, FULL: tl.constexpr = False,
                     MMA: tl.constexpr = False, BF16: tl.constexpr = False,
                     PDL: tl.constexpr = False):
    """Grouped (prefill) tile of one expert. UP: out[pos] = swiglu(a[tok]·w1ᵀ, a[tok]·w3ᵀ)·rw;
    else out[pos] = a[pos]·wᵀ. FULL: ``decode_fp4_tile``'s (whole tiles, aligned bank). MMA
    (``mma_fp4_tiles``; a launch choice, untimed): tiles from ``load_fp4_mma_tile`` (bf16 when
    BF16), one dot a step against the activation read in their columns' order."""
    grid_entry(PDL)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(tile_e_ptr + pid_m)
    if e >= 0:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        pairs = tl.load(pairs_ptr + offs_m)
        valid = pairs >= 0
        if UP:
            a_rows = tl.where(valid, pairs // TOPK, 0)
        else:
            a_rows = offs_m
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        offs_j = tl.arange(0, BLOCK_K // 2)
        a_base = a_ptr + a_rows[:, None].to(tl.int64) * K
        w_base = _slot_base(w_ptr, w_off_ptr, e, FULL)
        s_base = _slot_base(s_ptr, s_off_ptr, e, FULL)
        w3_base = _slot_base(w3_ptr, w3_off_ptr, e, FULL)
        s3_base = _slot_base(s3_ptr, s3_off_ptr, e, FULL)
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc3 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            col = k0 // 2 + offs_j
            mask_j = col < K // 2
            if MMA:
                a = tl.load(a_base + k0 + tl.arange(0, BLOCK_K)[None, :], mask=valid[:, None],
                            other=0.0)
                w = load_fp4_mma_tile(w_base, s_base, offs_n, mask_n, k0, K, BLOCK_K, BF16)
                a = to_mma_order(a.to(tl.float32) * FP4_MMA_ACT_SHIFT).to(w.dtype)
                acc = tl.dot(a, tl.trans(w), acc, input_precision=PREC)
                if UP:
                    w3 = load_fp4_mma_tile(w3_base, s3_base, offs_n, mask_n, k0, K, BLOCK_K,
                                           BF16)
                    acc3 = tl.dot(a, tl.trans(w3), acc3, input_precision=PREC)
            else:
                if FULL:   # one contiguous slice of each row, split into even / odd k
                    a = tl.load(a_base + k0 + tl.arange(0, BLOCK_K)[None, :],
                                mask=valid[:, None], other=0.0)
                    a_even, a_odd = tl.split(tl.reshape(a, [BLOCK_M, BLOCK_K // 2, 2]))
                else:
                    ma = valid[:, None] & mask_j[None, :]
                    a_even = tl.load(a_base + 2 * col[None, :], mask=ma, other=0.0)
                    a_odd = tl.load(a_base + 2 * col[None, :] + 1, mask=ma, other=0.0)
                w_even, w_odd = decode_fp4_tile(w_base, s_base, offs_n, mask_n, col, k0 // 2,
                                                mask_j, K, FULL)
                acc += tl.dot(a_even, tl.trans(w_even.to(a_even.dtype)), input_precision=PREC)
                acc += tl.dot(a_odd, tl.trans(w_odd.to(a_even.dtype)), input_precision=PREC)
                if UP:
                    u_even, u_odd = decode_fp4_tile(w3_base, s3_base, offs_n, mask_n, col,
                                                    k0 // 2, mask_j, K, FULL)
                    acc3 += tl.dot(a_even, tl.trans(u_even.to(a_even.dtype)),
                                   input_precision=PREC)
                    acc3 += tl.dot(a_odd, tl.trans(u_odd.to(a_even.dtype)),
                                   input_precision=PREC)
        if not MMA:   # (the MMA tiles' shift is on the activation)
            acc *= FP4_UNSHIFT
            if UP:
                acc3 *= FP4_UNSHIFT
        if UP:
            rw = tl.load(rw_ptr + tl.where(valid, pairs, 0), mask=valid, other=0.0)
            acc = clamped_swiglu(acc, acc3, rw[:, None], limit)
        tl.store(out_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & mask_n[None, :])


@triton.jit
def _moe_combine_kernel(part_ptr, key_ptr, add_ptr, y_ptr, TOPK, N, ROWS, SPLITS, N_SLOTS,
                        BY_SLOT: tl.constexpr, ADD: tl.constexpr, BLOCK: tl.constexpr,
                        PDL: tl.constexpr = False):
    """y[t] = Σ_slot Σ_split part[split, row(t·k + slot)] in fp32, in a fixed order, then
    + add[t] when ADD (the shared expert). part: fp32 [S, ROWS, N]. BY_SLOT (decode): key =
    slots, row = the pair itself unless its slot is −1; else (grouped): key = pair_pos, the
    pair's sorted row, −1 = dropped."""
    grid_entry(PDL)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    _combine_row(part_ptr, key_ptr, add_ptr, y_ptr, tl.program_id(0), cols, cols < N, TOPK, N,
                 ROWS, SPLITS, N_SLOTS, BY_SLOT, ADD)


@triton.jit
def _combine_row(part_ptr, key_ptr, add_ptr, y_ptr, t, cols, mask, TOPK, N, ROWS, SPLITS, N_SLOTS,
                 BY_SLOT: tl.constexpr, ADD: tl.constexpr):
    """``_moe_combine_kernel``'s sum for token t's columns ``cols`` (the down GEMV's fused
    combine runs it too: the same order, the same bits)."""
    if ADD:
        extra = tl.load(add_ptr + t.to(tl.int64) * N + cols, mask=mask, other=0.0)
    # the token's TOPK × SPLITS partials in (slot, split) order, SUM_CHUNK of them at a time:
    # their loads issued together, then their sum. BY_SLOT, a partial's row is its pair, known
    # before its slot: it is loaded beside the slots, and zeroed where the slot is empty (the
    # GEMV stored zeros there too) or the item is past the last; else its row is the key,
    # loaded first.
    acc = tl.zeros(cols.shape, dtype=tl.float32)
    items = TOPK * SPLITS
    for q0 in range(0, items, SUM_CHUNK):
        rows = ()
        kept = ()
        for i in tl.static_range(SUM_CHUNK):
            pair = t * TOPK + tl.minimum((q0 + i) // SPLITS, TOPK - 1)   # (past items: unused)
            key = tl.load(key_ptr + pair)
            if BY_SLOT:
                rows = rows + (pair,)
                kept = kept + ((key >= 0) & (key < N_SLOTS) & (q0 + i < items),)
            else:
                rows = rows + (tl.maximum(key, 0),)
                kept = kept + ((key >= 0) & (q0 + i < items),)
        parts = ()
        for i in tl.static_range(SUM_CHUNK):
            at = part_ptr + (((q0 + i) % SPLITS) * ROWS + rows[i]).to(tl.int64) * N + cols
            if BY_SLOT:
                part = tl.load(at, mask=mask, other=0.0)
            else:
                there = mask & (kept[i].to(tl.int32) + 0 * cols > 0)   # a tensor: the
                part = tl.load(at, mask=there, other=0.0)                # interpreter masks
            parts = parts + (tl.where(kept[i], part, 0.0),)
        for i in tl.static_range(SUM_CHUNK):
            acc += parts[i]
    if ADD:
        acc += extra.to(tl.float32)
    tl.store(y_ptr + t.to(tl.int64) * N + cols, acc, mask=mask)


def whole_tiles(k: int, k_per_split: int, block_k: int, *parts: PartBank) -> bool:
    """``decode_fp4_tile``'s FULL promise for a bank: whole K tiles (``gemm.whole_k_tiles``)
    and every slot of every part 16-byte aligned (``PartBank.aligned``, known on the host)."""
    return whole_k_tiles(k, k_per_split, block_k) and all(p.aligned for p in parts)


def _bank_args(*parts: PartBank) -> tuple[torch.Tensor, ...]:
    """(base, offsets) of each part, flattened, as the kernels take them."""
    return tuple(t for p in parts for t in (p.base, p.offsets))


def _mma_numerics(a: torch.Tensor, mma: bool) -> dict:
    """The GEMV's MMA flag and, on tensor cores, its operand type for activations ``a``:
    bf16 tiles for bf16 (exact: the decoded weights have 2 significant bits), else float32
    tiles, tf32 dots for fp16 (exact too) and IEEE ones for float32 (the interpreter's)."""
    return {"MMA": mma, "BF16": mma and a.dtype == torch.bfloat16,
            "PREC": "ieee" if a.dtype == torch.float32 else "tf32"}


def decode_plan(pairs: int, dim: int, inter: int, block_k: int = DECODE_BLOCK_K,
                split_k: int | None = None, block_n: int = DECODE_BLOCK_N
                ) -> tuple[tuple[int, int], tuple[int, int]]:
    """((splits, k_per_split) of gate/up, (splits, k_per_split) of down) of the decode path for
    ``pairs`` = T·k (token, slot) pairs, from the shapes alone: nothing on the device is read,
    so the launch needs no host sync (each pair reads its own expert: rows = 1). The launch
    then plans each GEMV again by its compiled kernel's residency (``_gemv_plan``'s
    ``slots``, ``residency.plan_by_residency``)."""
    return (_gemv_plan(pairs, inter, dim, block_k, split_k, block_n, None),
            _gemv_plan(pairs, dim, inter, block_k, split_k, block_n, None))


def _gemv_plan(pairs: int, n: int, k: int, block_k: int, split_k: int | None, block_n: int,
               slots: int | None) -> tuple[int, int]:
    """(splits, k_per_split) of one decode GEMV (``decode_plan``): ``pairs`` × N tiles of
    ``block_n`` of its n outputs, over k."""
    return plan_split_k(pairs * triton.cdiv(n, block_n), 1, k, block_k, split_k, slots)


def _moe_decode(xin: torch.Tensor, rw: torch.Tensor, slots: torch.Tensor, bank: ExpertBank,
                limit: float, quantize_input: bool, split_k: int | None, block_k: int,
                add: torch.Tensor | None, block_n: int, num_warps: int, ahead: bool,
                mma: bool, finish: str = "fused", rounds: bool = True) -> torch.Tensor:
    """The per-pair split-K path (see the module docstring): 2 launches, no host sync — the
    gate/up GEMV whose last programs run the SwiGLU epilogue, the down GEMV whose last programs
    combine (``finish="kernel"``: 4, each epilogue a launch of its own). ``mma``: the GEMVs on
    tensor cores (``_fp4_mma_row_dots``) where the bank's tiles allow it."""
    fused = finish_fused("the MoE decode's finish", finish)
    if fused and EPILOGUE_BLOCK % block_n:
        raise ValueError(f"block_n={block_n} does not divide the epilogue's {EPILOGUE_BLOCK} "
                         "columns")
    t, dim = xin.shape
    topk, n_exp, inter = slots.shape[1], bank.n_slots, bank.w1.shape[0]
    flat = slots.reshape(-1).contiguous()
    p, bn, dev = flat.numel(), block_n, xin.device
    overlap = pdl(dev)   # every launch's options (launch.pdl)
    up_parts = (bank.w1, bank.s1, bank.w3, bank.s3)
    down_parts = _bank_args(bank.w2, bank.s2)
    quant_x = quantize_input and block_k == ACT_QUANT_BLOCK
    # native numerics: x is put on its FP8 grid as the programs read it (one 1×128 block per
    # K step), so there is no quantisation launch before this one; and the SwiGLU epilogue puts
    # h on the FP8 grid of the down projection's input (its 128-column blocks are the
    # quantisation blocks): no separate quantisation launch either
    h = torch.empty(p, inter, dtype=xin.dtype, device=dev)
    y = torch.empty(t, dim, dtype=torch.float32, device=dev)
    up_tiles, down_tiles = triton.cdiv(inter, bn), triton.cdiv(dim, bn)

    # each GEMV's launch options and (arguments, its partial sums) at a K split
    def up_options(k_per: int) -> dict:
        return dict(UP=True, QUANT=quant_x, **quant_triton.FP8_CONSTANTS, BLOCK_N=bn,
                    BLOCK_K=block_k, FULL=whole_tiles(dim, k_per, block_k, *up_parts),
                    AHEAD=ahead,
                    **_mma_numerics(xin, mma and mma_fp4_tiles(dim, k_per, block_k,
                                                               *(q.aligned for q in up_parts))),
                    FINISH=fused, EPILOGUE=EPILOGUE_BLOCK, QUANT_H=quantize_input,
                    num_warps=num_warps, **overlap)

    def up_arguments(splits: int, k_per: int) -> tuple[tuple, torch.Tensor]:
        part = torch.empty(2, splits, p, inter, dtype=torch.float32, device=dev)
        groups = p * triton.cdiv(up_tiles, EPILOGUE_BLOCK // bn)
        return ((xin, flat, *_bank_args(*up_parts), part, h, rw, part,
                 arrivals(groups, dev) if fused else part, topk, p, inter, dim, k_per, n_exp,
                 float(limit)), part)

    def down_options(k_per: int) -> dict:
        return dict(UP=False, QUANT=False, **quant_triton.FP8_CONSTANTS, BLOCK_N=bn,
                    BLOCK_K=block_k, FULL=whole_tiles(inter, k_per, block_k, bank.w2, bank.s2),
                    AHEAD=ahead,
                    **_mma_numerics(h, mma and mma_fp4_tiles(inter, k_per, block_k,
                                                             bank.w2.aligned, bank.s2.aligned)),
                    FINISH=fused, ADD=add is not None, num_warps=num_warps, **overlap)

    def down_arguments(splits: int, k_per: int) -> tuple[tuple, torch.Tensor]:
        part = torch.empty(1, splits, p, dim, dtype=torch.float32, device=dev)
        return ((h, flat, *down_parts, *down_parts, part, y, rw, y if add is None else add,
                 arrivals(t * down_tiles, dev) if fused else part, topk, p, dim, inter, k_per,
                 n_exp, float(limit)), part)

    # each GEMV's splits: as many as its compiled kernel runs best
    dtypes = (xin.dtype, flat.dtype, h.dtype, None if add is None else add.dtype)

    def planned(n: int, k: int, options: Callable[[int], dict],
                arguments: Callable[[int, int], tuple]) -> tuple[int, int]:
        return plan_by_residency(
            lambda slots: _gemv_plan(p, n, k, block_k, split_k, block_n, slots),
            lambda plan: Launch(_moe_gemv_kernel, options(plan[1]), dtypes,
                                lambda: arguments(*plan)[0])
            if split_k is None and plan[0] > 1 else None, dev, rounds)

    splits, k_per = planned(inter, dim, up_options, up_arguments)
    splits_down, k_per_down = planned(dim, inter, down_options, down_arguments)
    args, part = up_arguments(splits, k_per)
    _moe_gemv_kernel[(p, up_tiles, splits)](*args, **up_options(k_per))
    if not fused:
        _moe_swiglu_kernel[(p, triton.cdiv(inter, EPILOGUE_BLOCK))](
            part, flat, rw, h, p, inter, n_exp, splits, float(limit), QUANT=quantize_input,
            **quant_triton.FP8_CONSTANTS, BLOCK=EPILOGUE_BLOCK, **overlap)
    args, part = down_arguments(splits_down, k_per_down)
    _moe_gemv_kernel[(p, down_tiles, splits_down)](*args, **down_options(k_per_down))
    if not fused:
        _moe_combine_kernel[(t, triton.cdiv(dim, EPILOGUE_BLOCK))](
            part, flat, y if add is None else add, y, topk, dim, p, splits_down, n_exp,
            BY_SLOT=True, ADD=add is not None, BLOCK=EPILOGUE_BLOCK, **overlap)
    return y


def _moe_grouped(xin: torch.Tensor, rw: torch.Tensor, slots: torch.Tensor, bank: ExpertBank,
                 limit: float, quantize_input: bool, block_m: int, add: torch.Tensor | None,
                 mma: bool, group_n: int, group_k: int) -> torch.Tensor:
    """The expert-aligned tl.dot path (see the module docstring): tiles of block_m pairs ×
    group_n weight rows, group_k of K a step; ``mma``: the weight tiles from
    ``load_fp4_mma_tile`` where the bank allows it."""
    t, dim = xin.shape
    topk, n_exp, inter = slots.shape[1], bank.n_slots, bank.w1.shape[0]
    prec = "ieee" if xin.dtype == torch.float32 else "tf32"
    overlap = pdl(xin.device)   # every launch's options (launch.pdl)
    pairs, tile_e, pos = moe_align(slots, n_exp, block_m)
    h = torch.zeros(pairs.numel(), inter, dtype=torch.float32 if quantize_input else xin.dtype,
                    device=xin.device)
    up_parts = (bank.w1, bank.s1, bank.w3, bank.s3)
    _moe_gemm_kernel[(tile_e.numel(), triton.cdiv(inter, group_n))](
        xin, pairs, tile_e, rw, *_bank_args(*up_parts), h, topk, inter, dim, float(limit),
        UP=True, BLOCK_M=block_m, BLOCK_N=group_n, BLOCK_K=group_k, PREC=prec,
        FULL=whole_tiles(dim, dim, group_k, *up_parts),
        MMA=mma and mma_fp4_tiles(dim, dim, group_k, *(q.aligned for q in up_parts)),
        BF16=xin.dtype == torch.bfloat16, **overlap)
    if quantize_input:
        # (a slice when inter < 128)
        h = quant_triton.fp8_fake_quant_triton(h, 128).to(xin.dtype).contiguous()
    out = torch.empty(pairs.numel(), dim, dtype=torch.float32, device=xin.device)
    down = _bank_args(bank.w2, bank.s2)
    _moe_gemm_kernel[(tile_e.numel(), triton.cdiv(dim, group_n))](
        h, pairs, tile_e, rw, *down, *down, out, topk, dim, inter, 0.0, UP=False,
        BLOCK_M=block_m, BLOCK_N=group_n, BLOCK_K=group_k, PREC=prec,
        FULL=whole_tiles(inter, inter, group_k, bank.w2, bank.s2),
        MMA=mma and mma_fp4_tiles(inter, inter, group_k, bank.w2.aligned, bank.s2.aligned),
        BF16=h.dtype == torch.bfloat16, **overlap)
    y = torch.empty(t, dim, dtype=torch.float32, device=xin.device)
    _moe_combine_kernel[(t, triton.cdiv(dim, EPILOGUE_BLOCK))](
        out, pos, y if add is None else add, y, topk, dim, pairs.numel(), 1, n_exp, BY_SLOT=False,
        ADD=add is not None, BLOCK=EPILOGUE_BLOCK, **overlap)
    return y


def moe_fp4_triton(x: torch.Tensor, weights: torch.Tensor, slots: torch.Tensor,
                   bank: ExpertBank, limit: float, quantize_input: bool = False,
                   block_m: int = 16, decode: bool | None = None, split_k: int | None = None,
                   block_k: int = DECODE_BLOCK_K, add: torch.Tensor | None = None,
                   block_n: int = DECODE_BLOCK_N, num_warps: int = 4,
                   ahead: bool = False, mma: bool = False, group_n: int = GROUP_BLOCK_N,
                   group_k: int = GROUP_BLOCK_K, finish: str = "fused",
                   rounds: bool = True) -> torch.Tensor:
    """x [T, dim], weights [T, k], slots [T, k] (−1 = none) → fp32 [T, dim] (routed experts,
    + ``add`` [T, dim] when given: the shared expert, added by the combine kernel).
    ``decode`` picks the path (default: per-pair split-K when T·k ≤ DECODE_MAX_PAIRS, else
    grouped); ``split_k`` forces the decode K splits; ``block_k`` / ``block_n`` / ``num_warps``
    are the decode GEMV's tile and warps, ``ahead`` its loads a tile ahead, ``mma`` the decode
    GEMVs on tensor cores and the grouped GEMM's tiles from the tensor-core decoder, ``finish``
    the decode's two epilogues ("fused": by the GEMVs' last programs; "kernel": launches of
    their own), ``rounds`` the decode's K splits from each GEMV's compiled residency
    (``_gemv_plan``'s ``slots``; else about TARGET_PROGRAMS programs); ``block_m`` /
    ``group_n`` / ``group_k`` the grouped GEMM's tile (launch choices, tests)."""
    t, dim = x.shape
    if add is not None:
        add = (add.float() if interpreter_fp32() else add).contiguous()
    if t == 0 or slots.shape[1] == 0:
        y = torch.zeros(t, dim, dtype=torch.float32, device=x.device)
        return y if add is None else y + add.float()
    interp = interpreter_fp32()
    act = torch.float32 if interp or x.dtype not in (torch.bfloat16, torch.float16) else x.dtype
    if decode is None:
        decode = t * slots.shape[1] <= DECODE_MAX_PAIRS
    if quantize_input and not (decode and block_k == ACT_QUANT_BLOCK):   # else: in the GEMV
        x = quant_triton.fp8_fake_quant_triton(x.float(), 128)
    xin = x.to(act).contiguous()
    rw = weights.float().reshape(-1).contiguous()
    if decode:
        return _moe_decode(xin, rw, slots, bank, limit, quantize_input, split_k, block_k, add,
                           block_n, num_warps, ahead, mma, finish, rounds)
    return _moe_grouped(xin, rw, slots, bank, limit, quantize_input, block_m, add, mma,
                        group_n, group_k)
