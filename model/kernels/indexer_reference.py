"""Pure-torch reference of the lightning indexer (fact sheet §2.5), beside the Triton paths in
model/kernels/indexer.py: score(t, j) = Σ_h w[t, h] · ReLU(q[t, h] · key[j]) over the keys
j < visible[t], top-k best first, −1 where fewer exist.

Keys are float rows [b, n, D] or packed FP4 rows uint8 [b, n, IndexKeyLayout(D).row_bytes]
(model/kernels/fp4_keys.py); packed rows are decoded a block of queries at a time, only the
rows that block can see."""

from __future__ import annotations

import torch

from model.kernels.blocks import query_blocks
from model.kernels.fp4_keys import key_rows


def indexer_scores_reference(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor,
                             visible: torch.Tensor) -> torch.Tensor:
    """fp32 scores [b, s, n], −inf at invisible rows (the matrix the kernel never builds).

    Per block of queries: one matmul of every head's query with the visible keys, ReLU, then the
    head-weighted sum as a batched [1 × H] · [H × n] product (keys past the block's last visible
    row are never touched)."""
    b, s, h, d = q.shape
    n = keys.shape[1]
    out = torch.full((b, s, n), float("-inf"), device=q.device)
    for lo, hi in query_blocks(s, h * n):
        m = min(n, int(visible[lo:hi].max()))
        if m <= 0:
            continue
        sb = hi - lo
        keys_t = key_rows(keys, m, d).transpose(1, 2)                   # [b, D, m]
        dots = torch.matmul(q[:, lo:hi].float().reshape(b, sb * h, d), keys_t).relu_()
        w = weights[:, lo:hi].float().reshape(b * sb, 1, h)
        block = torch.bmm(w, dots.view(b * sb, h, m)).view(b, sb, m)
        future = torch.arange(m, device=q.device).view(1, -1) >= visible[lo:hi].view(-1, 1)
        out[:, lo:hi, :m] = block.masked_fill(future.unsqueeze(0), float("-inf"))
    return out


def indexer_topk_reference(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor,
                           visible: torch.Tensor, k: int) -> torch.Tensor:
    """q [b, s, H, D], weights [b, s, H] (already scaled), keys [b, n, D] (or packed rows),
    visible [s] (rows j < visible[t] exist for query t) → int64 [b, s, k] in descending score
    order, −1 = none. Scores are built a block of queries at a time
    (``blocks.REFERENCE_BLOCK_ELEMENTS``)."""
    b, s = q.shape[:2]
    n = keys.shape[1]
    out = torch.full((b, s, k), -1, dtype=torch.long, device=q.device)
    kk = min(k, n)
    if kk == 0:
        return out
    h = q.shape[2]
    for lo, hi in query_blocks(s, h * n):
        vis = visible[lo:hi]
        m = min(n, int(vis.max()))
        if m <= 0:
            continue
        scores = indexer_scores_reference(q[:, lo:hi], weights[:, lo:hi], keys[:, :m], vis)
        km = min(kk, m)
        picks = scores.topk(km, dim=-1).indices
        out[:, lo:hi, :km] = torch.where(picks >= vis.view(1, -1, 1), -1, picks)
    return out
