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
            "attn_prefill": sparse_attn.sparse_attn_triton}


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
