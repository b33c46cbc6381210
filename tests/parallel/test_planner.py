"""The planner's plans for the five machines equal the hand arithmetic in docs/DEPLOY.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.config import ModelConfig
from model.planner import MACHINES, PlanError, census, flash_config, main, plan
from model.toy import preset_config
from model.transformer import Transformer

DOC = Path(__file__).resolve().parents[2] / "docs" / "DEPLOY.md"


def _doc_rows() -> dict[str, list[str]]:
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_census_matches_the_reference_counts():
    c = census(flash_config())
    assert round(c.experts, 2) == 147.17 and round(c.expert_active, 3) == 3.449
    assert round(c.attn_split, 3) == 4.329 and round(c.attn_split_bf16, 3) == 8.657
    assert round(c.head, 3) == 1.059 and c.kv_bytes_per_token == 6880


def test_native_census_counts_584_byte_kv_rows():
    """V4-Flash per token: 21/4 CSA + 20/128 HCA rows of 584 B + 21/4 68-byte FP4 indexer keys
    (the fact sheet's 3,514 B/token)."""
    dequant, native = census(flash_config()), census(flash_config(), "native")
    rows = 21 / 4 + 20 / 128
    assert dequant.kv_bytes_per_token == rows * 1024 + 21 / 4 * 256
    assert native.kv_bytes_per_token == rows * 584 + 21 / 4 * 68 == 3514.25
    assert plan(MACHINES["2xH200"], numerics="native").gpu_used_gb < plan(MACHINES["2xH200"]).gpu_used_gb


def test_census_counts_every_buffer_of_a_real_model():
    """Cross-check the analytic census on the tiny config against the module tree."""
    cfg = ModelConfig.from_hf(preset_config("tiny"))
    model = Transformer(cfg, with_mtp=False)
    experts = sum(b.numel() * b.element_size() for n, b in model.named_buffers()
                  if ".experts." in n)
    c = census(cfg)
    assert round(c.experts * 1e9) == experts
    attn = sum(b.numel() for n, b in model.named_buffers() if ".attn." in n and "norm" not in n)
    runtime_attn = (c.attn_split + c.attn_rest) * 1e9
    assert attn < runtime_attn < 4 * attn + 8 * cfg.dim * cfg.n_layers + 1e6


@pytest.mark.parametrize("key", sorted(MACHINES))
def test_plans_match_docs_deploy(key):
    row = _doc_rows()[key]
    if row[0] == "refused":
        with pytest.raises(PlanError, match=rf"\({row[1].split()[0]} GB needed\)"):
            plan(MACHINES[key])
        row = _doc_rows()[f"{key} --allow-nvme"]
        p = plan(MACHINES[key], allow_nvme=True)
    else:
        p = plan(MACHINES[key])
    assert row[0] == f"tp={p.tp} ep={p.ep} offload={p.offload}"
    got = [p.gpu_used_gb, p.expert_cache_gb, round(p.resident_fraction, 3), p.host_experts_gb,
           p.read_gb_per_token, p.moved_gb_per_token, p.tokens_per_s]
    assert got == [float(v) for v in row[1:]]


def test_cli_prints_the_plan_and_refuses_clearly(capsys):
    assert main(["--machine", "2xH200"]) == 0
    assert "tp=1 ep=2 offload=none" in capsys.readouterr().out
    assert main(["--gpus", "2", "--gpu-mem", "40"]) == 1
    err = capsys.readouterr().err.strip()
    assert "needs" in err and "use more or larger GPUs" in err and len(err.splitlines()) == 1
