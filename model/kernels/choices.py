"""Launch choices per GPU, measured rather than guessed.

Some kernels have variants whose merit only a GPU can tell: sparse attention's 64-head tile
(Hopper's warp-group MMA, the output columns split so the accumulator fits in registers)
against its 16-head default, the indexer's decode paths, the MoE grouped GEMM's 64-row expert
tiles. Each variant is a ``v4coder bench kernels`` row. ``choose(rows)`` reads one GPU run's
rows and keeps, for every decision whose rows are all there and correct, the fastest variant
(``graph_ms`` where the row has it — the kernels' own time, as the engine's decode graphs run
them — else ``time_ms``; a row whose call could not be captured in a graph is not correct).
``v4coder bench choices --from ROWS.jsonl --out FILE`` writes that table; ``v4coder bench
choices --measure`` runs only the variants' rows, on this machine's GPU at full V4-Flash size
(about a minute), and writes the table to the user's cache.
model/kernels/choices/<gpu>.json is the committed table for a GPU model
(``torch.cuda.get_device_name``, lower-cased, non-alphanumerics as ``-``).

At run time ``options(decision, device)`` gives the chosen launch options, ``{}`` (the
defaults) without a table for the device. The table, in this order: ``V4CODER_KERNEL_CHOICES``
``=off`` ignores every table, ``=FILE`` uses that table on any device (tests, trying a table
out); else the committed table for the GPU model; else the table measured on this machine for
it (``$V4CODER_CACHE_DIR/kernel-choices/<gpu>.json``, the cache directory ~/.cache/v4coder by
default; ``v4coder serve --autotune`` measures it when neither table exists), used only when it
was measured with the running Triton version (another version's is ignored, in one line). A
table can only pick among the variants defined here, never invent launch options; a malformed
one is reported in one line and ignored.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CHOICES_ENV = "V4CODER_KERNEL_CHOICES"
CACHE_ENV = "V4CODER_CACHE_DIR"    # the user's cache (agent/context/cache.py): ~/.cache/v4coder
TABLE_DIR = Path(__file__).with_name("choices")
MAX_REL_ERR = 0.02      # a variant farther than this from its reference is never chosen
MIN_RECALL = 0.99       # indexer variants: top-k recall against the reference


@dataclass(frozen=True, slots=True)
class Variant:
    row: str                  # the ``bench kernels`` row that measures it
    options: dict[str, Any]   # the Triton wrapper's keyword arguments
    # more rows whose times add to ``row``'s: a decision that holds for every kernel (``pdl``)
    # is measured on several kinds of launch chain
    also: tuple[str, ...] = ()

    @property
    def rows(self) -> tuple[str, ...]:
        return (self.row, *self.also)


@dataclass(frozen=True, slots=True)
class Decision:
    name: str
    when: str                     # where the runtime asks (ops.py)
    variants: tuple[Variant, ...]  # the first is the default


DECISIONS = {d.name: d for d in (
    Decision("sparse_attn_prefill", "sparse attention, float KV rows, more than one query",
             (Variant("sparse_attn_prefill_csa", {}),
              Variant("sparse_attn_prefill_csa_h64", {"block_h": 64, "dv_parts": 2}),
              Variant("sparse_attn_prefill_csa_h64_w8",
                      {"block_h": 64, "dv_parts": 2, "num_warps": 8}),
              Variant("sparse_attn_prefill_csa_h64_n32_w8",
                      {"block_h": 64, "dv_parts": 2, "block_n": 32, "num_warps": 8}),
              Variant("sparse_attn_prefill_csa_h64_dv4_n64_w8",
                      {"block_h": 64, "dv_parts": 4, "block_n": 64, "num_warps": 8}),
              Variant("sparse_attn_prefill_csa_h64_dv1_n16_w8",
                      {"block_h": 64, "dv_parts": 1, "num_warps": 8}),
              Variant("sparse_attn_prefill_csa_h64_dv1_n32_w8",
                      {"block_h": 64, "dv_parts": 1, "block_n": 32, "num_warps": 8}),
              Variant("sparse_attn_prefill_csa_h64_ahead",
                      {"block_h": 64, "dv_parts": 2, "ahead": True}),
              Variant("sparse_attn_prefill_csa_h64_dv1_n64_w8_rows",
                      {"block_h": 64, "dv_parts": 1, "block_n": 64, "num_warps": 8,
                       "rows_m": True}))),
    Decision("sparse_attn_prefill_fp8", "sparse attention, FP8 KV rows, more than one query",
             (Variant("sparse_attn_prefill_csa_fp8", {}),
              Variant("sparse_attn_prefill_csa_fp8_h64", {"block_h": 64, "dv_parts": 4}),
              Variant("sparse_attn_prefill_csa_fp8_w8", {"num_warps": 8}),
              Variant("sparse_attn_prefill_csa_fp8_pairs", {"fp8_pairs": True}),
              Variant("sparse_attn_prefill_csa_fp8_h64_pairs",
                      {"block_h": 64, "dv_parts": 4, "fp8_pairs": True}),
              Variant("sparse_attn_prefill_csa_fp8_pairs_qk4",
                      {"fp8_pairs": True, "qk_split": 4}),
              Variant("sparse_attn_prefill_csa_fp8_upconvert",
                      {"upconvert": True, "block_h": 64, "dv_parts": 2}),
              Variant("sparse_attn_prefill_csa_fp8_upconvert_ahead",
                      {"upconvert": True, "block_h": 64, "dv_parts": 2, "ahead": True}))),
    Decision("sparse_attn_decode", "sparse attention, float KV rows, one query",
             (Variant("sparse_attn_decode_csa", {}),
              Variant("sparse_attn_decode_csa_combine_kernel", {"combine": "kernel"}),
              Variant("sparse_attn_decode_csa_dv4", {"dv_parts": 4}),
              Variant("sparse_attn_decode_csa_dv4_s8", {"dv_parts": 4, "n_splits": 8}))),
    Decision("sparse_attn_decode_fp8", "sparse attention, FP8 KV rows, one query",
             (Variant("sparse_attn_decode_csa_fp8", {}),
              Variant("sparse_attn_decode_csa_fp8_combine_kernel", {"combine": "kernel"}),
              Variant("sparse_attn_decode_csa_fp8_dv4", {"dv_parts": 4}),
              Variant("sparse_attn_decode_csa_fp8_dv4_s8", {"dv_parts": 4, "n_splits": 8}),
              Variant("sparse_attn_decode_csa_fp8_pairs", {"fp8_pairs": True}),
              Variant("sparse_attn_decode_csa_fp8_combine_kernel_pairs",
                      {"combine": "kernel", "fp8_pairs": True}),
              Variant("sparse_attn_decode_csa_fp8_dv4_s8_pairs",
                      {"dv_parts": 4, "n_splits": 8, "fp8_pairs": True}),
              Variant("sparse_attn_decode_csa_fp8_pairs_qk4",
                      {"fp8_pairs": True, "qk_split": 4}),
              Variant("sparse_attn_decode_csa_fp8_dv4_s8_pairs_qk4",
                      {"dv_parts": 4, "n_splits": 8, "fp8_pairs": True, "qk_split": 4}))),
    Decision("indexer_decode", "indexer top-k, float keys, one query",
             (Variant("indexer_topk_decode", {}),
              Variant("indexer_topk_decode_merge", {"path": "merge"}),
              Variant("indexer_topk_decode_passes", {"select": "fused_passes"}),
              Variant("indexer_topk_decode_parallel", {"select": "parallel"}),
              Variant("indexer_topk_decode_select_kernel", {"select": "triton"}),
              Variant("indexer_topk_decode_torch_select", {"select": "torch"}))),
    Decision("indexer_decode_fp4", "indexer top-k, FP4 keys, one query",
             (Variant("indexer_topk_decode_fp4", {}),
              Variant("indexer_topk_decode_fp4_merge", {"path": "merge"}),
              Variant("indexer_topk_decode_fp4_passes", {"select": "fused_passes"}),
              Variant("indexer_topk_decode_fp4_parallel", {"select": "parallel"}),
              Variant("indexer_topk_decode_fp4_select_kernel", {"select": "triton"}),
              Variant("indexer_topk_decode_fp4_torch_select", {"select": "torch"}),
              Variant("indexer_topk_decode_fp4_pairs", {"pairs": True}),
              Variant("indexer_topk_decode_fp4_parallel_pairs",
                      {"select": "parallel", "pairs": True}))),
    # a prefill's pick: counted by the score programs from 4,096 keys a row on (session 22),
    # by four passes over the row, or in a kernel of its own (a program a query)
    Decision("indexer_prefill", "indexer top-k, float keys, more than one query",
             (Variant("indexer_topk_prefill", {}),
              Variant("indexer_topk_prefill_passes", {"select": "fused_passes"}),
              Variant("indexer_topk_prefill_select_kernel", {"select": "triton"}))),
    Decision("indexer_prefill_fp4", "indexer top-k, FP4 keys, more than one query",
             (Variant("indexer_topk_prefill_fp4", {}),
              Variant("indexer_topk_prefill_fp4_passes", {"select": "fused_passes"}),
              Variant("indexer_topk_prefill_fp4_select_kernel", {"select": "triton"}),
              Variant("indexer_topk_prefill_fp4_pairs", {"pairs": True}),
              Variant("indexer_topk_prefill_fp4_upconvert", {"upconvert": True}))),
    Decision("fp4_gemm_decode", "an FP4 expert weight against at most 16 rows (fp4_linear)",
             (Variant("fp4_expert_gemm_w13_decode", {}),
              Variant("fp4_expert_gemm_w13_decode_mma", {"mma": True}),
              Variant("fp4_expert_gemm_w13_decode_target", {"rounds": False}),
              Variant("fp4_expert_gemm_w13_decode_mma_target", {"mma": True, "rounds": False}))),
    Decision("gemv_decode_fp8", "a decode GEMV over an FP8 weight as mapped (dequant numerics)",
             (Variant("gemv_fp8_wq_b_decode", {}),
              Variant("gemv_fp8_wq_b_decode_mma", {"mma": True}),
              Variant("gemv_fp8_wq_b_decode_ahead", {"ahead": True}),
              Variant("gemv_fp8_wq_b_decode_wide", {"wide": True}))),
    # the FP8 GEMM's K over more programs where a decode's output tiles are few (wo_b: 128
    # tiles of 64 K blocks each), and its decode tile's rows; measured on wo_b (summing wo_a's
    # splits), the shared expert's down projection and the query up-projections, whose 1,280
    # tiles of 32 rows fill an H200's SMs 1.2 times (64-row tiles by default since session 19);
    # since session 20 the K splits from the compiled kernel's residency (``rounds=False``:
    # about 1,024 programs) and a one-row decode's activation side on one row (``one_row``)
    Decision("fp8_gemm_decode", "an FP8 GEMM of at most 16 rows (native numerics)",
             (Variant("fp8_gemm_wo_b_splitk_decode", {},
                      ("fp8_gemm_shared_w2_swiglu_decode", "fp8_gemm_q_proj_norm_decode")),
              Variant("fp8_gemm_wo_b_splitk_decode_whole_k", {"k_splits": False},
                      ("fp8_gemm_shared_w2_swiglu_decode_whole_k",
                       "fp8_gemm_q_proj_norm_decode")),
              Variant("fp8_gemm_wo_b_splitk_decode", {"block_n": 32},
                      ("fp8_gemm_shared_w2_swiglu_decode", "fp8_gemm_q_proj_norm_decode_n32")),
              Variant("fp8_gemm_wo_b_splitk_decode_target", {"rounds": False},
                      ("fp8_gemm_shared_w2_swiglu_decode_target",
                       "fp8_gemm_q_proj_norm_decode")),
              Variant("fp8_gemm_wo_b_splitk_decode_16_rows", {"one_row": False},
                      ("fp8_gemm_shared_w2_swiglu_decode_16_rows",
                       "fp8_gemm_q_proj_norm_decode_16_rows")))),
    # the mHC pre's finish (split, Sinkhorn, collapse) by the token's last partial program, or
    # by a kernel of its own; measured on the pre and on the post fused with the next pre
    Decision("mhc_decode", "mHC pre (and post → pre), at most mhc.DECODE_MAX_TOKENS tokens",
             (Variant("mhc_pre_decode", {}, ("mhc_post_pre_decode",)),
              Variant("mhc_pre_decode_finish_kernel", {"finish": "kernel"},
                      ("mhc_post_pre_decode_finish_kernel",)))),
    Decision("router_decode", "the MoE router, fewer than router.SPLIT_BELOW_TOKENS tokens",
             (Variant("router_decode", {}),
              Variant("router_decode_fused", {"split": False}))),
    # measured on both weights it serves: the LM head (4,040 tiles, never split) and wo_a
    # (32 tiles split over K: where the residency's rule and the old one differ)
    Decision("gemv_decode_bf16", "a decode GEMV over a bf16 weight (the LM head, wo_a)",
             (Variant("gemv_bf16_lm_head_decode", {}, ("gemv_bf16_wo_a_decode",)),
              Variant("gemv_bf16_lm_head_decode_mma", {"mma": True},
                      ("gemv_bf16_wo_a_decode_mma",)),
              Variant("gemv_bf16_lm_head_decode_ahead", {"ahead": True},
                      ("gemv_bf16_wo_a_decode_ahead",)),
              Variant("gemv_bf16_lm_head_decode_wide", {"wide": True},
                      ("gemv_bf16_wo_a_decode_wide",)),
              Variant("gemv_bf16_lm_head_decode_target", {"rounds": False},
                      ("gemv_bf16_wo_a_decode_target",)))),
    Decision("moe_prefill", "routed experts, at least MOE_PREFILL_TOKENS tokens (grouped GEMM)",
             (Variant("moe_fp4_prefill_2048", {}),
              Variant("moe_fp4_prefill_m64", {"block_m": 64}),
              Variant("moe_fp4_prefill_mma", {"mma": True}),
              Variant("moe_fp4_prefill_m64_mma", {"block_m": 64, "mma": True}),
              Variant("moe_fp4_prefill_mma_n128", {"mma": True, "group_n": 128}),
              Variant("moe_fp4_prefill_m64_mma_n64",
                      {"block_m": 64, "mma": True, "group_n": 64}))),
    # the decode GEMV's 4-warp 32-row tile holds 198–227 registers a thread on triton 3.6
    # (occupancy 0.125); these compile spill-free at 2–4× the occupancy (bench compile)
    Decision("moe_decode", "routed experts, a decode step (per-pair GEMV), dequant numerics",
             (Variant("moe_fp4_decode", {}),
              Variant("moe_fp4_decode_n16_w8", {"block_n": 16, "num_warps": 8}),
              Variant("moe_fp4_decode_k64_w8", {"block_k": 64, "num_warps": 8}),
              Variant("moe_fp4_decode_ahead", {"ahead": True}),
              Variant("moe_fp4_decode_mma", {"mma": True, "block_n": 128}),
              Variant("moe_fp4_decode_mma_n64", {"mma": True, "block_n": 64}),
              Variant("moe_fp4_decode_finish_kernel", {"finish": "kernel"}),
              Variant("moe_fp4_decode_target", {"rounds": False}))),
    # every launch (sm_90 on): each kernel may start while the one before it finishes, and a
    # weight-streaming kernel asks L2 for its weight meanwhile (launch.pdl); measured on the
    # sum of three chains a decode step runs: target 1's pair (per CSA layer), attention and
    # its output projection's two weight streams (every layer), 32 small kernels in a row
    Decision("pdl", "every kernel launch on a GPU that has programmatic dependent launch",
             (Variant("csa_decode_pair", {}, ("attn_output_decode", "norm_chain_decode")),
              Variant("csa_decode_pair_pdl", {"pdl": True},
                      ("attn_output_decode_pdl", "norm_chain_decode_pdl")))),
    Decision("moe_decode_native", "routed experts, a decode step (per-pair GEMV quantising x)",
             (Variant("moe_fp4_decode_native", {}),
              Variant("moe_fp4_decode_native_n16_w8", {"block_n": 16, "num_warps": 8}),
              Variant("moe_fp4_decode_native_ahead", {"ahead": True}),
              Variant("moe_fp4_decode_native_mma", {"mma": True, "block_n": 128}),
              Variant("moe_fp4_decode_native_finish_kernel", {"finish": "kernel"}),
              Variant("moe_fp4_decode_native_target", {"rounds": False}))),
)}
MOE_PREFILL_TOKENS = 1024


class ChoicesError(ValueError):
    """Rows or a table that cannot give choices (one line for the CLI)."""


# -- choosing, from one GPU run's rows ---------------------------------------------------------
def choose(rows: Iterable[dict], source: str = "") -> dict:
    """``bench kernels`` rows (one GPU run) → the table: per decision the fastest correct
    variant, with the times it was chosen on. Decisions with a missing or incorrect row are
    left out (their defaults stay)."""
    by_name = {r.get("kernel", r.get("name")): r for r in rows}
    gpu = [r for r in by_name.values() if r.get("device") == "cuda"]
    if not gpu:
        raise ChoicesError("no GPU rows: choices come from `bench kernels` on a GPU")
    table: dict[str, Any] = {"device_name": gpu[0].get("device_name", ""), "source": source,
                             "choices": {}, "left_out": {}}
    for decision in DECISIONS.values():
        timed = []
        for variant in decision.variants:
            why = _unusable_rows(variant, by_name)
            if why:
                table["left_out"][decision.name] = why
                break
            timed.append((sum(_ms(by_name[name]) for name in variant.rows), variant))
        else:
            best_ms, best = min(timed, key=lambda tv: tv[0])
            default_ms = timed[0][0]
            table["choices"][decision.name] = {
                "options": best.options, "row": best.row, "ms": round(best_ms, 5),
                "default_ms": round(default_ms, 5),
                "speedup_vs_default": round(default_ms / best_ms, 3)}
    return table


def variant_rows() -> tuple[str, ...]:
    """The ``bench kernels`` cases the decisions' variants name (what ``--measure`` runs), each
    once (variants of a decision may share rows: ``fp8_gemm_decode``'s)."""
    return tuple(dict.fromkeys(name for d in DECISIONS.values() for v in d.variants
                               for name in v.rows))


def measure(device: torch.device | str = "cuda") -> dict:
    """This GPU's table: the variants' ``bench kernels`` cases run on ``device`` (full V4-Flash
    size, the bench's own rows), chosen among, with the versions they were measured with."""
    _require_gpu()
    from model import bench_kernels

    with torch.cuda.device(device):
        rows = bench_kernels.bench_kernels(True, names=variant_rows())
    table = choose(rows, source="v4coder bench choices --measure")
    table["measured_with"] = versions()
    return table


def _require_gpu() -> None:
    if not torch.cuda.is_available():
        raise ChoicesError("choices are measured on a GPU and there is no CUDA device here "
                           "(--from ROWS.jsonl reads the rows of a GPU run)")


def versions() -> dict[str, str]:
    """The Triton and torch versions of this process ("" = no Triton)."""
    try:
        import triton
        tri = triton.__version__
    except ImportError:
        tri = ""
    return {"triton": tri, "torch": str(torch.__version__)}


def write_table(table: dict, path: Path) -> None:
    """Write ``table`` to ``path`` whole (a reader never sees half a table)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(table, indent=1) + "\n")
    os.replace(part, path)


def _ms(row: dict) -> float:
    return float(row["graph_ms"] if row.get("graph_ms") else row["time_ms"])


def _unusable_rows(variant: Variant, by_name: dict[str, dict]) -> str:
    """Why the first of a variant's rows that cannot be used cannot ("" when all can)."""
    for name in variant.rows:
        why = _unusable(by_name.get(name))
        if why:
            return f"{name}: {why}"
    return ""


def _unusable(row: dict | None) -> str:
    if row is None:
        return "no row"
    if row.get("device") != "cuda" or "time_ms" not in row:
        return "not timed on a GPU"
    if "topk_recall" in row and row["topk_recall"] < MIN_RECALL:
        return f"recall {row['topk_recall']} < {MIN_RECALL}"
    if row.get("max_rel_err", 0.0) > MAX_REL_ERR:
        return f"relative error {row['max_rel_err']} > {MAX_REL_ERR}"
    if row.get("graph_error"):   # the engine's decode graphs could not run it
        return f"not capturable in a CUDA graph ({row['graph_error']})"
    return ""


# -- using them, at run time ---------------------------------------------------------------------
_tables: dict[str, dict[str, dict]] = {}   # "setting|device" → decision → options


def device_slug(name: str) -> str:
    """'NVIDIA H200' → 'nvidia-h200' (the table's file name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def committed_path(device_name: str) -> Path:
    """The table committed for a GPU model (model/kernels/choices/<gpu>.json)."""
    return TABLE_DIR / f"{device_slug(device_name)}.json"


def cached_path(device_name: str) -> Path:
    """The table measured on this machine for a GPU model (the user's cache)."""
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "v4coder"
    return Path(base) / "kernel-choices" / f"{device_slug(device_name)}.json"


def has_table(device_name: str) -> bool:
    """Whether the runtime has a table for this GPU model: committed, or measured here with the
    running Triton (``serve --autotune`` measures otherwise)."""
    if committed_path(device_name).exists():
        return True
    try:
        return not _stale(json.loads(cached_path(device_name).read_text()))
    except (OSError, ValueError):
        return False


def _stale(table: Any) -> str:
    """Why a measured table does not fit the running Triton ("" when it does)."""
    measured = table.get("measured_with") if isinstance(table, dict) else None
    got = measured.get("triton") if isinstance(measured, dict) else None
    want = versions()["triton"]
    if got == want:
        return ""
    return (f"measured with Triton {got or '(unknown)'}, this is Triton {want or '(none)'} "
            "(measure again: v4coder bench choices --measure)")


def options(decision: str, device: torch.device) -> dict[str, Any]:
    """The launch options chosen for ``decision`` on ``device`` ({} = the wrapper's defaults).
    Called per kernel call: the table is resolved once per (setting, device)."""
    setting = os.environ.get(CHOICES_ENV, "").strip()
    key = f"{setting}|{device}"
    table = _tables.get(key)
    if table is None:
        table = _tables[key] = _table_for(setting, device)
    return dict(table.get(decision, ()))


def _table_for(setting: str, device: torch.device,
               device_name: str | None = None) -> dict[str, dict]:
    """decision → options on ``device`` (``device_name``: its GPU model, default asked of
    torch). The order is the module docstring's."""
    if setting.lower() == "off":
        return {}
    if setting:
        return _load(Path(setting))
    if device.type != "cuda":
        return {}
    name = device_name if device_name is not None else torch.cuda.get_device_name(device)
    for path, measured in ((committed_path(name), False), (cached_path(name), True)):
        if path.exists():
            return _load(path, measured)
    return {}


def _load(path: Path, measured: bool = False) -> dict[str, dict]:
    """decision → options, from a table file; {} (with one line on stderr) when unusable.
    ``measured``: a table of the user's cache, which must fit the running Triton."""
    try:
        table = json.loads(path.read_text())
        why = _stale(table) if measured else ""
        if why:
            raise ChoicesError(why)
        return validated(table)
    except (OSError, ValueError) as exc:
        print(f"v4coder: kernel choices {path} ignored: {exc}", file=sys.stderr)
        return {}


def validated(table: Any) -> dict[str, dict]:
    """A table's choices, each checked to be one of its decision's variants."""
    if not isinstance(table, dict) or not isinstance(table.get("choices"), dict):
        raise ChoicesError("expected an object with a 'choices' object")
    out = {}
    for name, choice in table["choices"].items():
        decision = DECISIONS.get(name)
        if decision is None:
            raise ChoicesError(f"unknown decision {name!r}")
        opts = choice.get("options") if isinstance(choice, dict) else None
        if opts not in [v.options for v in decision.variants]:
            raise ChoicesError(f"{name}: {opts!r} is not one of its variants")
        out[name] = opts
    return out


def clear_cache() -> None:
    """Forget loaded tables (a test, or a table written in this process)."""
    _tables.clear()


def main(argv: list[str] | None = None) -> int:
    """``v4coder bench choices --from ROWS.jsonl | --measure [--out FILE]``: the table from one
    GPU run's rows, or measured here."""
    import argparse

    p = argparse.ArgumentParser(prog="v4coder bench choices",
                                description="kernel launch choices from `bench kernels` GPU rows, "
                                "or measured on this GPU")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="rows", type=Path,
                        help="JSON lines of one `v4coder bench kernels` run on a GPU")
    source.add_argument("--measure", action="store_true",
                        help="run the variants' `bench kernels` cases on this GPU (about a "
                             "minute) and choose; --out defaults to the user's cache, "
                             "$V4CODER_CACHE_DIR (default ~/.cache/v4coder)/kernel-choices/"
                             "<gpu>.json, which the runtime reads on this GPU model when no "
                             "table is committed for it")
    p.add_argument("--out", type=Path, help="write the table here (e.g. "
                   "model/kernels/choices/nvidia-h200.json)")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        table, out = _measured(args.out) if args.measure else (_from_rows(args.rows), args.out)
        if out is not None:
            write_table(table, out)
    except (OSError, ValueError) as exc:
        print(f"v4coder bench choices: {one_line(exc, named=False)}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a kernel that fails on this GPU: one line
        print(f"v4coder bench choices: {one_line(exc)}", file=sys.stderr)
        return 1
    print(json.dumps(table, indent=1))
    if out is not None and args.measure:
        print(f"v4coder bench choices: wrote {out}", file=sys.stderr)
    return 0


def one_line(exc: BaseException, named: bool = True) -> str:
    """An error as one line (``named``: with its type, for errors that are not bad input)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if named else text


def _from_rows(path: Path) -> dict:
    lines = path.read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip().startswith("{")]
    return choose(rows, source=path.name)


def _measured(out: Path | None) -> tuple[dict, Path]:
    _require_gpu()
    name = torch.cuda.get_device_name()
    print(f"v4coder bench choices: measuring {len(variant_rows())} kernel cases on {name} "
          "(about a minute)", file=sys.stderr, flush=True)
    return measure(), out or cached_path(name)


if __name__ == "__main__":
    raise SystemExit(main())
