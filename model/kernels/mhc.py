"""mHC (fact sheet §2.2): the pre step fused (RMS over the 4·d stream vector, mixing projection,
sigmoid / Sinkhorn split, stream collapse) and the post step (new X_j = post_j·y + Σ_i comb_ij·X_i).

Triton: ``hc_pre`` runs one program per token (two passes over its hc·d values; the 24 mixes and
the hc×hc Sinkhorn stay in registers); ``hc_post`` tiles (token, d-block).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def hc_split_sinkhorn_reference(mixes: torch.Tensor, scale: torch.Tensor, base: torch.Tensor,
                                hc: int, iters: int, eps: float
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mixes [..., (2+hc)·hc] → pre [..., hc], post [..., hc], comb [..., hc, hc] (kernel order)."""
    pre, post, comb = mixes.split([hc, hc, hc * hc], dim=-1)
    pre = torch.sigmoid(pre * scale[0] + base[:hc]) + eps
    post = 2 * torch.sigmoid(post * scale[1] + base[hc : 2 * hc])
    comb = comb.unflatten(-1, (hc, hc)) * scale[2] + base[2 * hc :].view(hc, hc)
    comb = torch.softmax(comb, dim=-1) + eps
    comb = comb / (comb.sum(-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(-1, keepdim=True) + eps)
        comb = comb / (comb.sum(-2, keepdim=True) + eps)
    return pre, post, comb


def hc_pre_reference(x: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor,
                     iters: int, eps: float, norm_eps: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [b, s, hc, d] → (collapsed [b, s, d] in x.dtype, post [b, s, hc], comb [b, s, hc, hc])."""
    hc = x.shape[2]
    flat = x.flatten(2).float()
    rsqrt = torch.rsqrt(flat.square().mean(-1, keepdim=True) + norm_eps)
    mixes = torch.nn.functional.linear(flat, fn.float()) * rsqrt
    pre, post, comb = hc_split_sinkhorn_reference(mixes, scale.float(), base.float(), hc, iters,
                                                  eps)
    y = (pre.unsqueeze(-1) * x.float()).sum(dim=2)
    return y.to(x.dtype), post, comb


def hc_post_reference(y: torch.Tensor, residual: torch.Tensor, post: torch.Tensor,
                      comb: torch.Tensor) -> torch.Tensor:
    mixed = torch.einsum("bsij,bsid->bsjd", comb, residual.float())
    out = post.unsqueeze(-1) * y.float().unsqueeze(-2) + mixed
    return out.to(y.dtype)


@triton.jit
def _hc_pre_kernel(x_ptr, fn_ptr, scale_ptr, base_ptr, y_ptr, post_ptr, comb_ptr,
                   D, iters, eps, norm_eps, HC: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    F = HC * D
    offs = tl.arange(0, BLOCK)
    rows = tl.arange(0, HC)
    rows2 = tl.arange(0, HC * HC)
    acc_pre = tl.zeros([HC], dtype=tl.float32)
    acc_post = tl.zeros([HC], dtype=tl.float32)
    acc_comb = tl.zeros([HC * HC], dtype=tl.float32)
    ssq = tl.zeros([BLOCK], dtype=tl.float32)
    for f0 in range(0, F, BLOCK):
        cols = f0 + offs
        mask = cols < F
        xv = tl.load(x_ptr + t * F + cols, mask=mask, other=0.0).to(tl.float32)
        ssq += xv * xv
        w_pre = tl.load(fn_ptr + rows[:, None] * F + cols[None, :], mask=mask[None, :], other=0.0)
        w_post = tl.load(fn_ptr + (HC + rows)[:, None] * F + cols[None, :], mask=mask[None, :],
                         other=0.0)
        w_comb = tl.load(fn_ptr + (2 * HC + rows2)[:, None] * F + cols[None, :],
                         mask=mask[None, :], other=0.0)
        acc_pre += tl.sum(w_pre * xv[None, :], 1)
        acc_post += tl.sum(w_post * xv[None, :], 1)
        acc_comb += tl.sum(w_comb * xv[None, :], 1)
    r = 1.0 / tl.sqrt(tl.sum(ssq, 0) / F + norm_eps)
    s0 = tl.load(scale_ptr)
    s1 = tl.load(scale_ptr + 1)
    s2 = tl.load(scale_ptr + 2)
    pre = tl.sigmoid(acc_pre * r * s0 + tl.load(base_ptr + rows)) + eps
    post = 2.0 * tl.sigmoid(acc_post * r * s1 + tl.load(base_ptr + HC + rows))
    comb = tl.reshape(acc_comb * r * s2 + tl.load(base_ptr + 2 * HC + rows2), (HC, HC))
    comb = tl.exp(comb - tl.max(comb, 1)[:, None])
    comb = comb / tl.sum(comb, 1)[:, None] + eps
    comb = comb / (tl.sum(comb, 0)[None, :] + eps)
    for _ in range(1, iters):
        comb = comb / (tl.sum(comb, 1)[:, None] + eps)
        comb = comb / (tl.sum(comb, 0)[None, :] + eps)
    tl.store(post_ptr + t * HC + rows, post)
    tl.store(comb_ptr + t * HC * HC + rows[:, None] * HC + rows[None, :], comb)
    for d0 in range(0, D, BLOCK):
        cols = d0 + offs
        mask = cols < D
        xs = tl.load(x_ptr + t * F + rows[:, None] * D + cols[None, :], mask=mask[None, :],
                     other=0.0).to(tl.float32)
        tl.store(y_ptr + t * D + cols, tl.sum(pre[:, None] * xs, 0).to(y_ptr.dtype.element_ty),
                 mask=mask)


@triton.jit
def _hc_post_kernel(y_ptr, x_ptr, post_ptr, comb_ptr, out_ptr, D,
                    HC: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    rows = tl.arange(0, HC)
    xs = tl.load(x_ptr + t * HC * D + rows[:, None] * D + cols[None, :], mask=mask[None, :],
                 other=0.0).to(tl.float32)                                    # [i, d]
    comb = tl.load(comb_ptr + t * HC * HC + rows[:, None] * HC + rows[None, :])  # [i, j]
    post = tl.load(post_ptr + t * HC + rows)
    y = tl.load(y_ptr + t * D + cols, mask=mask, other=0.0).to(tl.float32)
    mixed = tl.sum(comb[:, :, None] * xs[:, None, :], 0)                      # [j, d]
    out = post[:, None] * y[None, :] + mixed
    tl.store(out_ptr + t * HC * D + rows[:, None] * D + cols[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask[None, :])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def hc_pre_triton(x: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor,
                  iters: int, eps: float, norm_eps: float, block: int = 256
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, s, hc, d = x.shape
    assert hc & (hc - 1) == 0, "hc_mult must be a power of two"
    xin = (x.float() if _interpreting() else x).contiguous()
    y = torch.empty(b, s, d, dtype=xin.dtype, device=x.device)
    post = torch.empty(b, s, hc, dtype=torch.float32, device=x.device)
    comb = torch.empty(b, s, hc, hc, dtype=torch.float32, device=x.device)
    if b * s:
        _hc_pre_kernel[(b * s,)](xin, fn.float().contiguous(), scale.float().contiguous(),
                                 base.float().contiguous(), y, post, comb, d, iters, eps,
                                 norm_eps, HC=hc, BLOCK=block)
    return y.to(x.dtype), post, comb


def hc_post_triton(y: torch.Tensor, residual: torch.Tensor, post: torch.Tensor,
                   comb: torch.Tensor, block: int = 256) -> torch.Tensor:
    b, s, hc, d = residual.shape
    cast = torch.float32 if _interpreting() else None
    yin = (y.to(cast) if cast else y).contiguous()
    xin = (residual.to(cast) if cast else residual).contiguous()
    out = torch.empty(b, s, hc, d, dtype=yin.dtype, device=y.device)
    if b * s:
        _hc_post_kernel[(b * s, triton.cdiv(d, block))](
            yin, xin, post.float().contiguous(), comb.float().contiguous(), out, d,
            HC=hc, BLOCK=block)
    return out.to(y.dtype)
