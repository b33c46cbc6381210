"""mHC (fact sheet §2.2): the pre step fused (RMS over the hc·d stream vector, mixing projection,
sigmoid / Sinkhorn split, stream collapse) and the post step (new X_j = post_j·y + Σ_i comb_ij·X_i).

``hc_pre`` has two Triton paths; ``hc_pre_triton`` picks by token count (``DECODE_MAX_TOKENS``):

- prefill (``_hc_pre_tokens_kernel``), grid (token block, K-slice): the mixing projection as
  GEMM tiles, BLOCK_T = 64 tokens × the 24 rows of fn × K_SLICE = 2048 stream values a program
  (8 slices at V4-Flash), into the decode path's partials, then its finish kernel. fn (fp32
  [24, hc·d], 1.5 MiB at V4-Flash) is read once per 64 tokens from L2. The program per token
  this replaced read all of fn per token: 3 GB of L2 reads for 2048 tokens, 0.99 ms on the
  H200 (session 12), ≈ 1/5 of that layer's routed-expert time.
- decode (few tokens): one program per token cannot go faster than one SM streams 1.5 MiB, so
  the reduction is split. ``_hc_pre_partial_kernel``, grid (token, K-slice): each program reads
  K_SLICE stream values and the matching [24, K_SLICE] columns of fn (K_SLICE = 128: 12 KiB of fn
  + 256 B of bf16 x, one round of loads, no loop) and writes 24 partial dots + its partial sum of
  squares to fp32 scratch [t, slices, 25]. At V4-Flash that is 128 programs per token, so the
  whole 1.5 MiB of fn is in flight at once across the SMs instead of in one SM's 64-step loop.
  ``_hc_pre_finish_kernel``, grid (token, d-block): each program sums the token's partials in a
  fixed order (12.8 KB from L2; no atomics → bitwise deterministic), applies the RMS, the split,
  and collapses one d-block (D_BLOCK = 512: 4·512 bf16 = 4 KiB, one round of loads). The
  collapse is split over d-blocks because one program per token would stream the token's 32 KiB
  in 8+ dependent load steps; block 0 alone computes Sinkhorn's comb (after its collapse)
  and stores post / comb. By default the token's last partial program to arrive does all of
  this for the whole row instead (``_finish_if_last``: one launch, its loads issued together).
- The threshold: below ~one program per SM (132 on an H200) the prefill kernel runs one wave
  whose time is one program's, whatever t is, while the decode path's cost grows with t (fn is
  re-read per token from L2, t·1.5 MiB, plus t·12.8 KB of partials). 64 keeps the re-reads under
  ~100 MiB of L2 traffic where the prefill kernel would use under half of the SMs; tune it with
  the bench rows mhc_pre_decode / mhc_pre_prefill.

Both paths end in the same finish (the split, ``_split_pre_post`` and ``_sinkhorn``, and the
collapse, ``_collapse``); the decode partials take their dots from ``_mix_chunk``. ``hc_post``
tiles (token, d-block).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from model.kernels.cache_rows import round_bf16
from model.kernels.launch import (
    LINE_BYTES,
    arrivals,
    finish_fused,
    grid_entry,
    grid_entry_prefetching,
    interpreter_fp32,
    last_to_arrive,
    pdl,
)
from model.kernels.norm_rope import rms_norm_triton

DECODE_MAX_TOKENS = 64  # b·s up to this: split-reduction decode path (see the module docstring)
K_SLICE = 128           # decode: stream values (and fn columns) per partial program
D_BLOCK = 512           # decode and prefill: d columns collapsed per finish program
PREFILL_BLOCK_T = 64    # prefill: tokens per partial program (one GEMM tile of fn's 24 rows)
PREFILL_K_SLICE = 2048  # prefill: stream values per partial program (8 slices at V4-Flash)
PREFILL_BLOCK_K = 64    # prefill: stream values per step of a partial program
FINISH_D_BLOCK = 4096   # decode, fused finish: d columns collapsed a step by the one program
FINISH_PART_BLOCK = 128  # finish: partial rows summed a step (V4-Flash decode's 128 slices in one)

def hc_split_sinkhorn_reference(mixes: torch.Tensor, scale: torch.Tensor, base: torch.Tensor,
                                hc: int, iters: int, eps: float
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


def hc_pre_reference(x: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor,
                     iters: int, eps: float, norm_eps: float
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [b, s, hc, d] → (collapsed [b, s, d] in x.dtype, post [b, s, hc], comb [b, s, hc, hc])."""
    hc = x.shape[2]
    flat = x.flatten(2).float()
    rsqrt = torch.rsqrt(flat.square().mean(-1, keepdim=True) + norm_eps)
    mixes = torch.nn.functional.linear(flat, fn.float()) * rsqrt
    pre, post, comb = hc_split_sinkhorn_reference(mixes, scale.float(), base.float(), hc, iters,
                                                  eps)
    y = (pre.unsqueeze(-1) * x.float()).sum(dim=2)
    return y.to(x.dtype), post, comb


def hc_post_reference(y: torch.Tensor, residual: torch.Tensor, post: torch.Tensor,
                      comb: torch.Tensor) -> torch.Tensor:
    mixed = torch.einsum("bsij,bsid->bsjd", comb, residual.float())
    out = post.unsqueeze(-1) * y.float().unsqueeze(-2) + mixed
    return out.to(y.dtype)


@triton.jit
def _mix_chunk(x_ptr, fn_ptr, cols, mask, F, HC: tl.constexpr):
    """One chunk of a token's hc·d values (x_ptr at the token): fp32 values, dots with fn rows."""
    rows = tl.arange(0, HC)
    rows2 = tl.arange(0, HC * HC)
    xv = tl.load(x_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    w_pre = tl.load(fn_ptr + rows[:, None] * F + cols[None, :], mask=mask[None, :], other=0.0)
    w_post = tl.load(fn_ptr + (HC + rows)[:, None] * F + cols[None, :], mask=mask[None, :],
                     other=0.0)
    w_comb = tl.load(fn_ptr + (2 * HC + rows2)[:, None] * F + cols[None, :], mask=mask[None, :],
                     other=0.0)
    return (xv, tl.sum(w_pre * xv[None, :], 1), tl.sum(w_post * xv[None, :], 1),
            tl.sum(w_comb * xv[None, :], 1))


@triton.jit
def _split_params(scale_ptr, base_ptr, HC: tl.constexpr):
    """The split's scales and biases, loaded (a caller issues these loads early, beside its
    others: they are no launch's output) → (scale_pre, scale_post, scale_comb, base_pre [HC],
    base_post [HC], base_comb [HC·HC])."""
    rows = tl.arange(0, HC)
    return (tl.load(scale_ptr), tl.load(scale_ptr + 1), tl.load(scale_ptr + 2),
            tl.load(base_ptr + rows), tl.load(base_ptr + HC + rows),
            tl.load(base_ptr + 2 * HC + tl.arange(0, HC * HC)))


@triton.jit
def _split_pre_post(mix_pre, mix_post, r, params, eps):
    """RMS-scaled mixes → pre [HC], post [HC] (sigmoids); ``params``: ``_split_params``'."""
    s_pre, s_post, _, b_pre, b_post, _ = params
    pre = tl.sigmoid(mix_pre * r * s_pre + b_pre) + eps
    post = 2.0 * tl.sigmoid(mix_post * r * s_post + b_post)
    return pre, post


@triton.jit
def _halves(v):
    """[2n] → (its first n values, its last n); [2] → its two values."""
    n: tl.constexpr = v.shape[0] // 2
    if n == 1:
        a, b = tl.split(v)
    else:
        a, b = tl.split(tl.permute(tl.reshape(v, [2, n]), [1, 0]))
    return a, b


@triton.jit
def _scalars(v):
    """[N] (N a power of two) → the N-tuple of its values, in order, each a scalar every thread
    holds: arithmetic on them waits for no shuffle and no barrier."""
    N: tl.constexpr = v.shape[0]
    parts = (v,)
    for _ in tl.static_range(N):   # (log2 N of them split)
        if len(parts) < N:
            pieces = ()
            for p in tl.static_range(len(parts)):
                a, b = _halves(parts[p])
                pieces = pieces + (a, b)
            parts = pieces
    return parts


@triton.jit
def _normalise_rows(c, eps, HC: tl.constexpr):
    """c (HC·HC scalars, row-major) with each row divided by its sum + eps."""
    out = ()
    for i in tl.static_range(HC):
        total = c[i * HC]
        for j in tl.static_range(1, HC):
            total += c[i * HC + j]
        inv = 1.0 / (total + eps)
        for j in tl.static_range(HC):
            out = out + (c[i * HC + j] * inv,)
    return out


@triton.jit
def _normalise_columns(c, eps, HC: tl.constexpr):
    """c (HC·HC scalars, row-major) with each column divided by its sum + eps."""
    invs = ()
    for j in tl.static_range(HC):
        total = c[j]
        for i in tl.static_range(1, HC):
            total += c[i * HC + j]
        invs = invs + (1.0 / (total + eps),)
    out = ()
    for i in tl.static_range(HC):
        for j in tl.static_range(HC):
            out = out + (c[i * HC + j] * invs[j],)
    return out


@triton.jit
def _sinkhorn(mix_comb, r, params, iters, eps, HC: tl.constexpr):
    """RMS-scaled mixes → comb as HC·HC scalars, row-major: each row's softmax (+ eps), then
    Sinkhorn's ``iters`` normalisations. Scalars every thread holds, not an [HC, HC] tile: a
    tile's row and column sums are shuffles between lanes, four dependent ones an iteration,
    on a decode step's critical path (``_finish_if_last``); and each row's sum is inverted once,
    its HC values multiplied."""
    _, _, s_comb, _, _, b_comb = params
    c = _scalars(mix_comb * r * s_comb + b_comb)
    soft = ()
    for i in tl.static_range(HC):
        top = c[i * HC]
        for j in tl.static_range(1, HC):
            top = tl.maximum(top, c[i * HC + j])
        e = ()
        for j in tl.static_range(HC):
            e = e + (tl.exp(c[i * HC + j] - top),)
        total = e[0]
        for j in tl.static_range(1, HC):
            total += e[j]
        inv = 1.0 / total
        for j in tl.static_range(HC):
            soft = soft + (e[j] * inv + eps,)
    c = _normalise_columns(soft, eps, HC)
    for _ in range(1, iters):
        c = _normalise_columns(_normalise_rows(c, eps, HC), eps, HC)
    return c


@triton.jit
def _store_post_comb(post_ptr, comb_ptr, t, post, comb, HC: tl.constexpr):
    """post [HC] and comb (``_sinkhorn``'s HC·HC scalars) → token t's rows."""
    tl.store(post_ptr + t * HC + tl.arange(0, HC), post)
    for k in tl.static_range(HC * HC):
        tl.store(comb_ptr + t * HC * HC + k, comb[k])


@triton.jit
def _collapse(xs, pre, BF16: tl.constexpr, dtype: tl.constexpr):
    """Σ_i pre_i · xs[i, :] as y's buffer (``dtype``) holds it, back in float32 (BF16: rounded
    to bf16 first, for an fp32 buffer in the interpreter)."""
    y = tl.sum(pre[:, None] * xs.to(tl.float32), 0)
    if BF16:
        y = round_bf16(y)
    return y.to(dtype).to(tl.float32)


@triton.jit
def _collapse_block(x_ptr, y_ptr, t, D, pre, cols, HC: tl.constexpr, BF16: tl.constexpr = False):
    """y[t, cols] = Σ_i pre_i · x[t, i, cols] (``_collapse``), stored → the values stored, as
    float32 (zero past D)."""
    rows = tl.arange(0, HC)
    mask = cols < D
    xs = tl.load(x_ptr + t * HC * D + rows[:, None] * D + cols[None, :], mask=mask[None, :],
                 other=0.0)
    y = _collapse(xs, pre, BF16, y_ptr.dtype.element_ty)
    tl.store(y_ptr + t * D + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    return y


@triton.jit
def _hc_pre_tokens_kernel(x_ptr, fn_ptr, part_ptr, T, D, n_slices, HC: tl.constexpr,
                          K_SLICE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
                          MIX_PAD: tl.constexpr, PREC: tl.constexpr, PDL: tl.constexpr = False):
    """Program (token block, K-slice), prefill: BLOCK_T tokens' 24 partial dots over K_SLICE
    stream values and their partial sums of squares → part[t, slice, :] as
    ``_hc_pre_partial_kernel`` writes them, as one GEMM tile (x [BLOCK_T, K] · fnᵀ): fn is read
    once per block of tokens, where a program per token read all of it (1.5 MiB) per token."""
    grid_entry(PDL)
    F = HC * D
    W = (2 + HC) * HC + 1
    slice_ = tl.program_id(1)
    toks = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    in_t = toks < T
    mix = tl.arange(0, MIX_PAD)
    in_mix = mix < W - 1
    acc = tl.zeros([BLOCK_T, MIX_PAD], dtype=tl.float32)
    ssq = tl.zeros([BLOCK_T], dtype=tl.float32)
    for c0 in range(slice_ * K_SLICE, tl.minimum(slice_ * K_SLICE + K_SLICE, F), BLOCK_K):
        cols = c0 + tl.arange(0, BLOCK_K)
        in_c = cols < F
        xv = tl.load(x_ptr + toks.to(tl.int64)[:, None] * F + cols[None, :],
                     mask=in_t[:, None] & in_c[None, :], other=0.0).to(tl.float32)
        w = tl.load(fn_ptr + mix[:, None] * F + cols[None, :],
                    mask=in_mix[:, None] & in_c[None, :], other=0.0)
        acc += tl.dot(xv, tl.trans(w), input_precision=PREC)
        ssq += tl.sum(xv * xv, 1)
    rows = (toks.to(tl.int64) * n_slices + slice_) * W
    tl.store(part_ptr + rows[:, None] + mix[None, :], acc, mask=in_t[:, None] & in_mix[None, :])
    tl.store(part_ptr + rows + W - 1, ssq, mask=in_t)


@triton.jit
def _fn_rows(fn_ptr, F, col0, HC: tl.constexpr):
    """Where each of fn's (2 + HC)·HC rows has column ``col0`` (padded to a power of two; the
    padding where ¬keep) → (pointers, keep): a program's fn slice, for the prefetch."""
    MIX_PAD: tl.constexpr = triton.next_power_of_2((2 + HC) * HC)
    mix = tl.arange(0, MIX_PAD)
    return fn_ptr + mix.to(tl.int64) * F + col0, mix < (2 + HC) * HC


@triton.jit
def _hc_pre_partial_kernel(x_ptr, fn_ptr, part_ptr, cnt_ptr, scale_ptr, base_ptr, y_ptr,
                           post_ptr, comb_ptr, nw_ptr, D, n_slices, iters, eps, norm_eps, rms_eps,
                           HC: tl.constexpr, K_SLICE: tl.constexpr, FINISH: tl.constexpr,
                           PART_BLOCK: tl.constexpr, D_BLOCK: tl.constexpr,
                           NORM: tl.constexpr = False, BF16: tl.constexpr = False,
                           ONE_STEP: tl.constexpr = False, WHOLE_ROW: tl.constexpr = False,
                           PDL: tl.constexpr = False):
    """Program (token, slice): 24 partial dots + partial sum of squares → part[t, slice, :].
    FINISH: the token's last program to arrive (``cnt`` [T]) finishes the token
    (``_finish_if_last``; NORM: and the RMSNorm after it): the whole pre in one launch."""
    t = tl.program_id(0).to(tl.int64)
    k = tl.program_id(1)
    F = HC * D
    W = (2 + HC) * HC + 1
    # fn is no launch's output: its slice may be asked for while the launch before runs
    fn_rows, keep = _fn_rows(fn_ptr, F, k * K_SLICE, HC)
    grid_entry_prefetching(fn_rows, tl.minimum(K_SLICE, F - k * K_SLICE), keep, PDL)
    cols = k * K_SLICE + tl.arange(0, K_SLICE)
    xv, d_pre, d_post, d_comb = _mix_chunk(x_ptr + t * F, fn_ptr, cols, cols < F, F, HC)
    out = part_ptr + (t * n_slices + k) * W
    tl.store(out + tl.arange(0, HC), d_pre)
    tl.store(out + HC + tl.arange(0, HC), d_post)
    tl.store(out + 2 * HC + tl.arange(0, HC * HC), d_comb)
    tl.store(out + W - 1, tl.sum(xv * xv, 0))
    if FINISH:
        _finish_if_last(cnt_ptr, x_ptr, part_ptr, scale_ptr, base_ptr, y_ptr, post_ptr,
                        comb_ptr, t, D, n_slices, iters, eps, norm_eps, nw_ptr, rms_eps, HC,
                        PART_BLOCK, D_BLOCK, NORM, BF16, ONE_STEP, WHOLE_ROW)


@triton.jit
def _sum_partials(part_ptr, n_slices, HC: tl.constexpr, PART_BLOCK: tl.constexpr,
                  ONE_STEP: tl.constexpr = False):
    """Sum a token's [n_slices, W] partials in a fixed order → mixes and the sum of squares.
    A step's four loads are issued together and summed element-wise; the rows are reduced once,
    after the last step (a reduction across warps waits at a barrier, and a load after one
    waits for it). ONE_STEP (n_slices ≤ PART_BLOCK): no loop, so that the loads a caller
    issued before these stay beside them (``ptxas`` defers loads it sees used past a loop)."""
    acc_pre, acc_post, acc_comb, ssq = _partials_step(part_ptr, 0, n_slices, HC, PART_BLOCK)
    if not ONE_STEP:
        for s0 in range(PART_BLOCK, n_slices, PART_BLOCK):
            pre, post, comb, sq = _partials_step(part_ptr, s0, n_slices, HC, PART_BLOCK)
            acc_pre += pre
            acc_post += post
            acc_comb += comb
            ssq += sq
    return tl.sum(acc_pre, 0), tl.sum(acc_post, 0), tl.sum(acc_comb, 0), tl.sum(ssq, 0)


@triton.jit
def _partials_step(part_ptr, s0, n_slices, HC: tl.constexpr, PART_BLOCK: tl.constexpr):
    """One step of ``_sum_partials``: slices [s0, s0 + PART_BLOCK) of the [n_slices, W]
    partials, their four loads together → (pre [PART_BLOCK, HC], post, comb [.., HC·HC],
    sum of squares [PART_BLOCK]), 0 past n_slices."""
    W = (2 + HC) * HC + 1
    rows = tl.arange(0, HC)
    rows2 = tl.arange(0, HC * HC)
    s = s0 + tl.arange(0, PART_BLOCK)
    m = s < n_slices
    row = part_ptr + s[:, None] * W
    pre = tl.load(row + rows[None, :], mask=m[:, None], other=0.0)
    post = tl.load(row + HC + rows[None, :], mask=m[:, None], other=0.0)
    comb = tl.load(row + 2 * HC + rows2[None, :], mask=m[:, None], other=0.0)
    ssq = tl.load(part_ptr + s * W + W - 1, mask=m, other=0.0)
    return pre, post, comb, ssq


@triton.jit
def _token_mixes(part_ptr, t, D, n_slices, norm_eps, HC: tl.constexpr,
                 PART_BLOCK: tl.constexpr, ONE_STEP: tl.constexpr = False):
    """Token t's partials summed → its mixes (pre [HC], post [HC], comb [HC·HC]) and their
    RMS scale r."""
    W = (2 + HC) * HC + 1
    mix_pre, mix_post, mix_comb, ssq = _sum_partials(part_ptr + t * n_slices * W, n_slices, HC,
                                                     PART_BLOCK, ONE_STEP)
    return mix_pre, mix_post, mix_comb, 1.0 / tl.sqrt(ssq / (HC * D) + norm_eps)


@triton.jit
def _hc_pre_finish_kernel(x_ptr, part_ptr, scale_ptr, base_ptr, y_ptr, post_ptr, comb_ptr,
                          D, n_slices, iters, eps, norm_eps, HC: tl.constexpr,
                          PART_BLOCK: tl.constexpr, D_BLOCK: tl.constexpr,
                          ONE_STEP: tl.constexpr = False, PDL: tl.constexpr = False):
    """Program (token, d-block): reduce partials, split, collapse one d-block; block 0 stores
    post / comb."""
    grid_entry(PDL)
    t = tl.program_id(0).to(tl.int64)
    params = _split_params(scale_ptr, base_ptr, HC)
    mix_pre, mix_post, mix_comb, r = _token_mixes(part_ptr, t, D, n_slices, norm_eps, HC,
                                                  PART_BLOCK, ONE_STEP)
    pre, post = _split_pre_post(mix_pre, mix_post, r, params, eps)
    _collapse_block(x_ptr, y_ptr, t, D, pre, tl.program_id(1) * D_BLOCK + tl.arange(0, D_BLOCK),
                    HC)
    if tl.program_id(1) == 0:
        comb = _sinkhorn(mix_comb, r, params, iters, eps, HC)
        _store_post_comb(post_ptr, comb_ptr, t, post, comb, HC)


@triton.jit
def _finish_if_last(cnt_ptr, x_ptr, part_ptr, scale_ptr, base_ptr, y_ptr, post_ptr, comb_ptr, t,
                    D, n_slices, iters, eps, norm_eps, nw_ptr, rms_eps, HC: tl.constexpr,
                    PART_BLOCK: tl.constexpr, D_BLOCK: tl.constexpr, NORM: tl.constexpr,
                    BF16: tl.constexpr, ONE_STEP: tl.constexpr = False,
                    WHOLE_ROW: tl.constexpr = False):
    """After a partial program has stored its partials: the last of token t's programs to
    arrive (``cnt_ptr`` + t, ``launch.arrivals``: every program on grid axis 1 counts) reads all
    of t's partials — and x, which the post's programs of the same launch may have written —
    and does the finish kernel's work for the whole token: the split, the collapse of every
    column (NORM: and the RMSNorm that reads it, weight ``nw``, ``rms_eps``, over y as stored —
    BF16: rounded to bf16 first, for an fp32 buffer in the interpreter — the block's
    attn_norm / ffn_norm, no launch of its own), then Sinkhorn's comb, which only the post
    reads.

    WHOLE_ROW (D ≤ D_BLOCK, as at V4-Flash) and ONE_STEP: every load the finish makes — the
    split's scales, x's row, the norm's weight, the partials — is issued before the first is
    used, so the program waits for memory once where it waited five times in turn, and the
    collapse and its norm are one pass in registers (y stored once, where it was stored, read
    back and stored again). Otherwise y is collapsed D_BLOCK columns a step and, NORM,
    normalised in place after."""
    if last_to_arrive(cnt_ptr + t, tl.num_programs(1)):   # sees every program's partials
        params = _split_params(scale_ptr, base_ptr, HC)
        if WHOLE_ROW:
            rows = tl.arange(0, HC)
            cols = tl.arange(0, D_BLOCK)
            mask = cols < D
            xs = tl.load(x_ptr + t * HC * D + rows[:, None] * D + cols[None, :],
                         mask=mask[None, :], other=0.0)
            if NORM:
                w = tl.load(nw_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        mix_pre, mix_post, mix_comb, r = _token_mixes(part_ptr, t, D, n_slices, norm_eps, HC,
                                                      PART_BLOCK, ONE_STEP)
        pre, post = _split_pre_post(mix_pre, mix_post, r, params, eps)
        if WHOLE_ROW:
            y = _collapse(xs, pre, BF16, y_ptr.dtype.element_ty)
            if NORM:
                y = w * (y * tl.rsqrt(tl.sum(y * y, 0) / D + rms_eps))
            tl.store(y_ptr + t * D + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
        else:
            squares = tl.zeros([D_BLOCK], dtype=tl.float32)   # (without NORM: unused, dropped)
            for d0 in range(0, D, D_BLOCK):
                y = _collapse_block(x_ptr, y_ptr, t, D, pre, d0 + tl.arange(0, D_BLOCK), HC,
                                    BF16)
                squares += y * y
            if NORM:
                inv = tl.rsqrt(tl.sum(squares, 0) / D + rms_eps)
                tl.debug_barrier()   # y as every thread stored it, read back below
                for d0 in range(0, D, D_BLOCK):
                    cols = d0 + tl.arange(0, D_BLOCK)
                    at = y_ptr + t * D + cols
                    y = tl.load(at, mask=cols < D, other=0.0).to(tl.float32)
                    w = tl.load(nw_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
                    tl.store(at, (w * (y * inv)).to(y_ptr.dtype.element_ty), mask=cols < D)
        _store_post_comb(post_ptr, comb_ptr, t, post, _sinkhorn(mix_comb, r, params, iters, eps,
                                                               HC), HC)


@triton.jit
def _post_block(y_ptr, x_ptr, post_ptr, comb_ptr, t, D, cols, mask, HC: tl.constexpr):
    """new X[t, :, cols] = post_j · y[t, cols] + Σ_i comb[i, j] · X[t, i, cols] → fp32 [HC, cols]."""
    rows = tl.arange(0, HC)
    xs = tl.load(x_ptr + t * HC * D + rows[:, None] * D + cols[None, :], mask=mask[None, :],
                 other=0.0).to(tl.float32)                                    # [i, d]
    comb = tl.load(comb_ptr + t * HC * HC + rows[:, None] * HC + rows[None, :])  # [i, j]
    post = tl.load(post_ptr + t * HC + rows)
    y = tl.load(y_ptr + t * D + cols, mask=mask, other=0.0).to(tl.float32)
    mixed = tl.sum(comb[:, :, None] * xs[:, None, :], 0)                      # [j, d]
    return post[:, None] * y[None, :] + mixed


@triton.jit
def _hc_post_kernel(y_ptr, x_ptr, post_ptr, comb_ptr, out_ptr, D,
                    HC: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    grid_entry(PDL)
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < D
    rows = tl.arange(0, HC)
    out = _post_block(y_ptr, x_ptr, post_ptr, comb_ptr, t, D, cols, mask, HC)
    tl.store(out_ptr + t * HC * D + rows[:, None] * D + cols[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask[None, :])


@triton.jit
def _hc_post_partial_kernel(y_ptr, x_ptr, post_ptr, comb_ptr, out_ptr, fn_ptr, part_ptr,
                            cnt_ptr, scale_ptr, base_ptr, y2_ptr, post2_ptr, comb2_ptr, nw_ptr,
                            D, n_slices, iters, eps, norm_eps, rms_eps, HC: tl.constexpr,
                            K_SLICE: tl.constexpr, BF16: tl.constexpr, FINISH: tl.constexpr,
                            PART_BLOCK: tl.constexpr, D_BLOCK: tl.constexpr,
                            NORM: tl.constexpr = False, ONE_STEP: tl.constexpr = False,
                            WHOLE_ROW: tl.constexpr = False, PDL: tl.constexpr = False):
    """Program (token, d-block of K_SLICE columns): the post of these columns of every stream
    (stored in out's dtype; BF16: rounded to bf16 first, for an fp32 buffer in the interpreter),
    then, from the stored values, the next pre's partials of the HC slices they are — stream
    j's is slice j·D/K_SLICE + block of the flattened hc·d row — written to part[t, slice, :]
    as ``_hc_pre_partial_kernel`` writes them (D % K_SLICE = 0). FINISH: the token's last
    program to arrive finishes the next pre from them (``_finish_if_last``: y2, post2, comb2;
    NORM: y2 normalised)."""
    t = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    F = HC * D
    W = (2 + HC) * HC + 1
    rows = tl.arange(0, HC)
    rows2 = tl.arange(0, HC * HC)
    # fn's columns of these HC slices — a run of K_SLICE fp32 for each row of fn and each
    # stream — asked for while the launch before runs, all of them (at V4-Flash 48 KB, 32
    # programs a token)
    fn_rows, keep = _fn_rows(fn_ptr, F, blk * K_SLICE, HC)
    RUNS: tl.constexpr = fn_rows.shape[0] * HC
    runs = (fn_rows[:, None] + (rows * D)[None, :]).reshape(RUNS)
    kept = tl.broadcast_to(keep[:, None], (fn_rows.shape[0], HC)).reshape(RUNS)
    grid_entry_prefetching(runs, K_SLICE, kept, PDL, RUNS * (K_SLICE * 4 // LINE_BYTES))
    cols = blk * K_SLICE + tl.arange(0, K_SLICE)
    out = _post_block(y_ptr, x_ptr, post_ptr, comb_ptr, t, D, cols, cols < D, HC)
    if BF16:
        out = round_bf16(out)
    out = out.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + t * HC * D + rows[:, None] * D + cols[None, :], out)
    xv = out.to(tl.float32)[None, :, :]                                     # [1, stream, col]
    f_cols = (rows[:, None] * D + cols[None, :])[None, :, :]                # stream j's columns
    d_pre = tl.sum(tl.load(fn_ptr + rows[:, None, None] * F + f_cols) * xv, 2)   # [row, stream]
    d_post = tl.sum(tl.load(fn_ptr + (HC + rows)[:, None, None] * F + f_cols) * xv, 2)
    d_comb = tl.sum(tl.load(fn_ptr + (2 * HC + rows2)[:, None, None] * F + f_cols) * xv, 2)
    part = part_ptr + (t * n_slices + rows * (D // K_SLICE) + blk) * W      # [stream]
    tl.store(part[None, :] + rows[:, None], d_pre)
    tl.store(part[None, :] + HC + rows[:, None], d_post)
    tl.store(part[None, :] + 2 * HC + rows2[:, None], d_comb)
    tl.store(part + W - 1, tl.sum(xv * xv, 2).reshape(HC))
    if FINISH:
        _finish_if_last(cnt_ptr, out_ptr, part_ptr, scale_ptr, base_ptr, y2_ptr, post2_ptr,
                        comb2_ptr, t, D, n_slices, iters, eps, norm_eps, nw_ptr, rms_eps, HC,
                        PART_BLOCK, D_BLOCK, NORM, BF16, ONE_STEP, WHOLE_ROW)


def _launch_prefill(xin, fn, scale, base, y, post, comb, iters, eps, norm_eps, d_block):
    """Block partials (``_hc_pre_tokens_kernel``), then the decode path's finish."""
    t, hc, d = xin.shape
    width = (2 + hc) * hc + 1
    k_slice = min(PREFILL_K_SLICE, triton.next_power_of_2(hc * d))
    n_slices = triton.cdiv(hc * d, k_slice)
    part = torch.empty(t, n_slices, width, dtype=torch.float32, device=xin.device)
    _hc_pre_tokens_kernel[(triton.cdiv(t, PREFILL_BLOCK_T), n_slices)](
        xin, fn, part, t, d, n_slices, HC=hc, K_SLICE=k_slice, BLOCK_T=PREFILL_BLOCK_T,
        BLOCK_K=min(PREFILL_BLOCK_K, k_slice), MIX_PAD=max(16, triton.next_power_of_2(width - 1)),
        PREC="ieee" if interpreter_fp32() else "tf32x3", **pdl(xin.device))
    _launch_finish(xin, part, scale, base, y, post, comb, iters, eps, norm_eps, d_block)


def _finish_options(d: int, n_slices: int, d_block: int) -> dict:
    """The finish's constexprs: partial rows a step, and whether one step takes them all (as
    V4-Flash's 128 at decode), and the d-block of the finish kernel's programs (``d_block``)."""
    part_block = min(FINISH_PART_BLOCK, triton.next_power_of_2(n_slices))
    return dict(PART_BLOCK=part_block, ONE_STEP=n_slices <= part_block,
                D_BLOCK=min(d_block, triton.next_power_of_2(d)))


def _fused_finish_options(d: int, n_slices: int) -> dict:
    """The fused finish's constexprs: ``_finish_options`` with its one program's d-block
    (``FINISH_D_BLOCK``), and whether that is the whole row (``_finish_if_last``)."""
    options = _finish_options(d, n_slices, FINISH_D_BLOCK)
    return dict(options, WHOLE_ROW=d <= options["D_BLOCK"])


def _launch_decode(xin, fn, scale, base, y, post, comb, iters, eps, norm_eps, k_slice, d_block,
                   finish: str = "fused", norm: tuple[torch.Tensor, float] | None = None,
                   bf16: bool = False) -> bool:
    """The split reduction: partials, then the finish — by the token's last partial program
    (``finish="fused"``, one launch; with ``norm``, the RMSNorm too) or by
    ``_hc_pre_finish_kernel``. ``bf16``: y's buffer is fp32 for a bf16 stream (the
    interpreter), so the norm rounds y to bf16 itself. → whether y came out normalised."""
    t, hc, d = xin.shape
    overlap = pdl(xin.device)   # every launch's options (launch.pdl)
    k_slice = min(k_slice, triton.next_power_of_2(hc * d))
    n_slices = triton.cdiv(hc * d, k_slice)
    part = torch.empty(t, n_slices, (2 + hc) * hc + 1, dtype=torch.float32, device=xin.device)
    fused = finish_fused("mHC finish", finish)
    _hc_pre_partial_kernel[(t, n_slices)](
        xin, fn, part, arrivals(t, xin.device) if fused else part, scale, base, y, post, comb,
        *_norm_args(norm, fused, xin), d, n_slices, iters, eps, norm_eps,
        norm[1] if norm is not None else 0.0, HC=hc, K_SLICE=k_slice, FINISH=fused,
        NORM=fused and norm is not None, BF16=bf16,
        **_fused_finish_options(d, n_slices), **overlap)
    if not fused:
        _launch_finish(xin, part, scale, base, y, post, comb, iters, eps, norm_eps, d_block)
    return fused and norm is not None


def _norm_args(norm: tuple[torch.Tensor, float] | None, fused: bool,
               like: torch.Tensor) -> tuple[torch.Tensor]:
    """The RMSNorm weight as the fused finish reads it (any tensor when it does not)."""
    if norm is None or not fused:
        return (like,)
    return ((norm[0].float() if interpreter_fp32() else norm[0]).contiguous(),)


def _launch_finish(xin, part, scale, base, y, post, comb, iters, eps, norm_eps, d_block):
    """``_hc_pre_finish_kernel`` over (token, d-block) from the partials in ``part``."""
    t, hc, d = xin.shape
    options = _finish_options(d, part.shape[1], d_block)
    _hc_pre_finish_kernel[(t, triton.cdiv(d, options["D_BLOCK"]))](
        xin, part, scale, base, y, post, comb, d, part.shape[1], iters, eps, norm_eps, HC=hc,
        **options, **pdl(xin.device))


def hc_pre_triton(x: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor,
                  iters: int, eps: float, norm_eps: float, decode: bool | None = None,
                  k_slice: int = K_SLICE, d_block: int = D_BLOCK, finish: str = "fused",
                  norm: tuple[torch.Tensor, float] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [b, s, hc, d] → (y [b, s, d] in x.dtype, post fp32 [b, s, hc], comb fp32 [b, s, hc, hc]).
    ``decode`` picks the path (default: per-token partials when b·s ≤ DECODE_MAX_TOKENS, else
    token-block partials); ``k_slice`` sizes the decode partials, ``d_block`` the finish
    kernel's programs; ``finish`` (decode): "fused" (the token's last partial program, one
    launch) or "kernel" (``_hc_pre_finish_kernel``, a launch of its own). ``norm`` = (weight,
    eps): y comes back RMS-normalised (the block's attn_norm / ffn_norm, which only the
    collapse feeds) — by the fused finish, else by ``rms_norm_triton`` after."""
    b, s, hc, d = x.shape
    assert hc & (hc - 1) == 0, "hc_mult must be a power of two"
    t = b * s
    if decode is None:
        decode = t <= DECODE_MAX_TOKENS
    xin = (x.float() if interpreter_fp32() else x).reshape(t, hc, d).contiguous()
    y = torch.empty(b, s, d, dtype=xin.dtype, device=x.device)
    post = torch.empty(b, s, hc, dtype=torch.float32, device=x.device)
    comb = torch.empty(b, s, hc, hc, dtype=torch.float32, device=x.device)
    normed = False
    if t:
        args = (xin, fn.float().contiguous(), scale.float().contiguous(),
                base.float().contiguous(), y, post, comb, iters, eps, norm_eps)
        if decode:
            normed = _launch_decode(*args, k_slice, d_block, finish, norm,
                                    x.dtype == torch.bfloat16 and xin.dtype != x.dtype)
        else:
            _launch_prefill(*args, d_block)
    return _normed(y.to(x.dtype), norm, normed), post, comb


def _normed(y: torch.Tensor, norm: tuple[torch.Tensor, float] | None,
            done: bool) -> torch.Tensor:
    """y, RMS-normalised by ``norm`` unless that is ``done`` already (or there is none)."""
    return y if norm is None or done else rms_norm_triton(y, *norm)


def hc_post_triton(y: torch.Tensor, residual: torch.Tensor, post: torch.Tensor,
                   comb: torch.Tensor, block: int = 256) -> torch.Tensor:
    b, s, hc, d = residual.shape
    cast = torch.float32 if interpreter_fp32() else None
    yin = (y.to(cast) if cast else y).contiguous()
    xin = (residual.to(cast) if cast else residual).contiguous()
    out = torch.empty(b, s, hc, d, dtype=yin.dtype, device=y.device)
    if b * s:
        _hc_post_kernel[(b * s, triton.cdiv(d, block))](
            yin, xin, post.float().contiguous(), comb.float().contiguous(), out, d,
            HC=hc, BLOCK=block, **pdl(xin.device))
    return out.to(y.dtype)


def post_pre_slice(d: int, k_slice: int = K_SLICE) -> int | None:
    """The column block of the fused post → partials kernel: the largest power of two ≤ k_slice
    that divides d (whole slices of every stream), or None below 16 (then post and pre run
    apart)."""
    ks = min(k_slice, d & -d)
    return ks if ks >= 16 else None


def hc_post_pre_triton(y: torch.Tensor, residual: torch.Tensor, post: torch.Tensor,
                       comb: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor,
                       base: torch.Tensor, iters: int, eps: float, norm_eps: float,
                       decode: bool | None = None, k_slice: int = K_SLICE,
                       d_block: int = D_BLOCK, finish: str = "fused",
                       norm: tuple[torch.Tensor, float] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """mHC post of one site then pre of the next → (new X [b, s, hc, d] in y.dtype, collapsed
    [b, s, d], post, comb). Decode (b·s ≤ DECODE_MAX_TOKENS) when d splits into whole slices:
    ``_hc_post_partial_kernel`` writes X and, from the values it stored, the pre's partials,
    and (``finish="fused"``) the token's last program finishes the pre: one launch instead of
    three (``"kernel"``: the finish kernel after it, two). Otherwise ``hc_post_triton`` then
    ``hc_pre_triton``. ``norm``: as ``hc_pre_triton``'s, for the collapsed output."""
    b, s, hc, d = residual.shape
    t = b * s
    ks = post_pre_slice(d, k_slice)
    if decode is None:
        decode = t <= DECODE_MAX_TOKENS
    if not (decode and ks and t and hc & (hc - 1) == 0):
        x = hc_post_triton(y, residual, post, comb)
        return (x, *hc_pre_triton(x, fn, scale, base, iters, eps, norm_eps, decode=decode,
                                  k_slice=k_slice, d_block=d_block, finish=finish, norm=norm))
    cast = torch.float32 if interpreter_fp32() else None
    yin = (y.to(cast) if cast else y).contiguous()
    rin = (residual.to(cast) if cast else residual).contiguous()
    x = torch.empty(t, hc, d, dtype=yin.dtype, device=y.device)
    fn32 = fn.float().contiguous()
    n_slices = hc * d // ks
    part = torch.empty(t, n_slices, (2 + hc) * hc + 1, dtype=torch.float32, device=y.device)
    collapsed = torch.empty(b, s, d, dtype=x.dtype, device=y.device)
    post2 = torch.empty(b, s, hc, dtype=torch.float32, device=y.device)
    comb2 = torch.empty(b, s, hc, hc, dtype=torch.float32, device=y.device)
    scale32, base32 = scale.float().contiguous(), base.float().contiguous()
    fused = finish_fused("mHC finish", finish)
    _hc_post_partial_kernel[(t, d // ks)](
        yin, rin, post.float().contiguous(), comb.float().contiguous(), x, fn32, part,
        arrivals(t, y.device) if fused else part, scale32, base32, collapsed, post2, comb2,
        *_norm_args(norm, fused, x), d, n_slices, iters, eps, norm_eps,
        norm[1] if norm is not None else 0.0, HC=hc, K_SLICE=ks,
        BF16=y.dtype == torch.bfloat16 and cast is not None, FINISH=fused,
        NORM=fused and norm is not None,
        **_fused_finish_options(d, n_slices), **pdl(y.device))
    if not fused:
        _launch_finish(x, part, scale32, base32, collapsed, post2, comb2, iters, eps, norm_eps,
                       d_block)
    return (x.view(b, s, hc, d).to(y.dtype),
            _normed(collapsed.to(y.dtype), norm, fused and norm is not None), post2, comb2)
