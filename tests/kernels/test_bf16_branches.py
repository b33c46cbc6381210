"""The kernels' bf16 branches — what a GPU runs — in the interpreter (``bf16_interpreter``:
bf16 computed as a GPU does, the inline PTX emulated), against the torch references at bf16's
precision. The rest of tests/kernels runs the same kernels in fp32, where the bf16 branches
(the tensor-core FP4 decoder's packed registers, bf16 tiles, bf16 stores) never run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from spies import answers

from model.kernels import gemm, moe, quant
from model.kernels.expert_bank import ExpertBank
from model.kernels.gemm import fp4_gemm_reference, fp4_gemm_triton
from model.kernels.moe import moe_fp4_reference, moe_fp4_triton

pytestmark = [
    pytest.mark.usefixtures("bf16_interpreter"),
    # fp16 rows whose FP4 rounding passes 65504 store inf, as the reference and a GPU do; numpy
    # says so when the interpreter casts them (fp16 is no longer handed over as fp32)
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
]

def _close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-2) -> None:
    """Within ``rel`` of the largest |want| (bf16 rounds each output to 2^-8 of itself)."""
    err = (got.float() - want.float()).abs().max().item()
    assert err <= rel * want.float().abs().max().item(), err


# -- the FP4 decoder on tensor cores: packed bf16 registers, the scale by fma.rn.bf16x2 ----------

def test_fp4_tile_in_bf16_reads_every_code_at_every_scale_exactly(monkeypatch, ptx_calls):
    """One-hot bf16 rows read each weight back alone — every byte value under ue8m0 scales
    from 2^-62 to 2^64, the subnormal codes (±0.5, code e = 0) included: exactly the
    reference's weight, through the packed bf16 registers and the emulated PTX."""
    n, k = 32, 128
    packed = torch.arange(n * k // 2).remainder(256).to(torch.uint8).view(torch.int8).view(n, -1)
    exps = torch.linspace(-62, 64, n * k // 32).round().view(n, k // 32)
    scale = quant.float_to_e8m0(torch.exp2(exps))
    taken = answers(monkeypatch, gemm, "mma_fp4_tiles")
    eye = torch.eye(k, dtype=torch.bfloat16)
    got = torch.cat([fp4_gemm_triton(eye[i:i + 16], packed, scale, mma=True)
                     for i in range(0, k, 16)])
    assert taken == [True] * (k // 16) and ptx_calls
    assert got.dtype == torch.bfloat16
    assert torch.equal(got.t().float(), quant.dequant_fp4(packed, scale))


def _fp4_weight(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.logspace(-3, 2, k)
    return (*quant.quant_fp4(w), g)


@pytest.mark.parametrize("m,n,k,block_k,split_k", [
    (1, 200, 256, 128, None),   # decode row; the second 128-row tile half masked
    (5, 64, 512, 64, 3),        # K split over programs, fp32 partials
    (16, 130, 256, 32, 1),      # 16 rows: every MMA column a row of x
])
def test_fp4_gemm_in_bf16_on_tensor_cores_matches_the_fma_kernel(m, n, k, block_k, split_k,
                                                                 monkeypatch, ptx_calls):
    packed, scale, g = _fp4_weight(n, k, 7 * m + n)
    x = torch.randn(m, k, generator=g).bfloat16()
    taken = answers(monkeypatch, gemm, "mma_fp4_tiles")
    got = fp4_gemm_triton(x, packed, scale, block_k=block_k, split_k=split_k, mma=True)
    assert taken == [True] and ptx_calls and got.dtype == torch.bfloat16
    fma = fp4_gemm_triton(x, packed, scale, block_k=block_k, split_k=split_k)
    want = fp4_gemm_reference(x.float(), packed, scale)
    _close(fma, want)
    _close(got, want)


# -- MoE: the decode GEMVs and the grouped prefill GEMM, FMA and tensor-core tiles ---------------

N_EXP, LIMIT = 4, 7.0


def _bank_and_input(t, dim, inter, seed):
    g = torch.Generator().manual_seed(seed)
    parts = []
    for shape in ((N_EXP, inter, dim), (N_EXP, inter, dim), (N_EXP, dim, inter)):
        w = torch.randn(*shape, generator=g) / shape[-1] ** 0.5
        packed, scale = quant.quant_fp4(w.reshape(-1, shape[-1]))
        parts += [packed.view(*shape[:2], -1), scale.view(*shape[:2], -1)]
    bank = ExpertBank.from_stacked(*parts)
    return bank, torch.randn(t, dim, generator=g).bfloat16(), g


@pytest.mark.parametrize("decode,quantize,mma,options", [
    (True, False, False, {}), (True, False, True, {}), (True, True, True, {}),
    (False, False, False, {}), (False, False, True, {}), (False, True, True, {}),
    # the other launch choices the H200 run times (bench rows moe_fp4_*)
    (True, False, False, {"block_n": 16, "num_warps": 8}),
    (True, False, False, {"block_k": 64}),
    (True, False, False, {"ahead": True}), (True, True, False, {"ahead": True}),
    (True, False, True, {"block_n": 64}),
    (False, False, False, {"block_m": 64}),
    (False, False, True, {"block_m": 64}),
    (False, False, True, {"group_n": 128}),
    (False, False, True, {"block_m": 64, "group_n": 64}),
])
def test_moe_in_bf16_matches_reference(decode, quantize, mma, options, monkeypatch, ptx_calls):
    """bf16 activations through routing's slots, the GEMVs (decode) or the grouped GEMM, the
    clamped SwiGLU and the combine: the reference's result computed in fp32, to bf16's
    precision, on each launch choice; the tensor-core tiles run the emulated PTX, the FMA
    kernels do not."""
    t = 2 if decode else 5
    bank, x, g = _bank_and_input(t, 256, 128, seed=11 + t)
    slots = torch.tensor([[2, 0], [3, -1]]) if decode else torch.tensor(
        [[0, 3, -1], [0, 1, 3], [3, 0, -1], [0, -1, -1], [-1, -1, -1]])
    weights = torch.rand(*slots.shape, generator=g)
    taken = answers(monkeypatch, moe, "mma_fp4_tiles") if mma else []
    got = moe_fp4_triton(x, weights, slots, bank, LIMIT, quantize_input=quantize, decode=decode,
                         mma=mma, **options)
    assert taken == ([True, True] if mma else []) and bool(ptx_calls) == mma
    want = moe_fp4_reference(x.float(), weights, slots, bank, LIMIT, quantize_input=quantize)
    _close(got, want)
    assert decode or torch.count_nonzero(got[4]) == 0


def test_fp8_gemm_in_bf16_quantises_the_bf16_input_as_the_reference_does():
    """The FP8 GEMM's prologue on a bf16 activation (1×128 blocks, e4m3): the same as
    quantising the activation in torch and multiplying the dequantised operands."""
    g = torch.Generator().manual_seed(3)
    wq, ws = quant.quant_fp8_block(torch.randn(192, 256, generator=g))
    x = torch.randn(5, 256, generator=g).bfloat16()
    got = gemm.fp8_gemm_triton(x, wq, ws)
    assert got.dtype == torch.bfloat16
    want = F.linear(quant.fp8_fake_quant(x.float(), 128), quant.dequant_fp8_block(wq, ws))
    _close(got, want)


# -- sparse attention: bf16 queries and rows (or FP8 rows), P rounded to bf16 for P·V ---------

def _attn_inputs(b, s, h, d, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, s, h, d, generator=g).bfloat16()
    kv = torch.randn(b, n, d, generator=g).bfloat16()
    sink = torch.randn(h, generator=g)
    idx = torch.randint(0, n, (b, s, k), generator=g)
    return q, kv, sink, torch.where(torch.rand(b, s, k, generator=g) < 0.25, -1, idx)


@pytest.mark.parametrize("b,s,h,splits,block_h,dv_parts,block_n,combine,qk_split,tile", [
    (1, 1, 16, 3, 16, 1, 16, "fused", 1, ""),         # decode split, merged by the last program
    (1, 1, 16, 3, 16, 1, 16, "kernel", 1, ""),        # ... merged by the combine kernel
    (1, 1, 16, 2, 16, 2, 16, "fused", 1, ""),         # decode, output columns in two slices
    (1, 1, 16, 2, 16, 2, 16, "kernel", 1, ""),
    (1, 3, 64, 1, 64, 1, 16, "fused", 1, ""),         # prefill, a 64-head tile, all the columns
    (2, 2, 64, 1, 64, 2, 32, "fused", 1, ""),         # prefill, 32 rows a step, two slices
    (1, 3, 64, 1, 64, 1, 32, "fused", 1, ""),         # all the columns, 32 rows a step
    (1, 2, 64, 1, 64, 4, 64, "fused", 1, ""),         # four column slices, 64 rows a step
    (1, 1, 16, 3, 16, 1, 16, "fused", 4, ""),         # decode, scores batched over 4 slices
    (1, 3, 16, 1, 16, 2, 16, "fused", 4, ""),         # ... prefill, two column slices
    (1, 3, 64, 1, 64, 1, 64, "fused", 1, "rows_m"),   # prefill, the rows on the MMAs' M side
    (1, 1, 16, 3, 16, 2, 16, "fused", 1, "rows_m"),   # ... decode split, two column slices
    (1, 3, 64, 1, 64, 2, 16, "fused", 1, "ahead"),    # prefill, the next scores ahead
    (1, 3, 64, 1, 64, 2, 16, "fused", 1, "upconvert"),  # FP8 rows up-converted first
])
@pytest.mark.parametrize("rows_format", ["bf16", "fp8", "fp8_pairs"])
def test_sparse_attention_in_bf16_matches_reference(b, s, h, splits, block_h, dv_parts, block_n,
                                                    combine, qk_split, tile, rows_format,
                                                    ptx_calls):
    """``fp8_pairs``: the FP8 rows decoded by placement, scaled by the emulated PTX;
    ``qk_split``: the scores' batched dot in bf16; ``tile`` "rows_m": both dots with the rows
    on M, "ahead": each step's next scores issued before its softmax, "upconvert": FP8 rows
    up-converted to bf16 once, then read as bf16 rows."""
    from model.kernels.kv_fp8 import KVLayout, pack_kv_fp8, unpack_kv_fp8
    from model.kernels.sparse_attn import sparse_attn_reference, sparse_attn_triton

    d, fp8 = 128, rows_format != "bf16"
    q, kv, sink, idx = _attn_inputs(b, s, h, d, 70, 40, seed=h + splits + dv_parts)
    layout = KVLayout(head_dim=d, rope_dim=32, block=32) if fp8 else None
    rows = pack_kv_fp8(kv.float(), layout) if fp8 else kv
    dense = unpack_kv_fp8(rows, layout) if fp8 else kv.float()
    out, lse = sparse_attn_triton(q, rows, sink, idx, d**-0.5, layout=layout, n_splits=splits,
                                  block_h=block_h, dv_parts=dv_parts, block_n=block_n,
                                  combine=combine, fp8_pairs=rows_format == "fp8_pairs",
                                  qk_split=qk_split, rows_m=tile == "rows_m",
                                  ahead=tile == "ahead", upconvert=tile == "upconvert")
    want, want_lse = sparse_attn_reference(q.float(), dense, sink, idx, d**-0.5)
    # up-converted rows are bf16 rows by the time the attention reads them: no pairs decode
    pairs = rows_format == "fp8_pairs" and tile != "upconvert"
    assert out.dtype == torch.bfloat16 and bool(ptx_calls) == pairs
    _close(out, want, rel=2e-2)
    torch.testing.assert_close(lse.float(), want_lse, rtol=1e-4, atol=1e-4)


def test_fp16_queries_read_fp8_rows_through_the_cast_path(monkeypatch):
    """The placement's tile is the values × 2^-60, below every fp16 value: fp16 queries ask
    for it and get the cast path's output."""
    from model.kernels import sparse_attn
    from model.kernels.kv_fp8 import KVLayout, pack_kv_fp8

    q, kv, sink, idx = _attn_inputs(1, 1, 16, 128, 70, 40, seed=9)
    layout = KVLayout(head_dim=128, rope_dim=32, block=32)
    rows = pack_kv_fp8(kv.float(), layout)
    decoded = answers(monkeypatch, sparse_attn, "fp8_row_pairs")
    got, _ = sparse_attn.sparse_attn_triton(q.half(), rows, sink, idx, 0.1, layout=layout,
                                            fp8_pairs=True)
    want, _ = sparse_attn.sparse_attn_triton(q.half(), rows, sink, idx, 0.1, layout=layout)
    assert decoded == [] and got.dtype == torch.float16
    assert torch.equal(got, want) and got.abs().max() > 0


# -- the lightning indexer: bf16 queries and keys, fp32 scores --------------------------------

@pytest.mark.parametrize("s,n,start,k,path,select", [
    (1, 100, 399, 8, "scores", "fused"),          # decode: the scores kernel picks
    (1, 100, 399, 8, "scores", "fused_passes"),   # ... by four passes over the row
    (1, 100, 399, 8, "scores", "parallel"),       # ... in two launches of slice programs
    (1, 100, 399, 8, "scores", "triton"),         # ... in topk_select, a kernel of its own
    (1, 70, 279, 32, "merge", "fused"),           # decode through the merge path
    (4, 40, 156, 8, "scores", "fused"),           # prefill rows
])
@pytest.mark.parametrize("packed", [False, True, "upconvert"])
def test_indexer_in_bf16_picks_what_the_reference_picks(s, n, start, k, path, select, packed):
    """bf16 queries over bf16 keys, or over FP4-packed keys (the native cache's; "upconvert":
    those up-converted to bf16 first), on every decode pick the launch choices offer."""
    from test_indexer import _check, _packed_inputs

    from model.kernels.indexer import indexer_topk_triton

    q, w, keys, packed_keys, visible = _packed_inputs(1, s, 8, 64, n, start, seed=n)
    q = q.bfloat16()
    keys = keys.bfloat16()              # FP4-grid values: exact in bf16
    got = indexer_topk_triton(q, w, packed_keys if packed else keys, visible, k, block_n=16,
                              path=path, select=select, upconvert=packed == "upconvert")
    _check(got, q.float(), w, keys.float(), visible, k)


@pytest.mark.parametrize("limit,weighted", [(7.0, True), (0.0, False)])
def test_swiglu_in_bf16_is_the_reference_to_one_rounding(limit, weighted):
    """The shared expert's activation on bf16 gate / up views, stored in bf16."""
    from model.kernels.gemm import swiglu_reference
    from model.kernels.moe import swiglu_triton

    g = torch.Generator().manual_seed(6)
    both = (torch.randn(3, 2 * 200, generator=g) * 6).bfloat16()
    gate, up = both[:, :200], both[:, 200:]
    weights = torch.rand(3, 1, generator=g) if weighted else None
    got = swiglu_triton(gate, up, limit, weights, torch.bfloat16)
    want = swiglu_reference(gate.float(), up.float(), limit, weights, torch.float32)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2**-8, atol=1e-6)


# -- routing: a bf16 activation against bf16 gate weights ------------------------------------

@pytest.mark.parametrize("n,score_func", [(1, "sqrtsoftplus"), (5, "softmax"), (37, "sigmoid")])
def test_routing_in_bf16_matches_reference(n, score_func):
    from test_router import _assert_tie_free, _inputs

    from model.kernels.router import route_reference, route_triton

    x, weight, bias, ids, _ = _inputs(n, 64, 24, 6, seed=n)
    x = x.bfloat16()
    _assert_tie_free(x, weight, bias, 6, score_func)
    got_w, got_i = route_triton(x, weight, bias, ids, None, 6, score_func, 1.5)
    want_w, want_i = route_reference(x.float(), weight, bias, ids, None, 6, score_func, 1.5)
    assert torch.equal(got_i, want_i)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)


# -- the kernel tests elsewhere whose inputs are bf16, run again here with bf16 computed as a GPU
# computes it (there the wrappers hand the interpreter fp32) ----------------------------------

def _rerun(module: str, *names: str) -> None:
    tests = __import__(module)
    for name in names:
        globals()[name] = getattr(tests, name)


_rerun("test_cache_rows", "test_a_packed_kv_row_is_the_layouts_bytes",
       "test_a_packed_key_row_is_the_layouts_bytes_of_the_rotated_key")
_rerun("test_compressor", "test_bf16_entries_round_like_the_reference_up_to_one_rounding")
_rerun("test_gemm", "test_fp8_gemm_swiglu_prologue_rounds_the_activation_to_bf16",
       "test_fp8_gemm_with_the_norm_prologue_is_rms_norm_then_the_gemm",
       "test_fp8_gemm_sums_a_grouped_gemvs_splits_as_it_reads_them")
_rerun("test_indexer", "test_fp4_keys_decoded_as_register_pairs_pick_what_the_reference_picks")
_rerun("test_gemv", "test_gemv_matches_dequantised_product",
       "test_gemv_on_tensor_cores_matches_dequantised_product")
_rerun("test_mhc", "test_hc_pre_decode_bf16_input", "test_hc_pre_prefill_matches_reference",
       "test_post_then_pre_bf16_rounds_the_streams_before_the_pre")
_rerun("test_norm_rope", "test_rms_norm_bf16_rounds_like_reference",
       "test_apply_rope_non_contiguous_bf16")
_rerun("test_quant_triton", "test_fake_quant_matches_reference")
_rerun("test_sparse_attn", "test_output_rotated_back_in_the_kernel_that_stores_it")


@pytest.mark.parametrize("kind", ["all", "picks"])
@pytest.mark.parametrize("fp8", [False, True])
def test_a_batch_of_sequences_in_bf16_is_one_launch_over_their_own_rows(kind, fp8):
    """TABLE mode as a GPU runs it: bf16 queries over each sequence's bf16 (or FP8) rows, one
    launch for the batch — where the fp32 interpreter takes one launch a token."""
    from test_sequence_rows import W, _queries, _rows

    from model.kernels.sequence_rows import (
        SequenceRows,
        sparse_attn_rows_reference,
        sparse_attn_rows_triton,
    )
    from model.op_audit import OpAudit

    windows, counts = [1, W, 3], [0, 13, 40]
    rows, layout = _rows(windows, counts, kind, fp8)
    if not fp8:
        rows = SequenceRows(tuple(w.bfloat16() for w in rows.windows),
                            tuple(s.bfloat16() for s in rows.stores), rows.counts, W)
    q, sink, angles = _queries(3)
    picks = None
    if kind == "picks":
        g = torch.Generator().manual_seed(2)
        picks = torch.full((1, 3, 12), -1, dtype=torch.long)
        for t, n in enumerate(counts):
            picks[0, t, :min(12, n)] = torch.randperm(n, generator=g)[:12]
    q = q.bfloat16()
    want = sparse_attn_rows_reference(q.float(), rows if fp8 else SequenceRows(
        tuple(w.float() for w in rows.windows), tuple(s.float() for s in rows.stores),
        rows.counts, W), sink, picks, 0.125, layout, angles)
    with OpAudit() as audit:
        got = sparse_attn_rows_triton(q, rows, sink, picks, 0.125, layout, angles)
    assert dict(audit.triton) == {"_sparse_attn_fwd": 1} and got.dtype == torch.bfloat16
    _close(got, want, rel=2e-2)
