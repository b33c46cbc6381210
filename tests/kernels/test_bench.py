"""`v4coder bench kernels` on CPU: one JSON object per kernel, says it is the CPU reference path."""

from __future__ import annotations

import json
from functools import partial

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
