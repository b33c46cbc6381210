"""The GPU session's launch-option sweeps (docs/perf/sweep.py): every variant's options are
keyword arguments its Triton wrapper takes, so a device run does not spend its minutes on rows
that can only fail."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest

from model.kernels import moe, sparse_attn

SWEEP = Path(__file__).parents[2] / "docs/perf/sweep.py"
WRAPPERS = {"moe": moe.moe_fp4_triton, "attn_decode": sparse_attn.sparse_attn_triton,
            "attn_prefill": sparse_attn.sparse_attn_triton,
            "attn_anatomy": sparse_attn.sparse_attn_triton}


def _sweep():
    spec = importlib.util.spec_from_file_location("sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family", sorted(WRAPPERS))
def test_every_sweep_variant_is_a_launch_the_wrapper_takes(family):
    sweep = _sweep()
    assert set(sweep.FAMILIES) == set(WRAPPERS)
    takes = set(inspect.signature(WRAPPERS[family]).parameters)
    variants = sweep.FAMILIES[family]()
    assert variants and len({(name, tuple(sorted(o.items()))) for name, _, o in variants}) == \
        len(variants)                                      # no row timed twice
    for _, build, options in variants:
        assert callable(build) and set(options) <= takes, options


def test_the_anatomy_fit_splits_a_call_into_its_fixed_cost_and_a_cost_a_row():
    """Lines through timed rows per (format, options): 20 µs + 0.01 µs a row comes back, an
    error row is left out, and a line with one point is no line."""
    sweep = _sweep()
    variants = sweep.attn_anatomy()
    names = {name for name, _, _ in variants}
    assert "sparse_attn_decode_csa_fp8_pairs_k512" in names
    assert (len(names), len(variants)) == (15, 45)   # 3 formats × 5 row counts, × 3 settings
    opts = {"n_splits": 8, "combine": "fused"}
    rows = [{"case": f"sparse_attn_decode_csa_fp8_k{k}", "options": opts,
             "shape": {"rows_per_query": 128 + k}, "graph_ms": (20 + 0.01 * (128 + k)) / 1e3}
            for k in sweep.ANATOMY_ROWS]
    rows.append({"case": "sparse_attn_decode_csa_fp8_k2048", "options": opts, "error": "x"})
    rows.append({"case": "sparse_attn_decode_csa_k0", "options": {"n_splits": 1},
                 "shape": {"rows_per_query": 128}, "graph_ms": 0.02})
    (line,) = sweep.fit(rows)
    assert line["fit"] == "sparse_attn_decode_csa_fp8" and line["options"] == opts
    assert line["points"] == 5 and line["fixed_us"] == pytest.approx(20, abs=0.01)
    assert line["per_row_us"] == pytest.approx(0.01, abs=1e-5)
    assert line["worst_residual_us"] < 0.01
