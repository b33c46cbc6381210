"""Decode GEMV over a weight as mapped from the checkpoint: y = x · Wᵀ for a few rows of x.

The weights that no quantised GEMM reads were dequantised or cast to the compute dtype on every
call: the bf16 LM head with fp32 compute (1.06 GB bf16 → 2.1 GB fp32 written and read again per
decoded token at V4-Flash), the FP8 ``wo_a`` of every attention layer (33.5 M values per layer
dequantised to bf16 per token), every FP8 linear in ``dequant`` numerics. At decode that moves
2–5× the weight's bytes. This kernel reads the weight once, in its own format — bf16 / fp16 /
fp32 (an exact up-cast) or FP8 e4m3 with 128×128 ue8m0 block scales (an exact dequantisation) —
and multiplies in registers with fp32 accumulation, so the result equals the dequantise-then-
``F.linear`` reference up to fp32 summation order.

Grid: (weight-row tiles, K splits). Each program streams a BLOCK_N × K-slice of the weight
(≈ 8–32 KB) for all (≤ 16) rows of x, so a 129,280-row head or an 8,192-row projection spreads
over hundreds of programs; K splits are summed in a fixed order (deterministic). ``groups``
serves the grouped output projection: x [G, M, K] and W [G·N, K], group g's rows of x against
group g's rows of W (the attention's per-group ``wo_a``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from model.kernels.gemm import MMA_BLOCK_N, SplitK, e8m0_scale, sum_splits
from model.kernels.launch import grid_entry_prefetching, interpreter_fp32, interpreting, pdl
from model.kernels.residency import Launch, plan_by_residency, split_k

MAX_ROWS = 16            # rows of x this kernel takes (decode); more → dequantise + GEMM
TILE_ELEMENTS = 4096     # BLOCK_M · BLOCK_N · BLOCK_K products held per step


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, s_ptr, out_ptr, M, N, K, KB, ROWS, K_PER_SPLIT,
                 FP8: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, AHEAD: tl.constexpr = False, PDL: tl.constexpr = False):
    """Program (row tile of W [ROWS = G·N, K], k split) → fp32 partial[split, g, m, n]. Its
    weight slice's first bytes are asked into L2 before the grid's wait (PDL). AHEAD (a launch
    choice): each step asks for the next weight tile before it converts and multiplies its own
    — a loop without a dot is not pipelined, so otherwise every step waits for its load, and a
    program has one tile in flight."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)      # rows of W (all groups)
    mask_n = offs_n < ROWS
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(K, k_lo + K_PER_SPLIT)
    grid_entry_prefetching(w_ptr + offs_n.to(tl.int64) * K + k_lo, k_hi - k_lo, mask_n, PDL)
    group = (pid_n * BLOCK_N) // N                         # BLOCK_N divides N
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    x_rows = x_ptr + (group * M + offs_m)[:, None].to(tl.int64) * K
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * K
    # products accumulate per (row, column, k) and are summed over k once, after the loop: no
    # cross-lane reduction per step (as the MoE GEMV, where that was ≈ 10% on the H200)
    acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    if AHEAD:
        first = k_lo + tl.arange(0, BLOCK_K)
        w_next = tl.load(w_rows + first[None, :], mask=mask_n[:, None] & (first < k_hi)[None, :],
                         other=0)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k_hi
        if AHEAD:
            w_raw = w_next
            after = offs_k + BLOCK_K
            w_next = tl.load(w_rows + after[None, :],
                             mask=mask_n[:, None] & (after < k_hi)[None, :], other=0)
        else:
            w_raw = tl.load(w_rows + offs_k[None, :], mask=mask_n[:, None] & mask_k[None, :],
                            other=0)
        if FP8:
            w = w_raw.to(tl.float8e4nv, bitcast=True)
            # a tile's k lie in one 128-wide scale block (k0 is a multiple of BLOCK_K, which
            # divides 128), and its rows in one when BLOCK_N divides 128: one scale a tile (a
            # scale a row otherwise), not a byte load per weight
            tl.static_assert(128 % BLOCK_K == 0)
            if 128 % BLOCK_N == 0:
                scale = e8m0_scale(tl.load(s_ptr + (pid_n * BLOCK_N // 128) * KB + k0 // 128))
                w = w.to(tl.float32) * scale
            else:
                scale = e8m0_scale(tl.load(s_ptr + (offs_n // 128) * KB + k0 // 128, mask=mask_n,
                                           other=127))
                w = w.to(tl.float32) * scale[:, None]
        else:
            w = w_raw.to(tl.float32)
        x = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :],
                    other=0.0).to(tl.float32)
        acc += x[:, None, :] * w[None, :, :]
    out = out_ptr + pid_k.to(tl.int64) * (ROWS // N) * M * N + group * M * N
    cols = offs_n - group * N
    tl.store(out + offs_m[:, None] * N + cols[None, :], tl.sum(acc, axis=2),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _gemv_mma_kernel(x_ptr, w_ptr, s_ptr, out_ptr, M, N, K, KB, ROWS, K_PER_SPLIT,
                     FP8: tl.constexpr, BF16: tl.constexpr, SPLIT3: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr = False):
    """``_gemv_kernel``'s programs and partials on tensor cores, operands swapped: the weight
    tile [BLOCK_N, BLOCK_K] is the MMA's M side (bf16 as loaded, or FP8 cast to bf16: exact),
    x's ≤ 16 rows its N columns. An FP8 tile's rows lie in one 128-row scale block (BLOCK_N
    divides 128) and its k in one 128-column block (BLOCK_K = 128), so its one scale goes on
    the x tile — a power of two, exact — and the MMA accumulates across K steps. A loop of
    loads feeding a dot is what Triton pipelines (asynchronous copies a few steps ahead), which
    the FMA GEMV's loads are not. BF16: bf16 tiles (the GPU), else float32 (the interpreter).
    SPLIT3 (float32 x, ≤ 4 rows: the LM head's fp32 compute): column 4p + m holds part p of
    row m, x = hi + mid + lo in three bf16 (24 significant bits: float32's), and the three
    columns' sums add up to x's — the MMA's otherwise idle columns make the product exact to
    float32 summation."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(K, k_lo + K_PER_SPLIT)
    mask_n = offs_n < ROWS
    grid_entry_prefetching(w_ptr + offs_n.to(tl.int64) * K + k_lo, k_hi - k_lo, mask_n, PDL)
    group = (pid_n * BLOCK_N) // N
    cols = tl.arange(0, 16)
    if SPLIT3:
        rows_m = cols % 4
        part = cols // 4
        mask_c = (rows_m < M) & (part < 3)
    else:
        rows_m = cols
        mask_c = cols < M
    x_cols = x_ptr + (group * M + rows_m)[None, :].to(tl.int64) * K
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * K
    acc = tl.zeros([BLOCK_N, 16], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k_hi
        w = tl.load(w_rows + offs_k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0)
        xt = tl.load(x_cols + offs_k[:, None], mask=mask_k[:, None] & mask_c[None, :],
                     other=0.0).to(tl.float32)
        if FP8:
            w = w.to(tl.float8e4nv, bitcast=True)
            xt = xt * e8m0_scale(tl.load(s_ptr + (pid_n * BLOCK_N // 128) * KB + k0 // 128))
        if BF16:
            if SPLIT3:   # each part what the earlier ones left, rounded to bf16
                hi = xt.to(tl.bfloat16).to(tl.float32)
                mid = (xt - hi).to(tl.bfloat16).to(tl.float32)
                xt = tl.where(part[None, :] == 0, hi,
                              tl.where(part[None, :] == 1, mid, xt - hi - mid))
            acc = tl.dot(w.to(tl.bfloat16), xt.to(tl.bfloat16), acc)
        else:   # (the interpreter: x whole in part 0's column)
            if SPLIT3:
                xt = tl.where(part[None, :] == 0, xt, 0.0)
            acc = tl.dot(w.to(tl.float32), xt, acc, input_precision="ieee")
    out = out_ptr + pid_k.to(tl.int64) * (ROWS // N) * M * N + group * M * N
    rows_w = offs_n - group * N
    if SPLIT3:   # row m's three parts: columns m, 4 + m, 8 + m
        y = tl.sum(tl.reshape(acc, [BLOCK_N, 4, 4]), 1)
        m4 = tl.arange(0, 4)
        tl.store(out + m4[None, :] * N + rows_w[:, None], y,
                 mask=(m4 < M)[None, :] & mask_n[:, None])
    else:
        tl.store(out + cols[None, :] * N + rows_w[:, None], acc,
                 mask=mask_c[None, :] & mask_n[:, None])


SPLIT3_ROWS = 4     # float32 rows the tensor-core GEMV takes (3 bf16 columns each, of 16)


def mma_gemv(m: int, n: int, groups: int, weight: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether ``_gemv_mma_kernel`` takes this GEMV: a bf16 or FP8 weight (an exact bf16
    operand; fp16 / fp32 weights keep the FMA kernel) whose groups are whole 128-row tiles,
    against ≤ 16 rows of bf16 x or ≤ SPLIT3_ROWS of float32 x (split in three bf16)."""
    rows = {torch.bfloat16: 16, torch.float32: SPLIT3_ROWS}.get(x.dtype, 0)
    return (weight.dtype in (torch.bfloat16, torch.float8_e4m3fn) and m <= rows
            and (groups == 1 or n % MMA_BLOCK_N == 0))


def _tiles(m: int, n: int, groups: int, wide: bool = False) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) for m rows: the product stays ≈ TILE_ELEMENTS (``wide``:
    twice that); with groups, BLOCK_N divides n (a tile never straddles two groups)."""
    block_m = max(1, triton.next_power_of_2(m))
    block_k = 128
    # the interpreter runs programs one after another in Python: fewer, larger tiles there
    elements = TILE_ELEMENTS * (2 if wide else 1) * (64 if interpreting() else 1)
    block_n = max(1, elements // (block_m * block_k))
    while groups > 1 and block_n > 1 and n % block_n:
        block_n //= 2
    return block_m, block_n, block_k


def gemv_triton(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
                groups: int = 1, reduce: bool = True, mma: bool = False, ahead: bool = False,
                wide: bool = False, rounds: bool = True) -> torch.Tensor | SplitK:
    """x [..., K] (``groups`` = 1) or [..., G, K] (group g's vector against rows g·N.. of W);
    weight [G·N, K] bf16 / fp16 / fp32, or FP8 e4m3 with ``scale`` ue8m0 [ceil(G·N/128),
    ceil(K/128)]; at most MAX_ROWS vectors per group → fp32 [..., N] / [..., G, N].
    ``reduce=False``: the K splits' fp32 partial sums instead, for a consumer kernel that sums
    them as it reads them (one launch fewer): [S, ..., N] when ``groups`` = 1, else a
    ``SplitK`` (its ``dtype`` x's). ``mma`` (a launch choice, untimed): on tensor cores
    (``_gemv_mma_kernel``) where ``mma_gemv`` allows; ``ahead`` (a launch choice, untimed): the
    FMA kernel loads each weight tile a step ahead; ``wide`` (a launch choice, untimed): the FMA
    kernel's tiles twice as many rows (at one token 64, not 32: ``wq_b``'s 1,024 tiles of 8
    steps at 5 programs an SM, two rounds of the SMs, become 512 tiles at 4 an SM, one round
    — the old split rule made them 2 K splits of 4 steps, two rounds — with fewer
    instructions a weight and 32 KB in flight an SM, not 20);
    ``rounds`` (a launch choice): the K splits from the compiled kernel's residency
    (``residency.split_k``), else about TARGET_PROGRAMS programs."""
    k = x.shape[-1]
    rows_w = weight.shape[0]
    n = rows_w // groups
    x3 = x.reshape(-1, groups, k).transpose(0, 1)                 # [G, M, K]
    m = x3.shape[1]
    if m > MAX_ROWS:
        raise ValueError(f"gemv takes at most {MAX_ROWS} vectors per group, got {m}")
    mma = mma and mma_gemv(m, n, groups, weight, x3)
    split3 = x3.dtype == torch.float32   # (x in bf16 goes as it is)
    if interpreter_fp32() and weight.dtype in (torch.bfloat16, torch.float16):
        weight = weight.float()   # the interpreter mishandles bf16 (an exact up-cast)
    x3 = (x3.float() if interpreter_fp32() else x3).contiguous()
    fp8 = scale is not None
    block_m, block_n, block_k = (16, MMA_BLOCK_N, 128) if mma else _tiles(m, n, groups, wide)
    tiles = triton.cdiv(rows_w, block_n)
    w = weight.contiguous().view(torch.uint8) if fp8 else weight.contiguous()
    s = scale.contiguous().view(torch.uint8) if fp8 else w
    kernel = _gemv_mma_kernel if mma else _gemv_kernel

    options = (dict(FP8=fp8, BF16=not interpreter_fp32(), SPLIT3=split3, BLOCK_N=block_n,
                    BLOCK_K=block_k, **pdl(w.device)) if mma else
               dict(FP8=fp8, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, AHEAD=ahead,
                    **pdl(w.device)))

    def arguments(splits: int, k_per_split: int) -> tuple:
        partial = torch.empty(splits, groups, m, n, dtype=torch.float32, device=x.device)
        return (x3, w, s, partial, m, n, k, triton.cdiv(k, 128), rows_w, k_per_split)

    k_blocks = triton.cdiv(k, block_k)
    splits, per = plan_by_residency(   # as many splits as the compiled kernel runs best
        lambda slots: split_k(tiles, k_blocks, k_blocks, slots),
        lambda plan: Launch(kernel, options, (x3.dtype, w.dtype),
                            lambda: arguments(plan[0], plan[1] * block_k))
        if plan[0] > 1 else None, w.device, rounds)
    args = arguments(splits, per * block_k)
    kernel[(tiles, splits)](*args, **options)
    partial = args[3]
    if not reduce:
        if groups > 1:
            return SplitK(partial, tuple(x.shape[:-2]), x.dtype)
        return partial.view(splits, *x.shape[:-1], n)               # G = 1: [S, M, N]
    y = sum_splits(partial)                                      # [G, M, N], fixed order
    return y.transpose(0, 1).reshape(*x.shape[:-1], n)
