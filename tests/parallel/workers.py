"""Rank functions run by ``model.launch.spawn`` in the parallel tests (test-only code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.generate import LoadedModel, load_model
from model.layers.moe import Gate
from model.parallel import (
    ExpertParallelMoE,
    ParallelLayout,
    ParallelTransform,
    init_parallel,
    set_moe_mode,
    teardown,
)


def skew_routing(lm: LoadedModel, n_allowed: int) -> None:
    """Route every token only to experts 0..n_allowed-1 (all owned by rank 0)."""
    for gate in (m for m in lm.model.modules() if isinstance(m, Gate)):
        if gate.hash_routed:
            first = gate.tid2eid[:, :1] % n_allowed
            steps = torch.arange(gate.tid2eid.shape[1])
            gate.tid2eid = (first + steps) % n_allowed
        else:
            bias = gate.bias.clone()
            bias[n_allowed:] = -1e4
            gate.bias = bias


def reference_logits(ckpt: Path, ids: list[int], decode: list[int], skew: int = 0
                     ) -> dict[str, torch.Tensor]:
    lm = load_model(ckpt, progress=False)
    if skew:
        skew_routing(lm, skew)
    return run_case(lm, ids, decode)


def run_case(lm: LoadedModel, ids: list[int], decode: list[int]) -> dict[str, torch.Tensor]:
    """Prefill logits, then decode logits token by token through the same cache."""
    cache = lm.new_cache()
    out = {"prefill": lm.logits(ids, cache)}
    if decode:
        out["decode"] = torch.stack([lm.logits([t], cache)[0] for t in decode])
    return out


def _received_rows(lm: LoadedModel) -> list[int]:
    return [m.last_received_rows for m in lm.model.modules() if isinstance(m, ExpertParallelMoE)]


def ep_rank(rank: int, world: int, init_method: str, layout: ParallelLayout, ckpt: Path,
            cases: dict[str, dict[str, Any]], out_dir: Path) -> None:
    """For each case: {ids, decode, mode ('a2a'|'allreduce'|'auto'), skew, seq (DP attention:
    one (ids, decode) pair per replica)} → out_dir/rank{r}.pt."""
    ctx = init_parallel(layout, rank, init_method=init_method, timeout_s=60)
    try:
        results: dict[str, Any] = {}
        for name, case in cases.items():
            lm = load_model(ckpt, progress=False, transforms=[ParallelTransform(ctx)])
            if case.get("skew"):
                skew_routing(lm, case["skew"])
            set_moe_mode(lm.model, case.get("mode", "auto"))
            ids, decode = case["ids"], case.get("decode", [])
            if layout.dp_attention:
                ids, decode = case["seq"][ctx.replica]
            results[name] = run_case(lm, ids, decode)
            results[name]["received_rows"] = _received_rows(lm)
            results[name]["paths"] = [m.last_path for m in lm.model.modules()
                                      if isinstance(m, ExpertParallelMoE)]
        torch.save(results, out_dir / f"rank{rank}.pt")
    finally:
        teardown()
