"""The step protocol of a multi-rank engine (``v4coder serve --ep N [--tp M]``).

Every rank holds its shard of the model (model/parallel.py) and must call ``forward`` the same
number of times, with the same tokens, in the same order. Rank 0 owns the engine (HTTP server,
batching, sampling, stop conditions); before each forward its ``StepLeader`` broadcasts the
step, and ranks 1..N-1 run ``follow``: receive a step, run the same forward through their own
copies of the sequences' caches, repeat, until rank 0 broadcasts STOP.

    header  int64[5]  = (op, slot, start position, payload length, flag)
    RESTORE=2  payload uint8[n] = the cache rank 0 restored from its prefix cache for ``slot``
    HIDDEN=3   payload int64[n] = token ids; a forward that also keeps the residual streams
    DRAFT=4    payload int64[n] = the tokens after positions start..start+n-1: run the MTP block
               over them, continuing its window cache for ``slot`` (flag 1: a new cache)
    SNAPSHOT=5 / ROLLBACK=6     = take / return to a snapshot of ``slot``'s cache
    BATCH=7    payload int64[3k + Σ lengths] = (slot, start, length) of each of the flag = k
               sequences, then their token ids one after another: one ragged forward (every
               plain forward is one, k = 1 for a single sequence)
    RELEASE=8                   = sequence ``slot`` is done: drop its cache
    STOP=0

A slot names one sequence of rank 0's engine (``Sequence_.slot``, never reused). Start position
0 begins a new cache for the slot; any other start must equal the follower's cache length for
it, else the follower stops with an out-of-sync error rather than compute garbage. Prefix reuse:
only rank 0 keeps a prefix cache (memory and disk); when a request matches it, rank 0 sends the
restored cache — the sliding window, compressor state and compressed rows, which every rank
holds identically (experts and attention heads are sharded, the shared-KV cache is not) — and
every rank continues from it. Continuous batching sends one BATCH step per forward (decode
tokens of the running requests + a prefill chunk). MTP speculation (model/mtp.py) runs in step
too: its forwards are HIDDEN steps (every rank keeps the residual streams by position), each
draft a DRAFT step (the MTP block's experts are sharded like the others), and a rejected draft
a ROLLBACK to the SNAPSHOT taken before its verify step.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

STOP, RESTORE, HIDDEN, DRAFT, SNAPSHOT, ROLLBACK, BATCH, RELEASE = 0, 2, 3, 4, 5, 6, 7, 8
_WITH_IDS = (HIDDEN, DRAFT, BATCH)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20,
          "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
          "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_bytes(text: str | int) -> int:
    """'5000' → 5000, '2GB' / '2G' / '2GiB' → 2·2³⁰, '1.5m' → 1.5·2²⁰. ValueError otherwise."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{text!r} is not a byte count (like 5000, 512MB or 2GB)")
        value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < 0:
        raise ValueError(f"a byte count must be ≥ 0, not {value}")
    return value


class StepLeader:
    """Rank 0's engine hook: each method broadcasts one step; ``stop`` ends the followers."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.steps = 0
        self.stopped = False

    def hidden_forward(self, slot: int, cache: Any, ids: Sequence[int]) -> None:
        """Before the MTP speculator's forward, which keeps the residual streams."""
        self._send(HIDDEN, slot, int(cache.length), ids)

    def batch(self, slots: Sequence[int], caches: Sequence[Any], ids: Sequence[Sequence[int]]
              ) -> None:
        """Before a forward of one or more sequences (``Transformer.forward_batch``)."""
        spans = [v for slot, cache, chunk in zip(slots, caches, ids, strict=True)
                 for v in (slot, int(cache.length), len(chunk))]
        self._send(BATCH, 0, 0, spans + [int(t) for chunk in ids for t in chunk], len(slots))

    def draft(self, slot: int, lo: int, next_ids: Sequence[int], fresh: bool) -> None:
        """Before rank 0 runs the MTP block over positions lo.. (``mtp_logits``), continuing
        the block's window cache of ``slot`` (``fresh``: a new one)."""
        self._send(DRAFT, slot, lo, next_ids, int(fresh))

    def snapshot(self, slot: int) -> None:
        self._send(SNAPSHOT, slot, 0, ())

    def rollback(self, slot: int) -> None:
        self._send(ROLLBACK, slot, 0, ())

    def release(self, slot: int) -> None:
        self._send(RELEASE, slot, 0, ())

    def _send(self, op: int, slot: int, start: int, payload: Sequence[int], flag: int = 0
              ) -> None:
        if self.stopped:
            raise RuntimeError("the follower ranks were stopped")
        header = torch.tensor([op, slot, start, len(payload), flag], dtype=torch.long,
                              device=self.device)
        dist.broadcast(header, src=0)
        if op in _WITH_IDS:
            dist.broadcast(torch.tensor(list(payload), dtype=torch.long, device=self.device),
                           src=0)
        self.steps += 1

    def restore(self, slot: int, cache: Any) -> None:
        """Send the cache just restored from the prefix cache; followers continue from it."""
        if self.stopped:
            raise RuntimeError("the follower ranks were stopped")
        blob = torch.frombuffer(bytearray(cache_to_bytes(cache)), dtype=torch.uint8)
        header = torch.tensor([RESTORE, slot, int(cache.length), blob.numel(), 0],
                              dtype=torch.long, device=self.device)
        dist.broadcast(header, src=0)
        dist.broadcast(blob.to(self.device), src=0)
        self.steps += 1

    def stop(self) -> None:
        """Tell every follower to leave its loop (once; the caller serialises with forwards)."""
        if self.stopped:
            return
        self.stopped = True
        dist.broadcast(torch.tensor([STOP, 0, 0, 0, 0], dtype=torch.long, device=self.device),
                       src=0)


class _FollowerState:
    """A follower's copies of rank 0's live sequences, by slot."""

    def __init__(self, lm: Any) -> None:
        self.lm = lm
        self.caches: dict[int, Any] = {}
        self.hidden: dict[int, dict[int, torch.Tensor]] = {}  # slot → position → streams
        self.snaps: dict[int, Any] = {}
        self.mtp: dict[int, Any] = {}     # slot → the MTP block's window cache

    def cache_at(self, slot: int, start: int) -> Any:
        """``slot``'s cache, which must be at ``start`` (0: a new sequence)."""
        if start == 0:
            self.caches[slot] = self.lm.new_cache()
            self.hidden[slot] = {}
        cache = self.caches.get(slot)
        if cache is None or cache.length != start:
            have = None if cache is None else cache.length
            raise RuntimeError(f"out of step with rank 0: sequence {slot} steps at {start}, "
                               f"its cache is at {have}")
        return cache

    def release(self, slot: int) -> None:
        for table in (self.caches, self.hidden, self.snaps, self.mtp):
            table.pop(slot, None)

    def batch(self, k: int, payload: list[int]) -> None:
        spans, ids = payload[:3 * k], payload[3 * k:]
        caches, chunks, at = [], [], 0
        for i in range(k):
            slot, start, n = spans[3 * i: 3 * i + 3]
            caches.append(self.cache_at(slot, start))
            chunks.append(ids[at:at + n])
            at += n
        self.lm.model.forward_batch(chunks, caches)

    def hidden_forward(self, slot: int, start: int, ids: list[int]) -> None:
        from model.mtp import main_forward
        _, h = main_forward(self.lm.model, ids, self.cache_at(slot, start))
        hidden = self.hidden.setdefault(slot, {})
        for i in range(len(ids)):
            hidden[start + i] = h[i]
        keep = start + len(ids) - 2 * self.lm.config.window_size  # as the leader's stepper
        for stale in [p for p in hidden if p < keep]:
            del hidden[stale]

    def draft(self, slot: int, start: int, ids: list[int], fresh: bool) -> None:
        from model.cache import LayerCache
        from model.mtp import mtp_logits
        hidden = self.hidden[slot]
        if fresh:
            self.mtp[slot] = LayerCache()
        mtp_logits(self.lm.model, torch.stack([hidden[p] for p in range(start, start + len(ids))]),
                   ids, start, self.mtp[slot])


def follow(lm: Any) -> int:
    """Ranks 1..N-1: run rank 0's steps in step until STOP. → number of steps run."""
    device = lm.device
    state, steps = _FollowerState(lm), 0
    header = torch.empty(5, dtype=torch.long, device=device)
    with torch.inference_mode():
        while True:
            dist.broadcast(header, src=0)
            op, slot, start, n, flag = header.tolist()
            if op == STOP:
                return steps
            steps += 1
            if op == SNAPSHOT:
                from model.mtp import snapshot
                state.snaps[slot] = snapshot(state.caches[slot])
            elif op == ROLLBACK:
                state.caches[slot] = state.snaps.pop(slot)
            elif op == RELEASE:
                state.release(slot)
            elif op == RESTORE:
                blob = torch.empty(n, dtype=torch.uint8, device=device)
                dist.broadcast(blob, src=0)
                cache = cache_from_bytes(blob.cpu().numpy().tobytes(), device)
                if cache.length != start:
                    raise RuntimeError(f"restored cache has {cache.length} tokens, not {start}")
                state.caches[slot], state.hidden[slot] = cache, {}
            else:
                payload = torch.empty(n, dtype=torch.long, device=device)
                dist.broadcast(payload, src=0)
                ids = payload.tolist()
                if op == BATCH:
                    state.batch(flag, ids)
                elif op == DRAFT:
                    state.draft(slot, start, ids, bool(flag))
                else:   # HIDDEN
                    state.hidden_forward(slot, start, ids)


# -- the sequence cache on the wire ----------------------------------------------------------------
def _plain(value: Any) -> Any:
    """Dataclasses (model.* only) → tagged dicts of tensors / ints / None; ``tap`` dropped."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        fields = {f.name: _plain(getattr(value, f.name))
                  for f in dataclasses.fields(value) if f.name != "tap"}
        return {"__class__": f"{cls.__module__}:{cls.__qualname__}", **fields}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return value


def _typed(value: Any, device: torch.device) -> Any:
    if isinstance(value, dict) and "__class__" in value:
        module, _, name = value["__class__"].partition(":")
        if not module.startswith("model."):
            raise RuntimeError(f"unexpected class {value['__class__']!r} in a restored cache")
        cls = getattr(importlib.import_module(module), name)
        return cls(**{k: _typed(v, device) for k, v in value.items() if k != "__class__"})
    if isinstance(value, list):
        return [_typed(v, device) for v in value]
    if isinstance(value, torch.Tensor):
        return value.to(device)
    return value


def cache_to_bytes(cache: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(_plain(cache), buf)
    return buf.getvalue()


def cache_from_bytes(data: bytes, device: torch.device | str = "cpu") -> Any:
    return _typed(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True),
                  torch.device(device))


# -- launching ---------------------------------------------------------------------------------
def _follower_entry(index: int, fn: Callable[..., Any], world: int, init_method: str,
                    threads: int, args: tuple[Any, ...]) -> None:
    from model.launch import _entry
    _entry(index + 1, fn, world, init_method, threads, args)


class Followers:
    """Ranks 1..world-1 spawned next to this process (rank 0): ``fn(rank, world, init_method,
    *args)`` each; ``join`` waits for them, then kills any still alive."""

    def __init__(self, fn: Callable[..., Any], world: int, args: tuple[Any, ...] = ()) -> None:
        import torch.multiprocessing as mp

        from model.launch import free_port
        self.world = world
        self.init_method = f"tcp://127.0.0.1:{free_port()}"
        self.threads = max(1, (os.cpu_count() or 1) // world)
        self.ctx = mp.start_processes(
            _follower_entry, args=(fn, world, self.init_method, self.threads, args),
            nprocs=world - 1, join=False, start_method="spawn")

    def alive(self) -> int:
        return sum(p.is_alive() for p in self.ctx.processes)

    def join(self, timeout_s: float = 30.0) -> bool:
        """True when every follower exited with code 0 within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        for proc in self.ctx.processes:
            proc.join(max(0.0, deadline - time.monotonic()))
        clean = all(not p.is_alive() and p.exitcode == 0 for p in self.ctx.processes)
        for proc in self.ctx.processes:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        return clean


def follower_main(rank: int, world: int, init_method: str | None, layout: Any,
                  load: dict[str, Any], offload_bytes: int, timeout_s: float) -> None:
    """A follower rank: join the group, load its shard (same transforms as rank 0), follow."""
    from model.generate import load_model
    from model.launch import rank_device
    from model.parallel import init_parallel, teardown

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: rank 0 stops us
    ctx = init_parallel(layout, rank, init_method=init_method, timeout_s=timeout_s)
    try:
        lm = load_model(load["checkpoint"], dtype=load["dtype"], device=rank_device(world),
                        numerics=load.get("numerics", "dequant"), progress=False,
                        with_mtp=load.get("with_mtp", False),
                        transforms=rank_transforms(ctx, offload_bytes))
        follow(lm)
    except Exception as exc:
        print(f"v4coder serve: rank {rank}: {exc}", file=sys.stderr, flush=True)
        raise
    finally:
        teardown()


def rank_transforms(ctx: Any, offload_bytes: int) -> list[Any]:
    from model.offload import OffloadTransform
    from model.parallel import ParallelTransform

    out: list[Any] = [ParallelTransform(ctx)] if ctx is not None and ctx.world > 1 else []
    if offload_bytes:
        out.append(OffloadTransform(budget_bytes=offload_bytes))
    return out


__all__ = ["StepLeader", "follow", "Followers", "follower_main", "rank_transforms",
           "parse_bytes", "BATCH", "STOP"]
