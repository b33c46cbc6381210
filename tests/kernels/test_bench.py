"""`v4coder bench kernels` on CPU: one JSON object per kernel, says it is the CPU reference path."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from model import bench_kernels as bk


def test_bench_prints_one_json_object_per_kernel(monkeypatch, capsys):
    names = {c.args[0] for c in bk.cases(False, "cpu")}
    assert {"sparse_attn_decode_csa", "sparse_attn_decode_csa_fp8", "sparse_attn_prefill_csa",
            "indexer_topk_decode", "fp4_expert_gemm_w13_decode", "moe_fp4_decode"} <= names
    small = [partial(bk._attn_case, "attn", 1, 64, 32, False, "cpu", torch.float32, "t"),
             partial(bk._indexer_case, "idx", 1, 256, "cpu", torch.float32)]
    monkeypatch.setattr(bk, "cases", lambda full, dev: small)
    assert bk.main([]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["kernel"] for r in rows] == ["attn", "idx"]
    for r in rows:
        assert r["device"] == "cpu" and r["backend"] == "reference" and "CPU" in r["note"]
        assert r["reference_ms"] > 0 and r["bytes"] > 0 and r["achieved_gbps"] > 0


def test_indexer_rows_with_packed_keys_count_68_bytes_per_key():
    names = {c.args[0] for c in bk.cases(False, "cpu")}
    assert {"indexer_topk_decode_fp4", "indexer_topk_prefill_fp4"} <= names
    n = 256
    plain = bk._indexer_case("idx", 1, n, "cpu", torch.float32)
    packed = bk._indexer_case("idx_fp4", 1, n, "cpu", torch.float32, packed=True)
    assert packed.shape["keys_format"] == "fp4-68B" and plain.shape["keys_format"] == "float32"
    assert plain.bytes - packed.bytes == n * (bk.IDX_DIM * 4 - 68)
    assert (packed.reference()[0, 0, :n] >= 0).all()  # the reference reads the packed keys


def test_cpu_rows_have_no_graph_fields():
    case = bk._indexer_case("idx", 1, 256, "cpu", torch.float32)
    assert not [k for k in bk.run_case(case, "cpu", (4.8e12, 989.5e12)) if k.startswith("graph")]


def test_graph_fields_use_graph_time_and_survive_a_failed_capture(monkeypatch):
    """The CUDA-graph fields without a GPU: the capture is stubbed, the arithmetic is real."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    case = bk._indexer_case("idx", 1, 256, "cpu", torch.float32)
    peaks = (4.8e12, 989.5e12)
    monkeypatch.setattr(bk, "_time_graph", lambda fn: 2e-5)
    fields = bk._graph_fields(case, peaks)
    assert fields["graph_ms"] == 2e-5 * 1e3
    assert fields["graph_gbps"] == case.bytes / 2e-5 / 1e9
    assert fields["graph_hbm_fraction"] == bk._fractions(case, 2e-5, peaks)["hbm_fraction"]
    assert set(fields) == {"graph_ms", "graph_gbps", "graph_hbm_fraction",
                           "graph_bf16_peak_fraction"}
    assert set(bk._graph_fields(case, None)) == {"graph_ms", "graph_gbps"}

    def fail(fn):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\n" + "x" * 300)

    monkeypatch.setattr(bk, "_time_graph", fail)
    fields = bk._graph_fields(case, peaks)
    assert fields["graph_ms"] is None and len(fields) == 2
    assert fields["graph_error"].startswith("RuntimeError: CUDA error: operation not permitted")
    assert "\n" not in fields["graph_error"] and len(fields["graph_error"]) == 200


def test_kernel_launches_counts_a_calls_kernels():
    """Decode attention splits the rows over programs and merges them in the same launch: one
    Triton kernel (plus the wrapper's torch ops); counted here in the interpreter, the same
    count on a GPU."""
    case = bk._attn_case("attn", 1, 256, 64, False, "cpu", torch.float32, "none")
    from model.op_audit import OpAudit
    case.triton()   # the first call makes the kept arrival counts (a launch, once)
    with OpAudit() as audit:
        case.triton()
    assert dict(audit.triton) == {"_sparse_attn_fwd": 1}
    assert bk.kernel_launches(case.triton) == audit.launches() >= 1


def _small_cases():
    def broken(*args, **kwargs):
        raise RuntimeError("no such\nkernel")
    return [partial(bk._attn_case, "attn", 1, 64, 32, False, "cpu", torch.float32, "t"),
            partial(broken, "broken"),
            partial(bk._indexer_case, "idx", 1, 256, "cpu", torch.float32)]


def test_a_case_that_raises_gets_an_error_row_and_the_run_goes_on(monkeypatch, capsys):
    monkeypatch.setattr(bk, "cases", lambda full, dev: _small_cases())
    assert bk.main(["--start", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["kernel"] for r in rows] == ["broken", "idx"]
    assert rows[0]["error"] == "RuntimeError: no such kernel" and "time_ms" not in rows[0]
    assert rows[1]["reference_ms"] > 0


def test_warm_shards_run_each_case_once_and_name_failures(monkeypatch, capsys):
    monkeypatch.setattr(bk, "cases", lambda full, dev: _small_cases())
    assert bk.main(["--warm", "0/2"]) == 0  # cases 0 and 2
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines()] == [
        ["warm", "attn"], ["warm", "idx"]]
    assert bk.main(["--warm", "1/2"]) == 1  # case 1 raises
    assert capsys.readouterr().out == "warm-failed broken RuntimeError: no such kernel\n"
    for bad in ("2/2", "x", "1/0"):
        with pytest.raises(SystemExit):
            bk.main(["--warm", bad])
    with pytest.raises(SystemExit):
        bk.main(["--start", "-1"])


@pytest.mark.parametrize("native", [False, True], ids=["bf16-cache", "native-cache"])
def test_the_csa_pair_row_runs_the_indexer_then_attention_on_its_picks(native):
    """Target 1's pair as one call (``csa_decode_pair``), its launches overlapping (the ``_pdl``
    row): the kernels' pair equals the references', and the kernels' programs took their PDL
    entry (the grid-dependency wait); the plain row's did not."""
    from model.kernels import interpret_gdc
    from model.kernels.launch import overlapping

    case = bk._overlapped("pair", bk._csa_pair_case, 1024, native, "cpu", torch.float32)
    assert case.shape["pdl"] and case.bytes > 0
    waits = interpret_gdc.executed["griddepcontrol.wait"]
    got, got_lse = case.triton()
    ran = interpret_gdc.executed["griddepcontrol.wait"] - waits
    want, want_lse = case.reference()
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(got_lse, want_lse, atol=2e-3, rtol=2e-3)
    assert ran >= 2   # a program a kernel at least
    plain = bk._csa_pair_case("pair", 1024, native, "cpu", torch.float32)
    before = interpret_gdc.executed["griddepcontrol.wait"]
    with overlapping(False):
        plain.triton()
    assert interpret_gdc.executed["griddepcontrol.wait"] == before   # not overlapped: no wait


def test_the_norm_chain_row_is_a_chain_of_launches_each_reading_the_last():
    """``norm_chain_decode``: NORM_CHAIN launches of one kernel, each on the one before's
    output (so their overlap is a dependency, as in a decode step); the ``_pdl`` row's chain
    computes the same values."""
    from model.op_audit import OpAudit

    plain = bk._norm_chain_case("chain", "cpu", torch.float32)
    overlapped = bk._overlapped("chain_pdl", bk._norm_chain_case, "cpu", torch.float32)
    with OpAudit() as audit:
        got = overlapped.triton()
    assert audit.triton == {"_rms_norm_kernel": bk.NORM_CHAIN} == audit.overlapped
    torch.testing.assert_close(got, overlapped.reference(), atol=1e-5, rtol=1e-5)
    assert plain.shape["launches"] == bk.NORM_CHAIN and overlapped.shape["pdl"]


def test_the_attention_output_row_runs_attention_then_wo_a_then_wo_b():
    """``attn_output_decode``: sparse attention over FP8 rows, ``wo_a``'s grouped GEMV and
    ``wo_b``'s FP8 GEMM summing its splits, equal to the references'; in the ``_pdl`` row every
    launch overlaps the one before, and the two weight-streaming kernels ask L2 for their
    weights' first lines before their wait (1 KB-wide rows: the whole of each)."""
    from model.kernels import interpret_gdc
    from model.op_audit import OpAudit

    case = bk._overlapped("out", bk._attn_output_case, 1024, "cpu", torch.float32, groups=2,
                          rank=64, dim=128)
    with OpAudit() as audit, interpret_gdc.recording_prefetches() as lines:
        got = case.triton()
    assert audit.overlapped == audit.triton
    assert {"_gemv_kernel", "_fp8_gemm_kernel"} <= set(audit.triton)
    torch.testing.assert_close(got, case.reference(), atol=2e-2, rtol=2e-2)
    k_a = bk.HEADS * bk.HEAD_DIM // 2
    # wo_a: 128 rows of 16 KB, a line at each K split's start; wo_b: 128 rows of 128 B, whole
    assert len(lines) >= 128 + 128
    plain = bk._attn_output_case("out", 1024, "cpu", torch.float32, groups=2, rank=64, dim=128)
    assert plain.shape["wo_a"] == [128, k_a] and plain.shape["wo_b"] == [128, 128]
    assert plain.bytes > 128 * k_a + 128 * 128   # both FP8 weights, and attention's rows
