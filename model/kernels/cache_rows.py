"""Rows in the cache's formats (fact sheet §2.8), and the kernel that makes them from projections.

``RowFormat`` says what a row of head_dim values becomes:

- dequant numerics: float rows in the compute dtype;
- native, attention KV (``KVLayout``): the FP8 cache row (e4m3 no-RoPE dims per 1×64 with ue8m0
  scales, bf16 RoPE dims; kv_fp8.py), or float rows of exactly those values without a layout;
- native, ``rotate`` (the indexer's keys and queries): a normalised Hadamard rotation, then the
  FP4 row (e2m1 per 1×32, ue8m0; fp4_keys.py, ``IndexKeyLayout``), or float rows of those values.

``store_rows_reference`` is that conversion in torch ops (the numerics' definition). The Triton
helpers ``rope_row`` and ``store_row`` do it for one row held in registers; the compressor's kernel
(compressor.py) and ``norm_rope_rows`` here end in them.

``norm_rope_rows``: x rows [..., d] (a token's, or a token's head's) → RMSNorm (optional, with an
optional weight) → interleaved RoPE of the token's angles → the format, written once. It is
attention's queries (norm, RoPE), its new KV rows (norm with kv_norm's weight, RoPE, FP8 row) and
the indexer's queries (RoPE, rotation, FP4 values): one launch each instead of two to five. In
bf16 the kernel rounds where the composed ops round (after the norm, after RoPE, after the
rotation), so it differs from them only by the order of fp32 sums.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from model.kernels import fp4_keys, kv_fp8, quant
from model.kernels.fp4_keys import INDEX_KEY_BLOCK, IndexKeyLayout
from model.kernels.kv_fp8 import KV_QUANT_BLOCK, KVLayout
from model.kernels.launch import grid_entry, interpreter_fp32, pdl, rows_of
from model.kernels.norm_rope import rope_cos_sin
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


@dataclass(frozen=True, slots=True)
class RowFormat:
    """What a row is stored as (see the module docstring)."""
    dtype: torch.dtype                                # compute dtype of the values
    native: bool = False                              # rounded to the cache's numerics
    layout: KVLayout | IndexKeyLayout | None = None   # packed uint8 rows, else float rows
    rotate: bool = False                              # indexer: Hadamard, then FP4
    rope_dim: int = 0                                 # trailing RoPE dims (bf16 in a KV row)

    def row_width(self, d: int) -> int:
        return d if self.layout is None else self.layout.row_bytes

    def row_dtype(self) -> torch.dtype:
        return self.dtype if self.layout is None else torch.uint8


def store_rows_reference(rows: torch.Tensor, fmt: RowFormat) -> torch.Tensor:
    """Rows [..., d] in the compute dtype → the format's rows (the composed torch ops)."""
    if not fmt.native:
        return rows
    if fmt.rotate:
        from model.kernels import ops

        rotated = ops.hadamard(rows)
        if fmt.layout is not None:
            return fp4_keys.pack_index_keys(rotated, fmt.layout)
        return quant.fp4_fake_quant(rotated, INDEX_KEY_BLOCK)
    if fmt.layout is not None:
        return kv_fp8.pack_kv_fp8(rows, fmt.layout)
    nope = rows.shape[-1] - fmt.rope_dim
    rope = rows[..., nope:].to(torch.bfloat16).to(rows.dtype)
    return torch.cat([quant.fp8_fake_quant(rows[..., :nope], KV_QUANT_BLOCK), rope], dim=-1)


@functools.lru_cache(maxsize=8)
def hadamard_matrix(n: int, device: torch.device) -> torch.Tensor:
    """The normalised Sylvester Hadamard matrix [n, n] fp32 on ``device``, made and copied there
    once (not a host→device copy per call: a captured decode graph could not hold one)."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).to(device=device)


# -- Triton: one row in registers -------------------------------------------------------------
FORMAT_FLOAT, FORMAT_KV, FORMAT_KEYS = 0, 1, 2   # store_row's modes


def format_args(fmt: RowFormat, d: int) -> dict:
    """The constexprs ``store_row`` takes for ``fmt`` at width d (and the row block BLOCK_D)."""
    mode, qblock, n_scales, scale_offset, consts = FORMAT_FLOAT, KV_QUANT_BLOCK, 0, 0, FP8_CONSTANTS
    if fmt.native and fmt.rotate:
        mode, qblock, consts = FORMAT_KEYS, INDEX_KEY_BLOCK, FP4_CONSTANTS
        n_scales = d // qblock
    elif fmt.native:
        mode, n_scales = FORMAT_KV, -(-(d - fmt.rope_dim) // qblock)
        scale_offset = d + fmt.rope_dim
    packed = fmt.layout is not None
    row_bytes = fmt.layout.row_bytes if packed else 0
    pad = row_bytes - scale_offset - n_scales if mode == FORMAT_KV and packed else 0
    return dict(BF16=fmt.dtype == torch.bfloat16, MODE=mode, PACKED=packed,
                NOPE=d - fmt.rope_dim, QBLOCK=qblock, N_SCALES=n_scales,
                SCALE_OFFSET=scale_offset, ROW_BYTES=row_bytes,
                PAD_P=triton.next_power_of_2(pad) if pad > 0 else 0, **consts,
                BLOCK_D=max(16, qblock if mode else 16, triton.next_power_of_2(d)))


def rotation_for(args: dict, d: int, device: torch.device, unused: torch.Tensor
                 ) -> torch.Tensor:
    """``store_row``'s h_ptr argument: the Hadamard matrix when the format rotates, else any
    tensor (``unused``; the kernel does not read it)."""
    return hadamard_matrix(d, device) if args["MODE"] == FORMAT_KEYS else unused


def supported(fmt: RowFormat) -> bool:
    """Whether the kernels take this format (others run the reference)."""
    return fmt.dtype in (torch.float32, torch.bfloat16)


@triton.jit
def round_bf16(x):
    """fp32 → the nearest bf16 value (ties to even), as fp32."""
    low, high = _bf16_bytes(x)
    bits = (high.to(tl.int32) << 24) | (low.to(tl.int32) << 16)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def rope_row(y, ang_ptr, D, R2, BLOCK_D: tl.constexpr, position=None):
    """Interleaved RoPE of one row y [BLOCK_D] on its trailing 2·R2 dims, pairs (2i, 2i+1);
    ang_ptr: this row's R2 angles (cos / sin computed here) or, given the row's ``position``,
    the R2 inverse frequencies (angle = float(position) · frequency, as
    ``RotaryEmbedding.angles`` computes it)."""
    even, odd = tl.split(tl.reshape(y, (BLOCK_D // 2, 2)))
    pair = tl.arange(0, BLOCK_D // 2)
    j = pair - (D // 2 - R2)  # rope pair index, < 0 for the no-rope pairs
    rot = (j >= 0) & (pair < D // 2)
    angle = tl.load(ang_ptr + j, mask=rot, other=0.0)
    if position is not None:
        angle = position.to(tl.float32) * angle
    cos, sin = rope_cos_sin(angle)
    return tl.reshape(tl.join(even * cos - odd * sin, even * sin + odd * cos), (BLOCK_D,))


@triton.jit
def store_row(y, out_row, h_ptr, D, BF16: tl.constexpr, MODE: tl.constexpr,
              PACKED: tl.constexpr, NOPE: tl.constexpr, QBLOCK: tl.constexpr,
              N_SCALES: tl.constexpr, SCALE_OFFSET: tl.constexpr, ROW_BYTES: tl.constexpr,
              PAD_P: tl.constexpr, FLOOR_BITS: tl.constexpr, INV_MAX_BITS: tl.constexpr,
              QMAX: tl.constexpr, BLOCK_D: tl.constexpr):
    """Write one row y [BLOCK_D] (fp32, already rounded to the compute dtype) at out_row in the
    format (MODE / PACKED, see ``format_args``); h_ptr: the [D, D] Hadamard matrix (keys)."""
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    if MODE == 2:   # rotate first: y · H (rows and columns past D masked)
        h = tl.load(h_ptr + offs_d[:, None] * D + offs_d[None, :],
                    mask=mask_d[:, None] & mask_d[None, :], other=0.0)
        y = tl.sum(y[:, None] * h, 0)
        if BF16:
            y = round_bf16(y)
    if MODE == 0:
        tl.store(out_row + offs_d, y.to(out_row.dtype.element_ty), mask=mask_d)
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
                              round_bf16(y2))
            tl.store(out_row + c, values.to(out_row.dtype.element_ty), mask=c < D)
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
            tl.store(out_row + 2 * byte, (lo * scale).to(out_row.dtype.element_ty), mask=in_row)
            tl.store(out_row + 2 * byte + 1, (hi * scale).to(out_row.dtype.element_ty),
                     mask=in_row)


# -- norm → RoPE → format, one launch ---------------------------------------------------------
def norm_rope_rows_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float | None,
                             angles: torch.Tensor | None, fmt: RowFormat) -> torch.Tensor:
    """x [b, T, d] or [b, T, heads, d] → rows in the format: RMSNorm (``eps`` None: none; weight
    optional), RoPE of angles [T, r/2] on the trailing dims (None: none), then
    ``store_rows_reference``."""
    from model.kernels import ops

    if eps is not None:
        x = ops.rms_norm(x, weight, eps)
    return store_rows_reference(x if angles is None else ops.apply_rope(x, angles), fmt)


@triton.jit
def _norm_rope_rows_kernel(x_ptr, w_ptr, ang_ptr, h_ptr, out_ptr, HEADS, T, D, R2, eps,
                           x_stride, out_stride, NORM: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                           ROPE: tl.constexpr,
                           BF16: tl.constexpr, MODE: tl.constexpr, PACKED: tl.constexpr,
                           NOPE: tl.constexpr, QBLOCK: tl.constexpr, N_SCALES: tl.constexpr,
                           SCALE_OFFSET: tl.constexpr, ROW_BYTES: tl.constexpr,
                           PAD_P: tl.constexpr, FLOOR_BITS: tl.constexpr,
                           INV_MAX_BITS: tl.constexpr, QMAX: tl.constexpr,
                           BLOCK_D: tl.constexpr, PDL: tl.constexpr = False):
    grid_entry(PDL)
    row = tl.program_id(0).to(tl.int64)      # ((batch · T) + token) · HEADS + head
    token = (row // HEADS) % T
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    x_row = x_ptr + (row // HEADS) * x_stride + (row % HEADS) * D
    y = tl.load(x_row + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if NORM:
        y = y * tl.rsqrt(tl.sum(y * y, 0) / D + eps)
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + offs_d, mask=mask_d, other=0.0)
        if BF16:
            y = round_bf16(y)
    if ROPE:
        y = rope_row(y, ang_ptr + token * R2, D, R2, BLOCK_D)
        if BF16:
            y = round_bf16(y)
    store_row(y, out_ptr + row * out_stride, h_ptr, D, BF16, MODE, PACKED, NOPE, QBLOCK,
              N_SCALES, SCALE_OFFSET, ROW_BYTES, PAD_P, FLOOR_BITS, INV_MAX_BITS, QMAX, BLOCK_D)


def norm_rope_rows_triton(x: torch.Tensor, weight: torch.Tensor | None, eps: float | None,
                          angles: torch.Tensor, fmt: RowFormat) -> torch.Tensor:
    """The reference in one launch (one program per row). A token's rows (its heads) must be
    contiguous; tokens may lie any fixed stride apart (a column slice of a stacked projection's
    output is read in place)."""
    d = x.shape[-1]
    heads, t = (x.shape[2], x.shape[1]) if x.dim() == 4 else (1, x.shape[-2])
    rope = angles is not None
    assert not rope or (angles.shape[0] == t and 0 < 2 * angles.shape[-1] <= d), (
        x.shape, None if angles is None else angles.shape)
    src = x.float() if interpreter_fp32() else x
    src = rows_of(src.flatten(-2) if x.dim() == 4 else src)   # [b·T, heads·d], tokens apart
    args = format_args(fmt, d)
    out_dtype = torch.float32 if interpreter_fp32() and fmt.row_dtype() == torch.bfloat16 else \
        fmt.row_dtype()
    out = torch.empty(*x.shape[:-1], fmt.row_width(d), dtype=out_dtype, device=x.device)
    rows = x.numel() // d
    if rows:
        _norm_rope_rows_kernel[(rows,)](
            src, weight.float().contiguous() if weight is not None else src,
            angles.float().contiguous() if rope else src, rotation_for(args, d, x.device, src),
            out, heads, t, d, angles.shape[-1] if rope else 0, 0.0 if eps is None else eps,
            src.stride(0), fmt.row_width(d), NORM=eps is not None,
            HAS_WEIGHT=weight is not None, ROPE=rope, **args, **pdl(x.device))
    return out if out.dtype == fmt.row_dtype() else out.to(fmt.row_dtype())
