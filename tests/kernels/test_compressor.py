"""Compressor pooling + RMSNorm + RoPE + insert: Triton (interpreter) vs torch."""

from __future__ import annotations

import pytest
import torch

from model.kernels.compressor import compress_pool_reference, compress_pool_triton


def _inputs(b, n, w, d, rope, seed=0, neg_inf_rows=0):
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(b, n, w, d, generator=g)
    score = torch.randn(b, n, w, d, generator=g) * 3
    if neg_inf_rows:  # CSA entry 0: the previous block's half is padding (kv 0, score −inf)
        kv[:, 0, :neg_inf_rows] = 0.0
        score[:, 0, :neg_inf_rows] = float("-inf")
    weight = torch.rand(d, generator=g) + 0.5
    angles = torch.arange(n).float().view(-1, 1) * 4 * torch.rand(rope // 2, generator=g)
    return kv, score, weight, angles


@pytest.mark.parametrize(
    "b,n,w,d,rope,block_w",
    [
        (1, 3, 8, 64, 16, 8),     # CSA: 2·ratio rows, entry 0 half padded
        (2, 2, 16, 48, 16, 4),    # HCA-like: 16 rows in 4 chunks, d not a power of two
        (1, 1, 4, 32, 32, 8),     # single entry, rope over all dims, rows < chunk
    ],
)
def test_compress_pool_matches_reference(b, n, w, d, rope, block_w):
    kv, score, weight, angles = _inputs(b, n, w, d, rope, neg_inf_rows=w // 2 if w == 8 else 0)
    got = compress_pool_triton(kv, score, weight, 1e-6, angles, torch.float32, block_w=block_w)
    want = compress_pool_reference(kv, score, weight, 1e-6, angles, torch.float32)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()


def test_compress_pool_inserts_into_cache_rows():
    kv, score, weight, angles = _inputs(1, 2, 8, 32, 16)
    cache = torch.zeros(1, 5, 32)
    compress_pool_triton(kv, score, weight, 1e-6, angles, torch.float32, out=cache[:, 2:4])
    want = compress_pool_reference(kv, score, weight, 1e-6, angles, torch.float32)
    assert torch.allclose(cache[:, 2:4], want, atol=1e-5)
    assert cache[:, :2].abs().sum() == 0 and cache[:, 4:].abs().sum() == 0
