"""Compressor core (fact sheet §2.4), fused with the cache insert: a sequence's open-block rows
(kv and gate logits side by side, as ``pool_inputs`` writes them) → per block, softmax-gated pooling per
channel → RMSNorm → the interleaved RoPE of the block's first position → the cache's row format,
written straight into the destination rows (a slice of the compressed-row store).

Input: ``pooled`` fp32 [b, L, 2, coff·d] (L ≥ n_blocks·ratio rows from a block boundary; [:, :,
0] kv, [:, :, 1] score with the position's ape). CSA (ratio 4, ``overlap``, coff = 2) pools 2·ratio
rows per block: the previous block's rows on dims [0, d) — for block 0 the state's ``prev_kv`` /
``prev_score``, or nothing (kv 0, score −inf) at the sequence's start — and the block's own rows
on dims [d, 2d). HCA (coff = 1) pools the block's ratio rows.

What the entry becomes is a ``RowFormat`` (cache_rows.py: float rows, the packed FP8 KV row,
or for the indexer's keys the Hadamard rotation and the packed FP4 row, or float rows of those
values), the model's numerics (§2.8).

The reference composes the separate ops (gather the overlap halves, pool + norm + RoPE, rotate,
quantise / pack); the Triton kernel is one program per entry — an online softmax over the block's
rows in chunks (w = 128 for HCA does not fit in registers at d = 512), the rest in registers — so a
compression is one launch, not the ≈ 12 of the composed ops (two-thirds of them the overlap
gathers and casts). In bf16 the kernel rounds where the composed ops round (after pooling, norm,
RoPE and rotation); its fp32 sums run in another order, so an FP8 / FP4 code may differ from the
reference's by one step where a value sits on a rounding boundary.

``pool_inputs``: what a layer's compressors pool, from the one stacked projection of x (their
``wkv`` / ``wgate`` and the indexer's head weights, ``Attention.pool_proj``) — per compressor kv
and gate logits + ape[position mod ratio] side by side, and the indexer's scaled head weights —
in one launch that also sums the decode GEMV's K-split partials as it reads them: one launch
where a CSA layer's step took four (the partials' sum, two compressors' inputs, the weights'
scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from model.kernels.cache_rows import (
    RowFormat,
    format_args,
    rope_row,
    rotation_for,
    round_bf16,
    store_row,
    store_rows_reference,
)
from model.kernels.gemm import sum_parts, sum_parts_pair, sum_splits
from model.kernels.launch import address, device_table, grid_entry, interpreter_fp32, pdl
from model.layers.rope import apply_rope


# -- reference -------------------------------------------------------------------------------------
def compress_pool_reference(kv: torch.Tensor, score: torch.Tensor, norm_weight: torch.Tensor,
                            eps: float, angles: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """kv, score [b, n, w, d] fp32 (each block's rows, gathered) → entries [b, n, d] in
    ``dtype``: rope(rmsnorm(Σ_w softmax_w(score) · kv))."""
    from model.kernels import ops

    pooled = (kv * score.softmax(dim=2)).sum(dim=2)
    entries = ops.rms_norm(pooled.to(dtype), norm_weight, eps)
    return apply_rope(entries, angles)


def gather_blocks(pooled: torch.Tensor, n_blocks: int, ratio: int, overlap: bool,
                  prev_kv: torch.Tensor | None, prev_score: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """pooled [b, L, 2, coff·d] → each block's rows kv, score [b, n, w, d] (w = 2·ratio with the
    previous block's first halves when ``overlap``, else ratio)."""
    b, cutoff = pooled.shape[0], n_blocks * ratio
    kv = pooled[:, :cutoff, 0].unflatten(1, (n_blocks, ratio))
    score = pooled[:, :cutoff, 1].unflatten(1, (n_blocks, ratio))
    if not overlap:
        return kv, score
    d = kv.shape[-1] // 2
    if prev_kv is None:   # the sequence's first block: nothing before it
        prev_kv = kv.new_zeros(b, ratio, 2 * d)
        prev_score = score.new_full((b, ratio, 2 * d), float("-inf"))
    before_kv = torch.cat([prev_kv.unsqueeze(1), kv[:, :-1]], dim=1)[..., :d]
    before_score = torch.cat([prev_score.unsqueeze(1), score[:, :-1]], dim=1)[..., :d]
    return (torch.cat([before_kv, kv[..., d:]], dim=2),
            torch.cat([before_score, score[..., d:]], dim=2))


def compress_insert_reference(pooled: torch.Tensor, n_blocks: int, ratio: int, overlap: bool,
                              prev_kv: torch.Tensor | None, prev_score: torch.Tensor | None,
                              norm_weight: torch.Tensor, eps: float, angles: torch.Tensor,
                              fmt: RowFormat) -> torch.Tensor:
    """→ the n_blocks entries [b, n, row_width] in the format (see the module docstring)."""
    kv, score = gather_blocks(pooled, n_blocks, ratio, overlap, prev_kv, prev_score)
    entries = compress_pool_reference(kv, score, norm_weight, eps, angles, fmt.dtype)
    return store_rows_reference(entries, fmt)


@dataclass(frozen=True, slots=True)
class PoolColumns:
    """One compressor's columns of the stacked projection: kv [kv, kv + width), gate logits
    [gate, gate + width); its ape [ratio, width]."""
    kv: int
    gate: int
    ape: torch.Tensor


@dataclass(frozen=True, slots=True)
class HeadColumns:
    """The indexer's head weights: columns [start, start + heads), rounded to ``dtype`` (the
    projection's output dtype), then × ``scale`` in fp32."""
    start: int
    heads: int
    scale: float
    dtype: torch.dtype


def pool_inputs_reference(parts: torch.Tensor, compressors: Sequence[PoolColumns],
                          heads: HeadColumns | None, positions: torch.Tensor
                          ) -> list[torch.Tensor]:
    """parts fp32 [S, b, T, N] (Σ over S = the stacked projection) → per compressor fp32
    [b, T, 2, width] (kv; gate + ape[position % ratio]), then the head weights fp32 [b, T, H]."""
    y = sum_splits(parts)
    outs = []
    for c in compressors:
        w = c.ape.shape[-1]
        kv, gate = y[..., c.kv:c.kv + w], y[..., c.gate:c.gate + w]
        outs.append(torch.stack([kv, gate + c.ape.float()[positions % c.ape.shape[0]]], dim=2))
    if heads is not None:
        h = y[..., heads.start:heads.start + heads.heads]
        outs.append(h.to(heads.dtype).float() * heads.scale)
    return outs


# -- Triton ----------------------------------------------------------------------------------------
@triton.jit
def _compress_insert_kernel(
        pooled_ptr, prev_kv_ptr, prev_sc_ptr, w_ptr, ang_ptr, h_ptr, out_ptr, tab_ptr,
        N, L, R, D, R2, stride_pb, stride_pr, stride_ob, stride_on, eps,
        OVERLAP: tl.constexpr, HAS_PREV: tl.constexpr, BF16: tl.constexpr,
        MODE: tl.constexpr, PACKED: tl.constexpr, NOPE: tl.constexpr, QBLOCK: tl.constexpr,
        N_SCALES: tl.constexpr, SCALE_OFFSET: tl.constexpr, ROW_BYTES: tl.constexpr, PAD_P: tl.constexpr,
        FLOOR_BITS: tl.constexpr, INV_MAX_BITS: tl.constexpr, QMAX: tl.constexpr,
        BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr, TABLE: tl.constexpr = False,
                            PDL: tl.constexpr = False):
    """TABLE (a decode step of several sequences): entry e is N items' e-th, one block each
    (L = R rows), its pooled rows, previous block (address 0: none), store row, position and
    previous block's row stride from tab_ptr int64 [6, N] (``compress_insert_rows_triton``);
    ang_ptr is then the inverse frequencies."""
    grid_entry(PDL)
    e = tl.program_id(0).to(tl.int64)     # entry = batch·N + block
    bi = e // N
    i = e % N
    position = None
    if TABLE:
        bi = 0
        i = 0
        pooled_ptr = tl.load(tab_ptr + e).to(tl.pointer_type(tl.float32))
        prev_addr = tl.load(tab_ptr + N + e)
        prev_kv_ptr = prev_addr.to(tl.pointer_type(tl.float32))
        prev_sc_ptr = tl.load(tab_ptr + 2 * N + e).to(tl.pointer_type(tl.float32))
        out_ptr = tl.load(tab_ptr + 3 * N + e).to(tl.pointer_type(out_ptr.dtype.element_ty))
        position = tl.load(tab_ptr + 4 * N + e)
        stride_pr = tl.load(tab_ptr + 5 * N + e)
    C = D * (2 if OVERLAP else 1)         # kv (or score) width of one pooled row
    base = pooled_ptr + bi * L * 2 * C
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    W = R * (2 if OVERLAP else 1)
    m = tl.full([BLOCK_D], float("-inf"), dtype=tl.float32)
    den = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for w0 in range(0, W, BLOCK_W):
        w = w0 + tl.arange(0, BLOCK_W)
        in_w = w < W
        if OVERLAP:
            # rows w < R: the previous block's rows, dims [0, d); rows w ≥ R: this block's, [d, 2d)
            before = w < R
            block = tl.zeros([BLOCK_W], dtype=tl.int64) + i   # (the interpreter: no scalar masks)
            row = tl.where(before, (i - 1) * R + w, i * R + w - R)
            col = tl.where(before, 0, D)[:, None] + offs_d[None, :]
            in_pool = in_w & ((w >= R) | (block > 0))
            mask = in_pool[:, None] & mask_d[None, :]
            ptrs = base + row[:, None] * (2 * C) + col
            v = tl.load(ptrs, mask=mask, other=0.0)
            z = tl.load(ptrs + C, mask=mask, other=float("-inf"))
            if HAS_PREV:   # block 0: the previous block is the state's last closed one
                from_state = (in_w & before & (block == 0))[:, None] & mask_d[None, :]
                if TABLE:   # an item's first block has no previous one (address 0)
                    from_state = from_state & ((w.to(tl.int64) * 0 + prev_addr) != 0)[:, None]
                prev = bi * stride_pb + w[:, None] * stride_pr + offs_d[None, :]
                v = tl.where(from_state, tl.load(prev_kv_ptr + prev, mask=from_state, other=0.0), v)
                z = tl.where(from_state, tl.load(prev_sc_ptr + prev, mask=from_state,
                                                 other=float("-inf")), z)
        else:
            mask = in_w[:, None] & mask_d[None, :]
            ptrs = base + (i * R + w)[:, None] * (2 * C) + offs_d[None, :]
            v = tl.load(ptrs, mask=mask, other=0.0)
            z = tl.load(ptrs + C, mask=mask, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(z, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        p = tl.exp(z - m_safe[None, :])
        den = den * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p * v, 0)
        m = m_new
    y = tl.where(mask_d, acc / tl.where(mask_d, den, 1.0), 0.0)
    if BF16:
        y = round_bf16(y)
    y = y * tl.rsqrt(tl.sum(y * y, 0) / D + eps) * tl.load(w_ptr + offs_d, mask=mask_d, other=0.0)
    if BF16:
        y = round_bf16(y)
    y = rope_row(y, ang_ptr + i * R2, D, R2, BLOCK_D, position)
    if BF16:
        y = round_bf16(y)
    store_row(y, out_ptr + bi * stride_ob + i * stride_on, h_ptr, D, BF16, MODE, PACKED, NOPE,
              QBLOCK, N_SCALES, SCALE_OFFSET, ROW_BYTES, PAD_P, FLOOR_BITS, INV_MAX_BITS, QMAX,
              BLOCK_D)


@triton.jit
def _pool_columns(row_ptr, S, part_stride, kv, gate, W, ape_ptr, ratio, out_ptr, position, e,
                  cols):
    mask = cols < W
    slot = position % ratio
    ape = tl.load(ape_ptr + slot * W + cols, mask=mask, other=0.0)
    out = out_ptr + e * 2 * W + cols
    kv_sum, gate_sum = sum_parts_pair(row_ptr + kv, row_ptr + gate, S, part_stride, cols, mask)
    tl.store(out, kv_sum, mask=mask)
    tl.store(out + W, gate_sum + ape, mask=mask)


@triton.jit
def _pool_inputs_kernel(part_ptr, S, part_stride, N, pos_ptr, T,
                        kv0, gate0, w0, ape0_ptr, ratio0, out0_ptr,
                        kv1, gate1, w1, ape1_ptr, ratio1, out1_ptr,
                        h_start, H, h_scale, h_out_ptr,
                        N_COMP: tl.constexpr, HEADS: tl.constexpr, BF16_HEADS: tl.constexpr,
                        BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    """Program (token, output, column block): output 0 / 1 = compressor 0 / 1, N_COMP = the
    head weights. Every value is the sum of the S partials (S = 1: the projection itself)."""
    grid_entry(PDL)
    e = tl.program_id(0).to(tl.int64)      # b·T + t
    which = tl.program_id(1)
    cols = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    row = part_ptr + e * N
    position = tl.load(pos_ptr + e % T)
    if which == 0:
        _pool_columns(row, S, part_stride, kv0, gate0, w0, ape0_ptr, ratio0, out0_ptr, position,
                      e, cols)
    if N_COMP > 1:
        if which == 1:
            _pool_columns(row, S, part_stride, kv1, gate1, w1, ape1_ptr, ratio1, out1_ptr,
                          position, e, cols)
    if HEADS:
        if which == N_COMP:
            mask = cols < H
            h = sum_parts(row + h_start, S, part_stride, cols, mask)
            if BF16_HEADS:
                h = round_bf16(h)
            tl.store(h_out_ptr + e * H + cols, h * h_scale, mask=mask)


def pool_inputs_triton(parts: torch.Tensor, compressors: Sequence[PoolColumns],
                       heads: HeadColumns | None, positions: torch.Tensor, block: int = 256
                       ) -> list[torch.Tensor]:
    """The reference in one launch (at most two compressors; parts fp32, rows contiguous)."""
    assert 1 <= len(compressors) <= 2 and parts.dtype == torch.float32
    n_parts, b, t, n = parts.shape
    parts = parts.contiguous()
    dev = parts.device
    outs = [torch.empty(b, t, 2, c.ape.shape[-1], dtype=torch.float32, device=dev)
            for c in compressors]
    args = []
    for c, out in zip(compressors, outs, strict=True):
        args += [c.kv, c.gate, c.ape.shape[-1], c.ape.float().contiguous(), c.ape.shape[0], out]
    if len(compressors) == 1:
        args += args                      # unused second compressor (N_COMP = 1)
    h_out = (torch.empty(b, t, heads.heads, dtype=torch.float32, device=dev)
             if heads is not None else outs[0])
    widths = [c.ape.shape[-1] for c in compressors] + ([heads.heads] if heads else [])
    if b * t:
        _pool_inputs_kernel[(b * t, len(widths), triton.cdiv(max(widths), block))](
            parts, n_parts, b * t * n, n, positions.contiguous(), t, *args,
            heads.start if heads else 0, heads.heads if heads else 0,
            heads.scale if heads else 1.0, h_out, N_COMP=len(compressors),
            HEADS=heads is not None,
            BF16_HEADS=heads is not None and heads.dtype == torch.bfloat16, BLOCK=block,
            **pdl(positions.device))
    return outs + ([h_out] if heads is not None else [])


def compress_insert_triton(pooled: torch.Tensor, n_blocks: int, ratio: int, overlap: bool,
                           prev_kv: torch.Tensor | None, prev_score: torch.Tensor | None,
                           norm_weight: torch.Tensor, eps: float, angles: torch.Tensor,
                           fmt: RowFormat, out: torch.Tensor | None = None, block_w: int = 8
                           ) -> torch.Tensor:
    """One launch: the reference's entries written into ``out`` [b, n_blocks, row_width] (cache
    rows: a slice of the store, unit stride along the row) or a new tensor."""
    b = pooled.shape[0]
    d = norm_weight.shape[0]
    assert pooled.dtype == torch.float32 and pooled.shape[-1] == d * (2 if overlap else 1)
    assert angles.shape[0] == n_blocks, (angles.shape, n_blocks)
    if out is None:
        out = torch.empty(b, n_blocks, fmt.row_width(d), dtype=fmt.row_dtype(),
                          device=pooled.device)
    assert out.shape == (b, n_blocks, fmt.row_width(d)) and out.stride(-1) == 1, out.shape
    if b * n_blocks == 0:
        return out
    target = out.float() if interpreter_fp32() and out.dtype == torch.bfloat16 else out
    args = format_args(fmt, d)
    pooled = pooled.contiguous()
    has_prev = overlap and prev_kv is not None
    if has_prev:   # [b, ratio, 2d] each, read through one pair of strides: views of a pooled
        # block (a decode step's) as they are, anything else as fp32 copies
        same = prev_kv.stride() == prev_score.stride() and prev_kv.stride(-1) == 1
        if not same or prev_kv.dtype != torch.float32 or prev_score.dtype != torch.float32:
            prev_kv, prev_score = prev_kv.float().contiguous(), prev_score.float().contiguous()
    else:
        prev_kv = prev_score = pooled
    _compress_insert_kernel[(b * n_blocks,)](
        pooled, prev_kv, prev_score, norm_weight.float().contiguous(),
        angles.float().contiguous(), rotation_for(args, d, pooled.device, pooled), target, pooled,
        n_blocks, pooled.shape[1], ratio, d, angles.shape[-1],
        prev_kv.stride(0), prev_kv.stride(1), target.stride(0), target.stride(1), eps,
        OVERLAP=overlap, HAS_PREV=has_prev, **args,
        BLOCK_W=block_w, **pdl(pooled.device))
    if target is not out:
        out.copy_(target)
    return out


@dataclass(frozen=True, slots=True)
class BlockInsert:
    """One sequence's block closing at a decode step, its insert deferred so that a layer's
    closing blocks go in one launch (``compress_insert_rows``): its pooled rows [1, ratio, 2,
    coff·d] fp32, the previous closed block's kv / score [1, ratio, coff·d] (None: its first
    block), the block's first position (its RoPE position) and its row of the store
    [1, 1, row_width]."""
    pooled: torch.Tensor
    prev_kv: torch.Tensor | None
    prev_score: torch.Tensor | None
    position: int
    out: torch.Tensor

    def angles(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """[1, R/2]: the block's RoPE angles, as ``RotaryEmbedding.angles`` makes them."""
        position = torch.tensor([self.position], device=self.pooled.device)
        return position.float().unsqueeze(-1) * inv_freq


def compress_insert_rows_reference(items: Sequence[BlockInsert], ratio: int, overlap: bool,
                                   norm_weight: torch.Tensor, eps: float,
                                   inv_freq: torch.Tensor, fmt: RowFormat) -> None:
    """Each item through ``compress_insert_reference`` into its store row (its angles as
    ``RotaryEmbedding.angles`` makes them from ``inv_freq``)."""
    for it in items:
        it.out.copy_(compress_insert_reference(it.pooled, 1, ratio, overlap, it.prev_kv,
                                               it.prev_score, norm_weight, eps,
                                               it.angles(inv_freq), fmt))


def compress_insert_rows_triton(items: Sequence[BlockInsert], ratio: int, overlap: bool,
                                norm_weight: torch.Tensor, eps: float, inv_freq: torch.Tensor,
                                fmt: RowFormat) -> None:
    """Same contract as ``compress_insert_rows_reference``, one launch (TABLE mode; the angles
    computed in the kernel). Items the table cannot describe as they are (another stride of
    the previous block, bf16 rows under the interpreter) go one by one."""
    if not items:
        return
    d = norm_weight.shape[0]
    width = d * (2 if overlap else 1)
    out_dtype = items[0].out.dtype
    direct = not (interpreter_fp32() and out_dtype == torch.bfloat16)
    for it in items:
        direct = direct and it.pooled.shape == (1, ratio, 2, width) and it.pooled.is_contiguous()
        direct = direct and it.out.stride(-1) == 1 and it.out.dtype == out_dtype
        if it.prev_kv is not None:   # kv and score rows: one stride, unit along a row
            direct = direct and it.prev_kv.stride() == it.prev_score.stride()
            direct = direct and it.prev_kv.stride(-1) == 1 and it.prev_kv.shape[0] == 1
            direct = direct and it.prev_kv.dtype == it.prev_score.dtype == torch.float32
    if not direct:
        for it in items:
            compress_insert_triton(it.pooled, 1, ratio, overlap, it.prev_kv, it.prev_score,
                                   norm_weight, eps, it.angles(inv_freq), fmt, out=it.out)
        return
    device = items[0].pooled.device
    rows = [[address(it.pooled) for it in items],
            [address(it.prev_kv) for it in items],
            [address(it.prev_score) for it in items],
            [address(it.out) for it in items],
            [it.position for it in items],
            [0 if it.prev_kv is None else it.prev_kv.stride(1) for it in items]]
    table = device_table(rows, device)
    args = format_args(fmt, d)
    first = items[0]
    _compress_insert_kernel[(len(items),)](
        first.pooled, first.pooled, first.pooled, norm_weight.float().contiguous(),
        inv_freq.float().contiguous(), rotation_for(args, d, device, first.pooled), first.out,
        table, len(items), ratio, ratio, d, inv_freq.shape[-1], 0, 0, 0, 0, eps,
        OVERLAP=overlap, HAS_PREV=overlap, **args, BLOCK_W=8, TABLE=True, **pdl(device))
