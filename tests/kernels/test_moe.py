"""Fused MoE over FP4 experts (align → grouped gate/up + SwiGLU → grouped down → combine)."""

from __future__ import annotations

import pytest
import torch

from model.kernels import quant
from model.kernels.moe import moe_align, moe_fp4_reference, moe_fp4_triton


def _experts(n_exp, dim, inter, g):
    def stack(out_f, in_f):
        pairs = [quant.quant_fp4(torch.randn(out_f, in_f, generator=g) * in_f**-0.5)
                 for _ in range(n_exp)]
        return torch.stack([p for p, _ in pairs]), torch.stack([s for _, s in pairs])

    return (*stack(inter, dim), *stack(inter, dim), *stack(dim, inter))


def test_align_groups_pairs_by_expert_with_padding():
    indices = torch.tensor([[2, 0], [2, -1], [0, 2], [5, 2]])  # 5 is out of range: dropped
    pairs, tiles, pos = moe_align(indices, n_experts=4, block_m=2)
    assert tiles.tolist()[:3] == [0, 2, 2] and all(t == -1 for t in tiles.tolist()[3:])
    assert pairs.tolist()[:6] == [1, 4, 0, 2, 5, 7]
    assert pos.tolist() == [2, 0, 3, -1, 1, 4, -1, 5]


@pytest.mark.parametrize("t,topk,quantize", [(1, 2, False), (5, 3, False), (4, 2, True)])
def test_moe_fp4_matches_reference(t, topk, quantize):
    g = torch.Generator().manual_seed(t * 10 + topk)
    n_exp, dim, inter = 4, 64, 32
    w = _experts(n_exp, dim, inter, g)
    x = torch.randn(t, dim, generator=g)
    indices = torch.stack([torch.randperm(n_exp, generator=g)[:topk] for _ in range(t)])
    if t > 2:
        indices[1, -1] = -1  # a padded slot
    weights = torch.rand(t, topk, generator=g)
    limit = 0.3  # small enough that the clamps bite
    got = moe_fp4_triton(x, weights, indices, *w, limit, quantize_input=quantize)
    want = moe_fp4_reference(x, weights, indices, *w, limit, quantize_input=quantize)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()
