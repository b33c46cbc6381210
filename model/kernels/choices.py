"""Launch choices per GPU, measured rather than guessed.

Some kernels have variants whose merit only a GPU can tell: sparse attention's 64-head tile
(Hopper's warp-group MMA, the output columns split so the accumulator fits in registers)
against its 16-head default, the indexer's decode paths, the MoE grouped GEMM's 64-row expert
tiles. Each variant is a ``v4coder bench kernels`` row. ``choose(rows)`` reads one GPU run's
rows and keeps, for every decision whose rows are all there and correct, the fastest variant
(``graph_ms`` where the row has it — the kernels' own time, as the engine's decode graphs run
them — else ``time_ms``). ``v4coder bench choices --from ROWS.jsonl --out FILE`` writes that
table; model/kernels/choices/<gpu>.json is the table the runtime reads on that GPU
(``torch.cuda.get_device_name``, lower-cased, non-alphanumerics as ``-``).

At run time ``options(decision, device)`` gives the chosen launch options, ``{}`` (the
defaults) without a table for the device. ``V4CODER_KERNEL_CHOICES=off`` ignores the tables;
``V4CODER_KERNEL_CHOICES=FILE`` uses that table on any device (tests, trying a table out). A
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
TABLE_DIR = Path(__file__).with_name("choices")
MAX_REL_ERR = 0.02      # a variant farther than this from its reference is never chosen
MIN_RECALL = 0.99       # indexer variants: top-k recall against the reference


@dataclass(frozen=True, slots=True)
class Variant:
    row: str                  # the ``bench kernels`` row that measures it
    options: dict[str, Any]   # the Triton wrapper's keyword arguments


@dataclass(frozen=True, slots=True)
class Decision:
    name: str
    when: str                     # where the runtime asks (ops.py)
    variants: tuple[Variant, ...]  # the first is the default


DECISIONS = {d.name: d for d in (
    Decision("sparse_attn_prefill", "sparse attention, float KV rows, more than one query",
             (Variant("sparse_attn_prefill_csa", {}),
              Variant("sparse_attn_prefill_csa_h64", {"block_h": 64, "dv_parts": 2}))),
    Decision("sparse_attn_prefill_fp8", "sparse attention, FP8 KV rows, more than one query",
             (Variant("sparse_attn_prefill_csa_fp8", {}),
              Variant("sparse_attn_prefill_csa_fp8_h64", {"block_h": 64, "dv_parts": 4}))),
    Decision("indexer_decode", "indexer top-k, float keys, one query",
             (Variant("indexer_topk_decode", {}),
              Variant("indexer_topk_decode_merge", {"path": "merge"}))),
    Decision("indexer_decode_fp4", "indexer top-k, FP4 keys, one query",
             (Variant("indexer_topk_decode_fp4", {}),
              Variant("indexer_topk_decode_fp4_merge", {"path": "merge"}))),
    Decision("moe_prefill", "routed experts, at least MOE_PREFILL_TOKENS tokens (grouped GEMM)",
             (Variant("moe_fp4_prefill_2048", {}),
              Variant("moe_fp4_prefill_m64", {"block_m": 64}))),
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
            row = by_name.get(variant.row)
            why = _unusable(row)
            if why:
                table["left_out"][decision.name] = f"{variant.row}: {why}"
                break
            timed.append((_ms(row), variant))
        else:
            best_ms, best = min(timed, key=lambda tv: tv[0])
            default_ms = timed[0][0]
            table["choices"][decision.name] = {
                "options": best.options, "row": best.row, "ms": round(best_ms, 5),
                "default_ms": round(default_ms, 5),
                "speedup_vs_default": round(default_ms / best_ms, 3)}
    return table


def _ms(row: dict) -> float:
    return float(row["graph_ms"] if row.get("graph_ms") else row["time_ms"])


def _unusable(row: dict | None) -> str:
    if row is None:
        return "no row"
    if row.get("device") != "cuda" or "time_ms" not in row:
        return "not timed on a GPU"
    if "topk_recall" in row and row["topk_recall"] < MIN_RECALL:
        return f"recall {row['topk_recall']} < {MIN_RECALL}"
    if row.get("max_rel_err", 0.0) > MAX_REL_ERR:
        return f"relative error {row['max_rel_err']} > {MAX_REL_ERR}"
    return ""


# -- using them, at run time ---------------------------------------------------------------------
_tables: dict[str, dict[str, dict]] = {}   # "setting|device" → decision → options


def device_slug(name: str) -> str:
    """'NVIDIA H200' → 'nvidia-h200' (the table's file name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def options(decision: str, device: torch.device) -> dict[str, Any]:
    """The launch options chosen for ``decision`` on ``device`` ({} = the wrapper's defaults).
    Called per kernel call: the table is resolved once per (setting, device)."""
    setting = os.environ.get(CHOICES_ENV, "").strip()
    key = f"{setting}|{device}"
    table = _tables.get(key)
    if table is None:
        table = _tables[key] = _table_for(setting, device)
    return dict(table.get(decision, ()))


def _table_for(setting: str, device: torch.device) -> dict[str, dict]:
    if setting.lower() == "off":
        return {}
    if setting:
        return _load(Path(setting), explicit=True)
    if device.type != "cuda":
        return {}
    return _load(TABLE_DIR / f"{device_slug(torch.cuda.get_device_name(device))}.json",
                 explicit=False)


def _load(path: Path, explicit: bool) -> dict[str, dict]:
    """decision → options, from a table file; {} (with one line on stderr) when unusable."""
    try:
        if not path.exists() and not explicit:
            return {}
        return validated(json.loads(path.read_text()))
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
    """``v4coder bench choices --from ROWS.jsonl [--out FILE]``: the table from one GPU run."""
    import argparse

    p = argparse.ArgumentParser(prog="v4coder bench choices",
                                description="kernel launch choices from `bench kernels` GPU rows")
    p.add_argument("--from", dest="rows", required=True, type=Path,
                   help="JSON lines of one `v4coder bench kernels` run on a GPU")
    p.add_argument("--out", type=Path, help="write the table here (e.g. "
                   "model/kernels/choices/nvidia-h200.json)")
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        lines = args.rows.read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.strip().startswith("{")]
        table = choose(rows, source=args.rows.name)
        text = json.dumps(table, indent=1)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
    except (OSError, ValueError) as exc:
        print(f"v4coder bench choices: {exc}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
