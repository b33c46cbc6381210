"""The single dispatch point for compute kernels. Today every op is its pure-torch reference;
the kernels issue adds Triton implementations behind the same signatures."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from model.kernels import quant

act_quant_scales = quant.act_quant_scales
fp8_fake_quant = quant.fp8_fake_quant
fp4_fake_quant = quant.fp4_fake_quant
dequant_fp8_block = quant.dequant_fp8_block
dequant_fp4 = quant.dequant_fp4


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm in float32 (fp32 weight), cast back to the input dtype."""
    dtype = x.dtype
    xf = x.float()
    y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = weight.float() * y
    return y.to(dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, quantize_input: bool = False) -> torch.Tensor:
    """y = x @ weightᵀ. With ``quantize_input`` (native numerics for FP8/FP4 weights) the input is
    first FP8-quantised per 1×128 block with power-of-two scales; the dequantised weight is exact,
    so this equals an FP8×FP8 GEMM with fp32 accumulation."""
    if quantize_input:
        x = fp8_fake_quant(x, 128)
    if x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16:
        return F.linear(x, weight)
    return F.linear(x.to(weight.dtype), weight).to(x.dtype)


@functools.lru_cache(maxsize=8)
def _hadamard_matrix(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """Normalised Walsh–Hadamard transform (Sylvester order) over the last dim."""
    h = _hadamard_matrix(x.shape[-1]).to(device=x.device)
    return (x.float() @ h).to(x.dtype)


def hc_split_sinkhorn(
    mixes: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, hc: int, iters: int, eps: float
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


def sparse_attn(
    q: torch.Tensor, kv: torch.Tensor, sink: torch.Tensor, indices: torch.Tensor, scale: float
) -> torch.Tensor:
    """Sparse MQA with attention sink.

    q [b, s, h, d]; kv [b, n, d] (K = V); sink [h] fp32; indices [b, s, k] int (−1 = none).
    o[t, h] = Σ_j p_j · kv[idx_j] with p = softmax over {q·k_j·scale} ∪ {sink_h}, sink dropped.
    """
    b, s, h, d = q.shape
    valid = indices >= 0
    safe = indices.clamp(min=0).long()
    gathered = torch.gather(
        kv.unsqueeze(1).expand(b, s, kv.shape[1], d), 2, safe.unsqueeze(-1).expand(-1, -1, -1, d)
    )  # [b, s, k, d]
    logits = torch.einsum("bshd,bskd->bshk", q.float(), gathered.float()) * scale
    logits = logits.masked_fill(~valid.unsqueeze(2), float("-inf"))
    sink_col = sink.float().view(1, 1, h, 1).expand(b, s, h, 1)
    full = torch.cat([logits, sink_col], dim=-1)
    probs = torch.softmax(full, dim=-1)[..., :-1]
    out = torch.einsum("bshk,bskd->bshd", probs, gathered.float())
    return out.to(q.dtype)
