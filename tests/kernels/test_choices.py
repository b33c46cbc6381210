"""Kernel launch choices (model/kernels/choices.py): chosen from one GPU run's bench rows,
read at run time through the dispatch point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.kernels import choices, ops
from model.kernels import sparse_attn as sparse_attn_module

H200_ROWS = Path(__file__).parents[2] / "docs/perf/2026-11-28-h200-kernels.jsonl"


def _row(name: str, ms: float, graph_ms: float | None = None, **extra) -> dict:
    row = {"kernel": name, "device": "cuda", "device_name": "NVIDIA H200", "time_ms": ms,
           "max_rel_err": 0.004, **extra}
    if graph_ms is not None:
        row["graph_ms"] = graph_ms
    return row


def _rows() -> list[dict]:
    return [
        _row("sparse_attn_prefill_csa", 1.2, 1.1),
        _row("sparse_attn_prefill_csa_h64", 1.3, 0.5),        # slower called, faster replayed
        _row("sparse_attn_prefill_csa_h64_w8", 1.0, 0.6),
        _row("sparse_attn_prefill_csa_h64_n32_w8", 1.0, 0.7),
        _row("sparse_attn_prefill_csa_h64_dv4_n64_w8", 1.0, 0.8),
        _row("sparse_attn_prefill_csa_h64_dv1_n16_w8", 1.0, 0.55),
        _row("sparse_attn_prefill_csa_h64_dv1_n32_w8", 1.0, 0.65),
        _row("sparse_attn_prefill_csa_h64_ahead", 1.0, 0.52),
        _row("sparse_attn_prefill_csa_h64_dv1_n64_w8_rows", 1.0, 0.75),
        _row("sparse_attn_prefill_csa_fp8", 1.0),
        _row("sparse_attn_prefill_csa_fp8_h64", 2.0),
        _row("sparse_attn_prefill_csa_fp8_w8", 1.1),
        _row("sparse_attn_prefill_csa_fp8_pairs", 1.05),
        _row("sparse_attn_prefill_csa_fp8_h64_pairs", 1.8),
        _row("sparse_attn_prefill_csa_fp8_pairs_qk4", 1.02),
        _row("sparse_attn_prefill_csa_fp8_upconvert", 1.01),
        _row("sparse_attn_prefill_csa_fp8_upconvert_ahead", 1.03),
        _row("sparse_attn_decode_csa", 0.05, 0.03),
        _row("sparse_attn_decode_csa_combine_kernel", 0.04, 0.02),  # a GPU may say so
        _row("sparse_attn_decode_csa_dv4", 0.06, 0.04),
        _row("sparse_attn_decode_csa_dv4_s8", 0.06, 0.03),
        _row("moe_fp4_decode", 0.5, 0.30),
        _row("moe_fp4_decode_n16_w8", 0.5, 0.20),
        _row("moe_fp4_decode_k64_w8", 0.4, 0.25),
        _row("moe_fp4_decode_ahead", 0.5, 0.21),
        _row("moe_fp4_decode_mma", 0.5, 0.22),
        _row("moe_fp4_decode_mma_n64", 0.5, 0.23),
        _row("moe_fp4_decode_finish_kernel", 0.5, 0.31),
        _row("moe_fp4_decode_target", 0.5, 0.32),
        _row("indexer_topk_decode", 0.2, topk_recall=1.0),
        _row("indexer_topk_decode_merge", 0.1, topk_recall=0.9),  # fast and wrong
        _row("indexer_topk_decode_fp4", 0.2, topk_recall=1.0),
        _row("indexer_topk_prefill", 2.0, topk_recall=1.0),
        _row("indexer_topk_prefill_passes", 2.5, topk_recall=1.0),
        _row("indexer_topk_prefill_select_kernel", 1.5, topk_recall=1.0),
        _row("gemv_fp8_wq_b_decode", 0.1, 0.057),
        _row("gemv_fp8_wq_b_decode_mma", 0.1, 0.02),
        _row("gemv_fp8_wq_b_decode_ahead", 0.1, 0.03),
        _row("gemv_fp8_wq_b_decode_wide", 0.1, 0.025),
        _row("moe_fp4_prefill_2048", 9.0),
        _row("moe_fp4_prefill_m64", 3.0, max_rel_err=0.05),       # fast and too far off
        _row("csa_decode_pair", 0.2, 0.1),
        _row("attn_output_decode", 0.2, 0.05),
        _row("norm_chain_decode", 0.1, 0.04),
        _row("csa_decode_pair_pdl", 0.1, graph_error="RuntimeError: capture failed"),
        _row("attn_output_decode_pdl", 0.2, 0.03),
        _row("norm_chain_decode_pdl", 0.1, 0.03),
    ]


def test_choose_takes_the_fastest_correct_variant_by_kernel_time():
    table = choices.choose(_rows(), source="rows.jsonl")
    assert table["device_name"] == "NVIDIA H200"
    got = table["choices"]
    assert got["sparse_attn_prefill"]["options"] == {"block_h": 64, "dv_parts": 2}
    assert got["sparse_attn_prefill"]["speedup_vs_default"] == 2.2        # 1.1 / 0.5 (graphs)
    assert got["sparse_attn_prefill_fp8"]["options"] == {}               # the default won
    assert got["moe_decode"]["options"] == {"block_n": 16, "num_warps": 8}   # 0.20 replayed
    assert got["sparse_attn_decode"]["options"] == {"combine": "kernel"}
    assert got["gemv_decode_fp8"]["options"] == {"mma": True}
    assert got["indexer_prefill"]["options"] == {"select": "triton"}
    assert set(got) == {"sparse_attn_prefill", "sparse_attn_prefill_fp8", "sparse_attn_decode",
                        "moe_decode", "gemv_decode_fp8", "indexer_prefill"}
    left = table["left_out"]
    assert left["moe_decode_native"] == "moe_fp4_decode_native: no row"
    assert "recall 0.9" in left["indexer_decode"]
    assert left["indexer_decode_fp4"] == "indexer_topk_decode_fp4_merge: no row"
    assert "relative error 0.05" in left["moe_prefill"]
    # faster called, but the engine's graphs could not replay it
    assert left["pdl"] == ("csa_decode_pair_pdl: not capturable in a CUDA graph "
                           "(RuntimeError: capture failed)")
    assert choices.validated(table) == {"sparse_attn_prefill": {"block_h": 64, "dv_parts": 2},
                                        "sparse_attn_prefill_fp8": {},
                                        "sparse_attn_decode": {"combine": "kernel"},
                                        "moe_decode": {"block_n": 16, "num_warps": 8},
                                        "gemv_decode_fp8": {"mma": True},
                                        "indexer_prefill": {"select": "triton"}}


def test_overlapping_launches_are_chosen_on_three_chains_replayed_time_summed():
    """The pair, attention with its output projection, the norm chain: what a decode step
    sees is their sum, so a saving on the weight streams outweighs a loss on the pair."""
    rows = [_row("csa_decode_pair", 0.2, 0.1), _row("csa_decode_pair_pdl", 0.3, 0.11),
            _row("attn_output_decode", 0.2, 0.05), _row("attn_output_decode_pdl", 0.2, 0.03),
            _row("norm_chain_decode", 0.1, 0.04), _row("norm_chain_decode_pdl", 0.1, 0.03)]
    got = choices.choose(rows)["choices"]
    assert got == {"pdl": {"options": {"pdl": True}, "row": "csa_decode_pair_pdl", "ms": 0.17,
                           "default_ms": 0.19, "speedup_vs_default": 1.118}}
    # any of a variant's rows missing (or unusable): the decision keeps its default
    table = choices.choose(rows[:-1])
    assert table["choices"] == {}
    assert table["left_out"]["pdl"] == "norm_chain_decode_pdl: no row"


def test_variants_that_share_rows_differ_by_the_rows_they_do_not_share():
    """The FP8 GEMM's decode: every variant is timed on wo_b, the shared expert's w2 and the
    q-projections; 32-row tiles share the first two rows with the default and win or lose on
    the third alone."""
    rows = [_row("fp8_gemm_wo_b_splitk_decode", 1.0, 0.020),
            _row("fp8_gemm_shared_w2_swiglu_decode", 1.0, 0.010),
            _row("fp8_gemm_wo_b_splitk_decode_whole_k", 1.0, 0.090),
            _row("fp8_gemm_shared_w2_swiglu_decode_whole_k", 1.0, 0.020),
            _row("fp8_gemm_q_proj_norm_decode", 1.0, 0.030),
            _row("fp8_gemm_wo_b_splitk_decode_target", 1.0, 0.024),
            _row("fp8_gemm_shared_w2_swiglu_decode_target", 1.0, 0.011),
            _row("fp8_gemm_wo_b_splitk_decode_16_rows", 1.0, 0.030),
            _row("fp8_gemm_shared_w2_swiglu_decode_16_rows", 1.0, 0.012),
            _row("fp8_gemm_q_proj_norm_decode_16_rows", 1.0, 0.040)]
    for n32_ms, want in ((0.037, {}), (0.025, {"block_n": 32})):
        got = choices.choose([*rows, _row("fp8_gemm_q_proj_norm_decode_n32", 1.0, n32_ms)])
        assert got["choices"]["fp8_gemm_decode"]["options"] == want
    # the old rule's splits win on wo_b and w2 together, or lose
    rows[-5] = _row("fp8_gemm_wo_b_splitk_decode_target", 1.0, 0.018)
    got = choices.choose([*rows, _row("fp8_gemm_q_proj_norm_decode_n32", 1.0, 0.037)])
    assert got["choices"]["fp8_gemm_decode"]["options"] == {"rounds": False}


def test_the_h200_run_of_session_2_had_no_variant_rows():
    """The real rows of the one H200 run: timed on the GPU, but before the variants existed."""
    rows = [json.loads(line) for line in H200_ROWS.read_text().splitlines() if line.strip()]
    table = choices.choose(rows)
    assert table["choices"] == {} and set(table["left_out"]) == set(choices.DECISIONS)
    with pytest.raises(choices.ChoicesError, match="no GPU rows"):
        choices.choose([{**r, "device": "cpu"} for r in rows])


def test_tables_pick_only_among_the_defined_variants():
    with pytest.raises(choices.ChoicesError, match="unknown decision"):
        choices.validated({"choices": {"fastest_kernel": {"options": {}}}})
    with pytest.raises(choices.ChoicesError, match="not one of its variants"):
        choices.validated({"choices": {"moe_prefill": {"options": {"block_m": 4096}}}})
    with pytest.raises(choices.ChoicesError, match="'choices' object"):
        choices.validated([])


@pytest.fixture
def table_file(tmp_path, monkeypatch):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(choices.choose(_rows())))
    monkeypatch.setenv(choices.CHOICES_ENV, str(path))
    choices.clear_cache()
    yield path
    choices.clear_cache()


def test_options_come_from_the_table_file(table_file, monkeypatch, capsys):
    cpu = torch.device("cpu")
    assert choices.options("sparse_attn_prefill", cpu) == {"block_h": 64, "dv_parts": 2}
    assert choices.options("moe_prefill", cpu) == {}
    monkeypatch.setenv(choices.CHOICES_ENV, "off")
    assert choices.options("sparse_attn_prefill", cpu) == {}
    monkeypatch.delenv(choices.CHOICES_ENV)
    assert choices.options("sparse_attn_prefill", cpu) == {}       # no table for a CPU
    table_file.write_text("{not json")
    monkeypatch.setenv(choices.CHOICES_ENV, str(table_file))
    choices.clear_cache()
    assert choices.options("sparse_attn_prefill", cpu) == {}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kernel choices" in err and "ignored" in err


def test_the_dispatch_point_launches_the_chosen_variant(table_file, monkeypatch):
    """Prefill attention on the Triton path (interpreter) with the table's 64-head tile: the
    wrapper gets the chosen options and the result still matches the reference; a decode query
    gets the decode decision's (the combine as a kernel of its own)."""
    seen = []
    real = sparse_attn_module.sparse_attn_triton

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sparse_attn_module, "sparse_attn_triton", recording)
    monkeypatch.setenv("V4CODER_KERNELS", "triton")
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, 64, 32, generator=gen)
    kv = torch.randn(1, 20, 32, generator=gen)
    sink = torch.randn(64, generator=gen)
    idx = torch.randint(-1, 20, (1, 3, 8), generator=gen)
    got = ops.sparse_attn(q, kv, sink, idx, 32**-0.5)
    ops.sparse_attn(q[:, :1], kv, sink, idx[:, :1], 32**-0.5)
    tiles = [{k: v for k, v in kwargs.items() if v is not None} for kwargs in seen]
    assert tiles == [{"block_h": 64, "dv_parts": 2}, {"combine": "kernel"}]
    want = sparse_attn_module.sparse_attn_reference(q, kv, sink, idx, 32**-0.5)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_a_prefill_indexer_takes_the_chosen_pick(table_file, monkeypatch):
    """Indexer queries of a prefill (more than one) take the ``indexer_prefill`` decision's
    pick — here ``topk_select`` as a kernel of its own — and a decode query the decode
    decision's (none in this table: the scores kernel picks); both are the reference's picks."""
    from model.kernels.indexer import indexer_topk_reference
    from model.op_audit import OpAudit

    monkeypatch.setenv("V4CODER_KERNELS", "triton")
    gen = torch.Generator().manual_seed(4)
    q, w = torch.randn(1, 5, 4, 16, generator=gen), torch.randn(1, 5, 4, generator=gen)
    keys = torch.randn(1, 40, 16, generator=gen)
    visible = torch.tensor([20, 25, 30, 35, 40])
    with OpAudit() as prefill:
        got = ops.indexer_topk(q, w, keys, visible, 8)
    with OpAudit() as decode:
        one = ops.indexer_topk(q[:, :1], w[:, :1], keys, visible[:1], 8)
    assert dict(prefill.triton) == {"_indexer_scores_block": 1, "_topk_select": 1}
    assert dict(decode.triton) == {"_indexer_scores_block": 1}
    assert torch.equal(got, indexer_topk_reference(q, w, keys, visible, 8))
    assert torch.equal(one, got[:, :1])


def test_a_decode_gemv_takes_the_chosen_tensor_core_path(table_file, monkeypatch):
    """An FP8 linear of one row in dequant numerics (``ops.dequant_linear`` → the decode GEMV):
    the table's choice (``gemv_decode_fp8``: mma) reaches ``gemv_triton``, the tensor-core
    kernel runs (interpreter), and the result is the dequantise-then-linear reference's; a bf16
    weight has no row in this table and keeps the default."""
    from model.kernels import gemv, quant

    seen, real = [], gemv.gemv_triton
    monkeypatch.setattr(gemv, "gemv_triton", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    monkeypatch.setenv("V4CODER_KERNELS", "triton")
    gen = torch.Generator().manual_seed(3)
    w, ws = quant.quant_fp8_block(torch.randn(200, 256, generator=gen))
    x = torch.randn(1, 256, generator=gen)
    got = ops.dequant_linear(x, w, ws, torch.float32)
    ops.dequant_linear(x, w.float().to(torch.bfloat16), None, torch.float32)
    assert seen == [{"mma": True}, {}]
    assert gemv.mma_gemv(1, 200, 1, w, x)     # what the wrapper asks before the MMA kernel
    want = x @ quant.dequant_fp8_block(w, ws).t()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_bench_choices_cli(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in _rows()) + "\n")
    out = tmp_path / "choices" / "nvidia-h200.json"
    assert choices.main(["--from", str(rows), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["choices"]["sparse_attn_prefill"]["row"] == \
        "sparse_attn_prefill_csa_h64"
    capsys.readouterr()
    assert choices.main(["--from", str(tmp_path / "missing.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("v4coder bench choices:") and err.count("\n") == 1
    assert choices.device_slug("NVIDIA H200") == "nvidia-h200"


# -- measured here: the user's cache, `bench choices --measure`, the rows it runs --------------
H200 = "NVIDIA H200"
CUDA = torch.device("cuda", 0)   # a device object only: no GPU is touched with device_name given


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty user cache and no committed tables; no V4CODER_KERNEL_CHOICES."""
    monkeypatch.setenv(choices.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(choices, "TABLE_DIR", tmp_path / "committed")
    monkeypatch.delenv(choices.CHOICES_ENV, raising=False)
    choices.clear_cache()
    yield tmp_path / "cache"
    choices.clear_cache()


def _measured_table(**measured_with: str) -> dict:
    return {**choices.choose(_rows()), "measured_with": {**choices.versions(), **measured_with}}


def test_a_table_measured_here_is_used_for_its_gpu_model(cache_dir, capsys):
    path = choices.cached_path(H200)
    assert path == cache_dir / "kernel-choices" / "nvidia-h200.json"
    assert not choices.has_table(H200)
    choices.write_table(_measured_table(), path)
    assert choices.has_table(H200)
    want = choices.validated(_measured_table())
    assert choices._table_for("", CUDA, device_name=H200) == want
    assert choices._table_for("", CUDA, device_name="NVIDIA H100") == {}   # another GPU model
    assert choices._table_for("", torch.device("cpu"), device_name=H200) == {}
    assert capsys.readouterr().err == ""


def test_a_table_measured_with_another_triton_is_ignored_in_one_line(cache_dir, capsys):
    choices.write_table(_measured_table(triton="0.0.1"), choices.cached_path(H200))
    assert not choices.has_table(H200)
    assert choices._table_for("", CUDA, device_name=H200) == {}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ignored" in err and "Triton 0.0.1" in err
    table = _measured_table()
    del table["measured_with"]                   # a `--from` table copied into the cache
    choices.write_table(table, choices.cached_path(H200))
    assert choices._table_for("", CUDA, device_name=H200) == {}
    assert "Triton (unknown)" in capsys.readouterr().err


def test_the_committed_table_wins_and_off_wins_over_both(cache_dir):
    choices.write_table(_measured_table(), choices.cached_path(H200))
    committed = {"choices": {"moe_prefill": {"options": {"block_m": 64}}}}
    choices.write_table(committed, choices.committed_path(H200))
    assert choices._table_for("", CUDA, device_name=H200) == {"moe_prefill": {"block_m": 64}}
    assert choices._table_for("off", CUDA, device_name=H200) == {}


def test_measure_runs_exactly_the_variants_bench_kernels_cases():
    """The cases `--measure` runs are the variants' rows, each a real `bench kernels` case at
    full size (a renamed case or variant fails here, not on the GPU)."""
    from model import bench_kernels

    rows = choices.variant_rows()
    assert len(rows) == len(set(rows)) == len({name for d in choices.DECISIONS.values()
                                               for v in d.variants for name in v.rows})
    assert all(len(d.variants) >= 2 for d in choices.DECISIONS.values())
    picked = bench_kernels.select(bench_kernels.cases(True, "cuda"), rows)
    assert sorted(bench_kernels.case_name(b) for b in picked) == sorted(rows)
    with pytest.raises(ValueError, match="no `bench kernels` case named no_such_case"):
        bench_kernels.select(bench_kernels.cases(True, "cuda"), [*rows, "no_such_case"])


def test_bench_choices_measure_without_a_gpu_is_one_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", choices.CACHE_ENV: str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "model.kernels.choices", "--measure"],
                         capture_output=True, text=True, timeout=120, env=env,
                         cwd=Path(__file__).parents[2])
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1
    assert run.stderr.startswith("v4coder bench choices: choices are measured on a GPU")
    assert not any(tmp_path.iterdir())


def test_bench_choices_help_shows_measure(capsys):
    from app.bench import bench_main

    assert bench_main(["choices", "--help"]) == 0
    assert "--measure" in capsys.readouterr().out
    assert choices.main(["--measure", "--from", "rows.jsonl"]) == 2   # one source, not both


def test_the_committed_h200_table_names_known_variants():
    """The table measured on the H200 (model/kernels/choices/nvidia-h200.json) stays valid as
    decisions and variants change: a renamed option would silently fall back to defaults."""
    table = json.loads(choices.committed_path("NVIDIA H200").read_text())
    picked = choices.validated(table)
    assert picked["indexer_decode"] == {"select": "torch"} and "moe_prefill" in picked
    assert table["measured_with"]["triton"] == "3.6.0"
