"""Launching N ranks: ``torch.multiprocessing`` spawn on one machine (gloo on CPU, NCCL on GPU) or
torchrun (any number of nodes; the rank and rendezvous come from the environment).

    spawn(worker, world=4, args=(...), timeout_s=120)   # worker(rank, world, init_method, *args)

``run_score`` is what ``v4coder model score --ep N [--tp M] [--dp-attention] [--offload BYTES]``
calls: every rank loads its shard, rank 0 writes the logits.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from model.parallel import ParallelLayout, ParallelTransform, init_parallel, teardown


class RankError(RuntimeError):
    """A spawned rank failed; the message is one line naming the rank."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "WORLD_SIZE" in os.environ and "RANK" in os.environ and "MASTER_ADDR" in os.environ)


def _entry(rank: int, fn: Callable[..., Any], world: int, init_method: str, threads: int,
           args: tuple[Any, ...]) -> None:
    torch.set_num_threads(threads)
    if init_method.startswith("tcp://127.0.0.1"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: stay on loopback
    fn(rank, world, init_method, *args)


def spawn(fn: Callable[..., Any], world: int, args: tuple[Any, ...] = (),
          timeout_s: float = 120.0) -> None:
    """Run ``fn(rank, world, init_method, *args)`` in ``world`` fresh processes; raise the first
    rank's exception, or TimeoutError (all ranks killed) after ``timeout_s``."""
    init_method = f"tcp://127.0.0.1:{free_port()}"
    threads = max(1, (os.cpu_count() or 1) // world) if world > 1 else torch.get_num_threads()
    ctx = mp.start_processes(_entry, args=(fn, world, init_method, threads, args), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world} ranks did not finish within {timeout_s:.0f} s")
    except mp.ProcessRaisedException as exc:  # one line: the failing rank's exception
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise RankError(f"rank {exc.error_index} failed: {last}") from exc
    except mp.ProcessExitedException as exc:
        raise RankError(f"rank {exc.error_index} exited with code {exc.exit_code}") from exc
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def rank_device(world: int) -> str:
    """cuda:LOCAL_RANK when GPUs are present, else cpu."""
    if not torch.cuda.is_available():
        return "cpu"
    local = int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count())
    torch.cuda.set_device(local)
    return f"cuda:{local}"


def score_logits(lm: Any, ids: list[int], mode: str) -> torch.Tensor:
    """Logits for every position: one prefill, or token-by-token decode through the cache."""
    if mode == "prefill":
        return lm.logits(ids)
    cache = lm.new_cache()
    return torch.stack([lm.logits([i], cache)[0] for i in ids])


@dataclass(frozen=True, slots=True)
class ScoreJob:
    checkpoint: Path
    ids: tuple[int, ...]
    out: Path
    mode: str = "prefill"
    dtype: str = "float32"
    numerics: str = "dequant"
    offload_bytes: int = 0


def _score_rank(rank: int, world: int, init_method: str | None, layout: ParallelLayout,
                job: ScoreJob) -> None:
    from safetensors.torch import save_file

    from model.generate import load_model
    from model.offload import OffloadTransform

    ctx = init_parallel(layout, rank, init_method=init_method)
    try:
        transforms: list[Any] = [ParallelTransform(ctx)] if world > 1 else []
        if job.offload_bytes:
            transforms.append(OffloadTransform(budget_bytes=job.offload_bytes))
        lm = load_model(job.checkpoint, dtype=job.dtype, device=rank_device(world),
                        numerics=job.numerics, progress=False, transforms=transforms)
        logits = score_logits(lm, list(job.ids), job.mode)
        if rank == 0:
            job.out.parent.mkdir(parents=True, exist_ok=True)
            save_file({"logits": logits.float().cpu().contiguous()}, str(job.out),
                      metadata={"mode": job.mode, "numerics": job.numerics,
                                "tp": str(layout.tp), "ep": str(layout.ep)})
    finally:
        teardown()


def run_score(job: ScoreJob, layout: ParallelLayout, timeout_s: float = 600.0) -> None:
    """Score with ``layout.world`` ranks: in-process under torchrun, else spawned here."""
    if under_torchrun():
        _score_rank(int(os.environ["RANK"]), layout.world, None, layout, job)
    elif layout.world == 1 and not job.offload_bytes:
        raise ValueError("run_score needs --ep/--tp > 1 or --offload")
    elif layout.world == 1:
        _score_rank_local(job)
    else:
        spawn(_score_rank, layout.world, (layout, job), timeout_s=timeout_s)


def _score_rank_local(job: ScoreJob) -> None:
    from safetensors.torch import save_file

    from model.generate import load_model
    from model.offload import OffloadTransform

    lm = load_model(job.checkpoint, dtype=job.dtype, device=rank_device(1), numerics=job.numerics,
                    progress=False, transforms=[OffloadTransform(budget_bytes=job.offload_bytes)])
    logits = score_logits(lm, list(job.ids), job.mode)
    job.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"logits": logits.float().cpu().contiguous()}, str(job.out),
              metadata={"mode": job.mode, "numerics": job.numerics, "offload": str(job.offload_bytes)})


__all__ = ["RankError", "spawn", "free_port", "under_torchrun", "rank_device", "score_logits", "ScoreJob",
           "run_score"]
