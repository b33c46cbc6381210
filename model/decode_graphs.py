"""Decode steps as CUDA graphs, piecewise: what reads no cache is captured, attention's cache
side runs eagerly between the pieces.

A V4-Flash decode step issues ≈ 2.9K kernel launches (``v4coder bench launches``): at a few µs of
host time each, the host, not the GPU, sets the pace of batch-1 decode. A CUDA graph replays a
recorded sequence of kernels with one launch, but it replays the same kernels on the same
addresses with the same shapes, and the cache side of attention is none of that: the window
rolls, compressed rows are appended every 4th / 128th token, the indexer's key count grows.

So one decode step with ``n`` sequences (one new token each) is cut at the cache side of every
layer's attention, as vLLM's piecewise graphs cut at attention:

    piece 0      embed → layer 0 up to its projections            (graph)
    attend 0     layer 0's window / compressor / indexer / sparse attention (eager, cache)
    piece i      layer i-1 after attention (output projection, mHC, MoE) → layer i's
                 projections                                       (graph)
    ...
    piece L      layer L-1 after attention → head → logits         (graph)

Everything a piece reads is a static tensor: the step's token ids and positions (copied in before
the step), the previous piece's outputs and the previous attention output (copied into a static
buffer). ``Block.before_attention`` / ``Block.after_attention`` and ``Attention.project`` /
``output`` read no cache, issue no host sync and make no host→device copy (tests/engine/
test_decode_graphs.py audits that), so they capture; the eager part is ≈ a fifth of a layer's
launches. Graphs are captured per batch size on first use (warm-up on a side stream first, one
memory pool shared by all, one garbage collection per size rather than per graph), and replayed
in capture order.

``mode="emulate"`` runs the same pieces eagerly on any device but with the graph's memory
semantics: each piece's outputs are copied into static buffers that the next step overwrites.
If the cache side kept a view of a piece's output (a graph would overwrite it at the next replay),
the emulated steps' logits would differ from the plain forward's — the CPU test of this module.
A failed capture turns graphs off with one warning line; the caller then runs its plain forward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from model.cache import SequenceCache, Span


@dataclass(slots=True)
class StepBuffers:
    """One batch size's static tensors (and, on CUDA, its graphs)."""
    ids: torch.Tensor                       # [1, n] token ids of the step
    positions: torch.Tensor                 # [n] their positions
    befores: list[Any]                      # piece i's output: layer i's BeforeAttention
    outs: list[torch.Tensor | None]         # layer i's attention output [1, n, heads, head_dim]
    logits: torch.Tensor | None = None      # piece L's output [n, vocab] fp32
    graphs: list[torch.cuda.CUDAGraph] = field(default_factory=list)


class DecodeGraphs:
    """Runs decode steps (one new token for each of n sequences) of ``model`` (a
    ``model.transformer.Transformer``) as graph pieces around attention's cache side."""

    def __init__(self, model: Any, mode: str | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        device = model.embed.weight.device
        self.mode = mode or ("cuda" if device.type == "cuda" else "emulate")
        if self.mode not in ("cuda", "emulate"):
            raise ValueError(f"decode graphs: unknown mode {self.mode!r} (cuda, emulate)")
        if self.mode == "cuda" and device.type != "cuda":
            raise ValueError("decode graphs: mode 'cuda' needs the model on a CUDA device")
        self.model, self.device = model, device
        self.buffers: dict[int, StepBuffers] = {}
        self.pool: Any = None
        self.disabled: str | None = None    # why capture failed (then the caller runs eagerly)
        self.steps = 0                      # steps run through the pieces
        self._warn = warn or (lambda line: print(line, file=sys.stderr))

    # -- the pieces --------------------------------------------------------------------------
    def piece(self, i: int, buf: StepBuffers, memo: dict) -> Any:
        """Piece i of a step: reads ``buf`` only (no cache). → layer i's BeforeAttention, or
        the logits [n, vocab] for i = number of layers."""
        model = self.model
        layers = model.layers
        if i == 0:
            h = model.embed(buf.ids).to(model.numerics.dtype)
            h = h.unsqueeze(2).repeat(1, 1, model.cfg.hc_mult, 1)
        else:
            h = layers[i - 1].after_attention(buf.outs[i - 1], buf.befores[i - 1], buf.ids)
        if i == len(layers):
            return model.logits(h)[0]
        return layers[i].before_attention(h, buf.positions, memo)

    # -- a step --------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, token_ids: Sequence[int], caches: Sequence[SequenceCache]
             ) -> torch.Tensor | None:
        """One decode step: ``token_ids[i]`` continues ``caches[i]`` (each already holds at
        least one token). → fp32 logits [n, vocab] (a fresh tensor), or None when graphs are
        off (capture failed): the caller runs its plain forward; no cache was touched then."""
        if self.disabled is not None:
            return None
        if not caches or len(token_ids) != len(caches) or min(c.length for c in caches) < 1:
            raise ValueError("a decode step needs one token per sequence, each continuing a "
                             "non-empty cache")
        n = len(caches)
        buf = self.buffers.get(n) or self._prepare(n)
        if buf is None:
            return None
        starts = [c.length for c in caches]
        buf.ids.copy_(torch.tensor([list(token_ids)], dtype=torch.long))
        buf.positions.copy_(torch.tensor(starts, dtype=torch.long))
        memo: dict = {("positions",): buf.positions}
        layers = self.model.layers
        for i in range(len(layers) + 1):
            self._run_piece(i, buf, memo)
            if i == len(layers):
                break
            spans = [Span(start, 1, c.layers[i]) for start, c in zip(starts, caches, strict=True)]
            # written straight into the next piece's static input (the first emulated step
            # allocates it)
            buf.outs[i] = layers[i].attn.attend(buf.befores[i].inputs, spans, buf.positions,
                                                memo, out=buf.outs[i])
        for start, c in zip(starts, caches, strict=True):
            c.length = start + 1
        self.steps += 1
        return buf.logits.clone()

    @torch.inference_mode()
    def prepare(self, sizes: Iterable[int]) -> float:
        """Capture the graphs of these batch sizes now (a server's start: the warm-up, JIT
        compiles and captures of every size it may batch) instead of at each size's first
        step. → seconds taken."""
        t0 = time.perf_counter()
        for n in sizes:
            if n not in self.buffers:
                self._prepare(n)
        return time.perf_counter() - t0

    def _prepare(self, n: int) -> StepBuffers | None:
        """The static buffers of batch size n (captured on CUDA); None when graphs are off."""
        if self.disabled is not None:
            return None
        buf = self._new_buffers(n)
        if self.mode == "cuda" and not self._capture(buf):
            return None
        self.buffers[n] = buf
        return buf

    def run_pieces(self, n: int) -> None:
        """Run every piece of batch size n's step again, eagerly, on its static buffers as the
        last step left them: what the graphs hold, for audits (launches, syncs, reads)."""
        buf = self.buffers[n]
        memo: dict = {("positions",): buf.positions}
        with torch.inference_mode():
            for i in range(len(self.model.layers) + 1):
                self.piece(i, buf, memo)

    def _run_piece(self, i: int, buf: StepBuffers, memo: dict) -> None:
        if self.mode == "cuda":
            buf.graphs[i].replay()
            return
        out = self.piece(i, buf, memo)   # emulate: the graph's memory semantics, eagerly
        if i == len(self.model.layers):
            buf.logits = _store(buf.logits, out)
        else:
            buf.befores[i] = _store(buf.befores[i], out)

    def _new_buffers(self, n: int) -> StepBuffers:
        layers = len(self.model.layers)
        zeros = torch.zeros
        return StepBuffers(zeros(1, n, dtype=torch.long, device=self.device),
                           zeros(n, dtype=torch.long, device=self.device),
                           [None] * layers, [None] * layers)

    # -- CUDA capture ------------------------------------------------------------------------
    def _capture(self, buf: StepBuffers) -> bool:
        """Warm every piece up on a side stream, then capture each into its graph. → False
        (graphs off, one warning) if anything fails; no cache is touched either way."""
        layers = len(self.model.layers)
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):    # JIT compiles, lazy per-device tables, cuBLAS workspaces
                    memo: dict = {("positions",): buf.positions}
                    for i in range(layers + 1):
                        out = self.piece(i, buf, memo)
                        if i < layers:
                            buf.befores[i] = out
                            buf.outs[i] = torch.zeros_like(out.inputs.q)
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            gc.collect()   # once: torch.cuda.graph() collects per graph, 44 per V4-Flash size
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            memo = {("positions",): buf.positions}
            with torch.cuda.stream(side):
                for i in range(layers + 1):
                    out = _captured(self.piece, (i, buf, memo), self.pool, buf.graphs)
                    if i < layers:
                        buf.befores[i] = out
                        buf.outs[i] = torch.zeros_like(out.inputs.q)
                    else:
                        buf.logits = out
            torch.cuda.current_stream(self.device).wait_stream(side)
            return True
        except Exception as exc:   # noqa: BLE001 — any capture failure: run eagerly, say why
            self.disabled = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            self._warn(f"v4coder: CUDA graphs off, decode runs eagerly ({self.disabled})")
            torch.cuda.synchronize(self.device)
            return False


def _captured(fn: Callable[..., Any], args: tuple, pool: Any,
              graphs: list[torch.cuda.CUDAGraph]) -> Any:
    """``fn(*args)`` captured into a new graph (appended to ``graphs``) on the current stream,
    sharing ``pool``. Only this thread's CUDA calls are checked during the capture (the server's
    other threads make none, but they must not break it). A failure in ``fn`` ends the capture
    and is raised as itself."""
    graph = torch.cuda.CUDAGraph()
    graph.capture_begin(pool=pool, capture_error_mode="thread_local")
    try:
        out = fn(*args)
    except BaseException:
        with contextlib.suppress(Exception):
            graph.capture_end()
        raise
    graph.capture_end()
    graphs.append(graph)
    return out


def unsupported(model: Any) -> str | None:
    """Why ``model``'s decode step cannot be captured, or None. Offloaded experts are fetched by
    the host on demand; expert- and tensor-parallel layers call collectives."""
    from model.offload import OffloadedMoE
    from model.parallel import ExpertParallelMoE

    for module in model.modules():
        if isinstance(module, OffloadedMoE):
            return "the routed experts are offloaded (--offload)"
        if isinstance(module, ExpertParallelMoE) or type(module).__name__ == "_TensorParallelOutput":
            return "the model is split over ranks (--ep/--tp)"
    return None


def _store(static: Any, fresh: Any) -> Any:
    """Copy ``fresh`` (a tensor, or a dataclass / tuple tree of them) into ``static`` (the same
    tree from an earlier step) and return ``static``; the first time, a clone of ``fresh``."""
    if static is None:
        return _tree_map(fresh, torch.clone)
    for dst, src in zip(_leaves(static), _leaves(fresh), strict=True):
        if (dst.shape, dst.dtype) != (src.shape, src.dtype):   # a graph would replay stale
            raise RuntimeError(f"decode graphs: a static buffer is {dst.dtype} "
                               f"{tuple(dst.shape)}, its new value {src.dtype} {tuple(src.shape)}")
        dst.copy_(src)
    return static


def _tree_map(tree: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if tree is None:
        return None
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, tuple):
        return tuple(_tree_map(t, fn) for t in tree)
    if dataclasses.is_dataclass(tree):
        return type(tree)(*(_tree_map(getattr(tree, f.name), fn) for f in dataclasses.fields(tree)))
    raise TypeError(f"decode graphs: cannot hold a {type(tree).__name__} in a static buffer")


def _leaves(tree: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    _tree_map(tree, lambda t: out.append(t) or t)
    return out


__all__ = ["DecodeGraphs", "StepBuffers", "unsupported"]
