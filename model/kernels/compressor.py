"""Compressor core (fact sheet §2.4): softmax-gated pooling of each block's rows, per channel,
fused with RMSNorm and the interleaved RoPE of the entry (at its block's first position), written
straight into the destination rows (the cache insert: ``out`` may be a slice of a larger buffer).

kv, score [b, n, w, d] fp32: w = 2·ratio for CSA (previous block's [0:d) half ∪ this block's
[d:2d) half, already gathered) or w = ratio for HCA. Triton: one program per entry, an online
softmax over the w rows in chunks (w = 128 for HCA does not fit in registers at d = 512).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from model.kernels.launch import interpreting
from model.layers.rope import apply_rope


def compress_pool_reference(kv: torch.Tensor, score: torch.Tensor, norm_weight: torch.Tensor,
                            eps: float, angles: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """→ entries [b, n, d] in ``dtype``: rope(rmsnorm(Σ_w softmax_w(score) · kv))."""
    from model.kernels import ops

    pooled = (kv * score.softmax(dim=2)).sum(dim=2)
    entries = ops.rms_norm(pooled.to(dtype), norm_weight, eps)
    return apply_rope(entries, angles)


@triton.jit
def _compress_pool_kernel(kv_ptr, sc_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, N, W, D, R2,
                          stride_ob, stride_on, eps,
                          BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr):
    e = tl.program_id(0).to(tl.int64)  # entry = b·n + i
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    m = tl.full([BLOCK_D], float("-inf"), dtype=tl.float32)
    den = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for w0 in range(0, W, BLOCK_W):
        offs_w = w0 + tl.arange(0, BLOCK_W)
        mask = (offs_w < W)[:, None] & mask_d[None, :]
        ptrs = (e * W + offs_w)[:, None] * D + offs_d[None, :]
        z = tl.load(sc_ptr + ptrs, mask=mask, other=float("-inf"))
        v = tl.load(kv_ptr + ptrs, mask=mask, other=0.0)
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
    n = e % N
    cos = tl.load(cos_ptr + n * R2 + j, mask=rot, other=1.0)
    sin = tl.load(sin_ptr + n * R2 + j, mask=rot, other=0.0)
    out = tl.reshape(tl.join(even * cos - odd * sin, even * sin + odd * cos), (BLOCK_D,))
    tl.store(out_ptr + (e // N) * stride_ob + n * stride_on + offs_d, out.to(out_ptr.dtype.element_ty), mask=mask_d)


def compress_pool_triton(kv: torch.Tensor, score: torch.Tensor, norm_weight: torch.Tensor,
                         eps: float, angles: torch.Tensor, dtype: torch.dtype,
                         out: torch.Tensor | None = None, block_w: int = 8) -> torch.Tensor:
    """Same as the reference; writes into ``out`` [b, n, d] (e.g. cache rows) when given."""
    b, n, w, d = kv.shape
    r2 = angles.shape[-1]
    assert d % 2 == 0 and angles.shape[0] == n, (kv.shape, angles.shape)
    interp = interpreting()
    if out is None:
        out = torch.empty(b, n, d, dtype=dtype, device=kv.device)
    target = out.float() if interp and out.dtype == torch.bfloat16 else out
    if b * n:
        assert target.stride(-1) == 1, "out rows must be contiguous"
        _compress_pool_kernel[(b * n,)](
            kv.float().contiguous(), score.float().contiguous(), norm_weight.float().contiguous(),
            angles.cos().contiguous(), angles.sin().contiguous(), target, n, w, d, r2,
            target.stride(0), target.stride(1), eps,
            BLOCK_W=block_w, BLOCK_D=max(16, triton.next_power_of_2(d)))
    if target is not out:
        out.copy_(target)
    return out
