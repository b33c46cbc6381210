"""The single dispatch point for compute kernels: the model calls ops.*, never a kernel directly.

Each op has a pure-torch reference and, for the hot paths, a Triton kernel beside it (one file per
kernel family in model/kernels/). Which one runs (``backend``):

- ``V4CODER_KERNELS=reference``: always the torch reference.
- ``V4CODER_KERNELS=triton``: always Triton — CUDA tensors, or CPU tensors under
  ``TRITON_INTERPRET=1`` (the interpreter; set it before model.kernels is imported).
- unset / ``auto``: Triton when the tensors are on CUDA, the reference elsewhere.

Launch options that only a GPU can choose (sparse attention's head tile in prefill and its
combine at decode, the indexer's decode path and pick and its prefill pick, the MoE grouped
GEMM's row tile) come from that GPU's measured table (model/kernels/choices.py); without one,
each wrapper's defaults.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from model.kernels import append_rows as _append_rows
from model.kernels import cache_rows as _cache_rows
from model.kernels import choices, fp4_keys, kv_fp8, quant
from model.kernels import compressor as _compressor
from model.kernels import gemm as _gemm
from model.kernels import gemv as _gemv
from model.kernels import indexer as _indexer
from model.kernels import mhc as _mhc
from model.kernels import moe as _moe
from model.kernels import norm_rope as _norm_rope
from model.kernels import quant_triton as _quant_triton
from model.kernels import router as _router
from model.kernels import sequence_rows as _sequence_rows
from model.kernels import sparse_attn as _sparse_attn
from model.kernels.expert_bank import ExpertBank
from model.kernels.gemv import SplitK
from model.kernels.kv_fp8 import KVLayout
from model.kernels.launch import interpreting
from model.kernels.sequence_rows import SequenceRows
from model.kernels.sparse_attn import WindowRows

BACKEND_ENV = "V4CODER_KERNELS"


class KernelBackendError(RuntimeError):
    """The requested kernel backend cannot run here (one clear line for the CLI)."""


def backend(x: torch.Tensor) -> str:
    """"triton" or "reference" for an op whose main input is ``x`` (see the module docstring)."""
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced in ("", "auto"):
        return "triton" if x.is_cuda else "reference"
    if forced in ("reference", "torch"):
        return "reference"
    if forced == "triton":
        if x.is_cuda or interpreting():
            return "triton"
        raise KernelBackendError(
            f"{BACKEND_ENV}=triton needs CUDA tensors or TRITON_INTERPRET=1 (got {x.device})")
    raise KernelBackendError(f"{BACKEND_ENV}={forced!r}: expected triton, reference or auto")

act_quant_scales = quant.act_quant_scales
dequant_fp8_block = quant.dequant_fp8_block
bf16_to = quant.bf16_to
dequant_fp4 = quant.dequant_fp4
unpack_kv_fp8 = kv_fp8.unpack_kv_fp8  # FP8 cache rows back to float32
unpack_index_keys = fp4_keys.unpack_index_keys  # FP4 indexer-key rows back to float32


# quantisation: Triton = one launch each (quant_triton.py), reference = the torch chains that
# define the numerics (quant.py, kv_fp8.py, fp4_keys.py); bit-identical
def fp8_fake_quant(x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """Quantise to e4m3 per 1×block with power-of-two scales, dequantise; x's dtype."""
    if backend(x) == "triton" and _quant_triton.supported(x):
        return _quant_triton.fp8_fake_quant_triton(x, block)
    return quant.fp8_fake_quant(x, block)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in float32 (fp32 weight), cast back to the input dtype.
    Triton: one launch (norm_rope.py); reference: the torch math."""
    if backend(x) == "triton":
        return _norm_rope.rms_norm_triton(x, weight, eps)
    return _norm_rope.rms_norm_reference(x, weight, eps)


def apply_rope(x: torch.Tensor, angles: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Interleaved RoPE on the trailing 2·angles.shape[-1] dims of x (pairs (2i, 2i+1)), the
    rest passed through: x [..., s, d] or [b, s, h, d], angles [s, r/2] fp32; ``inverse``
    rotates by −angle. Triton: one launch, cos/sin in the kernel; reference: the torch math."""
    if backend(x) == "triton":
        return _norm_rope.apply_rope_triton(x, angles, inverse)
    return _norm_rope.apply_rope_reference(x, angles, inverse)


def linear(x: torch.Tensor, weight: torch.Tensor, quantize_input: bool = False) -> torch.Tensor:
    """y = x @ weightᵀ. With ``quantize_input`` (native numerics for FP8/FP4 weights) the input is
    first FP8-quantised per 1×128 block with power-of-two scales; the dequantised weight is exact,
    so this equals an FP8×FP8 GEMM with fp32 accumulation."""
    if quantize_input:
        x = fp8_fake_quant(x, 128)
    if x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16:
        return F.linear(x, weight)
    return F.linear(x.to(weight.dtype), weight).to(x.dtype)


DEQUANT_ROWS = 8192  # output rows dequantised at a time on CPU (a multiple of the 128 block)


def dequant_linear(x: torch.Tensor | SplitK, weight: torch.Tensor, scale: torch.Tensor | None,
                   dtype: torch.dtype, quantize_input: bool = False,
                   glu: tuple[torch.Tensor, float] | None = None,
                   norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """y = x · Wᵀ for a weight kept as mapped from the checkpoint — FP8 e4m3 with 128×128 ue8m0
    ``scale``, or BF16 / F32 (``scale`` None) — dequantised / cast to ``dtype`` per use. Equal to
    ``linear(x, W in dtype, quantize_input)``: the conversion is exact. On CPU the weight is
    converted ``DEQUANT_ROWS`` output rows at a time, so the slice stays in cache and no
    weight-sized buffer is allocated per call.

    FP8 in native numerics (``quantize_input``) on the Triton backend is exactly ``fp8_linear``:
    the block-scaled FP8 GEMM reads e4m3 directly, no dequantised weight is made. Dequant
    numerics keep the dequantised weight (an FP8 GEMM would quantise their activations).

    ``glu`` = (up, limit): the input is an expert's activation swiglu(x, up); ``norm`` =
    (weight, eps): it is RMSNorm(x) — computed by the FP8 GEMM as it reads x (one launch
    fewer), else by ``swiglu`` / ``rms_norm`` first. A ``SplitK`` x (a grouped GEMV's unsummed
    product) is summed by the FP8 GEMM as it reads it, else first."""
    if quantize_input and scale is not None and backend(weight) == "triton":
        return fp8_linear(x, weight, scale, glu, norm)
    if isinstance(x, SplitK):
        x = x.sum()
    if glu is not None:
        x = swiglu(x, glu[0], glu[1], None, x.dtype)
    if norm is not None:
        x = rms_norm(x, norm[0], norm[1])
    if quantize_input:
        x = fp8_fake_quant(x, 128)
    if _decode_gemv(x, x.numel() // x.shape[-1]):   # few rows: read W once, as mapped (gemv.py)
        return _gemv.gemv_triton(x.to(dtype), weight, scale,
                                 **_gemv_options(weight, scale)).to(dtype)
    rows = weight.shape[0] if x.is_cuda else DEQUANT_ROWS
    parts = []
    for r in range(0, weight.shape[0], rows):
        w = weight[r : r + rows]
        if scale is not None:
            w = dequant_fp8_block(w, scale[r // 128 : -(-(r + rows) // 128)], dtype=dtype)
        else:
            w = quant.bf16_to(w, dtype)
        parts.append(linear(x, w))
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def linear_partials(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
                    dtype: torch.dtype) -> torch.Tensor:
    """``dequant_linear`` (no input quantisation) as fp32 partial sums [S, ..., N] whose sum
    over S is y: the decode GEMV's K splits unsummed, for a consumer kernel that sums them as it
    reads them (one launch fewer); S = 1 (y itself, in fp32) on every other path."""
    if _decode_gemv(x, x.numel() // x.shape[-1]):
        return _gemv.gemv_triton(x.to(dtype), weight, scale, reduce=False,
                                 **_gemv_options(weight, scale))
    return dequant_linear(x, weight, scale, dtype).float().unsqueeze(0)


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
                   groups: int, dtype: torch.dtype, reduce: bool = True
                   ) -> torch.Tensor | SplitK:
    """The grouped projection: x [..., G, K] · (rows g·N..(g+1)·N of W [G·N, K])ᵀ per group →
    [..., G, N] in x.dtype, W as mapped (FP8 e4m3 + 128×128 ue8m0 ``scale``, or BF16 / F32)
    and computed in ``dtype``. Triton at decode: one GEMV launch reading W once; otherwise W is
    dequantised / cast to ``dtype`` and one einsum runs. ``reduce=False``: on the GEMV path its
    K splits unsummed (``SplitK``, the groups flattened: [..., G·N] once summed) for the FP8
    GEMM that reads them to sum; a tensor [..., G, N] on every other path."""
    if _decode_gemv(x, x.numel() // (x.shape[-1] * groups)):
        y = _gemv.gemv_triton(x.to(dtype), weight, scale, groups, reduce,
                              **_gemv_options(weight, scale))
        return SplitK(y.parts, y.lead, x.dtype) if isinstance(y, SplitK) else y.to(x.dtype)
    w = dequant_fp8_block(weight, scale, dtype=dtype) if scale is not None else quant.bf16_to(
        weight, dtype)
    w = w.view(groups, -1, w.shape[-1])
    return torch.einsum("...gd,grd->...gr", x.to(w.dtype), w).to(x.dtype)


def _decode_gemv(x: torch.Tensor, rows: int) -> bool:
    """Whether ``gemv`` takes a product with ``rows`` vectors (per group): Triton, decode-sized."""
    return backend(x) == "triton" and 0 < rows <= _gemv.MAX_ROWS


def _gemv_options(weight: torch.Tensor, scale: torch.Tensor | None) -> dict:
    """The decode GEMV's launch choice for this weight's format (``gemv_decode_fp8`` / _bf16)."""
    return choices.options("gemv_decode_fp8" if scale is not None else "gemv_decode_bf16",
                           weight.device)


def fp4_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
               quantize_input: bool = False) -> torch.Tensor:
    """y = x · W4ᵀ for an FP4 expert weight (int8 [N, K/2], ue8m0 [N, K/32]). Triton decodes the
    e2m1 codes in registers (W4A16); the reference dequantises the weight to ``dtype`` first."""
    if backend(x) == "triton":
        if quantize_input:
            x = fp8_fake_quant(x, 128)
        # (the wrapper takes the decision's tensor-core path for ≤ 16 rows only)
        return _gemm.fp4_gemm_triton(x, packed, scale,
                                     **choices.options("fp4_gemm_decode", x.device))
    return linear(x, dequant_fp4(packed, scale).to(dtype), quantize_input=quantize_input)


def fp8_linear(x: torch.Tensor | SplitK, weight: torch.Tensor, scale: torch.Tensor,
               glu: tuple[torch.Tensor, float] | None = None,
               norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """FP8 block-scaled GEMM: x quantised per 1×128 (pow2 scales) × e4m3 weight with 128×128
    ue8m0 scales, fp32 accumulation (= ``linear(x, dequant, quantize_input=True)``). ``glu`` =
    (up, limit): x is first swiglu(x, up); ``norm`` = (weight, eps): RMSNorm(x); a ``SplitK`` x:
    its sum — in x's dtype, on Triton inside the GEMM."""
    if backend(weight) == "triton":
        return _gemm.fp8_gemm_triton(x, weight, scale, glu, norm,
                                     **choices.options("fp8_gemm_decode", weight.device))
    if isinstance(x, SplitK):
        x = x.sum()
    return _gemm.fp8_gemm_reference(x, weight, scale, glu, norm)


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """Normalised Walsh–Hadamard transform (Sylvester order) over the last dim."""
    return (x.float() @ _cache_rows.hadamard_matrix(x.shape[-1], x.device)).to(x.dtype)


hc_split_sinkhorn = _mhc.hc_split_sinkhorn_reference


def hc_pre(x: torch.Tensor, fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor,
           iters: int, eps: float, norm_eps: float,
           norm: tuple[torch.Tensor, float] | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mHC pre: x [b, s, hc, d] → (collapsed [b, s, d], post [b, s, hc], comb [b, s, hc, hc]).
    ``norm`` = (weight, eps): the collapsed output RMS-normalised (``rms_norm``'s numerics; on
    Triton at decode inside the same launch)."""
    if backend(x) == "triton":
        return _mhc.hc_pre_triton(x, fn, scale, base, iters, eps, norm_eps, norm=norm,
                                  **_mhc_decode_options(x))
    y, post, comb = _mhc.hc_pre_reference(x, fn, scale, base, iters, eps, norm_eps)
    return _rms_normed(y, norm), post, comb


def _rms_normed(y: torch.Tensor, norm: tuple[torch.Tensor, float] | None) -> torch.Tensor:
    return y if norm is None else _norm_rope.rms_norm_reference(y, *norm)


def _mhc_decode_options(x: torch.Tensor) -> dict:
    """The GPU's launch choices for an mHC pre of x [b, s, hc, d] at decode ({} otherwise)."""
    if x.shape[0] * x.shape[1] <= _mhc.DECODE_MAX_TOKENS:
        return choices.options("mhc_decode", x.device)
    return {}


def hc_post(y: torch.Tensor, residual: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
            ) -> torch.Tensor:
    """mHC post: new X_j = post_j · y + Σ_i comb[i, j] · X_i → [b, s, hc, d] in y.dtype."""
    if backend(y) == "triton":
        return _mhc.hc_post_triton(y, residual, post, comb)
    return _mhc.hc_post_reference(y, residual, post, comb)


def hc_post_pre(y: torch.Tensor, residual: torch.Tensor, post: torch.Tensor, comb: torch.Tensor,
                fn: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, iters: int, eps: float,
                norm_eps: float, norm: tuple[torch.Tensor, float] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """mHC post of one site, then pre of the next: → (new X [b, s, hc, d], collapsed [b, s, d],
    post [b, s, hc], comb [b, s, hc, hc]). Triton at decode: the post writes the pre's partial
    sums as it goes and its last program finishes the pre (1 launch, not 3); reference:
    ``hc_post`` then ``hc_pre``. ``norm``: as ``hc_pre``'s."""
    if backend(y) == "triton":
        return _mhc.hc_post_pre_triton(y, residual, post, comb, fn, scale, base, iters, eps,
                                       norm_eps, norm=norm, **_mhc_decode_options(residual))
    x = _mhc.hc_post_reference(y, residual, post, comb)
    h, post2, comb2 = _mhc.hc_pre_reference(x, fn, scale, base, iters, eps, norm_eps)
    return x, _rms_normed(h, norm), post2, comb2


def sparse_attn(q: torch.Tensor, kv: torch.Tensor, sink: torch.Tensor, indices: torch.Tensor,
                scale: float, window: WindowRows | None = None,
                unrope: torch.Tensor | None = None, out: torch.Tensor | None = None,
                layout: KVLayout | None = None) -> torch.Tensor:
    """Sparse MQA with attention sink → o [b, s, h, d] in q.dtype.

    q [b, s, h, d]; kv [b, n, d] (K = V), or with ``layout`` the FP8 cache rows uint8
    [b, n, layout.row_bytes] read directly (the window's rows are then FP8 rows too); sink [h]
    fp32; indices [b, s, k] int (−1 = none); ``window``: the sliding window's rows and indices,
    a second source read in place; ``unrope``: angles [s, r/2] — o's RoPE dims come back
    rotated by their inverse (attention's output, ``apply_rope(o, angles, inverse=True)``; on
    Triton in the kernel that stores o); ``out``: the tensor o is stored in (on Triton by the
    kernel itself). o[t, h] = Σ_j p_j · kv[idx_j] with p = softmax over {q·k_j·scale} ∪
    {sink_h}, sink dropped.
    """
    if backend(q) == "triton":
        decision = "sparse_attn_prefill" if q.shape[1] > 1 else "sparse_attn_decode"
        tiles = choices.options(decision if layout is None else decision + "_fp8", q.device)
        return _sparse_attn.sparse_attn_triton(q, kv, sink, indices, scale, layout=layout,
                                               window=window, unrope=unrope, out=out,
                                               **tiles)[0]
    if layout is None:
        o, _ = _sparse_attn.sparse_attn_reference(q, kv, sink, indices, scale, window, unrope)
    else:
        o, _ = _sparse_attn.sparse_attn_fp8_reference(q, kv, sink, indices, scale, layout,
                                                      window, unrope)
    return _sparse_attn.into(out, o)


def append_rows(items: Sequence[_append_rows.Item]) -> list[torch.Tensor]:
    """Per item (past [1, n, ...] or None, new [1, m, ...][, dest]): the past rows then the new
    ones, into dest or a fresh tensor — a decode step's window and compressor appends of every
    sequence, one launch on Triton (model/kernels/append_rows.py)."""
    if items and backend(items[0][1]) == "triton":
        return _append_rows.append_rows_triton(items)
    return _append_rows.append_rows_reference(items)


def sparse_attn_rows(q: torch.Tensor, rows: SequenceRows, sink: torch.Tensor,
                     picks: torch.Tensor | None, scale: float, layout: KVLayout | None,
                     unrope: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """A decode step of several sequences (q [1, T, h, d], token t = sequence t's new token):
    each token over its own window rows and compressed rows — the indexer's ``picks``
    [1, T, K] (−1 = none) or, None, all of them (model/kernels/sequence_rows.py); FP8 rows
    given a ``layout``. → o [1, T, h, d] rotated back by ``unrope`` (into ``out``). One launch
    for the whole batch on Triton, with the decode decision's combine and column slices
    (``sparse_attn_decode[_fp8]``), and its splits where it chose a count: that count was
    measured for one token, so T tokens take 1/T of it (rounded up) — the programs it measured."""
    if backend(q) == "triton":
        chosen = choices.options("sparse_attn_decode" if layout is None else
                                 "sparse_attn_decode_fp8", q.device)
        tiles = {key: chosen[key] for key in ("combine", "dv_parts", "fp8_pairs", "qk_split")
                 if key in chosen}
        if "n_splits" in chosen:
            tiles["n_splits"] = -(-chosen["n_splits"] // max(q.shape[1], 1))
        return _sequence_rows.sparse_attn_rows_triton(q, rows, sink, picks, scale, layout,
                                                      unrope, out, **tiles)
    return _sequence_rows.sparse_attn_rows_reference(q, rows, sink, picks, scale, layout, unrope,
                                                     out)


def indexer_topk_rows(q: torch.Tensor, weights: torch.Tensor, rows: SequenceRows, k: int
                      ) -> torch.Tensor:
    """A decode step of several sequences: token t's k best of its sequence's keys
    (``rows.keys[t]``, every one of its ``rows.counts[t]`` visible) → int64 [1, T, k], best
    first, −1 = none. One launch that scores and picks for the whole batch on Triton, or the
    pick the decode decision chose (``indexer_decode[_fp4]``'s ``select`` and ``pairs``; its
    merge path has no batched form, so that choice leaves the batch on the default)."""
    if backend(q) == "triton":
        packed = rows.keys is not None and rows.keys[0].dtype == torch.uint8
        chosen = choices.options("indexer_decode_fp4" if packed else "indexer_decode", q.device)
        options = {key: chosen[key] for key in ("select", "pairs") if key in chosen}
        return _sequence_rows.indexer_topk_rows_triton(q, weights, rows, k, **options)
    return _sequence_rows.indexer_topk_rows_reference(q, weights, rows, k)


def indexer_topk(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor,
                 visible: torch.Tensor, k: int, causal: bool = True) -> torch.Tensor:
    """Lightning-indexer picks: q [b, s, H, D], weights [b, s, H] (scaled), keys [b, n, D]
    float or packed FP4 rows (uint8 [b, n, IndexKeyLayout(D).row_bytes], read as they are),
    visible [s] → int64 [b, s, k], best first, −1 = none (score = Σ_h w_h·ReLU(q_h·key)).
    ``causal=False``: the caller knows every query sees all n keys (a decode step), so the
    picks need no masking. Triton: the launch options of ``indexer_decode[_fp4]`` (one query)
    or ``indexer_prefill[_fp4]`` (more)."""
    if backend(q) == "triton":
        decision = "indexer_decode" if q.shape[1] == 1 else "indexer_prefill"
        if keys.dtype == torch.uint8:
            decision += "_fp4"
        path = choices.options(decision, q.device)
        return _indexer.indexer_topk_triton(q, weights, keys, visible, k, causal=causal, **path)
    return _indexer.indexer_topk_reference(q, weights, keys, visible, k)


def indexer_scores(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor,
                   visible: torch.Tensor) -> torch.Tensor:
    """The indexer's fp32 scores [b, s, n] (−inf = invisible), keys float or packed; for
    diagnostics (the top-k margins), never on the hot path."""
    return _indexer.indexer_scores_reference(q, weights, keys, visible)


def norm_rope_rows(x: torch.Tensor, weight: torch.Tensor | None, eps: float | None,
                   angles: torch.Tensor | None, fmt: _cache_rows.RowFormat) -> torch.Tensor:
    """x [b, T, d] or [b, T, heads, d] → RMSNorm (``eps`` None: none; ``weight`` optional) →
    RoPE of angles [T, r/2] (None: none) → rows in ``fmt`` (cache_rows.py: float, the FP8 KV
    row, rotated FP4 values). Attention's queries and new KV rows, the indexer's queries.
    Triton: one launch."""
    if backend(x) == "triton" and _cache_rows.supported(fmt):
        return _cache_rows.norm_rope_rows_triton(x, weight, eps, angles, fmt)
    return _cache_rows.norm_rope_rows_reference(x, weight, eps, angles, fmt)


def pool_inputs(parts: torch.Tensor, compressors: Sequence[_compressor.PoolColumns],
                heads: _compressor.HeadColumns | None, positions: torch.Tensor
                ) -> list[torch.Tensor]:
    """What a layer's compressors pool, from the stacked projection's fp32 partial sums parts
    [S, b, T, N] (``StackedLinear.partials``): per compressor fp32 [b, T, 2, width] — kv, and
    gate + ape[position % ratio] — then the indexer's scaled head weights fp32 [b, T, H].
    Triton: one launch that also sums the partials (a CSA layer's step took four)."""
    if backend(parts) == "triton":
        return _compressor.pool_inputs_triton(parts, compressors, heads, positions)
    return _compressor.pool_inputs_reference(parts, compressors, heads, positions)


def compress_insert(pooled: torch.Tensor, n_blocks: int, ratio: int, overlap: bool,
                    prev_kv: torch.Tensor | None, prev_score: torch.Tensor | None,
                    norm_weight: torch.Tensor, eps: float, angles: torch.Tensor,
                    fmt: _cache_rows.RowFormat, out: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Compressor core fused with the cache insert: a sequence's open-block rows pooled
    [b, L, 2, coff·d] fp32 → n_blocks entries (softmax-gated pooling, RMSNorm, RoPE at
    ``angles`` [n, rope/2], then the ``fmt``'s rows: float, FP8 KV or rotated FP4 keys) written
    into ``out`` [b, n, row_width] (a slice of the row store) or returned. Triton: one launch."""
    if backend(pooled) == "triton" and _cache_rows.supported(fmt):
        return _compressor.compress_insert_triton(pooled, n_blocks, ratio, overlap, prev_kv,
                                                  prev_score, norm_weight, eps, angles, fmt,
                                                  out=out)
    rows = _compressor.compress_insert_reference(pooled, n_blocks, ratio, overlap, prev_kv,
                                                 prev_score, norm_weight, eps, angles, fmt)
    return rows if out is None else out.copy_(rows)


def compress_insert_rows(items: Sequence[_compressor.BlockInsert], ratio: int, overlap: bool,
                         norm_weight: torch.Tensor, eps: float, inv_freq: torch.Tensor,
                         fmt: _cache_rows.RowFormat) -> None:
    """``compress_insert`` of one block each for several sequences (a decode step's closing
    blocks of one layer's compressor), each into its own store row; RoPE at each block's
    position from ``inv_freq``. Triton: one launch."""
    if items and backend(items[0].pooled) == "triton" and _cache_rows.supported(fmt):
        _compressor.compress_insert_rows_triton(items, ratio, overlap, norm_weight, eps,
                                                inv_freq, fmt)
    else:
        _compressor.compress_insert_rows_reference(items, ratio, overlap, norm_weight, eps,
                                                   inv_freq, fmt)


def swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float,
           weights: torch.Tensor | None = None, dtype: torch.dtype | None = None
           ) -> torch.Tensor:
    """An expert's clamped SwiGLU: silu(min(gate, limit)) · clamp(up, ±limit) (× per-row
    ``weights``) in fp32 → ``dtype`` (default gate's). Triton: one launch (a shared expert's
    activation was 4–7 torch launches per layer per step)."""
    dtype = dtype or gate.dtype
    if backend(gate) == "triton":
        return _moe.swiglu_triton(gate, up, limit, weights, dtype)
    return _gemm.swiglu_reference(gate, up, limit, weights, dtype)


def moe_fp4(x: torch.Tensor, weights: torch.Tensor, slots: torch.Tensor, bank: ExpertBank,
            limit: float, quantize_input: bool = False, dtype: torch.dtype | None = None,
            add: torch.Tensor | None = None) -> torch.Tensor:
    """Routed FP4 experts of one layer (``ExpertBank``: the local experts, zero-copy views of the
    checkpoint or one stacked copy): x [T, dim], routing weights / bank slots [T, k] (−1 = none or
    another rank's expert: contributes nothing) → fp32 [T, dim] = Σ_slot w · expert(x) (clamped
    SwiGLU), + ``add``. Triton: align by expert → grouped W4A16 gate/up + SwiGLU
    → grouped down → combine. Reference: a loop over the hit experts in the compute ``dtype``
    (default x.dtype), bit-identical to ``Expert.forward``. ``add`` [T, dim] (the shared expert's
    output; under expert parallelism it is added after the all-reduce instead) is added to the
    sum in fp32 — by the combine kernel on Triton."""
    if backend(x) == "triton":
        if x.shape[0] >= choices.MOE_PREFILL_TOKENS:
            tiles = choices.options("moe_prefill", x.device)
        elif x.shape[0] * slots.shape[1] <= _moe.DECODE_MAX_PAIRS:
            tiles = choices.options("moe_decode_native" if quantize_input else "moe_decode",
                                    x.device)
        else:
            tiles = {}
        return _moe.moe_fp4_triton(x, weights, slots, bank, limit, quantize_input, add=add,
                                  **tiles)
    return _moe.moe_fp4_reference(x, weights, slots, bank, limit, quantize_input, dtype, add)


def route(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
          input_ids: torch.Tensor, tid2eid: torch.Tensor | None, topk: int, score_func: str,
          route_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MoE router: x [n, dim], gate weight [experts, dim] → (weights fp32 [n, k], indices int64
    [n, k]). Score routing: top-k of score(x·Wᵀ) + bias; hash routing (``tid2eid`` given):
    tid2eid[input_ids]. Weights = scores there, renormalised unless softmax, × route_scale.
    Triton: one launch (decode: split over experts; else a fused kernel per token block);
    reference: the torch math Gate always used."""
    if backend(x) == "triton":
        chosen = (choices.options("router_decode", x.device)
                  if x.shape[0] < _router.SPLIT_BELOW_TOKENS else {})
        return _router.route_triton(x, weight, bias, input_ids, tid2eid, topk, score_func,
                                    route_scale, **chosen)
    return _router.route_reference(x, weight, bias, input_ids, tid2eid, topk, score_func,
                                   route_scale)
