"""Routed experts (fact sheet §2.6) as one fused-MoE pipeline over FP4 experts (W4A16):

1. align: sort the (token, slot) pairs by expert and pad every expert's group to BLOCK_M rows, so
   each M tile belongs to one expert (torch, on the device, no host sync: sized by an upper bound);
2. grouped gate/up GEMM: gathers the tile's token rows, w1 and w3 of the tile's expert decoded in
   registers, epilogue = clamped SwiGLU × routing weight → h [pairs, inter];
3. grouped down GEMM: h · w2ᵀ → per-pair outputs;
4. combine: y[t] = Σ_slot out[pair(t, slot)] in fp32.

Expert weights come as an ``ExpertBank`` (model/kernels/expert_bank.py): per part a base byte
tensor and each slot's byte offset in it — views of the mapped checkpoint, or one stacked copy —
so the kernels read w1, w3 int8 [inter, dim/2] + ue8m0 [inter, dim/32] and w2 int8
[dim, inter/2] + ue8m0 [dim, inter/32] of slot e at base + offset[e].
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from model.kernels import quant
from model.kernels.expert_bank import ExpertBank, PartBank
from model.kernels.gemm import _e2m1, _e8m0


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
                      dtype: torch.dtype | None = None) -> torch.Tensor:
    """x [T, dim], weights [T, k] fp32, slots [T, k] (−1 = none) → fp32 [T, dim] (routed only).

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
    return y


def moe_align(indices: torch.Tensor, n_experts: int, block_m: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """→ (sorted_pairs [P_pad] pair ids t·k+slot, −1 = padding; tile_expert [P_pad/block_m],
    −1 = unused tile; pair_pos [T·k] position of each pair in sorted order, −1 = dropped)."""
    flat = indices.reshape(-1).long()
    p = flat.numel()
    valid = (flat >= 0) & (flat < n_experts)
    expert = torch.where(valid, flat, n_experts)            # invalid pairs sort last, dropped
    order = torch.argsort(expert, stable=True)
    counts = torch.bincount(expert, minlength=n_experts + 1)[:n_experts]
    padded = (counts + block_m - 1) // block_m * block_m
    starts = torch.cumsum(padded, 0) - padded                # padded group start per expert
    first = torch.cumsum(counts, 0) - counts                 # unpadded group start
    cap = (p + n_experts * (block_m - 1) + block_m - 1) // block_m * block_m
    e_sorted = expert[order]
    ok = e_sorted < n_experts
    rank = torch.arange(p, device=flat.device) - first[e_sorted.clamp(max=n_experts - 1)]
    pos = torch.where(ok, starts[e_sorted.clamp(max=n_experts - 1)] + rank, -1)
    sorted_pairs = torch.full((cap,), -1, dtype=torch.int32, device=flat.device)
    sorted_pairs[pos[ok]] = order[ok].to(torch.int32)
    pair_pos = torch.full((p,), -1, dtype=torch.int32, device=flat.device)
    pair_pos[order] = pos.to(torch.int32)
    tile_start = torch.arange(0, cap, block_m, device=flat.device)
    ends = torch.cumsum(padded, 0)
    tile_expert = torch.searchsorted(ends, tile_start, right=True)
    tile_expert = torch.where(tile_expert < n_experts, tile_expert, -1).to(torch.int32)
    return sorted_pairs, tile_expert, pair_pos


@triton.jit
def _w4_tile(w_ptr, w_off_ptr, s_ptr, s_off_ptr, e, offs_n, mask_n, col, mask_j, N, K):
    """Decoded (even k, odd k) halves [BLOCK_N, BLOCK_K/2] of slot e's rows offs_n; the slot's
    weight / scale bytes start at byte offsets w_off[e] / s_off[e] of w / s."""
    row = offs_n[:, None].to(tl.int64)
    w_base = w_ptr + tl.load(w_off_ptr + e)
    s_base = s_ptr + tl.load(s_off_ptr + e)
    mw = mask_n[:, None] & mask_j[None, :]
    byte = tl.load(w_base + row * (K // 2) + col[None, :], mask=mw, other=0).to(tl.int32) & 0xFF
    sc = _e8m0(tl.load(s_base + row * (K // 32) + (col // 16)[None, :], mask=mw, other=0))
    return _e2m1(byte & 0xF) * sc, _e2m1(byte >> 4) * sc


@triton.jit
def _moe_gemm_kernel(a_ptr, pairs_ptr, tile_e_ptr, rw_ptr, w_ptr, w_off_ptr, s_ptr, s_off_ptr,
                     w3_ptr, w3_off_ptr, s3_ptr, s3_off_ptr, out_ptr, TOPK, N, K, limit, UP: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr):
    """UP: out[pos] = swiglu(a[tok]·w1ᵀ, a[tok]·w3ᵀ)·rw; else out[pos] = a[pos]·wᵀ."""
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
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc3 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            col = k0 // 2 + offs_j
            mask_j = col < K // 2
            ma = valid[:, None] & mask_j[None, :]
            a_even = tl.load(a_base + 2 * col[None, :], mask=ma, other=0.0)
            a_odd = tl.load(a_base + 2 * col[None, :] + 1, mask=ma, other=0.0)
            w_even, w_odd = _w4_tile(w_ptr, w_off_ptr, s_ptr, s_off_ptr, e, offs_n, mask_n,
                                     col, mask_j, N, K)
            acc += tl.dot(a_even, tl.trans(w_even.to(a_even.dtype)), input_precision=PREC)
            acc += tl.dot(a_odd, tl.trans(w_odd.to(a_even.dtype)), input_precision=PREC)
            if UP:
                u_even, u_odd = _w4_tile(w3_ptr, w3_off_ptr, s3_ptr, s3_off_ptr, e, offs_n,
                                         mask_n, col, mask_j, N, K)
                acc3 += tl.dot(a_even, tl.trans(u_even.to(a_even.dtype)), input_precision=PREC)
                acc3 += tl.dot(a_odd, tl.trans(u_odd.to(a_even.dtype)), input_precision=PREC)
        if UP:
            gate, up = acc, acc3
            if limit > 0:
                up = tl.minimum(tl.maximum(up, -limit), limit)
                gate = tl.minimum(gate, limit)
            rw = tl.load(rw_ptr + tl.where(valid, pairs, 0), mask=valid, other=0.0)
            acc = rw[:, None] * (gate * tl.sigmoid(gate) * up)
        tl.store(out_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & mask_n[None, :])


@triton.jit
def _moe_combine_kernel(out_ptr, pos_ptr, y_ptr, TOPK, N, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in range(0, TOPK):
        pos = tl.load(pos_ptr + t * TOPK + j)
        if pos >= 0:
            acc += tl.load(out_ptr + pos.to(tl.int64) * N + cols, mask=mask, other=0.0)
    tl.store(y_ptr + t.to(tl.int64) * N + cols, acc, mask=mask)


def moe_fp4_triton(x: torch.Tensor, weights: torch.Tensor, slots: torch.Tensor,
                   bank: ExpertBank, limit: float, quantize_input: bool = False,
                   block_m: int = 16) -> torch.Tensor:
    t, dim = x.shape
    topk = slots.shape[1]
    n_exp, inter = bank.n_slots, bank.w1.shape[0]
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    act = torch.float32 if interp or x.dtype not in (torch.bfloat16, torch.float16) else x.dtype
    prec = "ieee" if act == torch.float32 else "tf32"
    xin = (quant.fp8_fake_quant(x.float(), 128) if quantize_input else x).to(act).contiguous()
    pairs, tile_e, pos = moe_align(slots, n_exp, block_m)
    rw = weights.float().reshape(-1).contiguous()
    h = torch.zeros(pairs.numel(), inter, dtype=torch.float32 if quantize_input else act,
                    device=x.device)

    def args(p: PartBank) -> tuple[torch.Tensor, torch.Tensor]:
        return p.base, p.offsets

    grid = (tile_e.numel(), triton.cdiv(inter, 32))
    _moe_gemm_kernel[grid](xin, pairs, tile_e, rw, *args(bank.w1), *args(bank.s1),
                           *args(bank.w3), *args(bank.s3), h, topk, inter, dim, float(limit),
                           UP=True, BLOCK_M=block_m, BLOCK_N=32, BLOCK_K=64, PREC=prec)
    if quantize_input:
        h = quant.fp8_fake_quant(h, 128).to(act).contiguous()  # (a slice when inter < 128)
    out = torch.empty(pairs.numel(), dim, dtype=torch.float32, device=x.device)
    grid = (tile_e.numel(), triton.cdiv(dim, 32))
    _moe_gemm_kernel[grid](h, pairs, tile_e, rw, *args(bank.w2), *args(bank.s2), *args(bank.w2),
                           *args(bank.s2), out, topk, dim, inter, 0.0, UP=False,
                           BLOCK_M=block_m, BLOCK_N=32, BLOCK_K=64, PREC=prec)
    y = torch.empty(t, dim, dtype=torch.float32, device=x.device)
    if t:
        _moe_combine_kernel[(t, triton.cdiv(dim, 128))](out, pos, y, topk, dim, BLOCK=128)
    return y
