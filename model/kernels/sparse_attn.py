"""Sparse MQA with attention sink over gathered KV rows (fact sheet §2.3 step 5).

q [b, s, h, d]; kv [b, n, d] (K = V, one shared head) or the FP8 cache rows uint8 [b, n, row_bytes]
(kv_fp8.py); sink [h] fp32; indices [b, s, k] (−1 = none). o[t, h] = Σ_j p_j · kv[idx_j],
p = softmax over {q·k_j·scale} ∪ {sink_h} with the sink dropped; lse = log of that whole
denominator (sink included), in logit units, so partial results can be merged.

Given ``unrope`` (the queries' RoPE angles [s, r/2]), the output's RoPE dims come back rotated
by the inverse, as ``apply_rope(o, angles, inverse=True)`` would leave them: attention's
inverse RoPE inside the kernel that stores its output (the combine at decode), not a kernel of
its own.

A layer's rows come from two places: its compressed rows (the cache's store: CSA's top-k picks,
HCA's every visible row) and its sliding window (the window's raw rows, a separate tensor). The
second is a ``WindowRows`` source: rows in the same format and their own indices [s, w] (shared by
the batch) or [b, s, w]. Each query attends the union, window first; no copy of either into one
tensor.

Triton: grid (tokens, head blocks, splits). Prefill uses one split (each program streams its
token's k rows with an online softmax); decode splits the k rows over programs (flash-decoding)
and the last split program of each (token, head block) to finish merges the partial (o, lse)
pairs with the sink, in the same launch (an arrival count per group, ``launch.arrivals``; a
second kernel, ``combine="kernel"``, until a GPU run compares the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from model.kernels.blocks import query_blocks
from model.kernels.cache_rows import round_bf16
from model.kernels.fp8_pairs import FP8_PAIRS_UNSHIFT, load_fp8_row_pairs
from model.kernels.gemm import e8m0_scale
from model.kernels.kv_fp8 import KVLayout, unpack_kv_fp8
from model.kernels.launch import (
    arrivals,
    finish_fused,
    grid_entry,
    interpreter_fp32,
    last_to_arrive,
    pdl,
)
from model.kernels.norm_rope import apply_rope_reference, rope_cos_sin

DENSE_ROWS_FACTOR = 2   # reference: a query block whose distinct rows ≤ 2·k attends them densely


@dataclass(frozen=True, slots=True)
class WindowRows:
    """The sliding window as a second source of rows: ``rows`` [b, nw, d] (or packed FP8 rows,
    as ``kv``) and ``indices`` [s, w] shared by the batch, or [b, s, w], into them (−1 = none)."""
    rows: torch.Tensor
    indices: torch.Tensor

    def joined(self, kv: torch.Tensor, indices: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """One row tensor and one index set, the reference's way (the kernel reads both sources
        in place): the window's indices first, shifted past kv's rows. Of kv only the rows some
        index names are copied when that is fewer (a long context's store holds far more rows
        than a step reads)."""
        b, s = indices.shape[:2]
        if kv.shape[1] > indices[0].numel():
            used = torch.unique(indices[indices >= 0])
            kv = kv[:, used]
            indices = torch.where(indices >= 0, torch.searchsorted(used, indices.clamp(min=0)), -1)
        n = kv.shape[1]
        win = self.indices.expand(b, s, -1) if self.indices.dim() == 2 else self.indices
        win = torch.where(win >= 0, win + n, -1).to(indices.dtype)
        return torch.cat([kv, self.rows], dim=1), torch.cat([win, indices], dim=-1)


def sparse_attn_reference(q: torch.Tensor, kv: torch.Tensor, sink: torch.Tensor,
                          indices: torch.Tensor, scale: float, window: WindowRows | None = None,
                          unrope: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure torch; returns (o in q.dtype, lse fp32 [b, s, h]). Queries are taken in blocks so
    the gathered rows [block, k, d] stay under ``blocks.REFERENCE_BLOCK_ELEMENTS`` however long the
    prefill chunk (an HCA layer at 32K context gathers thousands of rows per query)."""
    if window is not None:
        kv, indices = window.joined(kv, indices)
    b, s, h, d = q.shape
    k = indices.shape[-1]
    out = torch.empty(b, s, h, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, s, h, dtype=torch.float32, device=q.device)
    kv32 = kv.float()
    sink_col = sink.float().view(1, 1, h, 1)
    batch = torch.arange(b, device=q.device).view(b, 1, 1)
    for lo, hi in query_blocks(s, k * d):
        idx = indices[:, lo:hi]
        valid = idx >= 0
        rows = idx.clamp(min=0).long()                                   # [b, sb, k]
        qb = q[:, lo:hi].float()
        used = torch.unique(rows) if b == 1 else None
        if used is not None and used.numel() <= DENSE_ROWS_FACTOR * k:
            # the block's queries share most rows (the window, HCA's rows): one GEMM against
            # the distinct rows, then each query's logits picked out — no [sb, k, d] gather
            dense = kv32[0, used]                                        # [u, d]
            local = torch.searchsorted(used, rows)                       # [1, sb, k]
            all_logits = torch.matmul(qb, dense.t()) * scale             # [1, sb, h, u]
            logits = all_logits.gather(-1, local.unsqueeze(2).expand(-1, -1, h, -1))
        else:
            dense = None
            gathered = kv32[batch, rows]                                 # [b, sb, k, d]
            logits = torch.matmul(qb, gathered.transpose(-1, -2)) * scale    # [b, sb, h, k]
        logits = logits.masked_fill(~valid.unsqueeze(2), float("-inf"))
        full = torch.cat([logits, sink_col.expand(b, hi - lo, h, 1)], dim=-1)
        probs = torch.softmax(full, dim=-1)[..., :-1]
        if dense is not None:   # probabilities back onto the distinct rows (repeats add up)
            spread = probs.new_zeros(1, hi - lo, h, dense.shape[0])
            spread.scatter_add_(-1, local.unsqueeze(2).expand(-1, -1, h, -1), probs)
            out[:, lo:hi] = torch.matmul(spread, dense).to(q.dtype)
        else:
            out[:, lo:hi] = torch.matmul(probs, gathered).to(q.dtype)    # [b, sb, h, d]
        lse[:, lo:hi] = torch.logsumexp(full, dim=-1)
    if unrope is not None:
        out = apply_rope_reference(out, unrope, inverse=True)
    return out, lse


def sparse_attn_fp8_reference(q: torch.Tensor, cache: torch.Tensor, sink: torch.Tensor,
                              indices: torch.Tensor, scale: float, layout: KVLayout,
                              window: WindowRows | None = None,
                              unrope: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpacks only the rows some query picks (each once), not the whole cache: a decode step
    at long context touches window + top-k rows, not every compressed row."""
    if window is not None:
        cache, indices = window.joined(cache, indices)
    dtype = q.dtype if q.dtype != torch.float16 else torch.float32
    outs, lses = [], []
    for i in range(q.shape[0]):
        idx = indices[i]
        valid = idx >= 0
        used = torch.unique(idx[valid])                                 # sorted row numbers
        if used.numel() == 0:                                           # nothing picked: any row
            used = torch.zeros(1, dtype=idx.dtype, device=idx.device)
        kv = unpack_kv_fp8(cache[i, used], layout).to(dtype)            # [u, d]
        local = torch.where(valid, torch.searchsorted(used, idx.clamp(min=0)), -1)
        o, lse = sparse_attn_reference(q[i:i + 1], kv.unsqueeze(0), sink, local.unsqueeze(0), scale,
                                       unrope=unrope)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


@triton.jit
def _load_kv_rows(kv_ptr, kv16_ptr, rows, valid, offs_d, D,
                  KV_FP8: tl.constexpr, ROW: tl.constexpr, NOPE: tl.constexpr,
                  QB: tl.constexpr, SCALE_OFF: tl.constexpr, SCALE_WORDS: tl.constexpr = False):
    """Gather kv rows [BLOCK_N, BLOCK_D] as float32 (rows: int64 global row numbers).
    SCALE_WORDS (FP8 rows whose scale bytes start 8-byte aligned, at most 8 of them, checked on
    the host: ``scale_words``): a row's scale bytes load as one 8-byte word and each dim shifts
    its byte out in registers; else a byte load per dim (on triton 3.6: 128–160 one-byte loads
    a thread a tile in prefill, 0 as words)."""
    mask_d = offs_d < D
    if KV_FP8:
        base = rows[:, None] * ROW
        is_nope = offs_d < NOPE
        m_nope = valid[:, None] & (is_nope & mask_d)[None, :]
        codes = tl.load(kv_ptr + base + offs_d[None, :], mask=m_nope, other=0)
        vals = codes.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        if SCALE_WORDS:
            words = tl.load((kv_ptr + rows * ROW + SCALE_OFF).to(tl.pointer_type(tl.int64)),
                            mask=valid, other=0)
            shift = ((offs_d // QB) * 8).to(tl.int64)
            sval = e8m0_scale((words[:, None] >> shift[None, :]) & 0xFF)
        else:   # a scale byte load per dim
            sbyte = tl.load(kv_ptr + base + SCALE_OFF + (offs_d // QB)[None, :], mask=m_nope,
                            other=0)
            sval = e8m0_scale(sbyte)
        m_rope = valid[:, None] & ((~is_nope) & mask_d)[None, :]
        r16 = tl.load(kv16_ptr + rows[:, None] * (ROW // 2) + (NOPE // 2) + (offs_d - NOPE)[None, :],
                      mask=m_rope, other=0)
        rope = (r16.to(tl.int32) << 16).to(tl.float32, bitcast=True)
        kv = tl.where(is_nope[None, :], vals * sval, rope)
    else:
        kv = tl.load(kv_ptr + rows[:, None] * D + offs_d[None, :],
                     mask=valid[:, None] & mask_d[None, :], other=0.0)
    return kv


@triton.jit
def _upconvert_rows_kernel(src_ptr, src16_ptr, dst_ptr, NROWS, D, ROW: tl.constexpr,
                           NOPE: tl.constexpr, QB: tl.constexpr, SCALE_OFF: tl.constexpr,
                           SCALE_WORDS: tl.constexpr, BLOCK_R: tl.constexpr,
                           BLOCK_D: tl.constexpr, PDL: tl.constexpr = False):
    """FP8 cache rows [NROWS, ROW bytes] → dst [NROWS, D] in dst's dtype (``upconvert_rows``):
    BLOCK_R rows a program, each value the one the attention kernels compute with."""
    grid_entry(PDL)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    valid = rows < NROWS
    vals = _load_kv_rows(src_ptr, src16_ptr, rows, valid, offs_d, D, True, ROW, NOPE, QB,
                         SCALE_OFF, SCALE_WORDS)
    tl.store(dst_ptr + rows[:, None] * D + offs_d[None, :], vals.to(dst_ptr.dtype.element_ty),
             mask=valid[:, None] & (offs_d < D)[None, :])


@triton.jit
def _unrope_tile(o, ang_ptr, token, col0, D, R2, BLOCK_H: tl.constexpr, BLOCK_DV: tl.constexpr,
                 BF16: tl.constexpr):
    """o [BLOCK_H, BLOCK_DV], output columns col0.. (col0 even): its RoPE dims (the last 2·R2
    of D, pairs (2i, 2i+1)) rotated back by the token's angles, as ``apply_rope(o, angles,
    inverse=True)`` leaves the stored output (which is rounded to bf16 first when BF16)."""
    if BF16:
        o = round_bf16(o)
    even, odd = tl.split(tl.reshape(o, [BLOCK_H, BLOCK_DV // 2, 2]))
    pair = col0 // 2 + tl.arange(0, BLOCK_DV // 2)
    j = pair - (D // 2 - R2)                          # RoPE pair index; < 0: not rotated
    rotated = (j >= 0) & (pair < D // 2)
    angle = tl.load(ang_ptr + token.to(tl.int64) * R2 + j, mask=rotated, other=0.0)
    cos, sin = rope_cos_sin(angle)
    cos = cos[None, :]
    sin = -sin[None, :]
    new_even = tl.where(rotated[None, :], even * cos - odd * sin, even)
    new_odd = tl.where(rotated[None, :], even * sin + odd * cos, odd)
    return tl.reshape(tl.join(new_even, new_odd), [BLOCK_H, BLOCK_DV])


LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
RESCALE_SLACK = tl.constexpr(8.0)   # log2 units: p ≤ 256 between rescales (bf16, fp32: safe)


@triton.jit
def _kv_tile(kv_ptr, kv16_ptr, rows, valid, offs, col0, D, cdt: tl.constexpr,
             KV_FP8: tl.constexpr, ROW: tl.constexpr, NOPE: tl.constexpr, QB: tl.constexpr,
             SCALE_OFF: tl.constexpr, SCALE_WORDS: tl.constexpr, FP8_PAIRS: tl.constexpr):
    """The rows' columns ``offs`` (col0 .. col0 + len) in the compute dtype ``cdt``; FP8_PAIRS:
    FP8 rows decoded by bit placement, the values × 2^-60 (``fp8_pairs.load_fp8_row_pairs``)."""
    if FP8_PAIRS:
        return load_fp8_row_pairs(kv_ptr, rows, valid, col0, D, offs.shape[0], ROW, NOPE, QB,
                                  SCALE_OFF, cdt == tl.bfloat16).to(cdt)
    return _load_kv_rows(kv_ptr, kv16_ptr, rows, valid, offs, D,
                         KV_FP8, ROW, NOPE, QB, SCALE_OFF, SCALE_WORDS).to(cdt)


@triton.jit
def _attend_tile(q, m_i, l_i, acc, kv_ptr, kv16_ptr, batch, N, idx, offs_d, offs_dv, dv0, D,
                 scale, KV_FP8: tl.constexpr, ROW: tl.constexpr, NOPE: tl.constexpr,
                 QB: tl.constexpr, SCALE_OFF: tl.constexpr, PREC: tl.constexpr,
                 DV_PARTS: tl.constexpr, SCALE_WORDS: tl.constexpr = False,
                 FP8_PAIRS: tl.constexpr = False, QK_SPLIT: tl.constexpr = 1,
                 ROWS_M: tl.constexpr = False):
    """One online-softmax step over the rows ``idx`` [BLOCK_N] of one source (N rows a batch
    element; −1 or out of range = none) → the updated (m_i, l_i, acc): m_i a running max of
    the scores in log2 units, at most RESCALE_SLACK below the true one; l_i, acc the sums of
    2^(score − m_i) and their rows. ``offs_dv``: the output columns, from dv0. FP8_PAIRS: the
    tiles come × 2^-60; the scores' multiplier and the probabilities put 2^60 back (exact).
    QK_SPLIT > 1: the scores as a batched dot over QK_SPLIT slices of D, summed — its batch
    spread over the warps, each warp 1/QK_SPLIT of the dims, where the one dot has every warp
    load all of them (its 16 × 16 output is too small to split the other way).
    ROWS_M: both dots with the row tile on the MMA's M side and the heads on N — the scores as
    kv · qᵀ [BLOCK_N, BLOCK_H], the output as kvᵀ · p, so ``acc`` is [BLOCK_DV, BLOCK_H]
    (``_sparse_attn_fwd`` transposes it once after its loops). A 64-head tile's warp-group MMAs
    are then n = 64 wide, where heads on M make the scores' N the row tile's 16–32: each
    instruction reads its A operand from shared memory whatever its N, so the narrow ones
    move 1.5–2.5× the shared-memory bytes a multiply (docs/PERF.md, "Prefill attention: the
    next scores under the softmax", part 3)."""
    cdt: tl.constexpr = q.dtype
    valid, rows = _tile_rows(idx, batch, N)
    kv = _kv_tile(kv_ptr, kv16_ptr, rows, valid, offs_d, 0, D, cdt, KV_FP8, ROW, NOPE, QB,
                  SCALE_OFF, SCALE_WORDS, FP8_PAIRS)
    unshift: tl.constexpr = FP8_PAIRS_UNSHIFT if FP8_PAIRS else 1.0
    # scores in log2 units (scale · log2 e folded in): exp2 is the GPU's one-instruction exp
    if ROWS_M:
        logits = tl.dot(kv, tl.trans(q), input_precision=PREC) * (scale * (LOG2E * unshift))
        logits = tl.where(valid[:, None], logits, float("-inf"))        # [BLOCK_N, BLOCK_H]
        m_new = tl.maximum(m_i, tl.max(logits, 0))
        if tl.max(m_new - m_i, 0) > RESCALE_SLACK:   # as below
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha
            acc = acc * alpha[None, :]
            m_i = m_new
        p = tl.exp2(logits - m_i[None, :])
        l_i = l_i + tl.sum(p, 0)
        if DV_PARTS > 1:
            kv = _kv_tile(kv_ptr, kv16_ptr, rows, valid, offs_dv, dv0, D, cdt, KV_FP8, ROW, NOPE,
                          QB, SCALE_OFF, SCALE_WORDS, FP8_PAIRS)
        if FP8_PAIRS:
            p = p * unshift
        acc = tl.dot(tl.trans(kv), p.to(cdt), acc, input_precision=PREC)
    else:
        dots = _heads_dots(q, kv, PREC, QK_SPLIT)
        m_i, l_i, acc = _heads_update(dots, scale * (LOG2E * unshift), kv, rows, valid, m_i, l_i,
                                      acc, kv_ptr, kv16_ptr, offs_dv, dv0, D, KV_FP8, ROW, NOPE,
                                      QB, SCALE_OFF, PREC, SCALE_WORDS, FP8_PAIRS, DV_PARTS > 1,
                                      cdt)
    return m_i, l_i, acc


@triton.jit
def _heads_dots(q, kv, PREC: tl.constexpr, QK_SPLIT: tl.constexpr):
    """A row tile's dots with the heads on the MMA's M side: q · kvᵀ [BLOCK_H, BLOCK_N]
    (``_attend_tile``'s QK_SPLIT)."""
    if QK_SPLIT > 1:
        BH: tl.constexpr = q.shape[0]
        BN: tl.constexpr = kv.shape[0]
        PART: tl.constexpr = q.shape[1] // QK_SPLIT
        q_parts = tl.permute(tl.reshape(q, [BH, QK_SPLIT, PART]), (1, 0, 2))
        kv_parts = tl.permute(tl.reshape(kv, [BN, QK_SPLIT, PART]), (1, 2, 0))
        dots = tl.sum(tl.dot(q_parts, kv_parts, input_precision=PREC), 0)
    else:
        dots = tl.dot(q, tl.trans(kv), input_precision=PREC)
    return dots


@triton.jit
def _heads_update(dots, multiplier, kv, rows, valid, m_i, l_i, acc, kv_ptr, kv16_ptr, offs_dv,
                  dv0, D,
                  KV_FP8: tl.constexpr, ROW: tl.constexpr, NOPE: tl.constexpr,
                  QB: tl.constexpr, SCALE_OFF: tl.constexpr, PREC: tl.constexpr,
                  SCALE_WORDS: tl.constexpr, FP8_PAIRS: tl.constexpr, RELOAD: tl.constexpr,
                  cdt: tl.constexpr):
    """The online-softmax step of a row tile whose scores are ``dots`` [BLOCK_H, BLOCK_N] ×
    ``multiplier`` (log2 units; −inf at the invalid rows): (m_i, l_i, acc) updated as
    ``_attend_tile`` says. RELOAD: the tile's output columns ``offs_dv`` are loaded here (an
    L1 / L2 hit: the scores read the same rows), else ``kv`` holds them (in ``cdt``, the
    compute dtype)."""
    logits = tl.where(valid[None, :], dots * multiplier, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(logits, 1))
    if tl.max(m_new - m_i, 0) > RESCALE_SLACK:
        # the running max moves only when some row's grew by more than the slack: until then
        # p = 2^(logit − m_i) ≤ 2^RESCALE_SLACK, and acc and l need no rescale (a multiply of
        # the whole BLOCK_H × BLOCK_DV accumulator every row tile otherwise)
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha
        acc = acc * alpha[:, None]
        m_i = m_new
    p = tl.exp2(logits - m_i[:, None])
    l_i = l_i + tl.sum(p, 1)
    if RELOAD:
        kv = _kv_tile(kv_ptr, kv16_ptr, rows, valid, offs_dv, dv0, D, cdt, KV_FP8, ROW, NOPE,
                      QB, SCALE_OFF, SCALE_WORDS, FP8_PAIRS)
    if FP8_PAIRS:
        p = p * FP8_PAIRS_UNSHIFT
    acc = acc + tl.dot(p.to(cdt), kv, input_precision=PREC)
    return m_i, l_i, acc


@triton.jit
def _tile_rows(idx, batch, N):
    """A tile's slots ``idx`` (−1 or out of range = none) of a source of N rows a batch element
    → (valid, int64 row numbers, 0 where not valid)."""
    valid = (idx >= 0) & (idx < N)
    return valid, batch.to(tl.int64) * N + tl.where(valid, idx, 0).to(tl.int64)


@triton.jit
def _slot_indices(offs_n, hi, slots_ptr, shift, COMPUTED: tl.constexpr):
    """The row indices of slots ``offs_n`` (−1 from ``hi`` on): ``offs_n − shift`` when
    COMPUTED (TABLE's window, ALL_ROWS), else loaded from ``slots_ptr + offs_n``."""
    if COMPUTED:   # one return: Triton types every return of a function, taken or not
        idx = tl.where(offs_n < hi, offs_n - shift, -1)
    else:
        idx = tl.load(slots_ptr + offs_n, mask=offs_n < hi, other=-1)
    return idx


@triton.jit
def _attend_ahead(q, m_i, l_i, acc, src_ptr, src16_ptr, batch, NR, lo, hi, slots_ptr, shift,
                  offs_d, offs_dv, dv0, D, scale, KV_FP8: tl.constexpr, ROW: tl.constexpr,
                  NOPE: tl.constexpr, QB: tl.constexpr, SCALE_OFF: tl.constexpr,
                  PREC: tl.constexpr, SCALE_WORDS: tl.constexpr, FP8_PAIRS: tl.constexpr,
                  QK_SPLIT: tl.constexpr, COMPUTED: tl.constexpr, BLOCK_N: tl.constexpr):
    """``_attend_tile`` over the slots [lo, hi) of one source (NR rows a batch element; slot
    indices as ``_slot_indices`` says), heads on M, software-pipelined by hand: each step
    issues the next tile's scores (an asynchronous warp-group MMA on a GPU) and then runs this
    tile's softmax and P·V, whose columns ``offs_dv`` it loads again (an L1 / L2 hit) — the
    tensor cores work while the warps do the exps, FlashAttention-3's overlap within a warp
    group. The first step's tile is empty and the last step's next tile all padding: loads
    masked off, a tile of MMAs on zeros a loop."""
    cdt: tl.constexpr = q.dtype
    unshift: tl.constexpr = FP8_PAIRS_UNSHIFT if FP8_PAIRS else 1.0
    multiplier = scale * (LOG2E * unshift)
    # the step before the first has an empty tile (no valid row: it adds nothing) and issues
    # the first tile's dots: no prologue (its tile would hold shared memory of its own)
    dots = tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32)
    valid = tl.zeros([BLOCK_N], dtype=tl.int1)
    rows = tl.zeros([BLOCK_N], dtype=tl.int64)
    zeros_a = tl.zeros([q.shape[0], 16], dtype=cdt)
    zeros_b = tl.zeros([16, BLOCK_N], dtype=cdt)
    for n0 in range(lo - BLOCK_N, hi, BLOCK_N):
        # this tile's dots through a zero MMA (dots + 0·0, exact): Triton leaves an MMA in
        # flight across a step only if the next step reads its result as another MMA's
        # accumulator first (its asyncLaunchDots), and waits for every MMA in flight here
        dots = tl.dot(zeros_a, zeros_b, dots, input_precision=PREC)
        idx = _slot_indices(n0 + BLOCK_N + tl.arange(0, BLOCK_N), hi, slots_ptr, shift,
                            COMPUTED)
        valid_next, rows_next = _tile_rows(idx, batch, NR)
        kv = _kv_tile(src_ptr, src16_ptr, rows_next, valid_next, offs_d, 0, D, cdt, KV_FP8,
                      ROW, NOPE, QB, SCALE_OFF, SCALE_WORDS, FP8_PAIRS)
        # the next tile's dots: nothing reads them before the next step (on a GPU the MMAs
        # run on while this tile's softmax and P·V issue)
        dots_next = _heads_dots(q, kv, PREC, QK_SPLIT)
        m_i, l_i, acc = _heads_update(dots, multiplier, kv, rows, valid, m_i, l_i, acc, src_ptr,
                                      src16_ptr, offs_dv, dv0, D, KV_FP8, ROW, NOPE, QB,
                                      SCALE_OFF, PREC, SCALE_WORDS, FP8_PAIRS, True, cdt)
        dots = dots_next
        rows = rows_next
        valid = valid_next
    return m_i, l_i, acc


@triton.jit
def _elements_to(address, ptr):
    """Elements of ``ptr``'s type from ``ptr`` to the 16-byte aligned byte ``address``, known
    to the compiler as a multiple of 16 bytes' worth (no division for bytes: it hides that)."""
    SIZE: tl.constexpr = ptr.dtype.element_ty.primitive_bitwidth // 8
    if SIZE == 1:
        return tl.multiple_of(address - ptr.to(tl.int64), 16)
    return tl.multiple_of((address - ptr.to(tl.int64)) // SIZE, 16 // SIZE)


@triton.jit
def _table_rows(ptr, ptr16, address, ALIGNED: tl.constexpr):
    """A TABLE entry's rows as (ptr, ptr16): pointers of ``ptr``'s and ``ptr16``'s types at the
    byte ``address``. ALIGNED (the host checked every address is a multiple of 16): written as
    offsets from the launch's own (aligned) pointers, so the compiler may load vectors — a
    pointer cast from an integer carries no alignment."""
    if ALIGNED:
        rows = ptr + _elements_to(address, ptr)
        rows16 = ptr16 + _elements_to(address, ptr16)
    else:
        rows = address.to(tl.pointer_type(ptr.dtype.element_ty))
        rows16 = address.to(tl.pointer_type(ptr16.dtype.element_ty))
    return rows, rows16


@triton.jit
def _sparse_attn_fwd(q_ptr, kv_ptr, kv16_ptr, win_ptr, win16_ptr, sink_ptr, idx_ptr, widx_ptr,
                     o_ptr, lse_ptr, ang_ptr, tab_ptr, fo_ptr, flse_ptr, cnt_ptr,
                     S, H, N, K, NW, W, widx_batch_stride, D, R2, chunk, scale,
                     KV_FP8: tl.constexpr, ROW: tl.constexpr, NOPE: tl.constexpr,
                     QB: tl.constexpr, SCALE_OFF: tl.constexpr, SPLIT: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     PREC: tl.constexpr, DV_PARTS: tl.constexpr = 1,
                     UNROPE: tl.constexpr = False, BF16: tl.constexpr = False,
                     TABLE: tl.constexpr = False, ALL_ROWS: tl.constexpr = False,
                     COMBINE: tl.constexpr = False, COMBINE_COLUMNS: tl.constexpr = 128,
                     TABLE_ALIGNED: tl.constexpr = False, SCALE_WORDS: tl.constexpr = False,
                     FP8_PAIRS: tl.constexpr = False, QK_SPLIT: tl.constexpr = 1,
                     ROWS_M: tl.constexpr = False, AHEAD: tl.constexpr = False,
                     PDL: tl.constexpr = False):
    """A query's W + K slots: first its W window indices into the window's NW rows (win_ptr;
    W = 0 without a window), then its K indices into kv's N rows. UNROPE: the stored output's
    RoPE dims rotated back by angles [S, R2] (not with SPLIT: the combine does it).
    DV_PARTS > 1: the program writes only its 1/DV_PARTS slice of the output columns (the
    scores still use all D), so a 64-head tile's accumulator fits in registers.
    TABLE (a decode step of several sequences, b = 1, token t = sequence t): the token's own
    rows, from tab_ptr int64 [4, S] (``SequenceRows.table``: its compressed rows' address and
    count N, its window rows' address and count NW); its window slots are the last NW of W, in
    order; its K slots are idx_ptr's picks or, ALL_ROWS, its N rows in order.
    SPLIT: o_ptr / lse_ptr take the split's partial (o, lse); COMBINE: the last split program of
    a (token, head block, column slice) to finish (an arrival count per group at cnt_ptr, zero
    before and after the launch) merges the group's partials with the sink into fo_ptr /
    flse_ptr, as ``_sparse_attn_combine`` would: flash-decoding in one launch.
    ROWS_M: the tiles' dots with rows on M (``_attend_tile``), the accumulator transposed.
    AHEAD: each loop computes its next row tile's scores before this tile's softmax
    (``_attend_ahead``), so a warp group's MMAs run while it does the exps."""
    grid_entry(PDL)
    BLOCK_DV: tl.constexpr = BLOCK_D // DV_PARTS
    pid_t = tl.program_id(0)  # b·S + s
    pid_h = tl.program_id(1)
    pid_c = tl.program_id(2) // DV_PARTS      # which split of the k rows
    part_dv = tl.program_id(2) % DV_PARTS     # which slice of the output columns
    n_split = tl.num_programs(2) // DV_PARTS
    batch = pid_t // S
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = part_dv * BLOCK_DV + tl.arange(0, BLOCK_DV)
    mask_h = offs_h < H
    mask_d = offs_d < D
    mask_dv = offs_dv < D
    mask_lse = mask_h & (tl.zeros([BLOCK_H], dtype=tl.int32) + part_dv == 0)  # one slice writes it
    if TABLE:   # this token's sequence: its rows' addresses and counts
        seq = tab_ptr + pid_t
        kv_ptr, kv16_ptr = _table_rows(kv_ptr, kv16_ptr, tl.load(seq), TABLE_ALIGNED)
        N = tl.load(seq + S).to(tl.int32)
        win_ptr, win16_ptr = _table_rows(win_ptr, win16_ptr, tl.load(seq + 2 * S),
                                         TABLE_ALIGNED)
        NW = tl.load(seq + 3 * S).to(tl.int32)
    q_rows = (pid_t * H + offs_h).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * D + offs_d[None, :],
                mask=mask_h[:, None] & mask_d[None, :], other=0.0)
    m_i = tl.full([BLOCK_H], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    if ROWS_M:
        acc = tl.zeros([BLOCK_DV, BLOCK_H], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_H, BLOCK_DV], dtype=tl.float32)
    start = pid_c * chunk
    end = tl.minimum(start + chunk, W + K)
    if ALL_ROWS:
        end = tl.minimum(end, W + N)
    # this program's slots [start, end) of the query's W + K: the window's, then kv's; one loop
    # each, so a tile's row source is fixed (no per-row pointer select)
    widx_row = widx_ptr + batch.to(tl.int64) * widx_batch_stride + (pid_t % S).to(tl.int64) * W
    win_end = tl.minimum(end, W)
    # the slots' indices: the window's (TABLE: its last NW slots, oldest first), then kv's
    # (ALL_ROWS: its rows in order), as ``_slot_indices`` reads them
    kv_slots = idx_ptr + pid_t.to(tl.int64) * K - W
    if AHEAD:   # each loop's next tile's scores issued before this tile's softmax
        m_i, l_i, acc = _attend_ahead(q, m_i, l_i, acc, win_ptr, win16_ptr, batch, NW, start,
                                      win_end, widx_row, W - NW, offs_d, offs_dv,
                                      part_dv * BLOCK_DV, D, scale, KV_FP8, ROW, NOPE, QB,
                                      SCALE_OFF, PREC, SCALE_WORDS, FP8_PAIRS, QK_SPLIT, TABLE,
                                      BLOCK_N)
        m_i, l_i, acc = _attend_ahead(q, m_i, l_i, acc, kv_ptr, kv16_ptr, batch, N,
                                      tl.maximum(start, W), end, kv_slots, W, offs_d, offs_dv,
                                      part_dv * BLOCK_DV, D, scale, KV_FP8, ROW, NOPE, QB,
                                      SCALE_OFF, PREC, SCALE_WORDS, FP8_PAIRS, QK_SPLIT,
                                      ALL_ROWS, BLOCK_N)
    else:
        for n0 in range(start, win_end, BLOCK_N):
            idx = _slot_indices(n0 + tl.arange(0, BLOCK_N), win_end, widx_row, W - NW, TABLE)
            m_i, l_i, acc = _attend_tile(q, m_i, l_i, acc, win_ptr, win16_ptr, batch, NW, idx,
                                         offs_d, offs_dv, part_dv * BLOCK_DV, D, scale, KV_FP8,
                                         ROW, NOPE, QB, SCALE_OFF, PREC, DV_PARTS, SCALE_WORDS,
                                         FP8_PAIRS, QK_SPLIT, ROWS_M)
        for n0 in range(tl.maximum(start, W), end, BLOCK_N):
            idx = _slot_indices(n0 + tl.arange(0, BLOCK_N), end, kv_slots, W, ALL_ROWS)
            m_i, l_i, acc = _attend_tile(q, m_i, l_i, acc, kv_ptr, kv16_ptr, batch, N, idx,
                                         offs_d, offs_dv, part_dv * BLOCK_DV, D, scale, KV_FP8,
                                         ROW, NOPE, QB, SCALE_OFF, PREC, DV_PARTS, SCALE_WORDS,
                                         FP8_PAIRS, QK_SPLIT, ROWS_M)
    if ROWS_M:
        acc = tl.trans(acc)
    m_i = m_i * LN2   # natural-log units from here (the sink's, the lse's)
    if SPLIT:  # partial: o normalised over this split's rows, lse without the sink
        safe_l = tl.where(l_i > 0, l_i, 1.0)
        o = acc / safe_l[:, None]
        lse = tl.where(l_i > 0, m_i + tl.log(safe_l), float("-inf"))
        part = (pid_t * n_split + pid_c).to(tl.int64) * H + offs_h
        # COMBINE: every column slice stores the (same) lse, so each slice's group has them all
        tl.store(lse_ptr + part, lse, mask=mask_h if COMBINE else mask_lse)
        tl.store(o_ptr + part[:, None] * D + offs_dv[None, :], o,
                 mask=mask_h[:, None] & mask_dv[None, :])
        if COMBINE:
            # the group's last split to arrive sees every split's partials
            group = cnt_ptr + (pid_t * tl.num_programs(1) + pid_h) * DV_PARTS + part_dv
            if last_to_arrive(group, n_split):
                # a column block at a time, as narrow as the combine kernel's (fewer registers)
                BLOCK_C: tl.constexpr = min(BLOCK_DV, COMBINE_COLUMNS)
                col0 = part_dv * BLOCK_DV
                _merge_splits(o_ptr, lse_ptr, sink_ptr, fo_ptr, flse_ptr, ang_ptr, pid_t,
                              offs_h, col0 + tl.arange(0, BLOCK_C), col0, mask_lse, S, H, D, R2,
                              n_split, BLOCK_H, BLOCK_C, UNROPE, BF16, BLOCK_DV // BLOCK_C)
    else:
        sink = tl.load(sink_ptr + offs_h, mask=mask_h, other=0.0)
        m_f = tl.maximum(m_i, sink)
        alpha = tl.exp(m_i - m_f)
        l_f = l_i * alpha + tl.exp(sink - m_f)
        o = acc * (alpha / l_f)[:, None]
        if UNROPE:
            o = _unrope_tile(o, ang_ptr, pid_t % S, part_dv * BLOCK_DV, D, R2, BLOCK_H, BLOCK_DV,
                             BF16)
        tl.store(lse_ptr + q_rows, m_f + tl.log(l_f), mask=mask_lse)
        tl.store(o_ptr + q_rows[:, None] * D + offs_dv[None, :], o.to(o_ptr.dtype.element_ty),
                 mask=mask_h[:, None] & mask_dv[None, :])


MERGE_LSE = tl.constexpr(32)   # splits' lse read as one tile by the merge
MERGE_GROUP = tl.constexpr(4)  # splits whose partials the merge loads together (one wait)


@triton.jit
def _merge_splits(po_ptr, plse_ptr, sink_ptr, o_ptr, lse_ptr, ang_ptr, token, offs_h, offs_d,
                  col0, write_lse, S, H, D, R2, NS, BLOCK_H: tl.constexpr,
                  BLOCK_D: tl.constexpr, UNROPE: tl.constexpr, BF16: tl.constexpr,
                  COLUMN_BLOCKS: tl.constexpr = 1):
    """Token ``token``'s NS partial (o, lse) of heads offs_h, columns offs_d (from col0) and the
    COLUMN_BLOCKS − 1 blocks of BLOCK_D after them, merged with the sink → o (and, where
    ``write_lse``, the lse). Partials are read from L2 (``.cg``): other programs of the same
    launch may have written them.

    The program waits for memory once for the splits' lse (a tile of MERGE_LSE: their max and
    the denominator, an online softmax if there are more) and once a group of MERGE_GROUP
    splits a block: a group's loads are all issued, then summed. Each split's weight reaches
    its tile's layout through shared memory, at a barrier that no load after it may pass;
    issued split by split, the loads waited behind four of those for each group (triton 3.6,
    sm_90: about forty trips to L2 in turn for a decode step's 5 splits × 4 column blocks,
    now nine)."""
    mask_h = offs_h < H
    sink = tl.load(sink_ptr + offs_h, mask=mask_h, other=0.0)
    # the lse of every split in one tile (one round trip to L2, not NS): their max m and the
    # softmax denominator over them and the sink, as an online softmax over tiles
    splits = tl.arange(0, MERGE_LSE)
    lse_rows = (token * NS + splits).to(tl.int64)[:, None] * H + offs_h[None, :]
    m = sink
    denom = tl.full([BLOCK_H], 1.0, dtype=tl.float32)   # exp(sink − m)
    for c0 in range(0, NS, MERGE_LSE):
        inside = (c0 + splits < NS)[:, None] & mask_h[None, :]
        lses = tl.load(plse_ptr + c0 * H + lse_rows, mask=inside, other=float("-inf"),
                       cache_modifier=".cg")
        m_new = tl.maximum(m, tl.max(lses, 0))
        denom = denom * tl.exp(m - m_new) + tl.sum(tl.exp(lses - m_new[None, :]), 0)
        m = m_new
    rows = (token * H + offs_h).to(tl.int64)
    for block in tl.static_range(COLUMN_BLOCKS):
        cols = offs_d + block * BLOCK_D
        mask = mask_h[:, None] & (cols < D)[None, :]
        acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
        for c0 in range(0, NS, MERGE_GROUP):
            # the group's loads first, all of them, then their sum
            group_lse = ()
            tiles = ()
            for j in tl.static_range(MERGE_GROUP):
                part = (token * NS + c0 + j).to(tl.int64) * H + offs_h
                there = mask_h & (c0 + j + 0 * offs_h < NS)   # a tensor: the interpreter masks
                group_lse = group_lse + (tl.load(plse_ptr + part, mask=there,
                                                 other=float("-inf"), cache_modifier=".cg"),)
                tiles = tiles + (tl.load(po_ptr + part[:, None] * D + cols[None, :],
                                         mask=mask & there[:, None], other=0.0,
                                         cache_modifier=".cg"),)
            for j in tl.static_range(MERGE_GROUP):
                acc += tl.exp(group_lse[j] - m)[:, None] * tiles[j]
        if block == 0:
            tl.store(lse_ptr + rows, m + tl.log(denom), mask=write_lse)
        o = acc / denom[:, None]
        if UNROPE:
            o = _unrope_tile(o, ang_ptr, token % S, col0 + block * BLOCK_D, D, R2, BLOCK_H,
                             BLOCK_D, BF16)
        tl.store(o_ptr + rows[:, None] * D + cols[None, :], o.to(o_ptr.dtype.element_ty),
                 mask=mask)


@triton.jit
def _sparse_attn_combine(po_ptr, plse_ptr, sink_ptr, o_ptr, lse_ptr, ang_ptr, S, H, D, R2, NS,
                         BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                         UNROPE: tl.constexpr = False, BF16: tl.constexpr = False,
                         PDL: tl.constexpr = False):
    """Grid (tokens, head blocks, column blocks of BLOCK_D): a decode token has only
    H / BLOCK_H head blocks, so its columns are split too (more programs in flight)."""
    grid_entry(PDL)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col0 = tl.program_id(2) * BLOCK_D
    first = tl.zeros([BLOCK_H], dtype=tl.int32) + tl.program_id(2) == 0   # one column block
    _merge_splits(po_ptr, plse_ptr, sink_ptr, o_ptr, lse_ptr, ang_ptr, tl.program_id(0), offs_h,
                  col0 + tl.arange(0, BLOCK_D), col0, (offs_h < H) & first, S, H, D, R2, NS,
                  BLOCK_H, BLOCK_D, UNROPE, BF16)                          # writes the lse


COMBINE_BLOCK_D = 128   # output columns per combine program (a decode token: 4 × 4 programs)


MERGED_SPLIT_ROWS = 128   # rows per split at least, when the last split program merges them


def default_splits(tokens: int, head_blocks: int, k: int, block_n: int,
                   merged: bool = False) -> int:
    """Split the k rows over programs when there are too few (token, head-block) programs.
    ``merged`` (the last split program of a group merges the group's partials): at most one
    split per ``MERGED_SPLIT_ROWS`` rows. Each split writes a partial o of BLOCK_H × D fp32
    (32 KB at 16 heads × 512), more than the 16–32 rows it would read (a decode step's 640
    slots in 20 splits: 2.6 MB of partials against 0.66 MB of bf16 rows), and one program reads
    a group's every partial; at ≤ 5 splits that program reads what one program of the
    separate combine kernel reads (164 KB)."""
    programs = tokens * head_blocks
    if programs >= 128 or k <= 2 * block_n:
        return 1
    splits = max(1, min(triton.cdiv(k, 2 * block_n), triton.cdiv(256, programs), 64))
    return min(splits, triton.cdiv(k, MERGED_SPLIT_ROWS)) if merged else splits


def sparse_attn_triton(q: torch.Tensor, kv: torch.Tensor, sink: torch.Tensor,
                       indices: torch.Tensor, scale: float, layout: KVLayout | None = None,
                       window: WindowRows | None = None, unrope: torch.Tensor | None = None,
                       out: torch.Tensor | None = None,
                       n_splits: int | None = None, block_h: int = 16, block_n: int = 16,
                       dv_parts: int = 1, num_warps: int = 4, combine: str = "fused",
                       fp8_pairs: bool = False, qk_split: int = 1, rows_m: bool = False,
                       ahead: bool = False, upconvert: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton path; ``layout`` set ⇒ ``kv`` (and the window's rows) are uint8 FP8 cache rows
    [b, n, row_bytes]. ``window``: a second source of rows, read in place; ``unrope``: angles
    [s, r/2] the output's RoPE dims are rotated back by (module docstring); ``out``: where o
    goes ([b, s, h, d] in q's dtype; the kernel stores into it when it is contiguous).
    ``dv_parts`` > 1 splits the output columns over that many programs per (token, head block):
    each recomputes the scores over all D, and its accumulator is 1/dv_parts as wide — what lets
    ``block_h = 64`` (a Hopper warp-group MMA tile) fit in registers. ``combine`` (when the rows
    are split over programs, as at decode): "fused" (the default: the last split program of
    each group merges them) or "kernel" (a combine kernel of its own), until a GPU run compares
    them (rows sparse_attn_decode_csa and sparse_attn_decode_csa_combine_kernel).
    ``fp8_pairs``: FP8 rows decoded by bit placement, two values a register
    (model/kernels/fp8_pairs.py), where the rows allow it (``fp8_row_pairs``) and the queries
    are not fp16 (its tile is the values × 2^-60). ``qk_split``: the scores as a dot batched
    over that many slices of the head dim, the slices spread over the warps (``_attend_tile``;
    for the 16-head tiles of mma.sync, not the 64-head warp-group tiles). ``rows_m``: the
    dots with the row tile on the MMA's M side (``_attend_tile``; for 64-head tiles).
    ``ahead``: the next row tile's scores issued before this tile's softmax (``_attend_ahead``;
    heads on M only). ``upconvert`` (FP8 rows, a prefill): the rows up-converted once
    (``upconvert_rows``: kv's and the window's, while they take at most
    ``UPCONVERT_MAX_BYTES``) and read as the compute dtype's, where each query's programs would
    decode every row they read — each row once per head block and column slice."""
    q, out_dtype = _compute_queries(q)
    if (upconvert and layout is not None
            and kv.shape[0] * kv.shape[1] * layout.head_dim * q.element_size()
            <= UPCONVERT_MAX_BYTES):
        kv = upconvert_rows(kv, layout, q.dtype)
        if window is not None:
            window = WindowRows(upconvert_rows(window.rows, layout, q.dtype), window.indices)
        layout = None
    idx = _index_tensor(indices)
    kv, kv16, n = _rows(kv, q.dtype, layout, q.shape[-1])
    if window is None:   # no window slots: the window pointers are never read
        win, win16, nw, widx, w, widx_stride = kv, kv16, 0, idx, 0, 0
    else:
        win, win16, nw = _rows(window.rows, q.dtype, layout, q.shape[-1])
        widx = _index_tensor(window.indices)
        w = widx.shape[-1]
        widx_stride = 0 if widx.dim() == 2 else q.shape[1] * w
    return _launch(q, out_dtype, (kv, kv16, win, win16, idx, widx), (n, idx.shape[-1], nw, w,
                   widx_stride), sink, scale, layout, unrope, out, None, False, n_splits,
                   block_h, block_n, dv_parts, num_warps, combine, fp8_pairs=fp8_pairs,
                   qk_split=qk_split, rows_m=rows_m, ahead=ahead)


# a prefill's FP8 rows up-converted once (``upconvert``) only while they take at most this much
# (a 128K context's 32K compressed rows: 32 MiB in bf16); beyond, the kernel reads FP8 rows
UPCONVERT_MAX_BYTES = 64 << 20
UPCONVERT_BLOCK_R = 16


def upconvert_rows(rows: torch.Tensor, layout: KVLayout, dtype: torch.dtype) -> torch.Tensor:
    """FP8 cache rows uint8 [b, n, row_bytes] → [b, n, head_dim] in ``dtype``, exactly the
    values the attention kernels compute with (e4m3 × a power of two, and the bf16 RoPE dims:
    all exact in bf16). One launch (``_upconvert_rows_kernel``)."""
    assert rows.dtype == torch.uint8 and rows.shape[-1] == layout.row_bytes, rows.shape
    src = rows.contiguous()
    d = layout.head_dim
    out = torch.empty(*src.shape[:-1], d, dtype=dtype, device=src.device)
    count = out.numel() // d
    if count:
        aligned = src.data_ptr() % 8 == 0
        _upconvert_rows_kernel[(triton.cdiv(count, UPCONVERT_BLOCK_R),)](
            src, src.view(torch.int16), out, count, d, ROW=layout.row_bytes, NOPE=layout.nope,
            QB=layout.block, SCALE_OFF=layout.scale_offset,
            SCALE_WORDS=scale_words(layout, aligned), BLOCK_R=UPCONVERT_BLOCK_R,
            BLOCK_D=max(16, triton.next_power_of_2(d)), **pdl(src.device))
    return out


def scale_words(layout: KVLayout, aligned: bool) -> bool:
    """Whether the kernels may load each FP8 row's scale bytes as one 8-byte word: at most 8 of
    them, at an 8-byte multiple in rows of an 8-byte multiple, in row tensors that start 8-byte
    aligned (``aligned``, which the caller checked)."""
    return (aligned and layout.row_bytes % 8 == 0 and layout.scale_offset % 8 == 0
            and layout.nope // layout.block <= 8)


def fp8_row_pairs(layout: KVLayout, aligned: bool) -> bool:
    """Whether the kernels may decode FP8 rows by bit placement (``fp8_pairs``): a row's scales
    are one word (``scale_words``), and a column quad is one word of codes or 8 bytes of RoPE
    dims (the codes a multiple of 8, a scale block of 4)."""
    return scale_words(layout, aligned) and layout.nope % 8 == 0 and layout.block % 4 == 0


def _compute_queries(q: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
    """q as the kernel reads it (fp32 under the interpreter, which mishandles bf16), and the
    dtype the output comes back in."""
    out_dtype = q.dtype
    if interpreter_fp32() or q.dtype not in (torch.bfloat16, torch.float16):
        q = q.float()
    return q.contiguous(), out_dtype


def _launch(q, out_dtype, sources, sizes, sink, scale, layout, unrope, out, table, all_rows,
            n_splits, block_h, block_n, dv_parts, num_warps, combine="fused",
            table_aligned=False, fp8_pairs=False, qk_split=1, rows_m=False,
            ahead=False) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward (one split, or flash-decoding's splits and their combine) over ``sources``
    (kv, its int16 view, window rows, theirs, indices, window indices) of ``sizes`` (n, k,
    nw, w, the window indices' batch stride); ``table``: per-token sources (TABLE mode).
    ``combine``: "fused" (the splits' last program merges them, one launch) or "kernel"
    (``_sparse_attn_combine``, a launch of its own); ``table_aligned``: every address in
    ``table`` is a multiple of 16 (``_table_rows``); ``fp8_pairs``, ``qk_split``: as
    ``sparse_attn_triton``'s, and ``rows_m``, ``ahead``."""
    fused = finish_fused("sparse attention combine", combine)
    b, s, h, d = q.shape
    kv, kv16, win, win16, idx, widx = sources
    n, k, nw, w, widx_stride = sizes
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    sink = sink.float().contiguous()
    slots = w + k
    if layout is None:
        row, nope, qb, soff = d, d, 1, 0
    else:
        row, nope, qb, soff = layout.row_bytes, layout.nope, layout.block, layout.scale_offset
    dest = out
    if out is None or out.dtype != q.dtype or not out.is_contiguous():
        out = torch.empty(b, s, h, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, s, h, dtype=torch.float32, device=q.device)
    block_h = max(16, min(block_h, triton.next_power_of_2(h)))
    block_d = max(16, triton.next_power_of_2(d))
    head_blocks = triton.cdiv(h, block_h)
    splits = n_splits or default_splits(b * s, head_blocks, slots, block_n,
                                        merged=fused)
    splits = max(1, min(splits, triton.cdiv(max(slots, 1), block_n)))
    chunk = triton.cdiv(triton.cdiv(max(slots, 1), splits), block_n) * block_n
    splits = triton.cdiv(max(slots, 1), chunk)
    if block_d % dv_parts or block_d // dv_parts < 16:
        raise ValueError(f"dv_parts={dv_parts} does not split {block_d} columns into ≥ 16")
    if qk_split < 1 or block_d % qk_split or block_d // qk_split < 16:
        raise ValueError(f"qk_split={qk_split} does not split {block_d} dims into ≥ 16")
    if rows_m and qk_split > 1:
        raise ValueError("rows_m and qk_split > 1 are two layouts of the scores: pick one")
    if rows_m and ahead:
        raise ValueError("ahead pipelines the heads-on-M tiles, not rows_m's")
    r2 = 0 if unrope is None else unrope.shape[-1]
    if unrope is not None:
        assert unrope.shape[0] == s and 0 < 2 * r2 <= d and d % 2 == 0, (unrope.shape, q.shape)
    ang = q if unrope is None else unrope.float().contiguous()
    rotate = dict(UNROPE=unrope is not None, BF16=out_dtype == torch.bfloat16)
    aligned = (table_aligned if table is not None else
               kv.data_ptr() % 8 == win.data_ptr() % 8 == 0)
    overlap = pdl(q.device)   # every launch's options (launch.pdl)
    consts = dict(KV_FP8=layout is not None, ROW=row, NOPE=nope, QB=qb, SCALE_OFF=soff,
                  BLOCK_H=block_h, BLOCK_N=block_n, BLOCK_D=block_d, PREC=prec,
                  DV_PARTS=dv_parts, TABLE=table is not None, ALL_ROWS=all_rows,
                  TABLE_ALIGNED=table is not None and table_aligned,
                  SCALE_WORDS=layout is not None and scale_words(layout, aligned),
                  FP8_PAIRS=(fp8_pairs and layout is not None and q.dtype != torch.float16
                             and fp8_row_pairs(layout, aligned)),
                  QK_SPLIT=qk_split, ROWS_M=rows_m, AHEAD=ahead,
                  num_warps=num_warps, **overlap)
    sources = (q, kv, kv16, win, win16, sink, idx, widx)
    tab = idx if table is None else table
    sizes = (s, h, n, k, nw, w, widx_stride, d, r2, chunk, scale)
    if splits == 1:
        _sparse_attn_fwd[(b * s, head_blocks, dv_parts)](
            *sources, out, lse, ang, tab, out, lse, lse, *sizes, SPLIT=False, **rotate, **consts)
    elif fused:
        po = torch.empty(b * s, splits, h, d, dtype=torch.float32, device=q.device)
        plse = torch.empty(b * s, splits, h, dtype=torch.float32, device=q.device)
        groups = arrivals(b * s * head_blocks * dv_parts, q.device)
        _sparse_attn_fwd[(b * s, head_blocks, splits * dv_parts)](
            *sources, po, plse, ang, tab, out, lse, groups, *sizes, SPLIT=True, COMBINE=True,
            COMBINE_COLUMNS=COMBINE_BLOCK_D, **rotate, **consts)
    else:
        po = torch.empty(b * s, splits, h, d, dtype=torch.float32, device=q.device)
        plse = torch.empty(b * s, splits, h, dtype=torch.float32, device=q.device)
        _sparse_attn_fwd[(b * s, head_blocks, splits * dv_parts)](
            *sources, po, plse, ang, tab, out, lse, plse, *sizes, SPLIT=True, **consts)
        block_dc = min(block_d, COMBINE_BLOCK_D)
        _sparse_attn_combine[(b * s, head_blocks, triton.cdiv(d, block_dc))](
            po, plse, sink, out, lse, ang, s, h, d, r2, splits, BLOCK_H=block_h,
            BLOCK_D=block_dc, **rotate, **overlap)
    return into(dest, out.to(out_dtype)), lse


def into(dest: torch.Tensor | None, o: torch.Tensor) -> torch.Tensor:
    """o, stored in ``dest`` when one is given (and not already o): → dest or o."""
    if dest is None or dest is o:
        return o
    dest.copy_(o)
    return dest


def _index_tensor(indices: torch.Tensor) -> torch.Tensor:
    """Indices as the kernel reads them: int32 or int64 as they come (no conversion launch)."""
    if indices.dtype not in (torch.int32, torch.int64):
        indices = indices.to(torch.int32)
    return indices.contiguous()


def _rows(rows: torch.Tensor, dtype: torch.dtype, layout: KVLayout | None, d: int
          ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(rows as the kernel reads them, their int16 view for FP8 rows' bf16 RoPE dims, count)."""
    if layout is None:
        rows = rows.to(dtype).contiguous()
        return rows, rows, rows.shape[1]
    assert layout.head_dim == d and rows.dtype == torch.uint8, (layout, rows.dtype)
    rows = rows.contiguous()
    return rows, rows.view(torch.int16), rows.shape[1]
