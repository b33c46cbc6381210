"""Decode steps as graph pieces (model/decode_graphs.py). On the CPU the pieces run in
``emulate`` mode: eagerly, but with a graph's memory (every piece's outputs land in static
buffers the next step overwrites), so a cache that kept a view of a piece's output shows up
here as wrong logits. On a GPU the same steps are captured and replayed."""

from __future__ import annotations

import pytest
import torch
from engine_support import token_ids
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from model.decode_graphs import DecodeGraphs, unsupported
from model.engine import Engine, EngineError, RequestStats
from model.generate import load_model
from model.offload import OffloadTransform
from model.op_audit import OpAudit
from model.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=24, stop_ids=())


@pytest.fixture(scope="module")
def tiny_native(toy_ckpt):
    return load_model(toy_ckpt, dtype="float32", numerics="native", progress=False)


def _decode_both(model, graphs: DecodeGraphs, prompts: list[list[int]], steps: int,
                 tolerance: float = 0.0) -> int:
    """Prefill ``prompts`` twice, then step one copy with ``graphs`` and the other with the
    plain forward, feeding both the plain run's greedy tokens. → the number of steps compared."""
    plain = [model.new_cache() for _ in prompts]
    piece = [model.new_cache() for _ in prompts]
    model.forward_batch(prompts, plain)
    last = model.forward_batch(prompts, piece)
    tokens = last.argmax(-1).tolist()
    for _ in range(steps):
        want = model.forward_batch([[t] for t in tokens], plain)
        got = graphs.step(tokens, piece)
        assert got is not None
        err = float((got - want).abs().max() / want.abs().max())
        assert err <= tolerance, err
        tokens = want.argmax(-1).tolist()
    assert [c.length for c in piece] == [c.length for c in plain]
    buf = graphs.buffers[len(prompts)]   # on CUDA these buffers are allocated as zeros_like(q)
    for out, before in zip(buf.outs, buf.befores, strict=True):
        assert (out.dtype, out.shape) == (before.inputs.q.dtype, before.inputs.q.shape)
    return steps


def test_emulated_graph_steps_equal_the_plain_forward(toy_lm):
    """One and three sequences (ragged lengths), through window roll-over and the ratio-4 and
    ratio-16 compression boundaries of the tiny toy."""
    model = toy_lm.model
    graphs = DecodeGraphs(model, mode="emulate")
    assert graphs.prepare([3]) >= 0 and list(graphs.buffers) == [3]   # ahead (a server's start)
    _decode_both(model, graphs, [token_ids(21, seed=1)], steps=30)
    _decode_both(model, graphs, [token_ids(n, seed=n) for n in (5, 18, 33)], steps=20)
    assert sorted(graphs.buffers) == [1, 3] and graphs.steps == 50


def test_emulated_graph_steps_with_packed_native_caches(tiny_native):
    """Native numerics: FP8 KV rows and FP4 indexer keys packed in the cache."""
    graphs = DecodeGraphs(tiny_native.model, mode="emulate")
    _decode_both(tiny_native.model, graphs, [token_ids(n, seed=n) for n in (9, 26)], steps=20)


def test_pieces_make_no_host_sync_and_no_host_copy(toy_lm, monkeypatch):
    """What a CUDA graph cannot capture, counted in the pieces of a real step, on the Triton
    kernels a GPU runs (here in the interpreter; the torch references of some ops, e.g. the
    MoE's loop over hit experts, do sync). The cache side between the pieces runs eagerly."""
    model = toy_lm.model
    graphs = DecodeGraphs(model, mode="emulate")
    caches = [model.new_cache() for _ in range(2)]
    model.forward_batch([token_ids(12, seed=5), token_ids(7, seed=6)], caches)
    graphs.step([5, 6], caches)
    monkeypatch.setenv("V4CODER_KERNELS", "triton")
    with OpAudit() as audit:
        graphs.run_pieces(2)
    assert sum(audit.triton.values()) > 0
    assert sum(audit.syncs.values()) == 0, audit.syncs
    assert audit.host_tensors() == 0


def test_engine_with_graphs_generates_the_same_tokens(make_engine):
    """Through the engine: a prompt, then one whose first 128 tokens come from the prefix cache
    and whose only other token is a graph step on a restored cache (no pending compressor
    tail: the state must not keep a view of the step's buffers)."""
    first = token_ids(140, seed=11)
    second = first[:128] + token_ids(1, seed=12)
    runs = []
    for on in (False, True):
        engine = make_engine(decode_graphs=on)
        stats = [RequestStats(), RequestStats()]
        runs.append([[e.token_id for e in engine.generate(p, GREEDY, stats=st)]
                     for p, st in zip((first, second), stats, strict=True)])
        assert (stats[1].reused_tokens, stats[1].computed_tokens) == (128, 1)
        if on:   # the second prompt's one computed token was a graph step too
            assert engine.graphs is not None and engine.graphs.steps == 2 * GREEDY.max_new_tokens - 1
    assert runs[0] == runs[1] and len(runs[0][1]) == GREEDY.max_new_tokens


def test_offloaded_experts_are_refused_with_a_reason(toy_lm, toy_ckpt):
    """Offloaded experts are fetched by the host per token: no graph can hold that."""
    assert unsupported(toy_lm.model) is None
    with pytest.raises(EngineError, match=r"decode graphs cannot be used: .*--offload"):
        Engine.from_checkpoint(toy_ckpt, decode_graphs=True,
                               transforms=[OffloadTransform(budget_bytes=6000)])


def test_cuda_mode_needs_a_cuda_model(toy_lm):
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        DecodeGraphs(toy_lm.model, mode="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_captured_steps_equal_the_plain_forward_on_cuda(toy_ckpt):
    lm = load_model(toy_ckpt, dtype="bfloat16", device="cuda", numerics="native", progress=False)
    graphs = DecodeGraphs(lm.model)
    assert graphs.mode == "cuda"
    _decode_both(lm.model, graphs, [token_ids(n, seed=n) for n in (9, 26)], steps=20,
                 tolerance=1e-2)   # bf16: the same kernels, replayed
    assert graphs.disabled is None and len(graphs.buffers[2].graphs) == len(lm.model.layers) + 1


class _ExternalReads(TorchDispatchMode):
    """The storages ops read that no op of the same run made: what a CUDA graph reads from
    outside itself, at the addresses it was captured with."""

    def __init__(self) -> None:
        super().__init__()
        self.made: set[int] = set()
        self.read: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # a tensor made from host data is new every time (the host-copy audit above counts them
        # on the Triton path; some torch references make them)
        fresh = func._schema.name in ("aten::lift_fresh", "aten::lift_fresh_copy")
        for t in () if fresh else tree_leaves((args, kwargs or {})):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.made:
                self.read.add(t.untyped_storage().data_ptr())
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.made.add(t.untyped_storage().data_ptr())
        return out


def _piece_reads(graphs: DecodeGraphs, caches, token: int) -> set[int]:
    """Run one step, then its pieces again under the audit (all of them, like one step's
    replays): the storages they read from outside."""
    graphs.step([token] * len(caches), caches)
    with _ExternalReads() as reads:
        graphs.run_pieces(len(caches))
    return reads.read


def test_pieces_read_the_same_storages_every_step(toy_lm):
    """A graph replays reads of the addresses it was captured with: a piece that read a tensor
    made anew each step (outside the pieces) would read a stale one. Every storage the pieces
    read from outside must be the same at every step — and a tensor swapped between steps is
    seen (the check can fail)."""
    model = toy_lm.model
    graphs = DecodeGraphs(model, mode="emulate")
    caches = [model.new_cache()]
    model.forward_batch([token_ids(20, seed=8)], caches)
    first = _piece_reads(graphs, caches, 3)
    assert first and _piece_reads(graphs, caches, 4) == first
    swapped = model.norm.weight
    try:
        model.norm.weight = swapped.clone()    # as if remade per step
        assert _piece_reads(graphs, caches, 5) != first
    finally:
        model.norm.weight = swapped
