"""FP8 block-scaled GEMM and FP4 (W4A16) expert GEMM: Triton (interpreter) vs torch references."""

from __future__ import annotations

import pytest
import torch

from model.kernels import quant
from model.kernels.gemm import (
    fp4_gemm_reference,
    fp4_gemm_triton,
    fp8_gemm_reference,
    fp8_gemm_triton,
)


@pytest.mark.parametrize(
    "m,n,k",
    [
        (1, 40, 256),    # decode row, N not a multiple of the tile or of 128
        (3, 130, 200),   # partial last 128-block in both N and K (ragged scales)
        (20, 64, 128),   # two M tiles of 16
    ],
)
def test_fp8_gemm_matches_reference(m, n, k):
    g = torch.Generator().manual_seed(m * 1000 + n)
    w = torch.randn(n, k, generator=g) * torch.logspace(-2, 1, k)  # scales vary by block
    wq, ws = quant.quant_fp8_block(w)
    x = torch.randn(m, k, generator=g) * 3
    x[0, :7] = 0.0
    got = fp8_gemm_triton(x, wq, ws)
    want = fp8_gemm_reference(x, wq, ws)
    assert got.shape == (m, n)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4), (got - want).abs().max()


def test_fp8_gemm_zero_row_and_leading_dims():
    wq, ws = quant.quant_fp8_block(torch.randn(32, 128))
    x = torch.zeros(2, 1, 128)  # amax floor (1e-4) path; output exactly 0
    x[1] = torch.randn(1, 128)
    got = fp8_gemm_triton(x, wq, ws)
    assert got.shape == (2, 1, 32) and torch.count_nonzero(got[0]) == 0
    assert torch.allclose(got, fp8_gemm_reference(x, wq, ws), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("m,n,k", [(1, 48, 128), (5, 33, 96), (17, 64, 64)])
def test_fp4_gemm_matches_reference(m, n, k):
    g = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=g) * torch.logspace(-3, 2, k)  # every ue8m0 group differs
    packed, scale = quant.quant_fp4(w)
    x = torch.randn(m, k, generator=g)
    got = fp4_gemm_triton(x, packed, scale)
    want = fp4_gemm_reference(x, packed, scale)
    assert got.shape == (m, n)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4), (got - want).abs().max()


def test_fp4_decode_covers_every_code():
    codes = torch.arange(16, dtype=torch.uint8).repeat(4)  # 64 values, all 16 codes
    packed = (codes[0::2] | (codes[1::2] << 4)).view(torch.int8).view(1, 32)
    scale = quant.float_to_e8m0(torch.tensor([[0.5, 4.0]]))
    x = torch.eye(64)  # y[i] = dequantised weight[0, i]
    got = fp4_gemm_triton(x, packed, scale)[:, 0]
    assert torch.equal(got, quant.dequant_fp4(packed, scale)[0])
