"""Fused MoE over FP4 experts (align → grouped gate/up + SwiGLU → grouped down → combine), and the
expert bank it reads: zero-copy views of one storage in any byte order, an expert-parallel rank's
local experts only, a stacked copy that the experts' own buffers are re-pointed into."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from host_syncs import sync_ops
from spies import answers

from model.kernels import ops, quant
from model.kernels.expert_bank import ExpertBank
from model.kernels.moe import moe_align, moe_fp4_reference, moe_fp4_triton
from model.layers.moe import Expert


def _experts(n_exp, dim, inter, g):
    def stack(out_f, in_f):
        pairs = [quant.quant_fp4(torch.randn(out_f, in_f, generator=g) * in_f**-0.5)
                 for _ in range(n_exp)]
        return torch.stack([p for p, _ in pairs]), torch.stack([s for _, s in pairs])

    return (*stack(inter, dim), *stack(inter, dim), *stack(dim, inter))


def test_align_groups_pairs_by_expert_with_padding():
    indices = torch.tensor([[2, 0], [2, -1], [0, 2], [5, 2]])  # 5 is out of range: dropped
    pairs, tiles, pos = moe_align(indices, n_experts=4, block_m=2)
    assert tiles.tolist()[:3] == [0, 2, 2] and all(t == -1 for t in tiles.tolist()[3:])
    assert pairs.tolist()[:6] == [1, 4, 0, 2, 5, 7]
    assert pos.tolist() == [2, 0, 3, -1, 1, 4, -1, 5]


@pytest.mark.parametrize("t,topk,quantize", [(1, 2, False), (5, 3, False), (4, 2, True)])
def test_moe_fp4_matches_reference(t, topk, quantize):
    g = torch.Generator().manual_seed(t * 10 + topk)
    n_exp, dim, inter = 4, 64, 32
    w = _experts(n_exp, dim, inter, g)
    x = torch.randn(t, dim, generator=g)
    indices = torch.stack([torch.randperm(n_exp, generator=g)[:topk] for _ in range(t)])
    if t > 2:
        indices[1, -1] = -1  # a padded slot
    weights = torch.rand(t, topk, generator=g)
    limit = 0.3  # small enough that the clamps bite
    bank = ExpertBank.from_stacked(*w)
    got = moe_fp4_triton(x, weights, indices, bank, limit, quantize_input=quantize)
    want = moe_fp4_reference(x, weights, indices, bank, limit, quantize_input=quantize)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


N_EXP, DIM, INTER, LIMIT = 4, 64, 32, 0.3
PARTS = [(p, leaf) for p in ("w1", "w3", "w2") for leaf in ("weight", "scale")]


def _shard_like(w, order):
    """The six tensors of every expert packed into ONE byte storage, experts in ``order`` (as a
    safetensors shard lays them out: by name, so expert 10 before expert 2) and each expert's
    parts interleaved; returns {expert: Expert whose buffers are views of that storage}."""
    by_part = dict(zip(PARTS, w, strict=True))
    blobs, spans, at = [], {}, 0
    for e in order:
        for key in PARTS:
            t = by_part[key][e]
            raw = t.contiguous().view(torch.uint8).flatten()
            spans[e, key] = (at, t)
            blobs.append(raw)
            at += raw.numel()
    storage = torch.cat(blobs)
    experts = {}
    for e in order:
        ex = Expert(DIM, INTER, "fp4", LIMIT)
        for (part, leaf) in PARTS:
            lo, t = spans[e, (part, leaf)]
            view = storage[lo : lo + t.numel()].view(t.dtype).view(t.shape)
            setattr(getattr(ex, part), leaf, view)
        experts[e] = ex
    return storage, experts


def _loop(x, weights, indices, experts):
    """The per-expert path the layer used before the bank (and expert offload still uses)."""
    y = torch.zeros(x.shape[0], DIM)
    for e in sorted(experts):
        rows, slot = torch.where(indices == e)
        if rows.numel():
            y.index_add_(0, rows, experts[e](x[rows], weights[rows, slot, None]).float())
    return y


def _routing(t, pattern, g):
    if pattern == "one_expert_idle":  # expert 2 receives no token
        choices = torch.tensor([0, 1, 3])
        return torch.stack([choices[torch.randperm(3, generator=g)[:2]] for _ in range(t)])
    # every expert hit
    return torch.stack([torch.randperm(N_EXP, generator=g)[:2] for _ in range(t)])


@pytest.mark.parametrize("pattern", ["one_expert_idle", "all_hit"])
def test_zero_copy_bank_in_file_order_matches_the_expert_loop(pattern):
    g = torch.Generator().manual_seed(3)
    w = _experts(N_EXP, DIM, INTER, g)
    storage, experts = _shard_like(w, order=[0, 3, 1, 2])
    bank = ExpertBank.from_experts(experts, N_EXP)
    assert bank.zero_copy and bank.experts == (0, 1, 2, 3)
    assert all(p.base.data_ptr() == storage.data_ptr() for p in bank.parts())
    x, t = torch.randn(6, DIM, generator=g), 6
    indices = _routing(t, pattern, g)
    hit = set(indices.flatten().tolist())
    assert (2 not in hit) if pattern == "one_expert_idle" else hit == {0, 1, 2, 3}
    weights = torch.rand(t, 2, generator=g)
    want = _loop(x, weights, indices, experts)
    got_ref = moe_fp4_reference(x, weights, bank.slots(indices), bank, LIMIT)
    assert torch.equal(got_ref, want)  # the reference IS the expert loop, bit for bit
    got = moe_fp4_triton(x, weights, bank.slots(indices), bank, LIMIT)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_expert_parallel_bank_holds_local_experts_only(backend, monkeypatch):
    monkeypatch.setenv(ops.BACKEND_ENV, backend)
    g = torch.Generator().manual_seed(4)
    w = _experts(N_EXP, DIM, INTER, g)
    _, experts = _shard_like(w, order=[0, 1, 2, 3])
    local = {e: experts[e] for e in (1, 3)}  # rank 1 of 2 owns experts 1 and 3 (strided view)
    bank = ExpertBank.from_experts(local, N_EXP)
    assert bank.slot_of.tolist() == [-1, 0, -1, 1] and bank.n_slots == 2 and bank.zero_copy
    t = 5
    x, indices = torch.randn(t, DIM, generator=g), _routing(t, "all_hit", g)
    weights = torch.rand(t, 2, generator=g)
    slots = bank.slots(indices)
    assert ((slots >= 0) == ((indices == 1) | (indices == 3))).all()
    got = ops.moe_fp4(x, weights, slots, bank, LIMIT)
    want = _loop(x, weights, indices, local)  # absent experts contribute nothing
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


def test_bank_of_separate_tensors_is_one_copy_the_experts_point_into():
    g = torch.Generator().manual_seed(5)
    w = _experts(N_EXP, DIM, INTER, g)
    experts = {}
    for e in range(N_EXP):  # separate allocations, as after a per-tensor copy to a GPU
        ex = Expert(DIM, INTER, "fp4", LIMIT)
        for part_tensor, (part, leaf) in zip(w, PARTS, strict=True):
            setattr(getattr(ex, part), leaf, part_tensor[e].clone())
        experts[e] = ex
    x = torch.randn(3, DIM, generator=g)
    indices, weights = _routing(3, "all_hit", g), torch.rand(3, 2, generator=g)
    want = _loop(x, weights, indices, experts)
    bank = ExpertBank.from_experts(experts, N_EXP)
    assert not bank.zero_copy
    for (part, leaf), pb in zip(PARTS, bank.parts(), strict=True):
        storages = {getattr(getattr(ex, part), leaf).untyped_storage().data_ptr()
                    for ex in experts.values()}
        assert storages == {pb.base.untyped_storage().data_ptr()}  # one copy, shared
    assert torch.equal(moe_fp4_reference(x, weights, bank.slots(indices), bank, LIMIT), want)


# ---- decode (per-pair split-K) and grouped paths; no host sync ---------------------------------
def _bank_and_input(t, dim, inter, seed):
    g = torch.Generator().manual_seed(seed)
    bank = ExpertBank.from_stacked(*_experts(N_EXP, dim, inter, g))
    return bank, torch.randn(t, dim, generator=g), g


RAGGED = torch.tensor([[0, 3, -1], [0, 1, 3], [3, 0, -1], [0, -1, -1], [-1, -1, -1]])
# expert 0: 4 tokens, 1: 1, 2: none, 3: 3; a token with every slot −1 (its output row is 0)


@pytest.mark.parametrize("decode", [True, False])
@pytest.mark.parametrize("quantize", [False, True])
def test_moe_fp4_ragged_loads_idle_expert_and_empty_slots(decode, quantize):
    bank, x, g = _bank_and_input(5, DIM, INTER, seed=21)
    weights = torch.rand(5, 3, generator=g)
    got = moe_fp4_triton(x, weights, RAGGED, bank, LIMIT, quantize_input=quantize, decode=decode)
    want = moe_fp4_reference(x, weights, RAGGED, bank, LIMIT, quantize_input=quantize)
    assert torch.count_nonzero(got[4]) == 0 and torch.count_nonzero(want[0]) > 0
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize(
    "t,topk,split_k",
    [
        (1, 2, 1),   # one decode token, k experts, split-K off
        (1, 2, 2),   # gate/up K = 3 tiles over 2 splits (64 + 32), down K = 2 tiles over 2
        (3, 2, 3),   # a few tokens; 3 splits wanted: gate/up 3, down 2 (one tile each)
    ],
)
def test_moe_fp4_decode_split_k_matches_reference(t, topk, split_k):
    dim, inter = 96, 64  # K not a multiple of the split
    bank, x, g = _bank_and_input(t, dim, inter, seed=t + 7 * split_k)
    indices = torch.stack([torch.randperm(N_EXP, generator=g)[:topk] for _ in range(t)])
    if t > 1:
        indices[1, 0] = -1
    weights = torch.rand(t, topk, generator=g)
    want = moe_fp4_reference(x, weights, indices, bank, LIMIT)
    got = moe_fp4_triton(x, weights, indices, bank, LIMIT, decode=True, split_k=split_k,
                         block_k=32)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()
    grouped = moe_fp4_triton(x, weights, indices, bank, LIMIT, decode=False)
    assert torch.allclose(got, grouped, atol=1e-5, rtol=1e-4)


def test_moe_fp4_no_limit_and_default_path_choice():
    bank, x, g = _bank_and_input(2, DIM, INTER, seed=5)
    indices, weights = _routing(2, "all_hit", g), torch.rand(2, 2, generator=g)
    got = moe_fp4_triton(x, weights, indices, bank, 0.0)  # T·k = 4: the decode path
    want = moe_fp4_reference(x, weights, indices, bank, 0.0)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


def test_host_sync_detector_sees_every_kind_of_sync(monkeypatch):
    x = torch.arange(6)
    for sync in (lambda: x[2].item(), lambda: bool(x[1] > 0), lambda: x[x > 2],
                 lambda: torch.bincount(x), lambda: x.nonzero(), lambda: x.tolist(),
                 lambda: x.cpu(), lambda: torch.where(x > 2)):
        assert sync_ops(monkeypatch, sync), sync
    assert sync_ops(monkeypatch, lambda: torch.cumsum(x, 0).gather(0, x.flip(0))) == []


@pytest.mark.parametrize("t,decode", [(1, None), (4, True), (6, False)])
def test_moe_fp4_triton_makes_no_host_sync(monkeypatch, t, decode):
    """Decode (default for one token) and the grouped path (device-side align) alike."""
    bank, x, g = _bank_and_input(t, DIM, INTER, seed=9)
    indices, weights = _routing(t, "one_expert_idle", g), torch.rand(t, 2, generator=g)
    indices[0, 1] = -1
    out = []
    assert sync_ops(monkeypatch, lambda: out.append(
        moe_fp4_triton(x, weights, indices, bank, LIMIT, decode=decode))) == []
    want = moe_fp4_reference(x, weights, indices, bank, LIMIT)
    assert torch.allclose(out[0], want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("block_m", [32, 64])
def test_moe_fp4_grouped_with_larger_expert_tiles(block_m):
    """64-row expert tiles (what lets the grouped GEMM use Hopper's warp-group MMA): rows of
    several experts, a partly filled tile per expert, a padded slot."""
    g = torch.Generator().manual_seed(block_m)
    n_exp, dim, inter, t, topk = 4, 64, 32, 40, 2
    bank = ExpertBank.from_stacked(*_experts(n_exp, dim, inter, g))
    x = torch.randn(t, dim, generator=g)
    indices = torch.stack([torch.randperm(n_exp, generator=g)[:topk] for _ in range(t)])
    indices[3, 0] = -1
    weights = torch.rand(t, topk, generator=g)
    got = moe_fp4_triton(x, weights, indices, bank, LIMIT, decode=False, block_m=block_m)
    want = moe_fp4_reference(x, weights, indices, bank, LIMIT)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("limit,weighted", [(7.0, True), (7.0, False), (0.0, False)])
def test_swiglu_in_one_launch_matches_the_torch_ops(limit, weighted):
    """The shared expert's activation: gate and up as views of one GEMM output (strided rows),
    values past the clamp, optional per-row weights."""
    from model.kernels.gemm import swiglu_reference
    from model.kernels.moe import swiglu_triton
    g = torch.Generator().manual_seed(5)
    both = torch.randn(3, 4, 2 * 200, generator=g) * 6
    gate, up = both[..., :200], both[..., 200:]
    weights = torch.rand(3, 4, 1, generator=g) if weighted else None
    got = swiglu_triton(gate, up, limit, weights, torch.float32)
    want = swiglu_reference(gate, up, limit, weights, torch.float32)
    assert got.shape == (3, 4, 200)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    if limit:
        assert float(got.abs().max()) <= limit * limit   # both clamps applied


@pytest.mark.parametrize("decode", [True, False])
def test_the_combine_adds_the_shared_expert(decode):
    """``add`` (the shared expert's output) is summed by the combine kernel, on both paths, and
    the reference adds it after the routed sum (what MoE.forward did)."""
    g = torch.Generator().manual_seed(6)
    w = _experts(N_EXP, DIM, INTER, g)
    _, experts = _shard_like(w, order=[0, 1, 2, 3])
    bank = ExpertBank.from_experts(experts, N_EXP)
    assert torch.equal(bank.slots(torch.tensor([[2, -1]])), torch.tensor([[2, -1]]))  # as is
    t = 5
    x, indices = torch.randn(t, DIM, generator=g), _routing(t, "all_hit", g)
    weights, shared = torch.rand(t, 2, generator=g), torch.randn(t, DIM, generator=g)
    slots = bank.slots(indices)
    want = moe_fp4_reference(x, weights, slots, bank, LIMIT) + shared
    assert torch.equal(moe_fp4_reference(x, weights, slots, bank, LIMIT, add=shared), want)
    got = moe_fp4_triton(x, weights, slots, bank, LIMIT, decode=decode, add=shared)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("quantize,split_k,block_n", [(False, 1, 32), (True, 2, 32),
                                                     (True, 2, 16), (False, 1, 64)])
def test_the_gemvs_last_programs_run_the_epilogues_as_their_kernels(quantize, split_k, block_n):
    """Decode's two epilogues in the GEMVs (default): the SwiGLU by the last of a pair's
    programs of each 128 columns (4, 8 or 2 N tiles × the splits; native numerics put h on
    its FP8 grid there, per 128 columns), the combine by the last of a token's slot × split
    programs of an N tile — any program may arrive last (the interpreter shuffles them) — in
    the epilogue kernels' order: bit-equal to ``finish="kernel"``, with empty slots (a token
    with none), the shared expert added, K in 2 splits; 2 GEMV launches and no epilogue
    kernel; the counts zero after."""
    from model.kernels.launch import arrivals
    from model.op_audit import OpAudit

    dim, inter = 96, 320   # the gate/up's 128-column blocks: 128, 128, 64
    bank, x, g = _bank_and_input(5, dim, inter, seed=31 + split_k)
    weights, shared = torch.rand(5, 3, generator=g), torch.randn(5, dim, generator=g)
    kw = dict(quantize_input=quantize, decode=True, split_k=split_k, block_k=32, add=shared,
              block_n=block_n)
    with OpAudit() as audit:
        fused = moe_fp4_triton(x, weights, RAGGED, bank, LIMIT, **kw)
    assert audit.triton["_moe_gemv_kernel"] == 2    # (+ x's quantisation: block_k ≠ 128)
    assert not {"_moe_swiglu_kernel", "_moe_combine_kernel"} & set(audit.triton)
    apart = moe_fp4_triton(x, weights, RAGGED, bank, LIMIT, finish="kernel", **kw)
    assert torch.equal(fused, apart)
    want = moe_fp4_reference(x, weights, RAGGED, bank, LIMIT, quantize_input=quantize,
                             add=shared)
    assert torch.allclose(fused, want, atol=1e-4, rtol=1e-3), (fused - want).abs().max()
    assert torch.equal(fused[4], shared[4])   # every slot empty: the shared expert alone
    assert not arrivals(256, x.device).any()
    with pytest.raises(ValueError, match="finish"):
        moe_fp4_triton(x, weights, RAGGED, bank, LIMIT, decode=True, finish="sum")
    with pytest.raises(ValueError, match="block_n=48"):
        moe_fp4_triton(x, weights, RAGGED, bank, LIMIT, decode=True, block_n=48)


def test_decode_epilogue_quantises_each_128_column_block_of_h():
    """Native numerics at decode: the SwiGLU epilogue puts h on the FP8 grid itself, one
    power-of-two scale per 128 columns — here three blocks, the last one partial."""
    g = torch.Generator().manual_seed(8)
    n_exp, dim, inter = 4, 64, 320
    bank = ExpertBank.from_stacked(*_experts(n_exp, dim, inter, g))
    x = torch.randn(2, dim, generator=g)
    indices, weights = torch.tensor([[0, 2], [3, 1]]), torch.rand(2, 2, generator=g)
    got = moe_fp4_triton(x, weights, indices, bank, LIMIT, quantize_input=True, decode=True)
    want = moe_fp4_reference(x, weights, indices, bank, LIMIT, quantize_input=True)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("split_k,block_k", [(1, 128), (2, 128), (2, 32)])
def test_decode_gemv_quantises_the_input_as_it_reads_it(split_k, block_k):
    """Native numerics at decode: x goes onto its FP8 grid inside the gate/up GEMV (one
    power-of-two scale per 1×128 block: three blocks of very different magnitude here, the last
    partial, over one or two K splits), with no quantisation launch of its own; with another
    K tile the quantisation stays a launch of its own."""
    from model.op_audit import OpAudit

    g = torch.Generator().manual_seed(9)
    n_exp, dim, inter = 4, 320, 64
    bank = ExpertBank.from_stacked(*_experts(n_exp, dim, inter, g))
    x = torch.randn(2, dim, generator=g) * torch.tensor([0.01] * 128 + [30.0] * 128 + [1.0] * 64)
    indices, weights = torch.tensor([[0, 2], [3, -1]]), torch.rand(2, 2, generator=g)
    want = moe_fp4_reference(x, weights, indices, bank, LIMIT, quantize_input=True)
    with OpAudit() as audit:
        got = moe_fp4_triton(x, weights, indices, bank, LIMIT, quantize_input=True, decode=True,
                             split_k=split_k, block_k=block_k)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()
    assert audit.triton["_fake_quant_kernel"] == (block_k != 128)
    plain = moe_fp4_reference(x, weights, indices, bank, LIMIT, quantize_input=False)
    assert not torch.allclose(plain, want, atol=1e-5, rtol=1e-4)   # the quantisation shows


@pytest.mark.parametrize("quantize,block_n,block_k,ahead", [
    (False, 16, 64, False), (True, 16, 128, False), (False, 64, 32, False),
    (False, 32, 64, True), (True, 32, 128, True)])
def test_decode_gemv_tiles_of_the_launch_choices(quantize, block_n, block_k, ahead):
    """The decode GEMV's other tiles (the `moe_decode*` launch choices: fewer rows, or a
    shorter K step, per program, or each step's loads a tile ahead) give the default tile's
    result; N = 96 is not a multiple of the 64-row tile, and K = 96 of the 64-column step."""
    t, topk, dim, inter = 1, 3, 96, 128
    bank, x, g = _bank_and_input(t, dim, inter, seed=11)
    indices = torch.randperm(N_EXP, generator=g)[:topk].view(1, topk)
    weights = torch.rand(t, topk, generator=g)
    want = moe_fp4_triton(x, weights, indices, bank, LIMIT, quantize_input=quantize, decode=True)
    got = moe_fp4_triton(x, weights, indices, bank, LIMIT, quantize_input=quantize, decode=True,
                         block_n=block_n, block_k=block_k, num_warps=8, ahead=ahead)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()
    ref = moe_fp4_reference(x, weights, indices, bank, LIMIT, quantize_input=quantize)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-3), (got - ref).abs().max()


@pytest.mark.parametrize("quantize,dim,inter,block_n,block_k,split_k", [
    (False, 256, 96, 64, 32, None),   # N = 96: the second 64-row tile half masked; down K = 3 tiles
    (True, 256, 128, 64, 128, 2),     # native numerics: x quantised per 128-block in pair order
    (False, 128, 64, 16, 64, 1),      # 16-row tiles, one split
])
def test_decode_gemv_on_tensor_cores_matches_the_fma_gemv(quantize, dim, inter, block_n, block_k,
                                                          split_k, monkeypatch):
    """``mma=True``: both decode GEMVs on tensor cores (``_fp4_mma_row_dots``: the weight
    tile the MMA's M side, the activation loaded in the decoded columns' pair order) give the
    FMA GEMV's and the reference's result, with a dropped slot (−1) in the batch; a bank off
    the 4-byte grid or a K that is not whole tiles keeps the FMA GEMV."""
    from model.kernels import moe

    t = 2
    bank, x, g = _bank_and_input(t, dim, inter, seed=block_n + block_k)
    indices = torch.tensor([[2, 0], [3, -1]])
    weights = torch.rand(t, 2, generator=g)
    args = (x, weights, indices, bank, LIMIT)
    opts = dict(quantize_input=quantize, decode=True, split_k=split_k, block_n=block_n,
                block_k=block_k)
    fma = moe_fp4_triton(*args, **opts)
    real = moe.mma_fp4_tiles
    taken = answers(monkeypatch, moe, "mma_fp4_tiles")
    got = moe_fp4_triton(*args, **opts, mma=True)
    assert taken == [True, True]          # gate/up and down
    assert torch.allclose(got, fma, atol=1e-5, rtol=1e-4), (got - fma).abs().max()
    want = moe_fp4_reference(*args, quantize_input=quantize)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()
    assert not real(dim, dim, block_k, False, True) and not real(96, 96, 64, True)


@pytest.mark.parametrize("quantize,block_m,group_n,group_k,dim,inter", [
    (False, 16, 32, 64, 128, 64), (True, 64, 64, 64, 128, 64),
    (False, 16, 128, 128, 256, 128)])
def test_grouped_gemm_with_tensor_core_tiles_matches_reference(quantize, block_m, group_n,
                                                               group_k, dim, inter, monkeypatch):
    """``mma=True`` on the grouped path: the gate/up and down GEMMs' weight tiles from
    ``load_fp4_mma_tile``, the activation rows loaded whole and permuted in registers into the
    tiles' column order (``to_mma_order``) — the reference's result, ragged slots included, for
    weight tiles wider than the default (a 128-row tile over 64 rows: half masked)."""
    from model.kernels import moe

    bank, x, g = _bank_and_input(5, dim, inter, seed=block_m)
    weights = torch.rand(5, 3, generator=g)
    taken = answers(monkeypatch, moe, "mma_fp4_tiles")
    got = moe_fp4_triton(x, weights, RAGGED, bank, LIMIT, quantize_input=quantize,
                         decode=False, block_m=block_m, mma=True, group_n=group_n,
                         group_k=group_k)
    assert taken == [True, True]
    want = moe_fp4_reference(x, weights, RAGGED, bank, LIMIT, quantize_input=quantize)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("decode,quantize,split_k", [(True, False, 1), (True, True, 2),
                                                     (False, False, None)])
def test_whole_tiles_of_an_aligned_bank_load_as_vectors(decode, quantize, split_k, monkeypatch):
    """Every K tile whole and every slot 16-byte aligned (``whole_tiles``): the GEMV and the
    grouped GEMM read the weight bytes and scales as tiles of whole rows and each activation
    row as one contiguous slice (FULL) — the masked path's values, the reference's values; a
    bank with a slot off the 16-byte grid takes the masked path."""
    from model.kernels import moe

    t, dim, inter = 3, 256, 128
    bank, x, g = _bank_and_input(t, dim, inter, seed=31)
    indices = torch.tensor([[0, 3], [1, -1], [3, 2]])
    weights = torch.rand(t, 2, generator=g)
    args = (x, weights, indices, bank, LIMIT)
    opts = dict(quantize_input=quantize, decode=decode, split_k=split_k)
    full = moe_fp4_triton(*args, **opts)
    taken = []
    real = moe.whole_tiles
    monkeypatch.setattr(moe, "whole_tiles", lambda *a: taken.append(real(*a)) or False)
    masked = moe_fp4_triton(*args, **opts)
    assert taken == [True, True]          # gate/up and down
    assert torch.allclose(full, masked, atol=1e-6, rtol=1e-6)
    want = moe_fp4_reference(*args, quantize_input=quantize)
    assert torch.allclose(full, want, atol=1e-5, rtol=1e-4), (full - want).abs().max()
    if decode:   # whole tiles with the loads a tile ahead (2 K steps a split at split_k = 1)
        monkeypatch.setattr(moe, "whole_tiles", real)
        ahead = moe_fp4_triton(*args, **opts, ahead=True)
        assert torch.allclose(ahead, full, atol=1e-6, rtol=1e-6)
    off_grid = dataclasses.replace(bank.w2, starts=(8, *bank.w2.starts[1:]))
    assert not real(inter, inter, 128, off_grid, bank.s2)


@pytest.mark.parametrize("finish", ["fused", "kernel"])
def test_the_decode_sums_load_their_partials_a_chunk_at_a_time(finish, monkeypatch):
    """The SwiGLU epilogue's and the combine's sums issue a chunk of partials' loads, then add
    them in (slot, split) order: with 2 a chunk — the gate/up's 3 splits and the combine's
    3 slots × 3 splits in ragged chunks, empty slots among them — the result is the one of
    8 a chunk (one chunk each), bit for bit, fused or not."""
    import triton.language as tl

    from model.kernels import gemm, moe

    dim, inter = 96, 320
    bank, x, g = _bank_and_input(5, dim, inter, seed=41)
    weights, shared = torch.rand(5, 3, generator=g), torch.randn(5, dim, generator=g)
    kw = dict(decode=True, split_k=3, block_k=32, add=shared, finish=finish)
    whole = moe_fp4_triton(x, weights, RAGGED, bank, LIMIT, **kw)
    for module in (gemm, moe):
        monkeypatch.setattr(module, "SUM_CHUNK", tl.constexpr(2))
    chunked = moe_fp4_triton(x, weights, RAGGED, bank, LIMIT, **kw)
    assert torch.equal(chunked, whole)
    want = moe_fp4_reference(x, weights, RAGGED, bank, LIMIT, add=shared)
    assert torch.allclose(chunked, want, atol=1e-4, rtol=1e-3), (chunked - want).abs().max()


@pytest.mark.parametrize("finish", ["fused", "kernel"])
def test_a_dropped_pairs_gemv_programs_write_zero_partials(finish, monkeypatch):
    """Every fp32 partial the decode GEMVs leave for the epilogues holds a number: a dropped
    pair's programs store zeros, so the epilogues' sums never add what the buffer held before
    (NaN here: ``torch.empty`` poisoned) — at decode every partial of the batch is read."""
    made = []

    def poisoned_empty(*shape, **kw):
        out = torch.full(shape[0] if len(shape) == 1 and not isinstance(shape[0], int)
                         else shape, float("nan"), **kw)
        made.append(out)
        return out

    bank, x, g = _bank_and_input(5, 96, 320, seed=43)
    weights = torch.rand(5, 3, generator=g)
    monkeypatch.setattr(torch, "empty", poisoned_empty)
    got = moe_fp4_triton(x, weights, RAGGED, bank, LIMIT, decode=True, split_k=2, block_k=32,
                         finish=finish)
    monkeypatch.undo()
    parts = [t for t in made if t.dtype == torch.float32 and t.dim() == 4]
    assert len(parts) == 2                           # the gate/up's and the down's
    assert all(not t.isnan().any() for t in parts)
    assert (parts[0][:, :, RAGGED.view(-1) < 0] == 0).all()
    want = moe_fp4_reference(x, weights, RAGGED, bank, LIMIT)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-3), (got - want).abs().max()
