"""The indexer's pick: one radix-select kernel per score row (interpreter) against torch.topk
and its mask (the reference)."""

from __future__ import annotations

import pytest
import torch

from model.kernels.topk_select import topk_select_reference, topk_select_triton


def _scores(b, t, width, seed=0, visible=None):
    """Random scores with exact ties (every fifth one 0, −0 among them: ReLU'd heads under
    negative weights), −inf past each row's visible entries."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, t, width, generator=g)
    s[..., ::5] = 0.0
    s[..., 1::10] = -0.0
    if visible is not None:
        s = s.masked_fill(torch.arange(width).view(1, 1, -1) >= visible.view(1, -1, 1),
                          float("-inf"))
    return s


def _check(got, scores, k, visible=None):
    """The same scores best first as the reference, each column once, none invisible; tied
    columns may differ (torch.topk's tie order is its own)."""
    want = topk_select_reference(scores, k, visible)
    assert got.shape == want.shape and got.dtype == torch.int64
    assert torch.equal(got < 0, want < 0)
    vals = torch.where(got >= 0, scores.gather(-1, got.clamp(min=0)), 0.0)
    want_vals = torch.where(want >= 0, scores.gather(-1, want.clamp(min=0)), 0.0)
    assert torch.equal(vals, want_vals)
    limit = torch.full((got.shape[1],), scores.shape[-1]) if visible is None else visible
    for row, lim in zip(got.flatten(0, 1).tolist(), limit.repeat(got.shape[0]).tolist(),
                        strict=True):
        chosen = [j for j in row if j >= 0]
        assert len(set(chosen)) == len(chosen) and all(j < lim for j in chosen)
        assert row[len(chosen):] == [-1] * (len(row) - len(chosen))   # −1 only at the end


@pytest.mark.parametrize("b,t,width,k", [
    (1, 1, 5000, 512),   # a decode row: 5 tiles, ties at the threshold (many zeros)
    (2, 3, 100, 16),     # batch of rows, one partial tile
    (1, 2, 3000, 7),     # k not a power of two
    (1, 4, 10, 16),      # k larger than the row
])
def test_every_row_gets_its_k_best(b, t, width, k):
    scores = _scores(b, t, width)
    _check(topk_select_triton(scores, k), scores, k)


@pytest.mark.parametrize("b,t,width,k", [(1, 6, 300, 32), (2, 5, 64, 40)])
def test_causal_rows_pick_among_their_visible_entries(b, t, width, k):
    visible = torch.tensor([0, 1, 31, 33, width, 17][:t], dtype=torch.int32)
    scores = _scores(b, t, width, seed=1, visible=visible)
    got = topk_select_triton(scores, k, visible)
    _check(got, scores, k, visible)
    assert (got[:, 0] == -1).all() and (got[:, 1, 1:] == -1).all()   # 0 and 1 visible


def test_ties_take_the_lowest_columns_and_order_higher_columns_first():
    scores = torch.zeros(1, 1, 3000)
    scores[0, 0, 2500] = 1.0
    got = topk_select_triton(scores, 4)[0, 0].tolist()
    assert got == [2500, 2, 1, 0]


def test_all_keys_differ_only_in_low_bits():
    """Scores equal in their top 22 key bits: the last, 10-bit pass decides."""
    base = torch.full((1, 1, 2048), 1.0).view(torch.int32)
    scores = (base + torch.randperm(1024, generator=torch.Generator().manual_seed(2))
              .repeat(2).view(1, 1, -1)).view(torch.float32)
    got = topk_select_triton(scores, 100)
    _check(got, scores, 100)
    assert len(set(got[0, 0].tolist())) == 100


def test_writes_into_a_slice_of_a_larger_output():
    """The indexer fills its [b, s, k] picks a block of queries at a time."""
    scores = _scores(2, 3, 200, seed=4)
    out = torch.full((2, 7, 16), 99, dtype=torch.int64)
    topk_select_triton(scores, 16, None, out[:, 2:5])
    assert (out[:, :2] == 99).all() and (out[:, 5:] == 99).all()
    _check(out[:, 2:5], scores, 16)


def test_no_rows_or_no_picks_launch_nothing():
    assert topk_select_triton(torch.zeros(1, 0, 8), 4).shape == (1, 0, 4)
    assert topk_select_triton(torch.zeros(1, 2, 8), 0).shape == (1, 2, 0)
