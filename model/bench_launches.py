"""``v4coder bench launches``: how much a decode step asks of the host, counted.

    bench_launches() -> dict   # one JSON-able object

One decode token (after a ``prompt_tokens`` prefill) on a toy checkpoint, native numerics, the
Triton kernels (on a CPU in Triton's interpreter, which this command turns on in a child
process): kernel launches per step and per layer — torch ops that launch a kernel plus Triton
launches (model/op_audit.py) — the host syncs in the step, and the ops seen most. On the H200 a
decode step was bound by the host (docs/PERF.md: a kernel's call took 3–8× its GPU time), so
these counts are what a launch-overhead fix must cut; they are a property of the code, the same
on any machine. ``per_layer × 43`` estimates V4-Flash's step. ``graphs``: the same step cut
into CUDA-graph pieces (model/decode_graphs.py, ``--cuda-graphs``): the launches the pieces
capture, and the host launches left per step (the eager cache side, the static-buffer copies and
one replay per piece).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CHILD_FLAG = "--in-child"


def bench_launches(preset: str = "small", prompt_tokens: int = 300, device: str = "cpu",
                   numerics: str = "native", batch: int = 1) -> dict:
    """``batch`` sequences (``prompt_tokens`` + 37·i tokens) decode one token each in the counted
    step."""
    import torch

    from model.decode_graphs import DecodeGraphs
    from model.engine import Engine, EngineConfig
    from model.generate import load_model
    from model.kernels.launch import interpreting
    from model.op_audit import OpAudit
    from model.toy import write_toy_checkpoint

    with tempfile.TemporaryDirectory(prefix="v4coder-bench-") as tmp:
        checkpoint = write_toy_checkpoint(Path(tmp) / "toy", seed=0, preset=preset)
        lm = load_model(checkpoint, dtype="float32", device=device, progress=False,
                        numerics=numerics)
    engine = Engine(lm, EngineConfig(prefix_cache=False))
    gen = torch.Generator().manual_seed(0)
    kernels = os.environ.get("V4CODER_KERNELS", "auto")
    os.environ["V4CODER_KERNELS"] = "reference"   # the prefill is not what is counted
    try:
        # distinct lengths, as a served batch has (sequence i: prompt_tokens + 37·i)
        seqs = [engine.prefill(torch.randint(2, 128000, (prompt_tokens + 37 * i,),
                                             generator=gen).tolist())[0] for i in range(batch)]
    finally:
        os.environ["V4CODER_KERNELS"] = kernels
    with torch.inference_mode():
        engine.forward_batch(seqs, [[5]] * batch)   # first decode step: anything lazy here
        with OpAudit() as audit:
            engine.forward_batch(seqs, [[6]] * batch)
        # the same step cut into graph pieces (model/decode_graphs.py): what a CUDA graph
        # captures, and so what is left for the host
        graphs = DecodeGraphs(lm.model, mode="emulate")
        graphs.step([7] * batch, [seq.cache for seq in seqs])
        with OpAudit() as pieces:
            graphs.run_pieces(batch)
        cache_side = _cache_side_by_layer(engine, lm.model, seqs)
    layers = lm.config.n_layers
    eager = audit.launches() - pieces.launches()
    # with graphs the host launches: the eager cache side (which writes attention's output
    # into the next piece's static buffer), the ids / positions copies, one replay per piece
    with_graphs = eager + 2 + layers + 1
    return {
        "bench": "launches", "device": str(lm.device), "preset": preset, "numerics": numerics,
        "kernels": kernels, "batch": batch,
        "interpreter": interpreting(), "layers": layers,
        "launches_per_step": audit.launches(), "torch_launches": audit.torch_launches(),
        "triton_launches": sum(audit.triton.values()),
        "host_syncs": sum(audit.syncs.values()), "host_sync_ops": dict(audit.syncs),
        "launches_per_layer": round(audit.launches() / layers, 1),
        "v4_flash_estimate_per_step": round(audit.launches() / layers * 43),
        "top": audit.top(),
        "graphs": {"captured_launches": pieces.launches(), "pieces": layers + 1,
                   "captured_per_layer": round(pieces.launches() / layers, 1),
                   "captured_top": pieces.top(40),
                   "host_launches_per_step": with_graphs,
                   "host_launches_per_layer": round(with_graphs / layers, 1),
                   "v4_flash_estimate_per_step": round(with_graphs / layers * 43),
                   "pieces_host_syncs": sum(pieces.syncs.values()),
                   "pieces_host_tensors": pieces.host_tensors()},
        # the eager part per layer: attention's cache side, mean over 4 more steps (a layer
        # of each kind: the last)
        "cache_side_per_layer": [n for _, n in cache_side],
        "cache_side_by_kind": dict(cache_side),
    }


def _cache_side_by_layer(engine: Any, model: Any, seqs: list, steps: int = 4
                         ) -> list[tuple[str, float]]:
    """``steps`` more plain decode steps of ``seqs``, each layer's cache side
    (``Attention.attend``) counted on its own → [(kind: sliding / csa / hca, mean launches per
    step)] in layer order. Four steps: a ratio-4 compressor closes a block in one of them."""
    from model.op_audit import OpAudit

    counts: list[list[int]] = [[] for _ in model.layers]
    kinds = []

    def counted(i: int, attn: Any) -> Any:
        real = attn.attend

        def attend(*args: Any, **kwargs: Any) -> Any:
            with OpAudit() as audit:
                out = real(*args, **kwargs)
            counts[i].append(audit.launches())
            return out
        return attend

    attns = [block.attn for block in model.layers]
    for i, attn in enumerate(attns):
        kinds.append("sliding" if not attn.ratio else "csa" if attn.indexer else "hca")
        attn.attend = counted(i, attn)
    try:
        for _ in range(steps):
            engine.forward_batch(seqs, [[8]] * len(seqs))
    finally:
        for attn in attns:
            del attn.attend
    return [(kind, round(sum(c) / len(c), 2)) for kind, c in zip(kinds, counts, strict=True)]


def main(argv: list[str] | None = None) -> int:
    """``v4coder bench launches [--preset P] [--numerics native|dequant] [--device D]``."""
    import argparse

    argv = list(sys.argv[1:] if argv is None else argv)
    child = CHILD_FLAG in argv
    argv = [a for a in argv if a != CHILD_FLAG]
    p = argparse.ArgumentParser(prog="v4coder bench launches", description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=("tiny", "small", "proportional"), default="small")
    p.add_argument("--prompt", type=int, default=300, dest="prompt_tokens")
    p.add_argument("--numerics", choices=("native", "dequant"), default="native")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=1, help="sequences in the counted decode step")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if min(args.prompt_tokens, args.batch) < 1:
        print("v4coder bench launches: --prompt and --batch must be ≥ 1", file=sys.stderr)
        return 2
    if not child and args.device == "cpu":
        # Triton must run (interpreted) for its launches to count: a fresh process with the
        # interpreter on, since triton reads the variable when it is imported
        env = {**os.environ, "TRITON_INTERPRET": "1", "V4CODER_KERNELS": "triton"}
        cmd = [sys.executable, "-m", "model.bench_launches", *argv, CHILD_FLAG]
        return subprocess.run(cmd, env=env, check=False).returncode
    import torch
    torch.set_num_threads(1)
    try:
        result = bench_launches(args.preset, args.prompt_tokens, args.device, args.numerics,
                                args.batch)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"v4coder bench launches: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
