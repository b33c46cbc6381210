"""Lightning indexer top-k (fact sheet §2.5): score(t, j) = Σ_h w[t, h] · ReLU(q[t, h] · key[j]) over
the compressed keys j < visible[t] (causal block visibility), keep the k best, −1 where fewer exist.

Triton: one program per (query, key chunk) streams key tiles, computes the tile's scores with one
dot over all heads, and merges them into a running top-k held in registers as packed int64
(order-preserving score bits << 32 | row), so the [queries × keys] score matrix never exists.
Decode (few queries) splits the keys over programs; a second kernel merges the per-chunk top-k.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from model.kernels.blocks import query_blocks


def indexer_scores_reference(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor,
                             visible: torch.Tensor) -> torch.Tensor:
    """fp32 scores [b, s, n], −inf at invisible rows (the matrix the kernel never builds).

    Per block of queries: one matmul of every head's query with the visible keys, ReLU, then the
    head-weighted sum as a batched [1 × H] · [H × n] product (keys past the block's last visible
    row are never touched)."""
    b, s, h, d = q.shape
    n = keys.shape[1]
    out = torch.full((b, s, n), float("-inf"), device=q.device)
    keys_t = keys.float().transpose(1, 2)                               # [b, D, n]
    for lo, hi in query_blocks(s, h * n):
        m = min(n, int(visible[lo:hi].max()))
        if m <= 0:
            continue
        sb = hi - lo
        dots = torch.matmul(q[:, lo:hi].float().reshape(b, sb * h, d), keys_t[..., :m]).relu_()
        w = weights[:, lo:hi].float().reshape(b * sb, 1, h)
        block = torch.bmm(w, dots.view(b * sb, h, m)).view(b, sb, m)
        future = torch.arange(m, device=q.device).view(1, -1) >= visible[lo:hi].view(-1, 1)
        out[:, lo:hi, :m] = block.masked_fill(future.unsqueeze(0), float("-inf"))
    return out


def indexer_topk_reference(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor,
                           visible: torch.Tensor, k: int) -> torch.Tensor:
    """q [b, s, H, D], weights [b, s, H] (already scaled), keys [b, n, D], visible [s] (rows
    j < visible[t] exist for query t) → int64 [b, s, k] in descending score order, −1 = none.
    Scores are built a block of queries at a time (``blocks.REFERENCE_BLOCK_ELEMENTS``)."""
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


@triton.jit
def _pack(score, idx):
    """float32 score + int32 row → int64 whose signed order is (score, row) order."""
    bits = score.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (key.to(tl.int64) << 32) | (idx.to(tl.int64) & 0xFFFFFFFF)


@triton.jit
def _merge(top, tile, K_PAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """Best K_PAD of top [K_PAD] ∪ tile [BLOCK_N] (both packed), sorted descending."""
    if K_PAD == BLOCK_N:
        wide = tile
    else:
        neg = _pack(tl.full([K_PAD // BLOCK_N, BLOCK_N], float("-inf"), tl.float32),
                    tl.full([K_PAD // BLOCK_N, BLOCK_N], -1, tl.int32))
        rows = tl.arange(0, K_PAD // BLOCK_N)
        wide = tl.reshape(tl.where(rows[:, None] == 0, tile[None, :], neg), (K_PAD,))
    both = tl.sort(tl.reshape(tl.join(top, wide), (2 * K_PAD,)), descending=True)
    first, _ = tl.split(tl.permute(tl.reshape(both, (2, K_PAD)), (1, 0)))
    return first


@triton.jit
def _indexer_partial(q_ptr, w_ptr, k_ptr, vis_ptr, out_ptr, S, N, H, D, chunk,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                     K_PAD: tl.constexpr, PREC: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    batch = pid_t // S
    visible = tl.load(vis_ptr + pid_t % S)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask_h = offs_h < H
    mask_d = offs_d < D
    q_rows = pid_t.to(tl.int64) * H + offs_h
    q = tl.load(q_ptr + q_rows[:, None] * D + offs_d[None, :],
                mask=mask_h[:, None] & mask_d[None, :], other=0.0)
    w = tl.load(w_ptr + q_rows, mask=mask_h, other=0.0).to(tl.float32)
    top = _pack(tl.full([K_PAD], float("-inf"), tl.float32), tl.full([K_PAD], -1, tl.int32))
    start = pid_c * chunk
    end = tl.minimum(tl.minimum(start + chunk, visible), N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        rows = batch.to(tl.int64) * N + offs_n
        keys = tl.load(k_ptr + rows[:, None] * D + offs_d[None, :],
                       mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(q.dtype)
        dots = tl.dot(q, tl.trans(keys), input_precision=PREC)        # [BLOCK_H, BLOCK_N]
        scores = tl.sum(tl.maximum(dots, 0.0) * w[:, None], 0)
        scores = tl.where(mask_n, scores, float("-inf"))
        tile = _pack(scores, tl.where(mask_n, offs_n, -1))
        if tl.max(tile, 0) > tl.min(top, 0):
            top = _merge(top, tile, K_PAD, BLOCK_N)
    offs_k = tl.arange(0, K_PAD)
    tl.store(out_ptr + (pid_t * tl.num_programs(1) + pid_c).to(tl.int64) * K_PAD + offs_k, top)


@triton.jit
def _indexer_finish(part_ptr, out_ptr, n_chunks, k, K_PAD: tl.constexpr):
    """Merge the per-chunk candidates of one query and write its k rows (−1 for −inf)."""
    pid_t = tl.program_id(0)
    offs_k = tl.arange(0, K_PAD)
    top = _pack(tl.full([K_PAD], float("-inf"), tl.float32), tl.full([K_PAD], -1, tl.int32))
    for c in range(0, n_chunks):
        tile = tl.load(part_ptr + (pid_t * n_chunks + c).to(tl.int64) * K_PAD + offs_k)
        top = _merge(top, tile, K_PAD, K_PAD)
    neg = _pack(tl.full([K_PAD], float("-inf"), tl.float32), tl.full([K_PAD], -1, tl.int32))
    idx = tl.where((top >> 32) == (neg >> 32), -1, (top & 0xFFFFFFFF).to(tl.int32))
    tl.store(out_ptr + pid_t.to(tl.int64) * k + offs_k, idx, mask=offs_k < k)


def default_chunks(tokens: int, n: int, block_n: int) -> int:
    if tokens >= 128:
        return 1
    return max(1, min(triton.cdiv(n, 8 * block_n), triton.cdiv(256, tokens)))


def indexer_topk_triton(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor,
                        visible: torch.Tensor, k: int, n_chunks: int | None = None,
                        block_n: int = 64) -> torch.Tensor:
    b, s, h, d = q.shape
    n = keys.shape[1]
    out = torch.full((b, s, k), -1, dtype=torch.int32, device=q.device)
    if k == 0 or n == 0 or b * s == 0:
        return out.long()
    if os.environ.get("TRITON_INTERPRET") == "1" or q.dtype not in (torch.bfloat16,
                                                                     torch.float16):
        q = q.float()  # the interpreter mishandles bf16: compute in fp32 on CPU
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    q = q.contiguous()
    keys = keys.to(q.dtype).contiguous()
    weights = weights.float().contiguous()
    vis = visible.to(device=q.device, dtype=torch.int32).contiguous()
    k_pad = max(16, triton.next_power_of_2(k))
    block_n = max(16, min(block_n, k_pad))
    chunks = n_chunks or default_chunks(b * s, n, block_n)
    chunk = triton.cdiv(triton.cdiv(n, chunks), block_n) * block_n
    chunks = triton.cdiv(n, chunk)
    part = torch.empty(b * s, chunks, k_pad, dtype=torch.int64, device=q.device)
    _indexer_partial[(b * s, chunks)](
        q, weights, keys, vis, part, s, n, h, d, chunk,
        BLOCK_H=max(16, triton.next_power_of_2(h)), BLOCK_D=max(16, triton.next_power_of_2(d)),
        BLOCK_N=block_n, K_PAD=k_pad, PREC=prec)
    _indexer_finish[(b * s,)](part, out, chunks, k, K_PAD=k_pad)
    return out.long()
