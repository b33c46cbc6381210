"""mHC pre (RMS + mixing projection + Sinkhorn + collapse) and post: Triton vs torch."""

from __future__ import annotations

import pytest
import torch

from model.kernels.mhc import hc_post_reference, hc_post_triton, hc_pre_reference, hc_pre_triton


@pytest.mark.parametrize("b,s,d,block", [(1, 1, 64, 64), (2, 3, 100, 64)])
def test_hc_pre_matches_reference(b, s, d, block):
    hc = 4
    g = torch.Generator().manual_seed(d)
    x = torch.randn(b, s, hc, d, generator=g)
    fn = torch.randn((2 + hc) * hc, hc * d, generator=g) * 0.05
    scale, base = torch.rand(3, generator=g) + 0.5, torch.randn((2 + hc) * hc, generator=g)
    got = hc_pre_triton(x, fn, scale, base, 20, 1e-6, 1e-6, block=block)
    want = hc_pre_reference(x, fn, scale, base, 20, 1e-6, 1e-6)
    for a, w in zip(got, want, strict=True):
        assert a.shape == w.shape
        assert torch.allclose(a, w, atol=1e-5, rtol=1e-4), (a - w).abs().max()
    assert torch.allclose(got[2].sum(-2), torch.ones(b, s, hc), atol=1e-4)  # columns sum to 1


def test_hc_post_matches_reference():
    g = torch.Generator().manual_seed(1)
    b, s, hc, d = 2, 2, 4, 80
    y, x = torch.randn(b, s, d, generator=g), torch.randn(b, s, hc, d, generator=g)
    post, comb = torch.rand(b, s, hc, generator=g), torch.rand(b, s, hc, hc, generator=g)
    got = hc_post_triton(y, x, post, comb, block=64)
    assert torch.allclose(got, hc_post_reference(y, x, post, comb), atol=1e-5, rtol=1e-5)
