"""RMSNorm and interleaved RoPE, each as one Triton launch, with the torch references beside them.

Why: a decode step is host-bound, every small torch op is a kernel launch. The torch RMSNorm is
about seven launches (upcast, square, mean, +eps, rsqrt, mul, weight mul, downcast) and the torch
RoPE about a dozen (cos, sin, negation, slices, the four products, stack, cat); a layer runs
several of each. Here each is a single kernel that reads x once and writes the result once, all
arithmetic in fp32 registers.

- ``rms_norm_*``: rows of the last dim, y = x · rsqrt(mean(x²) + eps) (· weight), fp32 math,
  output in x's dtype. Triton: a tile of rows per program; a row wider than ``MAX_BLOCK_D`` is
  swept in chunks twice (sum of squares, then scale and store).
- ``apply_rope_*``: rotate the trailing 2·angles.shape[-1] dims of x, pairs (2i, 2i+1), the rest
  copied; x [..., s, d] or [b, s, h, d], angles [s, r/2] (fp32). Triton: returns a new tensor,
  each program a tile of rows, cos/sin of the angles computed in the kernel (the no-rope pairs
  read angle 0 and are passed through unchanged).

Under TRITON_INTERPRET=1 the kernels get fp32 copies (the interpreter mishandles bf16) and the
result is cast back, which rounds exactly as the references do.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from model.kernels.launch import grid_entry, interpreter_fp32, pdl, rows_of, rows_per_program

MAX_BLOCK_D = 8192  # widest row chunk held in registers by one RMSNorm program

# 2π in three parts (Cody–Waite), for ``rope_cos_sin``: the first two have 5 significant bits,
# so k · part is exact for any k < 2^19 (angles up to 3.3M radians); the third is the rest
TWO_PI_HI = tl.constexpr(6.25)
TWO_PI_MID = tl.constexpr(0.033203125)
TWO_PI_LO = tl.constexpr(-1.7817820413768004e-05)
INV_TWO_PI = tl.constexpr(0.15915494309189535)


@triton.jit
def rope_cos_sin(angle):
    """cos and sin of RoPE angles (fp32), the angle first reduced by a whole number of turns
    to about [−π, π]. A GPU's precise sin / cos leave their fast path past |x| ≈ 105,615: a
    loop of dependent loads from a table of 2/π's bits, run by the warp when any lane needs it
    — and an angle is position × frequency, the first pair's frequency 1, so every decode step
    past position 105,615 took it, in every kernel that rotates (session 21). The reduction is
    exact to about 3e-7 radians at a million, far below the fp32 angle's own rounding there
    (half an ulp of 10^6 is 0.03)."""
    turns = tl.floor(angle * INV_TWO_PI + 0.5)
    r = angle - turns * TWO_PI_HI
    r = r - turns * TWO_PI_MID
    r = r - turns * TWO_PI_LO
    return tl.cos(r), tl.sin(r)




def _warps(elements: int) -> int:
    return 8 if elements >= 4096 else 4


# ---------------------------------------------------------------- RMSNorm

def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm in float32 (fp32 weight), cast back to the input dtype."""
    dtype = x.dtype
    xf = x.float()
    y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = weight.float() * y
    return y.to(dtype)


@triton.jit
def _scale_and_store(x, inv, w_ptr, out_ptr, offs, cols, mask, col_mask,
                     HAS_WEIGHT: tl.constexpr):
    """out = (w ·) x · inv for one [rows, cols] chunk, stored in out's dtype."""
    y = x * inv[:, None]
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        y = w[None, :] * y
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, n_rows, D, x_stride, eps, HAS_WEIGHT: tl.constexpr,
                     BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr,
                     PDL: tl.constexpr = False):
    """Rows x_stride apart in x (a column slice of a wider tensor reads in place), dense out."""
    grid_entry(PDL)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < n_rows
    row_start = rows[:, None] * x_stride
    out_start = rows[:, None] * D
    if ONE_CHUNK:  # the whole row in registers: read x once
        cols = tl.arange(0, BLOCK_D)
        col_mask = cols < D
        mask = row_mask[:, None] & col_mask[None, :]
        x = tl.load(x_ptr + row_start + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        inv = tl.rsqrt(tl.sum(x * x, 1) / D + eps)
        _scale_and_store(x, inv, w_ptr, out_ptr, out_start + cols[None, :], cols, mask,
                         col_mask, HAS_WEIGHT)
    else:
        squares = tl.zeros([BLOCK_ROWS, BLOCK_D], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            mask = row_mask[:, None] & (cols < D)[None, :]
            x = tl.load(x_ptr + row_start + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            squares += x * x
        inv = tl.rsqrt(tl.sum(squares, 1) / D + eps)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            col_mask = cols < D
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(x_ptr + row_start + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            _scale_and_store(x, inv, w_ptr, out_ptr, out_start + cols[None, :], cols, mask,
                             col_mask, HAS_WEIGHT)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Same as ``rms_norm_reference`` in one launch; any leading shape, contiguous output. Rows
    of unit stride are read where they lie (a column slice of a stacked projection's output)."""
    dtype = x.dtype
    interp = interpreter_fp32()
    d = x.shape[-1]
    src = rows_of(x.float() if interp else x)
    n_rows = src.shape[0]
    out = torch.empty(x.shape, dtype=torch.float32 if interp else dtype, device=x.device)
    if n_rows and d:
        w = src if weight is None else (weight.float() if interp else weight).contiguous()
        block_d = min(MAX_BLOCK_D, triton.next_power_of_2(d))
        rows = rows_per_program(n_rows, block_d) if d <= block_d else 1
        _rms_norm_kernel[(triton.cdiv(n_rows, rows),)](
            src, w, out, n_rows, d, src.stride(0), eps, HAS_WEIGHT=weight is not None,
            BLOCK_ROWS=rows, BLOCK_D=block_d, ONE_CHUNK=d <= block_d,
            num_warps=_warps(rows * block_d), **pdl(x.device))
    return out.to(dtype) if out.dtype != dtype else out


# ---------------------------------------------------------------- RoPE

def apply_rope_reference(x: torch.Tensor, angles: torch.Tensor, inverse: bool = False
                         ) -> torch.Tensor:
    """Rotate the trailing 2·angles.shape[-1] dims of x; pairs are (2i, 2i+1).

    x [..., s, (heads,) d]; angles [s, r/2] broadcast over batch (and heads when x is 4-D).
    """
    rd = angles.shape[-1] * 2
    nope, rope = x[..., :-rd], x[..., -rd:]
    cos, sin = angles.cos(), angles.sin()
    if inverse:
        sin = -sin
    if x.dim() == 4:  # [b, s, h, d]
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    pairs = rope.float().unflatten(-1, (-1, 2))
    re, im = pairs[..., 0], pairs[..., 1]
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).flatten(-2)
    return torch.cat([nope, out.to(x.dtype)], dim=-1)


@triton.jit
def _rope_kernel(x_ptr, ang_ptr, out_ptr, n_rows, HEADS, SEQ, D, NOPE_PAIRS, R2,
                 INVERSE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_P: tl.constexpr,
                 PDL: tl.constexpr = False):
    grid_entry(PDL)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    token = (rows // HEADS) % SEQ  # row = ((batch · SEQ) + token) · HEADS + head
    pairs = tl.arange(0, BLOCK_P)
    mask = (rows < n_rows)[:, None] & (pairs < D // 2)[None, :]
    even_offs = rows[:, None] * D + 2 * pairs[None, :]
    even = tl.load(x_ptr + even_offs, mask=mask, other=0.0).to(tl.float32)
    odd = tl.load(x_ptr + even_offs + 1, mask=mask, other=0.0).to(tl.float32)
    j = pairs - NOPE_PAIRS  # rope pair index, < 0 for the pairs passed through
    rotated = mask & (j >= 0)[None, :]
    angle = tl.load(ang_ptr + token[:, None] * R2 + j[None, :], mask=rotated, other=0.0)
    cos, sin = rope_cos_sin(angle)
    if INVERSE:
        sin = -sin
    new_even = tl.where(rotated, even * cos - odd * sin, even)
    new_odd = tl.where(rotated, even * sin + odd * cos, odd)
    out_ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + even_offs, new_even.to(out_ty), mask=mask)
    tl.store(out_ptr + even_offs + 1, new_odd.to(out_ty), mask=mask)


def _rope_layout(x: torch.Tensor) -> tuple[int, int]:
    """(heads, tokens) of x: [b, s, h, d] → (h, s); [..., s, d] → (1, s)."""
    if x.dim() == 4:
        return x.shape[2], x.shape[1]
    return 1, x.shape[-2]


def apply_rope_triton(x: torch.Tensor, angles: torch.Tensor, inverse: bool = False
                      ) -> torch.Tensor:
    """Same as ``apply_rope_reference`` in one launch; returns a new contiguous tensor."""
    d, r2 = x.shape[-1], angles.shape[-1]
    heads, seq = _rope_layout(x)
    assert d % 2 == 0 and 0 < 2 * r2 <= d and angles.shape[0] == seq, (x.shape, angles.shape)
    dtype = x.dtype
    interp = interpreter_fp32()
    src = (x.float() if interp else x).contiguous()
    out = torch.empty(x.shape, dtype=torch.float32 if interp else dtype, device=x.device)
    n_rows = x.numel() // d
    if n_rows:
        block_p = triton.next_power_of_2(d // 2)
        rows = rows_per_program(n_rows, 2 * block_p)
        _rope_kernel[(triton.cdiv(n_rows, rows),)](
            src, angles.float().contiguous(), out, n_rows, heads, seq, d, d // 2 - r2, r2,
            INVERSE=inverse, BLOCK_ROWS=rows, BLOCK_P=block_p,
            num_warps=_warps(rows * 2 * block_p), **pdl(x.device))
    return out.to(dtype) if out.dtype != dtype else out
