"""Quantised GEMMs (fact sheet §2.8, §3): y = x · Wᵀ with fp32 accumulation.

- ``fp8_gemm``: FP8 e4m3 weight [N, K] with one ue8m0 scale per 128×128 block; the activation is
  quantised in-kernel per 1×128 block to e4m3 with a power-of-two scale (FP8×FP8 dot).
- ``fp4_gemm``: W4A16. e2m1 weight packed two per int8 [N, K/2] (low nibble = even k), one ue8m0
  scale per 1×32; decoded in registers, the activation stays in its own dtype. The packed
  columns are split into even / odd k so no interleave is needed: y = x_even·W_evenᵀ + x_odd·W_oddᵀ.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from model.kernels import quant


def fp8_gemm_reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    w = quant.dequant_fp8_block(weight, scale)
    return F.linear(quant.fp8_fake_quant(x.float(), 128), w).to(x.dtype)


def fp4_gemm_reference(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return F.linear(x.float(), quant.dequant_fp4(packed, scale)).to(x.dtype)


@triton.jit
def _e8m0(byte):
    return (byte.to(tl.int32) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _pow2_ceil(x):
    bits = x.to(tl.int32, bitcast=True)
    exp = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).to(tl.int32)
    return (exp << 23).to(tl.float32, bitcast=True)


@triton.jit
def _round_e4m3(v):
    """Round float32 (|v| ≤ 448) to the nearest e4m3 value, ties to even, in fp32 arithmetic.
    The interpreter's fp32→fp8 cast drops the carry into the exponent (126.4 → 64, not 128);
    pre-rounding makes that cast exact. Triton's GPU cast (cvt.rn) needs no help."""
    bits = v.to(tl.int32, bitcast=True)
    exp = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # e4m3 subnormals share 2^-6's ulp
    ulp = ((exp - 3 + 127) << 23).to(tl.float32, bitcast=True)
    return ((v / ulp + 12582912.0) - 12582912.0) * ulp  # 1.5·2^23: round-to-nearest-even


@triton.jit
def _e2m1(code):
    """4-bit e2m1 codes (int32, sign = bit 3) → float32: 0, .5, 1, 1.5, 2, 3, 4, 6."""
    m = code & 7
    pow2 = (((m >> 1) + 126) << 23).to(tl.float32, bitcast=True)  # 2^((m>>1) - 1)
    mag = tl.where(m < 2, m.to(tl.float32) * 0.5, pow2 * (1.0 + 0.5 * (m & 1).to(tl.float32)))
    return tl.where((code & 8) != 0, -mag, mag)


@triton.jit
def _fp8_gemm_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, KB,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EXACT_CAST: tl.constexpr):
    BLOCK_K: tl.constexpr = 128
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for kb in range(0, KB):
        offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * K + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(x), 1), 1e-4)
        sx = _pow2_ceil(amax * (1.0 / 448.0))
        xs = tl.clamp(x / sx[:, None], -448.0, 448.0)
        if EXACT_CAST:
            xs = _round_e4m3(xs)
        xq = xs.to(tl.float8e4nv)
        wq = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * K + offs_k[None, :],
                     mask=mask_n[:, None] & mask_k[None, :], other=0).to(tl.float8e4nv,
                                                                         bitcast=True)
        sw = _e8m0(tl.load(s_ptr + (offs_n // 128) * KB + kb, mask=mask_n, other=0))
        acc += tl.dot(xq, tl.trans(wq)) * sx[:, None] * sw[None, :]
    tl.store(y_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _fp4_gemm_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     PREC: tl.constexpr):
    HALF: tl.constexpr = BLOCK_K // 2
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, HALF)  # byte column within the tile
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * K
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * (K // 2)
    s_rows = s_ptr + offs_n[:, None].to(tl.int64) * (K // 32)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        col = k0 // 2 + offs_j
        mask_j = col < K // 2
        mx = mask_m[:, None] & mask_j[None, :]
        x_even = tl.load(x_rows + 2 * col[None, :], mask=mx, other=0.0)
        x_odd = tl.load(x_rows + 2 * col[None, :] + 1, mask=mx, other=0.0)
        mw = mask_n[:, None] & mask_j[None, :]
        byte = tl.load(w_rows + col[None, :], mask=mw, other=0).to(tl.int32) & 0xFF
        sc = _e8m0(tl.load(s_rows + (col // 16)[None, :], mask=mw, other=0))
        w_even = (_e2m1(byte & 0xF) * sc).to(x_even.dtype)
        w_odd = (_e2m1(byte >> 4) * sc).to(x_even.dtype)
        acc += tl.dot(x_even, tl.trans(w_even), input_precision=PREC)
        acc += tl.dot(x_odd, tl.trans(w_odd), input_precision=PREC)
    tl.store(y_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _rows_and_output(x: torch.Tensor, n: int, half_or_fp32: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] as contiguous rows [M, K] in the dtype the kernel reads — fp32 under the
    interpreter; with ``half_or_fp32`` any dtype but bf16/fp16 becomes fp32 — and the empty
    [M, N] output in that dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    if _interpreting() or (half_or_fp32 and x2.dtype not in (torch.bfloat16, torch.float16)):
        x2 = x2.float()
    x2 = x2.contiguous()
    return x2, torch.empty(x2.shape[0], n, dtype=x2.dtype, device=x.device)


def _blocks(m: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): skinny decode tiles spread N over many programs."""
    return (16, 32) if m <= 16 else (64, 64)


def fp8_gemm_triton(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., K] · FP8 weight [N, K]ᵀ → [..., N] in x.dtype."""
    k, n = x.shape[-1], weight.shape[0]
    x2, y = _rows_and_output(x, n, half_or_fp32=False)
    m = x2.shape[0]
    if m and n:
        bm, bn = _blocks(m)
        _fp8_gemm_kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn))](
            x2, weight.contiguous().view(torch.uint8), scale.contiguous().view(torch.uint8), y,
            m, n, k, triton.cdiv(k, 128), BLOCK_M=bm, BLOCK_N=bn,
            EXACT_CAST=_interpreting())
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


def fp4_gemm_triton(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor,
                    block_k: int = 64) -> torch.Tensor:
    """x [..., K] · FP4 weight (int8 [N, K/2], ue8m0 [N, K/32])ᵀ → [..., N] in x.dtype."""
    k, n = x.shape[-1], packed.shape[0]
    assert packed.shape[1] * 2 == k and k % 32 == 0, (x.shape, packed.shape)
    x2, y = _rows_and_output(x, n, half_or_fp32=True)
    m = x2.shape[0]
    if m and n:
        bm, bn = _blocks(m)
        _fp4_gemm_kernel[(triton.cdiv(m, bm), triton.cdiv(n, bn))](
            x2, packed.contiguous().view(torch.uint8), scale.contiguous().view(torch.uint8), y,
            m, n, k, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=block_k,
            PREC="ieee" if x2.dtype == torch.float32 else "tf32")
    return y.to(x.dtype).reshape(*x.shape[:-1], n)
