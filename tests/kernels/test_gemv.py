"""Decode GEMV over weights as mapped (bf16 / fp32, FP8 + 128×128 scales), plain and grouped:
Triton (interpreter) vs dequantise-then-multiply, and the ops that route decode products to it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.kernels import gemv, ops, quant, residency
from model.kernels.gemv import gemv_triton


def _fp8(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.logspace(-2, 1, k)   # block scales differ
    return quant.quant_fp8_block(w)


@pytest.mark.parametrize("m,n,k", [(1, 40, 256), (3, 130, 200), (16, 64, 384), (2, 7, 96)])
def test_gemv_matches_dequantised_product(m, n, k):
    wq, ws = _fp8(n, k, seed=m + n)
    x = torch.randn(m, k) * 3
    want = F.linear(x, quant.dequant_fp8_block(wq, ws))
    got = gemv_triton(x, wq, ws)
    assert got.shape == (m, n) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    wb = torch.randn(n, k).to(torch.bfloat16)                 # bf16 weight, fp32 compute
    torch.testing.assert_close(gemv_triton(x, wb), F.linear(x, wb.float()), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("block_n,groups", [(32, 1), (16, 4), (256, 1)])
def test_fp8_gemv_on_the_gpus_tiles_reads_one_scale_a_tile(block_n, groups, monkeypatch):
    """The GPU's row tiles (32 rows, dividing 128: one scale byte a tile) and a tile wider than
    a scale block (a scale a row); the interpreter's own default tiles are wider still."""
    monkeypatch.setattr(gemv, "_tiles", lambda m, n, g, wide=False: (
        max(1, 1 << (m - 1).bit_length()), block_n, 128))
    n, k = 64 * groups if groups > 1 else 300, 384
    g = torch.Generator().manual_seed(block_n)
    rows = torch.logspace(0, 3, n).view(-1, 1)                 # every 128-row block's scale differs
    wq, ws = quant.quant_fp8_block(torch.randn(n, k, generator=g) * torch.logspace(-2, 1, k) * rows)
    x = torch.randn(2, groups, k) if groups > 1 else torch.randn(2, k)
    dense = quant.dequant_fp8_block(wq, ws)
    if groups > 1:
        want = torch.einsum("mgd,grd->mgr", x, dense.view(groups, -1, k))
    else:
        want = F.linear(x, dense)
    torch.testing.assert_close(gemv_triton(x, wq, ws, groups=groups), want, rtol=1e-4,
                               atol=1e-3)   # values up to ≈ 1e4: fp32 summation order


@pytest.mark.parametrize("m,n,k,groups,fp8,dtype", [
    (1, 300, 384, 1, True, torch.float32),    # 3 row tiles of 128 (the last masked), each
                                              # scale block differs; fp32 x in 3 bf16 columns
    (3, 128, 200, 2, True, torch.float32),    # grouped, K not a multiple of 128 (masked tail)
    (3, 128, 200, 2, True, torch.bfloat16),   # the same for bf16 x
    (4, 130, 256, 1, False, torch.float32),   # the most fp32 rows (4 × 3 of 16 columns)
    (16, 200, 256, 1, False, torch.bfloat16),  # 16 bf16 rows: every MMA column a row of x
    (1, 256, 640, 4, False, torch.bfloat16),   # grouped wo_a-like, K split over programs
])
def test_gemv_on_tensor_cores_matches_dequantised_product(m, n, k, groups, fp8, dtype,
                                                          monkeypatch):
    """``mma=True`` (``_gemv_mma_kernel``: the weight tile the MMA's M side, an FP8 tile's one
    scale put on x's tile, float32 x as three bf16 columns a row): the dequantise-then-multiply
    result, as the FMA kernel's is; fp16 weights, more float32 rows than SPLIT3_ROWS and groups
    that are not whole 128-row tiles keep the FMA kernel (``mma_gemv``)."""
    monkeypatch.setattr(residency, "TARGET_PROGRAMS", 8)            # K splits on small shapes too
    g = torch.Generator().manual_seed(m + n + k)
    rows = torch.logspace(0, 2, groups * n).view(-1, 1)
    w = torch.randn(groups * n, k, generator=g) * torch.logspace(-2, 1, k) * rows
    wq, ws = quant.quant_fp8_block(w) if fp8 else (w.to(torch.bfloat16), None)
    dense = quant.dequant_fp8_block(wq, ws) if fp8 else wq.float()
    shape = (m, groups, k) if groups > 1 else (m, k)
    x = torch.randn(*shape, generator=g).to(dtype)
    want = torch.einsum("mgd,grd->mgr", x.float().reshape(m, groups, k),
                        dense.view(groups, n, k))
    assert gemv.mma_gemv(m, n, groups, wq, x)
    got = gemv_triton(x, wq, ws, groups=groups, mma=True)
    assert got.shape == x.shape[:-1] + (n,)
    torch.testing.assert_close(got.float(), want.reshape(got.shape), rtol=1e-4, atol=1e-3)
    fma = gemv_triton(x, wq, ws, groups=groups)
    torch.testing.assert_close(fma.float(), want.reshape(got.shape), rtol=1e-4, atol=1e-3)
    assert not gemv.mma_gemv(1, 64, 2, wq, x)                  # 64-row groups: half a tile
    assert not gemv.mma_gemv(1, n, 1, w.half(), x)
    assert not gemv.mma_gemv(gemv.SPLIT3_ROWS + 1, n, 1, wq, x.float())


def test_gemv_splits_k_and_keeps_leading_dims(monkeypatch):
    monkeypatch.setattr(residency, "TARGET_PROGRAMS", 64)           # few row tiles → K splits
    w = torch.randn(8, 1000)
    x = torch.randn(2, 1, 1000)
    got = gemv_triton(x, w)
    assert got.shape == (2, 1, 8)
    torch.testing.assert_close(got, F.linear(x, w), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("fp8", [False, True])
def test_grouped_gemv_is_one_product_per_group(fp8):
    groups, n, k = 4, 32, 136
    w = torch.randn(groups * n, k)
    wq, ws = quant.quant_fp8_block(w) if fp8 else (w, None)
    dense = quant.dequant_fp8_block(wq, ws) if fp8 else w
    x = torch.randn(1, 3, groups, k)
    want = torch.einsum("bsgd,grd->bsgr", x, dense.view(groups, n, k))
    got = gemv_triton(x, wq, ws, groups=groups)
    assert got.shape == (1, 3, groups, n)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_gemv_refuses_prefill_sized_inputs():
    with pytest.raises(ValueError, match="at most"):
        gemv_triton(torch.randn(gemv.MAX_ROWS + 1, 128), torch.randn(8, 128))


def test_ops_route_decode_products_to_gemv(monkeypatch):
    wq, ws = _fp8(48, 256, seed=3)                  # a linear: 256 → 48
    gq, gs = _fp8(48, 128, seed=4)                  # a grouped projection: 2 groups × (128 → 24)
    x, xg = torch.randn(1, 2, 256), torch.randn(1, 2, 2, 128)
    calls = []
    real = gemv.gemv_triton
    monkeypatch.setattr(gemv, "gemv_triton", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("V4CODER_KERNELS", "reference")
    want = ops.dequant_linear(x, wq, ws, torch.float32)
    want_grouped = ops.grouped_linear(xg, gq, gs, 2, torch.float32)
    assert calls == [] and want_grouped.shape == (1, 2, 2, 24)
    monkeypatch.setenv("V4CODER_KERNELS", "triton")
    torch.testing.assert_close(ops.dequant_linear(x, wq, ws, torch.float32), want,
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ops.grouped_linear(xg, gq, gs, 2, torch.float32), want_grouped,
                               rtol=1e-5, atol=1e-4)
    assert len(calls) == 2
    big = torch.randn(gemv.MAX_ROWS + 1, 256)       # prefill-sized: dequantise + GEMM
    ops.dequant_linear(big, wq, ws, torch.float32)
    assert len(calls) == 2


@pytest.mark.parametrize("fp8", [True, False])
@pytest.mark.parametrize("groups", [1, 4])
def test_loading_each_weight_tile_a_step_ahead_changes_no_bit(fp8, groups, monkeypatch):
    """``ahead``: every step asks for the next weight tile before it multiplies its own (the
    GPU's 32-row tiles; 2 K splits of 4 steps, the last step 104 wide); the products and
    their order are the same, so the partials are bit-equal."""
    monkeypatch.setattr(gemv, "_tiles", lambda m, n, g, wide=False: (4, 32, 128))
    n, k = 64 * groups if groups > 1 else 96, 1000
    monkeypatch.setattr(residency, "TARGET_PROGRAMS", 2 * -(-n // 32))   # 2 splits of each tile
    g = torch.Generator().manual_seed(groups)
    w = torch.randn(n, k, generator=g) * torch.logspace(-2, 1, k)
    weight, scale = quant.quant_fp8_block(w) if fp8 else (w.to(torch.bfloat16), None)
    x = torch.randn(3, groups, k, generator=g) if groups > 1 else torch.randn(3, k, generator=g)
    parts = gemv_triton(x, weight, scale, groups, reduce=False)
    assert (parts.parts if groups > 1 else parts).shape[0] == 2   # the K splits
    for reduce in (True, False):
        plain = gemv_triton(x, weight, scale, groups, reduce=reduce)
        ahead = gemv_triton(x, weight, scale, groups, reduce=reduce, ahead=True)
        got, want = ((ahead.parts, plain.parts) if groups > 1 and not reduce else (ahead, plain))
        assert torch.equal(got, want)
    dense = quant.dequant_fp8_block(weight, scale) if fp8 else weight.float()
    want = torch.einsum("mgk,gnk->mgn", x.reshape(3, groups, k), dense.view(groups, -1, k))
    torch.testing.assert_close(ahead_full := gemv_triton(x, weight, scale, groups, ahead=True),
                               want.reshape(ahead_full.shape), rtol=1e-5, atol=1e-4)


def test_wide_tiles_take_twice_the_rows_and_the_same_products(monkeypatch):
    """``wide`` (a launch choice): the GPU's one-token tile is 64 rows, not 32 (two a scale
    block; grouped, still dividing the group), and the results are the dequantised product's."""
    monkeypatch.setattr(gemv, "interpreting", lambda: False)   # the GPU's tile sizes
    assert gemv._tiles(1, 4096, 1) == (1, 32, 128) and gemv._tiles(1, 4096, 1, True) == (1, 64, 128)
    assert gemv._tiles(2, 4096, 1, True) == (2, 32, 128)
    assert gemv._tiles(1, 96, 4, True) == (1, 32, 128)         # 64 does not divide a group of 96
    monkeypatch.undo()
    for fp8, groups in ((True, 1), (False, 4)):
        n, k = (300, 384) if groups == 1 else (256, 640)
        w = torch.randn(groups * n, k) * k**-0.5
        weight, scale = quant.quant_fp8_block(w) if fp8 else (w.to(torch.bfloat16), None)
        x = torch.randn(1, groups, k) if groups > 1 else torch.randn(1, k)
        dense = quant.dequant_fp8_block(weight, scale) if fp8 else weight.float()
        want = torch.einsum("mgk,gnk->mgn", x.reshape(1, groups, k), dense.view(groups, n, k))
        got = gemv_triton(x, weight, scale, groups, wide=True)
        torch.testing.assert_close(got, want.reshape(got.shape), rtol=1e-5, atol=1e-4)
