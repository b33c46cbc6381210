"""Lightning indexer top-k: Triton (interpreter) vs the torch reference."""

from __future__ import annotations

import pytest
import torch

from model.kernels.indexer import (
    indexer_scores_reference,
    indexer_topk_reference,
    indexer_topk_triton,
)


def _inputs(b, s, h, d, n, start_pos, ratio=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, s, h, d, generator=g)
    w = torch.randn(b, s, h, generator=g) * h**-0.5
    keys = torch.randn(b, n, d, generator=g)
    visible = (torch.arange(start_pos, start_pos + s) + 1) // ratio
    return q, w, keys, visible


def _check(got, q, w, keys, visible, k):
    want = indexer_topk_reference(q, w, keys, visible, k)
    assert got.shape == want.shape and got.dtype == torch.long
    assert torch.equal(got < 0, want < 0)  # same number of picks per query
    scores = indexer_scores_reference(q, w, keys, visible)
    vals = torch.where(got >= 0, scores.gather(-1, got.clamp(min=0)), 0.0)
    want_vals = torch.where(want >= 0, scores.gather(-1, want.clamp(min=0)), 0.0)
    assert torch.allclose(vals, want_vals, atol=1e-5)  # the same scores, in the same order
    assert torch.equal(got, want)  # random inputs: no ties


@pytest.mark.parametrize(
    "b,s,h,d,n,start,k,chunks",
    [
        (1, 4, 8, 32, 40, 156, 8, 1),     # prefill rows: all 40 keys visible, 3 key tiles
        (2, 3, 12, 32, 50, 100, 16, 1),   # ragged heads (12), partial last tile (50 keys)
        (1, 1, 8, 64, 100, 399, 8, 3),    # decode: 100 keys split over 3 programs
        (1, 1, 4, 16, 70, 279, 32, 2),    # decode, k = 32 = two 16-key tiles per merge
    ],
)
def test_indexer_matches_reference(b, s, h, d, n, start, k, chunks):
    q, w, keys, visible = _inputs(b, s, h, d, n, start)
    got = indexer_topk_triton(q, w, keys, visible, k, n_chunks=chunks, block_n=16)
    _check(got, q, w, keys, visible, k)


def test_causal_visibility_and_k_larger_than_rows():
    # positions 0..9 with ratio 4: query t sees (t+1)//4 rows → 0, 0, 0, 1, 1, 1, 1, 2, 2, 2
    q, w, keys, visible = _inputs(1, 10, 4, 16, 2, 0)
    got = indexer_topk_triton(q, w, keys, visible, 8, block_n=16)
    assert (got[0, :3] == -1).all()
    assert torch.equal((got >= 0).sum(-1)[0], visible)
    _check(got, q, w, keys, visible, 8)


def test_k_larger_than_all_keys_and_single_token():
    q, w, keys, visible = _inputs(1, 1, 4, 16, 5, 40)
    got = indexer_topk_triton(q, w, keys, visible, 20)
    assert got.shape == (1, 1, 20) and (got[0, 0, 5:] == -1).all()
    assert sorted(got[0, 0, :5].tolist()) == [0, 1, 2, 3, 4]
    _check(got, q, w, keys, visible, 20)
