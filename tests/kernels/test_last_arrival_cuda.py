"""The kernels whose last program of a group finishes the group's work (decode attention merging its
splits, the indexer's scores kernel picking, the FP8 GEMM summing its K splits, the router's
epilogue, mHC's finish, the routed experts' combine) rely on the GPU's memory order: each program
stores its part, then counts its arrival (``tl.atomic_add``, acq_rel); the last to arrive reads
every part from L2. The interpreter runs programs one after another, so only a GPU can show a race.
At decode the indexer's score programs also count their scores' top key digits (relaxed atomics
before the arrival) for the pick to start from; the parallel pick's slice programs place their keys
and the row's last one reads them all. Here: many launches at V4-Flash's decode shapes, each equal
to the first (and to what the separate kernels give), and the arrival counts and digit histograms
zero after them. CUDA only (skipped on the CPU machine)."""

from __future__ import annotations

import pytest
import torch

from model.kernels import indexer, launch, sparse_attn
from model.kernels.kv_fp8 import V4_KV_LAYOUT, pack_kv_fp8

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="memory order between programs needs a GPU")
LAUNCHES = 200


def test_split_attention_merges_the_same_every_launch():
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, 1, 64, 512, device="cuda", generator=g).bfloat16()
    kv = pack_kv_fp8(torch.randn(1, 8192, 512, device="cuda", generator=g), V4_KV_LAYOUT)
    idx = torch.randint(0, 8192, (1, 1, 640), device="cuda", generator=g)
    sink = torch.randn(64, device="cuda", generator=g)
    args = (q, kv, sink, idx, 512**-0.5)
    opts = dict(layout=V4_KV_LAYOUT, n_splits=5)   # the merged default's splits, for both
    want = sparse_attn.sparse_attn_triton(*args, combine="kernel", **opts)
    for _ in range(LAUNCHES):
        got = sparse_attn.sparse_attn_triton(*args, **opts)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not launch._ARRIVALS[q.device].any()


def test_the_scores_kernel_picks_the_same_every_launch():
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(1, 1, 64, 128, device="cuda", generator=g).bfloat16()
    w = torch.randn(1, 1, 64, device="cuda", generator=g) * 0.125
    keys = torch.randn(1, 32768, 128, device="cuda", generator=g).bfloat16()
    visible = torch.full((1,), 32768, dtype=torch.int32, device="cuda")
    args = (q, w, keys, visible, 512)
    want = indexer.indexer_topk_triton(*args, causal=False)
    apart = indexer.indexer_topk_triton(*args, causal=False, select="triton")
    assert torch.equal(want.sort(-1).values, apart.sort(-1).values)   # the same 512 keys
    for _ in range(LAUNCHES):
        assert torch.equal(indexer.indexer_topk_triton(*args, causal=False), want)
    assert not launch._ARRIVALS[q.device].any()
    # the parallel pick: slice programs place their keys, the row's last one refines and sorts
    for _ in range(LAUNCHES):
        assert torch.equal(indexer.indexer_topk_triton(*args, causal=False, select="parallel"),
                           want)
    assert not launch._ARRIVALS[q.device].any()


def test_the_fp8_gemm_sums_its_k_splits_the_same_every_launch():
    """wo_b at decode: 128 tiles, 8 K splits each; the last split of a tile sums the tile's."""
    from model.kernels import gemm, quant

    g = torch.Generator(device="cuda").manual_seed(2)
    wq, ws = quant.quant_fp8_block(torch.randn(4096, 8192, device="cuda", generator=g) / 90)
    x = torch.randn(1, 8192, device="cuda", generator=g).bfloat16()
    assert gemm.fp8_k_splits(1, 4096, 8192)[0] == 8
    want = gemm.fp8_gemm_triton(x, wq, ws)
    whole = gemm.fp8_gemm_triton(x, wq, ws, k_splits=False)
    torch.testing.assert_close(want.float(), whole.float(), rtol=2e-2, atol=2e-2)
    for _ in range(LAUNCHES):
        assert torch.equal(gemm.fp8_gemm_triton(x, wq, ws), want)
    assert not launch._ARRIVALS[x.device].any()


def test_the_router_routes_the_same_every_launch():
    """The router at decode: 128 programs of 2 experts each per token; the token's last one
    runs the epilogue over all 256 logits."""
    from model.kernels import router

    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(4, 4096, device="cuda", generator=g).bfloat16()
    weight = (torch.randn(256, 4096, device="cuda", generator=g) / 64).bfloat16()
    bias = torch.randn(256, device="cuda", generator=g) * 0.1
    ids = torch.zeros(4, dtype=torch.long, device="cuda")
    args = (x, weight, bias, ids, None, 6, "sqrtsoftplus", 1.5)
    want = router.route_triton(*args)
    fused = router.route_triton(*args, split=False)
    assert torch.equal(want[1], fused[1])
    torch.testing.assert_close(want[0], fused[0], rtol=1e-5, atol=1e-6)
    for _ in range(LAUNCHES):
        got = router.route_triton(*args)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not launch._ARRIVALS[x.device].any()


def test_the_moe_decode_finishes_the_same_every_launch():
    """The routed experts at decode (6 experts of V4-Flash's shape): the gate/up GEMV's last
    programs of each 128 columns run the SwiGLU epilogue, the down GEMV's last of each N tile
    sum the 6 slots — as the two epilogue kernels do."""
    from model import bench_kernels as bk

    torch.manual_seed(4)
    fused = bk._moe_case("moe", 1, "cuda", torch.bfloat16)
    torch.manual_seed(4)
    apart = bk._moe_case("moe", 1, "cuda", torch.bfloat16, finish="kernel")
    want = apart.triton()
    for _ in range(LAUNCHES):
        assert torch.equal(fused.triton(), want)
    assert not launch._ARRIVALS[want.device].any()


def test_mhc_finishes_and_normalises_the_same_every_launch():
    """mHC's post → pre at decode: the token's last partial program reads the streams the
    other programs of its launch stored, finishes the pre and applies the RMSNorm."""
    from model.kernels import mhc

    g = torch.Generator(device="cuda").manual_seed(5)
    y = torch.randn(1, 1, 4096, device="cuda", generator=g).bfloat16()
    residual = torch.randn(1, 1, 4, 4096, device="cuda", generator=g).bfloat16()
    post = torch.rand(1, 1, 4, device="cuda", generator=g)
    comb = torch.rand(1, 1, 4, 4, device="cuda", generator=g)
    fn = torch.randn(24, 4 * 4096, device="cuda", generator=g) * 0.01
    scale, base = torch.rand(3, device="cuda", generator=g), torch.randn(24, device="cuda",
                                                                         generator=g)
    nw = torch.rand(4096, device="cuda", generator=g).bfloat16()
    args = (y, residual, post, comb, fn, scale, base, 20, 1e-6, 1e-6)
    want = mhc.hc_post_pre_triton(*args, finish="kernel", norm=(nw, 1e-6))
    first = mhc.hc_post_pre_triton(*args, norm=(nw, 1e-6))
    torch.testing.assert_close(first[1].float(), want[1].float(), rtol=2e-2, atol=2e-2)
    for _ in range(LAUNCHES):
        got = mhc.hc_post_pre_triton(*args, norm=(nw, 1e-6))
        assert all(torch.equal(a, b) for a, b in zip(got, first, strict=True))
    assert not launch._ARRIVALS[y.device].any()
