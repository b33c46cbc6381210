"""FP8 block-scaled GEMM and FP4 (W4A16) expert GEMM: Triton (interpreter) vs torch references."""

from __future__ import annotations

import pytest
import torch
from spies import answers

from model.kernels import gemm, quant
from model.kernels.gemm import (
    fp4_gemm_reference,
    fp4_gemm_triton,
    fp8_gemm_reference,
    fp8_gemm_triton,
    plan_split_k,
)


@pytest.mark.parametrize(
    "m,n,k",
    [
        (1, 40, 256),    # decode row, N not a multiple of the tile or of 128
        (3, 130, 200),   # partial last 128-block in both N and K (ragged scales)
        (20, 64, 128),   # two M tiles of 16
    ],
)
def test_fp8_gemm_matches_reference(m, n, k):
    g = torch.Generator().manual_seed(m * 1000 + n)
    w = torch.randn(n, k, generator=g) * torch.logspace(-2, 1, k)  # scales vary by block
    wq, ws = quant.quant_fp8_block(w)
    x = torch.randn(m, k, generator=g) * 3
    x[0, :7] = 0.0
    got = fp8_gemm_triton(x, wq, ws)
    want = fp8_gemm_reference(x, wq, ws)
    assert got.shape == (m, n)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("m,k,limit", [(1, 256, 0.3), (3, 200, 0.0), (20, 128, 5.0)])
def test_fp8_gemm_with_the_swiglu_prologue_is_the_activation_then_the_gemm(m, k, limit):
    """An expert's down projection: the GEMM takes gate and up (column slices of one stacked
    output, read in place), applies the clamped SwiGLU as it reads them, and quantises that —
    the separate activation then the GEMM, in one launch."""
    from model.kernels.gemm import swiglu_reference
    from model.op_audit import OpAudit

    g = torch.Generator().manual_seed(k + m)
    wq, ws = quant.quant_fp8_block(torch.randn(48, k, generator=g) * torch.logspace(-2, 1, k))
    both = torch.randn(m, 2 * k + 8, generator=g) * 2
    gate, up = both[:, :k], both[:, k + 8:]
    with OpAudit() as audit:
        got = fp8_gemm_triton(gate, wq, ws, (up, limit))
    want = fp8_gemm_reference(swiglu_reference(gate, up, limit, None, gate.dtype), wq, ws)
    assert audit.launches() == 1 and got.shape == (m, 48)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4), (got - want).abs().max()
    assert torch.equal(fp8_gemm_reference(gate, wq, ws, (up, limit)), want)


def test_fp8_gemm_swiglu_prologue_rounds_the_activation_to_bf16():
    """bf16 numerics: the activation is rounded where the separate kernel stored it."""
    from model.kernels.gemm import swiglu_reference

    g = torch.Generator().manual_seed(5)
    wq, ws = quant.quant_fp8_block(torch.randn(32, 256, generator=g))
    gate, up = (torch.randn(2, 256, generator=g).bfloat16() for _ in range(2))
    got = fp8_gemm_triton(gate, wq, ws, (up, 1.0))
    want = fp8_gemm_triton(swiglu_reference(gate, up, 1.0, None, torch.bfloat16), wq, ws)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


@pytest.mark.parametrize("m,k", [(1, 256), (3, 200), (20, 1024)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_gemm_with_the_norm_prologue_is_rms_norm_then_the_gemm(m, k, dtype):
    """Attention's q_norm as the prologue of the query up-projections: a first pass over K sums
    each row's squares, then every K block is normed (and bf16-rounded) before quantisation —
    rows of very different scales, a partial last block, one launch."""
    from model.kernels.norm_rope import rms_norm_reference
    from model.op_audit import OpAudit

    g = torch.Generator().manual_seed(k + m)
    wq, ws = quant.quant_fp8_block(torch.randn(40, k, generator=g) * torch.logspace(-2, 1, k))
    x = (torch.randn(m, k, generator=g) * torch.logspace(-3, 3, m).unsqueeze(-1)).to(dtype)
    weight = torch.rand(k, generator=g) + 0.5
    with OpAudit() as audit:
        got = fp8_gemm_triton(x, wq, ws, norm=(weight, 1e-6))
    want = fp8_gemm_triton(rms_norm_reference(x, weight, 1e-6), wq, ws)
    assert sum(audit.triton.values()) == 1 and got.dtype == dtype   # (+ interpreter casts)
    # the same roundings; the sum of squares in another order can move one bf16 / FP8 step
    assert torch.allclose(got.float(), want.float(), rtol=2e-2 if dtype == torch.bfloat16
                          else 1e-5, atol=1e-3), (got.float() - want.float()).abs().max()
    ref = fp8_gemm_reference(x, wq, ws, norm=(weight, 1e-6))
    assert torch.equal(ref, fp8_gemm_reference(rms_norm_reference(x, weight, 1e-6), wq, ws))


def test_fp8_gemm_zero_row_and_leading_dims():
    wq, ws = quant.quant_fp8_block(torch.randn(32, 128))
    x = torch.zeros(2, 1, 128)  # amax floor (1e-4) path; output exactly 0
    x[1] = torch.randn(1, 128)
    got = fp8_gemm_triton(x, wq, ws)
    assert got.shape == (2, 1, 32) and torch.count_nonzero(got[0]) == 0
    assert torch.allclose(got, fp8_gemm_reference(x, wq, ws), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("m,n,k", [(1, 48, 128), (5, 33, 96), (17, 64, 64)])
def test_fp4_gemm_matches_reference(m, n, k):
    g = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=g) * torch.logspace(-3, 2, k)  # every ue8m0 group differs
    packed, scale = quant.quant_fp4(w)
    x = torch.randn(m, k, generator=g)
    got = fp4_gemm_triton(x, packed, scale)
    want = fp4_gemm_reference(x, packed, scale)
    assert got.shape == (m, n)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4), (got - want).abs().max()


def test_fp4_decode_covers_every_code():
    codes = torch.arange(16, dtype=torch.uint8).repeat(4)  # 64 values, all 16 codes
    packed = (codes[0::2] | (codes[1::2] << 4)).view(torch.int8).view(1, 32)
    scale = quant.float_to_e8m0(torch.tensor([[0.5, 4.0]]))
    x = torch.eye(64)  # y[i] = dequantised weight[0, i]
    got = fp4_gemm_triton(x, packed, scale)[:, 0]
    assert torch.equal(got, quant.dequant_fp4(packed, scale)[0])


def test_fp4_tensor_core_tile_reads_every_code_at_every_scale(monkeypatch):
    """``load_fp4_mma_tile`` (two bf16 weights placed a register, columns in pair order):
    one-hot rows read each weight back alone — every byte value (both nibbles) under ue8m0
    scales from 2^-62 to 2^64, exactly the reference's dequantised weight."""
    n, k = 32, 128
    packed = torch.arange(n * k // 2).remainder(256).to(torch.uint8).view(torch.int8).view(n, -1)
    exps = torch.linspace(-62, 64, n * k // 32).round().view(n, k // 32)
    scale = quant.float_to_e8m0(torch.exp2(exps))
    taken = answers(monkeypatch, gemm, "mma_fp4_tiles")
    got = torch.cat([fp4_gemm_triton(torch.eye(k)[i:i + 16], packed, scale, mma=True)
                     for i in range(0, k, 16)])          # got[i, r] = W[r, i]
    assert taken == [True] * (k // 16)
    assert torch.equal(got.t(), quant.dequant_fp4(packed, scale))


@pytest.mark.parametrize(
    "m,n,k,block_k,split_k,mma_runs",
    [
        (1, 200, 256, 128, None, True),   # decode row; the second 128-row tile half masked
        (5, 64, 512, 64, 3, True),        # 8 K tiles over 3 wanted splits → 3 + 3 + 2
        (16, 130, 256, 32, 1, True),      # 16 rows: every MMA column a row of x
        (2, 40, 96, 64, 1, False),        # K not a multiple of the tile: the FMA path
    ],
)
def test_fp4_gemm_on_tensor_cores_matches_reference(m, n, k, block_k, split_k, mma_runs,
                                                     monkeypatch):
    g = torch.Generator().manual_seed(5 * m + n)
    w = torch.randn(n, k, generator=g) * torch.logspace(-3, 2, k)
    packed, scale = quant.quant_fp4(w)
    x = torch.randn(m, k, generator=g)
    taken = answers(monkeypatch, gemm, "mma_fp4_tiles")
    got = fp4_gemm_triton(x, packed, scale, block_k=block_k, split_k=split_k, mma=True)
    assert taken == [mma_runs]
    want = fp4_gemm_reference(x, packed, scale)
    assert got.shape == (m, n)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize(
    "m,n,k,block_k,split_k",
    [
        (1, 40, 256, 64, 1),     # decode row, split-K off
        (1, 40, 256, 64, 4),     # decode row, 4 splits of one K tile each
        (1, 48, 96, 32, 2),      # K = 3 tiles over 2 splits: 64 + 32 (K not a multiple)
        (3, 33, 160, 32, 4),     # a few tokens, 5 tiles over 4 wanted → 3 splits: 64+64+32
        (17, 64, 128, 32, 3),    # more than one M tile, 4 tiles over 3 wanted → 2 splits
    ],
)
def test_fp4_gemm_split_k_matches_reference(m, n, k, block_k, split_k):
    g = torch.Generator().manual_seed(7 * m + k)
    w = torch.randn(n, k, generator=g) * torch.logspace(-3, 2, k)
    packed, scale = quant.quant_fp4(w)
    x = torch.randn(m, k, generator=g)
    want = fp4_gemm_reference(x, packed, scale)
    got = fp4_gemm_triton(x, packed, scale, block_k=block_k, split_k=split_k)
    assert got.shape == (m, n)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-4), (got - want).abs().max()
    unsplit = fp4_gemm_triton(x, packed, scale, block_k=block_k, split_k=1)
    assert torch.allclose(got, unsplit, rtol=1e-5, atol=1e-4)


def test_fp4_gemm_split_k_in_default_plan_matches_reference():
    """The default plan splits a decode row (tiny N → few tiles, so splits up to K/128)."""
    assert plan_split_k(2, 1, 512, 256) == (2, 256)
    g = torch.Generator().manual_seed(11)
    packed, scale = quant.quant_fp4(torch.randn(40, 512, generator=g))
    x = torch.randn(1, 512, generator=g)
    got = fp4_gemm_triton(x, packed, scale)
    assert torch.allclose(got, fp4_gemm_reference(x, packed, scale), rtol=1e-5, atol=1e-4)


def test_plan_split_k_decode_shapes_and_caps():
    # V4-Flash w1/w3 decode (m = 1, N = 2048 → 64 tiles of 32, K = 4096 in tiles of 256)
    assert plan_split_k(64, 1, 4096, 256) == (16, 256)
    # 16 rows: fp32 partials would outweigh the weight — capped at K / (128·16) = 2 splits
    assert plan_split_k(64, 16, 4096, 256) == (2, 2048)
    # prefill: enough tiles already, no split
    assert plan_split_k(4 * 32, 256, 4096, 64) == (1, 4096)
    # forced: more splits than K tiles → one tile each
    assert plan_split_k(1, 1, 64, 32, splits=8) == (2, 32)


def test_plan_split_k_covers_k_with_no_empty_split():
    for k_blocks in range(1, 20):
        k = 32 * k_blocks
        for want in range(1, 24):
            splits, k_per = plan_split_k(1, 1, k, 32, splits=want)
            assert 1 <= splits <= min(want, k_blocks) and k_per % 32 == 0
            assert (splits - 1) * k_per < k <= splits * k_per  # covers K, last split non-empty


@pytest.mark.parametrize("m,groups,k_group,splits", [(1, 8, 64, 3), (3, 2, 96, 1), (2, 4, 48, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_gemm_sums_a_grouped_gemvs_splits_as_it_reads_them(m, groups, k_group, splits,
                                                                dtype):
    """wo_a → wo_b at decode: the grouped GEMV leaves its K splits unsummed (SplitK
    [S, G, M, Ng]) and the FP8 GEMM sums them in its prologue (and rounds to bf16 where the sum
    was stored) — the same as summing first, in one launch; group widths that straddle the
    GEMM's 128-wide K blocks."""
    from model.kernels.gemm import SplitK
    from model.kernels.gemv import gemv_triton
    from model.op_audit import OpAudit

    g = torch.Generator().manual_seed(groups * 10 + splits)
    k = groups * k_group
    wq, ws = quant.quant_fp8_block(torch.randn(56, k, generator=g) * torch.logspace(-2, 1, k))
    parts = torch.randn(splits, groups, m, k_group, generator=g)
    split = SplitK(parts, (1, m), dtype)
    assert split.shape == (1, m, k)
    summed = split.sum()
    assert summed.dtype == dtype and torch.equal(
        summed.float(), parts.sum(0).transpose(0, 1).reshape(1, m, k).to(dtype).float())
    with OpAudit() as audit:
        got = fp8_gemm_triton(split, wq, ws)
    assert sum(audit.triton.values()) == 1 and got.shape == (1, m, 56) and got.dtype == dtype
    want = fp8_gemm_triton(summed, wq, ws)
    assert torch.allclose(got.float(), want.float(), rtol=1e-5, atol=1e-4), (got - want).abs().max()
    # the grouped GEMV hands its splits over in that layout
    x = torch.randn(m, groups, 256, generator=g)
    w = torch.randn(groups * k_group, 256, generator=g)
    out = gemv_triton(x, w, None, groups, reduce=False)
    assert isinstance(out, SplitK) and out.lead == (m,)
    assert torch.allclose(out.sum(), gemv_triton(x, w, None, groups).reshape(m, -1), atol=1e-5)


@pytest.mark.parametrize("m,n,k,block_k,split_k", [(1, 40, 512, 128, 2), (17, 64, 256, 64, 1)])
def test_fp4_whole_tiles_load_as_vectors_and_agree_with_the_masked_path(m, n, k, block_k,
                                                                        split_k, monkeypatch):
    """FULL (every K tile whole, both parts 16-byte aligned): the weight bytes and scales load as
    tiles of whole rows, x as one contiguous slice split into even / odd k in registers — the
    same values as the masked path; a part that is not 16-byte aligned takes the masked path."""
    g = torch.Generator().manual_seed(m + n)
    packed, scale = quant.quant_fp4(torch.randn(n, k, generator=g) * torch.logspace(-3, 2, k))
    x = torch.randn(m, k, generator=g)
    assert gemm.full_fp4_tiles(k, k // split_k, block_k, packed, scale)
    full = fp4_gemm_triton(x, packed, scale, block_k=block_k, split_k=split_k)
    taken = []
    real = gemm.full_fp4_tiles
    monkeypatch.setattr(gemm, "full_fp4_tiles", lambda *a: taken.append(real(*a)) or False)
    masked = fp4_gemm_triton(x, packed, scale, block_k=block_k, split_k=split_k)
    assert taken == [True]
    assert torch.allclose(full, masked, rtol=1e-6, atol=1e-5)
    assert torch.allclose(full, fp4_gemm_reference(x, packed, scale), rtol=1e-5, atol=1e-4)
    shifted = torch.empty(packed.numel() + 1, dtype=torch.int8)[1:].view(n, k // 2)
    shifted.copy_(packed)
    assert not real(k, k // split_k, block_k, shifted, scale)


def test_fp8_k_splits_give_a_decodes_few_tiles_more_programs():
    """wo_b (4,096 rows: 128 tiles of 32, 64 K blocks) in 8 splits of 8 blocks: wq_b's shape
    (1,024 tiles of 8 blocks), which run 3 timed at 18 µs where wo_b took 90; a GEMM with
    tiles enough keeps one split, so does every prefill; the plan is the same for every decode
    batch (a row's result does not depend on the rows beside it)."""
    from model.kernels.gemm import fp8_k_splits

    assert fp8_k_splits(1, 4096, 8192) == (8, 8)      # wo_b
    assert fp8_k_splits(1, 4096, 2048) == (8, 2)      # the shared expert's w2
    assert fp8_k_splits(1, 1536, 4096) == (16, 2)     # wq_a and wkv, stacked
    assert fp8_k_splits(1, 32768, 1024) == (1, 8)     # wq_b: 1,024 tiles already
    assert fp8_k_splits(17, 4096, 8192) == (1, 64)    # prefill
    assert fp8_k_splits(1, 64, 128) == (1, 1)         # one K block: nothing to split
    for n, k in ((4096, 8192), (70, 1300), (40, 256)):
        assert len({fp8_k_splits(m, n, k) for m in range(1, 17)}) == 1
        splits, per = fp8_k_splits(1, n, k)
        kb = -(-k // 128)
        assert (splits - 1) * per < kb <= splits * per   # covers K, the last split non-empty


@pytest.mark.parametrize("prologue", ["", "norm", "swiglu", "groups"])
def test_fp8_gemm_split_over_k_at_decode_is_the_whole_k_gemm(prologue):
    """70 rows of 1,300 (11 K blocks, the last 20 wide) in 4 splits of 3 blocks, one launch:
    the last split of each tile to arrive (any of them: the interpreter shuffles the programs)
    sums the tiles' partials in split order. Equal to the one-program-a-tile GEMM up to fp32
    summation order, for every prologue; each row equal, bit for bit, to its own decode (whose
    activation side is one row, ``X_ROWS``); the arrival counts zero again after."""
    from model.kernels.gemm import SplitK, fp8_k_splits, swiglu_reference
    from model.kernels.launch import arrivals
    from model.kernels.norm_rope import rms_norm_reference
    from model.op_audit import OpAudit

    n, k = 70, 1300
    assert fp8_k_splits(1, n, k) == (4, 3)
    g = torch.Generator().manual_seed(len(prologue))
    wq, ws = quant.quant_fp8_block(torch.randn(n, k, generator=g) * torch.logspace(-2, 1, k))
    x = torch.randn(5, k, generator=g) * torch.logspace(-1, 1, 5).unsqueeze(-1)
    up = torch.randn(5, k, generator=g)
    nw = torch.rand(k, generator=g) + 0.5

    def gemm(rows: slice, **kw) -> torch.Tensor:
        if prologue == "groups":   # wo_a's splits (2 of 4 groups of 325) summed as it reads
            parts = x[rows].reshape(-1, 4, 325).transpose(0, 1).unsqueeze(0) / 2
            split = SplitK(torch.cat([parts, parts]), (x[rows].shape[0],), torch.float32)
            return fp8_gemm_triton(split, wq, ws, **kw)
        return fp8_gemm_triton(x[rows], wq, ws, (up[rows], 3.0) if prologue == "swiglu" else None,
                               (nw, 1e-6) if prologue == "norm" else None, **kw)

    with OpAudit() as audit:
        got = gemm(slice(None))
    assert sum(audit.triton.values()) == 1 and got.shape == (5, n)
    torch.testing.assert_close(got, gemm(slice(None), k_splits=False), rtol=1e-5, atol=1e-4)
    base = x if prologue in ("", "groups") else (
        rms_norm_reference(x, nw, 1e-6) if prologue == "norm"
        else swiglu_reference(x, up, 3.0, None, x.dtype))
    torch.testing.assert_close(got, fp8_gemm_reference(base, wq, ws), rtol=1e-5, atol=1e-4)
    for i in range(5):
        assert torch.equal(gemm(slice(i, i + 1))[0], got[i]), i
    # a one-row decode quantises that row alone (X_ROWS=1): bit-equal to all 16 of the tile
    assert torch.equal(gemm(slice(3, 4)), gemm(slice(3, 4), one_row=False))
    # 64-row tiles (2 tiles, the second 6 rows; 4 splits all the same): the same products
    wide = gemm(slice(None), block_n=64)
    torch.testing.assert_close(wide, got, rtol=1e-5, atol=1e-4)
    assert torch.equal(gemm(slice(2, 3), block_n=64)[0], wide[2])
    assert torch.count_nonzero(arrivals(64, x.device)) == 0


def test_fp8_decode_tiles_fill_the_sms_once():
    """64-row decode tiles where 32-row ones would be more than TARGET_PROGRAMS (the query
    up-projections: 1,280 → 640 programs), 32 elsewhere; 16 × 64 above 16 rows; a launch
    choice may set 32 or 64, nothing else."""
    from model.kernels.gemm import _blocks, fp8_k_splits

    assert _blocks(1, 40960) == (16, 64) and fp8_k_splits(1, 40960, 1024) == (1, 8)
    assert _blocks(1, 32768) == (16, 32) and _blocks(16, 4096) == (16, 32)
    assert _blocks(17, 40960) == (64, 64) and _blocks(1, 40960, 32) == (16, 32)
    assert fp8_k_splits(1, 4096, 8192, 64) == (16, 4)   # wo_b in 64-row tiles: 64 × 16
    with pytest.raises(ValueError, match="32 or 64"):
        _blocks(1, 4096, 128)
