"""Launch-option sweeps on a GPU (a device-session script, not a test): one JSON row per
(case, options) with the CUDA-graph time, GB/s, fractions of the H200's peaks and the error
against the torch reference. Families:

- ``moe``: the FP4 MoE decode GEMV (6 experts of V4-Flash, batch 1: block_n, block_k,
  num_warps, split_k; on FMA units and on tensor cores, ``mma``) and the grouped prefill (2048
  tokens over 256 experts: block_m; with the tensor-core decoder, its group_n × group_k tile);
- ``attn_decode``: batch-1 sparse attention at 128K context (CSA, bf16 and FP8 rows: block_h,
  dv_parts, num_warps, combine, n_splits; HCA, bf16 rows: dv_parts, combine, n_splits);
- ``attn_prefill``: a 1,024-query prefill chunk (CSA, bf16 rows, 64-head tiles: dv_parts,
  block_n, num_warps);
- ``attn_anatomy``: where a batch-1 decode call's time goes — the compressed rows a query
  reads varied at fixed options, then a straight-line fit per options (``fit`` rows: what the
  call costs before its first row, and what a row costs).

From the repository root (the first line compiles every variant in 8 processes side by side
into Triton's cache, then the timed run loads them):

    for i in 0 1 2 3 4 5 6 7; do python3 docs/perf/sweep.py moe --warm $i/8 & done; wait
    python3 docs/perf/sweep.py moe > sweep_moe.jsonl
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch

from model import bench_kernels as bk
from model.kernels.choices import one_line

Variant = tuple[str, Callable[[], bk.Case], dict]


def moe() -> list[Variant]:
    def case(name: str, tokens: int, tiles: dict) -> Callable[[], bk.Case]:
        return lambda: bk._moe_case(name, tokens, "cuda", torch.bfloat16, **tiles)
    decode = [dict(block_n=n, block_k=k, num_warps=w, split_k=s)
              for n, k, w, s in itertools.product((16, 32, 64), (64, 128, 256), (2, 4, 8),
                                                  (1, 2, 4))
              if n * k // 2 <= 8192 and not (n == 64 and w == 2)]
    # the GEMVs on tensor cores (gemm.load_fp4_mma_tile): weight rows × k a step, warps, splits
    decode += [dict(mma=True, block_n=n, block_k=k, num_warps=w, split_k=s)
               for (n, k), w, s in itertools.product(((64, 128), (128, 64), (128, 128)), (4, 8),
                                                     (4, 8, 16))]
    prefill = [dict(block_m=m) for m in (16, 32, 64, 128)] + [
        dict(block_m=m, mma=True, group_n=n, group_k=k)
        for m, n, k in itertools.product((16, 32, 64), (32, 64, 128), (64, 128))
        if m * n * k <= 64 * 64 * 128]
    return ([("moe_fp4_decode", case("moe_fp4_decode", 1, t), t) for t in decode]
            + [("moe_fp4_prefill_2048", case("moe_fp4_prefill_2048", 2048, t), t)
               for t in prefill])


def attn_decode() -> list[Variant]:
    ctx = bk.CONTEXT
    shapes = [(16, 1, 4), (16, 2, 4), (16, 4, 4), (16, 8, 4)] + [
        (h, dv, w) for h, dv, w in itertools.product((32, 64), (2, 4, 8), (4, 8))
        if not (h == 64 and dv == 2)]
    out = []
    for fp8, (h, dv, w), combine, splits in itertools.product(
            (False, True), shapes, ("fused", "kernel"), (4, 8, 16)):
        name = "sparse_attn_decode_csa" + ("_fp8" if fp8 else "")
        opts = dict(block_h=h, dv_parts=dv, num_warps=w, combine=combine, n_splits=splits)
        out.append((name, (lambda n=name, f=fp8, o=opts: bk._attn_case(
            n, 1, ctx // 4, bk.TOPK, f, "cuda", torch.bfloat16, "", **o)), opts))
    # HCA: every one of the 1,024 compressed rows at 128K (1,152 slots with the window)
    for dv, combine, splits in itertools.product((1, 4), ("fused", "kernel"), (5, 9, 18, 36)):
        opts = dict(dv_parts=dv, combine=combine, n_splits=splits)
        out.append(("sparse_attn_decode_hca", (lambda o=opts: bk._attn_case(
            "sparse_attn_decode_hca", 1, ctx // 128, ctx // 128, False, "cuda", torch.bfloat16,
            "", **o)), opts))
    return out


def attn_prefill() -> list[Variant]:
    """Prefill sparse attention (the bench's 1,024-query chunk at 128K, CSA, bf16 rows):
    64-head tiles with the output columns whole or in 2 / 4 slices, 16 / 32 / 64 rows a step,
    4 / 8 warps, and for 2 slices each step's next scores issued before its softmax (``ahead``;
    a shape asking for more shared memory than a block may have is an error row)."""
    out = []
    shapes = [(dv, n, w, False) for dv, n, w in itertools.product((1, 2, 4), (16, 32, 64), (4, 8))]
    shapes += [(2, n, w, True) for n, w in itertools.product((16, 32, 64), (4, 8))]
    for dv, n, w, ahead in shapes:
        opts = dict(block_h=64, dv_parts=dv, block_n=n, num_warps=w)
        if ahead:
            opts["ahead"] = True
        out.append(("sparse_attn_prefill_csa", (lambda o=opts: bk._attn_case(
            "sparse_attn_prefill_csa", 1024, bk.CONTEXT // 4, bk.TOPK, False, "cuda",
            torch.bfloat16, "", **o)), opts))
    return out


ANATOMY_ROWS = (0, 128, 256, 512, 1024)   # compressed rows a query reads (+ its 128 window rows)


def attn_anatomy() -> list[Variant]:
    """Batch-1 decode attention at 128K (the bench's case: 64 heads, 128 window rows) over 0 to
    1,024 compressed rows, for bf16 rows, FP8 rows and FP8 rows by placement (``fp8_pairs``):
    in one split (no merge), and in 8 splits merged by the forward's last program or by the
    combine kernel. Run 3 timed the default call at 19–34 µs for under 1 MB; the fit of each
    (format, options) line says how much of that is per row and how much is not."""
    out = []
    formats = (("", False, {}), ("_fp8", True, {}), ("_fp8_pairs", True, {"fp8_pairs": True}))
    settings = ({"n_splits": 1}, {"n_splits": 8, "combine": "fused"},
                {"n_splits": 8, "combine": "kernel"})
    for (suffix, fp8, extra), setting, k in itertools.product(formats, settings, ANATOMY_ROWS):
        name = f"sparse_attn_decode_csa{suffix}_k{k}"
        opts = {**setting, **extra}
        out.append((name, (lambda n=name, f=fp8, k=k, o=opts: bk._attn_case(
            n, 1, bk.CONTEXT // 4, k, f, "cuda", torch.bfloat16, "", **o)), opts))
    return out


def fit(rows: list[dict]) -> list[dict]:
    """Least-squares lines through the timed ``attn_anatomy`` rows: one per case name (without
    its ``_k`` suffix) and options, graph time against the rows a query reads → µs before the
    first row (``fixed_us``) and µs a row (``per_row_us``), with the worst residual."""
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for r in rows:
        if "graph_ms" in r:
            key = (r["case"].rsplit("_k", 1)[0], json.dumps(r["options"], sort_keys=True))
            groups.setdefault(key, []).append((r["shape"]["rows_per_query"], r["graph_ms"] * 1e3))
    out = []
    for (case, options), points in groups.items():
        if len({x for x, _ in points}) < 2:
            continue
        slope, fixed = statistics.linear_regression(*zip(*points, strict=True))
        out.append({"fit": case, "options": json.loads(options), "points": len(points),
                    "fixed_us": round(fixed, 2), "per_row_us": round(slope, 5),
                    "worst_residual_us": round(max(abs(y - fixed - slope * x)
                                                   for x, y in points), 2)})
    return out


FAMILIES = {"moe": moe, "attn_decode": attn_decode, "attn_prefill": attn_prefill,
            "attn_anatomy": attn_anatomy}


def row(name: str, build: Callable[[], bk.Case], options: dict) -> dict:
    out: dict = {"case": name, "options": options}
    try:
        case = build()
        out["shape"] = case.shape
        err = bk._error(bk._first(case.triton()), bk._first(case.reference()))
        seconds = bk._time_graph(case.triton)
    except Exception as e:  # a row per failure; the sweep goes on
        return {**out, "error": one_line(e)[:200]}
    return {**out, "graph_ms": seconds * 1e3, "gbps": case.bytes / seconds / 1e9,
            **bk._fractions(case, seconds, bk.PEAKS["H200"]), **err}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in FAMILIES:
        print(f"usage: sweep.py {{{','.join(FAMILIES)}}} [--warm I/N]", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    todo = FAMILIES[argv[0]]()
    if argv[1:2] == ["--warm"]:   # compile only: this process's share of the variants
        shard, shards = (int(x) for x in argv[2].split("/"))
        for name, build, options in todo[shard::shards]:
            try:
                build().triton()
            except Exception as e:
                print(f"sweep: {name} {options}: {one_line(e)}", file=sys.stderr)
        torch.cuda.synchronize()
        return 0
    rows = []
    for variant in todo:
        rows.append(row(*variant))
        print(json.dumps(rows[-1]), flush=True)
    if argv[0] == "attn_anatomy":
        for line in fit(rows):
            print(json.dumps(line), flush=True)
    print(f"sweep {argv[0]}: {len(todo)} rows in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
