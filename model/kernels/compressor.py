"""Compressor core (fact sheet §2.4), fused with the cache insert: a sequence's open-block rows
(kv and gate logits, as ``Compressor.project`` stacks them) → per block, softmax-gated pooling per
channel → RMSNorm → the interleaved RoPE of the block's first position → the cache's row format,
written straight into the destination rows (a slice of the compressed-row store).

Input: ``pooled`` fp32 [b, L, 2, coff·d] (L ≥ n_blocks·ratio rows from a block boundary; [:, :,
0] kv, [:, :, 1] score with the position's ape). CSA (ratio 4, ``overlap``, coff = 2) pools 2·ratio
rows per block: the previous block's rows on dims [0, d) — for block 0 the state's ``prev_kv`` /
``prev_score``, or nothing (kv 0, score −inf) at the sequence's start — and the block's own rows
on dims [d, 2d). HCA (coff = 1) pools the block's ratio rows.

What the entry becomes (``EntryFormat``), the model's numerics (§2.8):

- dequant numerics: float rows in the compute dtype;
- native, attention KV (``KVLayout``): the FP8 cache row (e4m3 no-RoPE dims per 1×64 with ue8m0
  scales, bf16 RoPE dims; kv_fp8.py), or float rows of exactly those values without a layout;
- native, indexer keys (``rotate``): a Hadamard rotation, then the FP4 row (e2m1 per 1×32, ue8m0;
  fp4_keys.py, ``IndexKeyLayout``), or float rows of those values without a layout.

The reference composes the separate ops (gather the overlap halves, pool + norm + RoPE, rotate,
quantise / pack); the Triton kernel is one program per entry — an online softmax over the block's
rows in chunks (w = 128 for HCA does not fit in registers at d = 512), the rest in registers — so a
compression is one launch, not the ≈ 12 of the composed ops (two-thirds of them the overlap
gathers and casts). The kernel rounds to the compute dtype once, after RoPE (the reference rounds
after pooling, norm and RoPE), and its fp32 sums run in another order, so in bf16 an FP8 / FP4
code may differ from the reference's by one step where a value sits on a rounding boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from model.kernels import fp4_keys, kv_fp8, quant
from model.kernels.fp4_keys import IndexKeyLayout
from model.kernels.kv_fp8 import KV_QUANT_BLOCK, KVLayout
from model.kernels.launch import interpreting
from model.kernels.quant_triton import (
    FP4_CONSTANTS,
    FP8_CONSTANTS,
    _bf16_bytes,
    _code,
    _e2m1_code,
    _e8m0_byte,
    _exp2_int,
    _round_e2m1,
    _round_e4m3,
    _scale_exponent,
    _scaled,
)
from model.layers.rope import apply_rope

INDEX_KEY_BLOCK = fp4_keys.INDEX_KEY_BLOCK


@dataclass(frozen=True, slots=True)
class EntryFormat:
    """What a compressed entry is stored as (see the module docstring)."""
    dtype: torch.dtype                          # compute dtype of the entries
    native: bool = False                        # rounded to the cache's numerics
    layout: KVLayout | IndexKeyLayout | None = None   # packed uint8 rows, else float rows
    rotate: bool = False                        # indexer keys: Hadamard, then FP4
    rope_dim: int = 0                           # trailing RoPE dims (kept bf16 in a KV row)

    def row_width(self, d: int) -> int:
        return d if self.layout is None else self.layout.row_bytes

    def row_dtype(self) -> torch.dtype:
        return self.dtype if self.layout is None else torch.uint8


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


def finish_reference(entries: torch.Tensor, fmt: EntryFormat) -> torch.Tensor:
    """Entries [b, n, d] in the compute dtype → the format's rows (the composed ops)."""
    if not fmt.native:
        return entries
    if fmt.rotate:
        from model.kernels import ops

        rotated = ops.hadamard(entries)
        if fmt.layout is not None:
            return fp4_keys.pack_index_keys(rotated, fmt.layout)
        return quant.fp4_fake_quant(rotated, INDEX_KEY_BLOCK)
    if fmt.layout is not None:
        return kv_fp8.pack_kv_fp8(entries, fmt.layout)
    nope = entries.shape[-1] - fmt.rope_dim
    rope = entries[..., nope:].to(torch.bfloat16).to(entries.dtype)
    return torch.cat([quant.fp8_fake_quant(entries[..., :nope], KV_QUANT_BLOCK), rope], dim=-1)


def compress_insert_reference(pooled: torch.Tensor, n_blocks: int, ratio: int, overlap: bool,
                              prev_kv: torch.Tensor | None, prev_score: torch.Tensor | None,
                              norm_weight: torch.Tensor, eps: float, angles: torch.Tensor,
                              fmt: EntryFormat) -> torch.Tensor:
    """→ the n_blocks entries [b, n, row_width] in the format (see the module docstring)."""
    kv, score = gather_blocks(pooled, n_blocks, ratio, overlap, prev_kv, prev_score)
    entries = compress_pool_reference(kv, score, norm_weight, eps, angles, fmt.dtype)
    return finish_reference(entries, fmt)


# -- Triton ----------------------------------------------------------------------------------------
FORMAT_FLOAT, FORMAT_KV, FORMAT_KEYS = 0, 1, 2   # kernel output modes


@triton.jit
def _round_bf16(x):
    """fp32 → the nearest bf16 value (ties to even), as fp32."""
    low, high = _bf16_bytes(x)
    bits = (high.to(tl.int32) << 24) | (low.to(tl.int32) << 16)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _compress_insert_kernel(
        pooled_ptr, prev_kv_ptr, prev_sc_ptr, w_ptr, ang_ptr, h_ptr, out_ptr,
        N, L, R, D, R2, stride_pb, stride_pr, stride_ob, stride_on, eps,
        OVERLAP: tl.constexpr, HAS_PREV: tl.constexpr, BF16: tl.constexpr,
        MODE: tl.constexpr, PACKED: tl.constexpr, ROTATE: tl.constexpr,
        NOPE: tl.constexpr, QBLOCK: tl.constexpr, N_SCALES: tl.constexpr,
        SCALE_OFFSET: tl.constexpr, ROW_BYTES: tl.constexpr, PAD_P: tl.constexpr,
        FLOOR_BITS: tl.constexpr, INV_MAX_BITS: tl.constexpr, QMAX: tl.constexpr,
        BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr):
    e = tl.program_id(0).to(tl.int64)     # entry = batch·N + block
    bi = e // N
    i = e % N
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
    pooled = tl.where(mask_d, acc / tl.where(mask_d, den, 1.0), 0.0)
    ms = tl.sum(pooled * pooled, 0) / D
    y = pooled / tl.sqrt(ms + eps) * tl.load(w_ptr + offs_d, mask=mask_d, other=0.0)
    # interleaved RoPE on the trailing 2·R2 dims: pairs (2i, 2i+1)
    even, odd = tl.split(tl.reshape(y, (BLOCK_D // 2, 2)))
    pair = tl.arange(0, BLOCK_D // 2)
    j = pair - (D // 2 - R2)  # rope pair index, < 0 for the no-rope pairs
    rot = (j >= 0) & (pair < D // 2)
    angle = tl.load(ang_ptr + i * R2 + j, mask=rot, other=0.0)
    cos = tl.cos(angle)
    sin = tl.sin(angle)
    y = tl.reshape(tl.join(even * cos - odd * sin, even * sin + odd * cos), (BLOCK_D,))
    if BF16:
        y = _round_bf16(y)
    if ROTATE:   # normalised Hadamard: y · H (H [D, D], rows and columns past D masked)
        h = tl.load(h_ptr + offs_d[:, None] * D + offs_d[None, :],
                    mask=mask_d[:, None] & mask_d[None, :], other=0.0)
        y = tl.sum(y[:, None] * h, 0)
        if BF16:
            y = _round_bf16(y)
    out_row = out_ptr + bi * stride_ob + i * stride_on
    if MODE == 0:
        tl.store(out_row + offs_d, y.to(out_ptr.dtype.element_ty), mask=mask_d)
    elif MODE == 1:
        # attention KV: no-RoPE dims e4m3 per 1×QBLOCK (pow2 scales), RoPE dims bf16
        y2 = tl.reshape(y, (BLOCK_D // QBLOCK, QBLOCK))
        g = tl.arange(0, BLOCK_D // QBLOCK)
        c = g[:, None] * QBLOCK + tl.arange(0, QBLOCK)[None, :]
        nope = c < NOPE
        ex = _scale_exponent(tl.max(tl.where(nope, tl.abs(y2), 0.0), 1), FLOOR_BITS,
                             INV_MAX_BITS)
        rounded = _round_e4m3(_scaled(y2, ex[:, None], QMAX))
        if PACKED:
            tl.store(out_row + c, _code(rounded, 3, 120, 0.001953125, 0x80).to(tl.uint8),
                     mask=nope)
            tl.store(out_row + SCALE_OFFSET + g, _e8m0_byte(ex), mask=g < N_SCALES)
            low, high = _bf16_bytes(y2)
            in_rope = (c >= NOPE) & (c < D)
            tl.store(out_row + NOPE + 2 * (c - NOPE), low, mask=in_rope)
            tl.store(out_row + NOPE + 2 * (c - NOPE) + 1, high, mask=in_rope)
            if PAD_P > 0:
                k = SCALE_OFFSET + N_SCALES + tl.arange(0, PAD_P)
                tl.store(out_row + k, tl.zeros([PAD_P], dtype=tl.uint8), mask=k < ROW_BYTES)
        else:
            values = tl.where(nope, rounded.to(tl.float32, bitcast=True) * _exp2_int(ex)[:, None],
                              _round_bf16(y2))
            tl.store(out_row + c, values.to(out_ptr.dtype.element_ty), mask=c < D)
    else:
        # indexer keys: e2m1 per 1×QBLOCK (pow2 scales); a byte holds dims (2k, 2k+1)
        k_even, k_odd = tl.split(tl.reshape(y, (BLOCK_D // QBLOCK, QBLOCK // 2, 2)))
        g = tl.arange(0, BLOCK_D // QBLOCK)
        byte = g[:, None] * (QBLOCK // 2) + tl.arange(0, QBLOCK // 2)[None, :]
        in_row = byte < D // 2
        amax = tl.maximum(tl.max(tl.abs(k_even), 1), tl.max(tl.abs(k_odd), 1))
        ex = _scale_exponent(amax, FLOOR_BITS, INV_MAX_BITS)
        if PACKED:
            codes = (_e2m1_code(k_even, ex[:, None], QMAX)
                     | (_e2m1_code(k_odd, ex[:, None], QMAX) << 4))
            tl.store(out_row + byte, codes.to(tl.uint8), mask=in_row)
            tl.store(out_row + D // 2 + g, _e8m0_byte(ex), mask=g < N_SCALES)
        else:
            scale = _exp2_int(ex)[:, None]
            lo = _round_e2m1(_scaled(k_even, ex[:, None], QMAX)).to(tl.float32, bitcast=True)
            hi = _round_e2m1(_scaled(k_odd, ex[:, None], QMAX)).to(tl.float32, bitcast=True)
            tl.store(out_row + 2 * byte, (lo * scale).to(out_ptr.dtype.element_ty), mask=in_row)
            tl.store(out_row + 2 * byte + 1, (hi * scale).to(out_ptr.dtype.element_ty),
                     mask=in_row)


def supported(fmt: EntryFormat) -> bool:
    """Whether the kernel takes this format (others run the reference)."""
    return fmt.dtype in (torch.float32, torch.bfloat16)


def compress_insert_triton(pooled: torch.Tensor, n_blocks: int, ratio: int, overlap: bool,
                           prev_kv: torch.Tensor | None, prev_score: torch.Tensor | None,
                           norm_weight: torch.Tensor, eps: float, angles: torch.Tensor,
                           fmt: EntryFormat, out: torch.Tensor | None = None,
                           hadamard: torch.Tensor | None = None, block_w: int = 8
                           ) -> torch.Tensor:
    """One launch: the reference's entries written into ``out`` [b, n_blocks, row_width] (cache
    rows: a slice of the store, unit stride along the row) or a new tensor. ``hadamard`` [d, d]
    fp32 on the device when ``fmt.rotate`` and native."""
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
    target = out.float() if interpreting() and out.dtype == torch.bfloat16 else out
    mode, packed = FORMAT_FLOAT, fmt.layout is not None
    consts = dict(FP8_CONSTANTS)
    qblock, n_scales, scale_offset, row_bytes = KV_QUANT_BLOCK, 0, 0, 0
    if fmt.native and fmt.rotate:
        mode, qblock, consts = FORMAT_KEYS, INDEX_KEY_BLOCK, dict(FP4_CONSTANTS)
        n_scales = d // qblock
    elif fmt.native:
        mode, n_scales = FORMAT_KV, -(-(d - fmt.rope_dim) // qblock)
        scale_offset = d - fmt.rope_dim + 2 * fmt.rope_dim
    if packed:
        row_bytes = fmt.layout.row_bytes
    block_d = max(16, qblock if mode else 16, triton.next_power_of_2(d))
    pad = row_bytes - scale_offset - n_scales if mode == FORMAT_KV and packed else 0
    pooled = pooled.contiguous()
    has_prev = overlap and prev_kv is not None
    if has_prev:   # [b, ratio, 2d] each, rows of unit stride (views of a pooled block are fine)
        assert prev_kv.dtype == prev_score.dtype == torch.float32
        assert prev_kv.stride() == prev_score.stride() and prev_kv.stride(-1) == 1
    else:
        prev_kv = prev_score = pooled
    h = hadamard if mode == FORMAT_KEYS else pooled
    _compress_insert_kernel[(b * n_blocks,)](
        pooled, prev_kv, prev_score, norm_weight.float().contiguous(),
        angles.float().contiguous(), h, target,
        n_blocks, pooled.shape[1], ratio, d, angles.shape[-1],
        prev_kv.stride(0), prev_kv.stride(1), target.stride(0), target.stride(1), eps,
        OVERLAP=overlap, HAS_PREV=has_prev, BF16=fmt.dtype == torch.bfloat16,
        MODE=mode, PACKED=packed, ROTATE=mode == FORMAT_KEYS,
        NOPE=d - fmt.rope_dim, QBLOCK=qblock, N_SCALES=n_scales,
        SCALE_OFFSET=scale_offset, ROW_BYTES=row_bytes,
        PAD_P=triton.next_power_of_2(pad) if pad > 0 else 0, **consts,
        BLOCK_W=block_w, BLOCK_D=block_d)
    if target is not out:
        out.copy_(target)
    return out
