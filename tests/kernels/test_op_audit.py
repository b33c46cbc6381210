"""OpAudit counts what code asks of the device: kernel-launching torch ops (not views), host
syncs (value reads, data-dependent sizes) and Triton launches (here in the interpreter)."""

from __future__ import annotations

import json

import torch

from model.kernels import ops
from model.op_audit import OpAudit


def test_counts_launching_ops_not_views_and_finds_syncs():
    x = torch.arange(12.0).view(3, 4)
    with OpAudit() as audit:
        y = (x.t().reshape(12) * 2).sum()       # 2 launches (mul, sum), 2 views
        x[x > 3]                                 # a boolean mask: output size read back
        float(y)                                 # a value read back
        torch.arange(3).repeat_interleave(2)     # int repeats: no sync
    assert audit.ops["aten::mul"] == 1 and audit.ops["aten::sum"] == 1
    assert "aten::t" in audit.ops and audit.torch_launches() < sum(audit.ops.values())
    assert sum(audit.syncs.values()) == 2


def test_counts_triton_launches_in_the_interpreter(monkeypatch):
    monkeypatch.setenv("V4CODER_KERNELS", "triton")
    x = torch.randn(3, 40)
    with OpAudit() as audit:
        ops.rms_norm(x, torch.ones(40), 1e-6)
    assert sum(audit.triton.values()) == 1
    assert any(k.startswith("triton:") for k in audit.top())


def test_bench_launches_runs_a_decode_step_without_host_syncs(capfd):
    from model.bench_launches import main
    assert main(["--preset", "tiny", "--prompt", "40"]) == 0   # a child process: the interpreter
    result = json.loads(capfd.readouterr().out)
    assert result["interpreter"] is True and result["triton_launches"] > 0
    assert result["host_syncs"] == 0, result["host_sync_ops"]
    assert result["launches_per_layer"] > 0
    graphs = result["graphs"]   # the same step as graph pieces leaves the host far fewer
    assert graphs["pieces_host_syncs"] == 0 and graphs["pieces_host_tensors"] == 0
    assert 0 < graphs["host_launches_per_step"] < result["launches_per_step"] / 2
    # what the host still launches per layer: attention's cache side, mean over 4 steps. A
    # decode step copies no window into the row store and builds no index tensor
    # (sparse_attn.WindowRows): the window, the compressors' tails, the indexer's scores with
    # their top-k (one kernel), attention with the merge of its splits (one kernel), + each
    # compressor's insert in the step that closes its block
    side = result["cache_side_by_kind"]
    assert set(side) == {"sliding", "csa", "hca"}, side
    assert side["sliding"] <= 2 and side["hca"] <= 3.5 and side["csa"] <= 5.5, side
    assert main(["--prompt", "0"]) == 2 and main(["--batch", "0"]) == 2
