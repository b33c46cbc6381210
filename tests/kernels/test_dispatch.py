"""The one dispatch point: env var rules, and the whole toy model through the Triton path."""

from __future__ import annotations

import pytest
import torch

from model.kernels import ops


def test_backend_rules(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.delenv(ops.BACKEND_ENV, raising=False)
    assert ops.backend(x) == "reference"  # CPU tensors default to the reference
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")
    assert ops.backend(x) == "reference"
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    assert ops.backend(x) == "triton"  # allowed: TRITON_INTERPRET=1
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ops.KernelBackendError, match="TRITON_INTERPRET"):
        ops.backend(x)
    monkeypatch.setenv(ops.BACKEND_ENV, "cuda-please")
    with pytest.raises(ops.KernelBackendError, match="expected triton"):
        ops.backend(x)


def test_ops_route_to_triton(monkeypatch):
    q, kv = torch.randn(1, 2, 4, 32), torch.randn(1, 5, 32)
    sink, idx = torch.randn(4), torch.tensor([[[0, 1, -1], [4, 2, 3]]])
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")
    ref = ops.sparse_attn(q, kv, sink, idx, 0.3)
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    calls = []
    real = ops._sparse_attn.sparse_attn_triton
    monkeypatch.setattr(ops._sparse_attn, "sparse_attn_triton",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    got = ops.sparse_attn(q, kv, sink, idx, 0.3)
    assert calls and torch.allclose(got, ref, atol=1e-5)


@pytest.fixture(scope="module")
def toy_path(tmp_path_factory):
    from model.toy import write_toy_checkpoint

    return write_toy_checkpoint(tmp_path_factory.mktemp("kern") / "ckpt", seed=0, preset="tiny")


def _prefill_then_decode(lm, ids: list[int], n_decode: int) -> torch.Tensor:
    cache = lm.new_cache()
    rows = [lm.logits(ids[:-n_decode], cache)]
    rows += [lm.logits([t], cache) for t in ids[-n_decode:]]
    return torch.cat(rows)


def _count_calls(monkeypatch, module, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("numerics", ["dequant", "native"])
def test_toy_model_logits_same_through_triton(toy_path, numerics, monkeypatch):
    """Every routed op (attention, indexer, compressor, mHC, the fused MoE over the layer's expert
    bank, and in native numerics the FP8 GEMM for resident FP8 linears) on the Triton path:
    a 12-token prefill (3 CSA rows < top-8, no HCA row yet) then 2 decode steps."""
    from model.generate import load_model

    toy = load_model(toy_path, dtype="float32", numerics=numerics, progress=False)
    moe_calls = _count_calls(monkeypatch, ops._moe, "moe_fp4_triton")
    fp8_calls = _count_calls(monkeypatch, ops._gemm, "fp8_gemm_triton")
    ids = list(range(100, 114))
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")
    ref = _prefill_then_decode(toy, ids, 2)
    assert not moe_calls and not fp8_calls
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    got = _prefill_then_decode(toy, ids, 2)
    n_moe = toy.config.n_layers * 3  # every layer, every forward (prefill + 2 decode steps)
    assert len(moe_calls) == n_moe
    # native: every resident FP8 linear (attention, shared experts, ...) runs the FP8 GEMM;
    # dequant numerics keep the dequantised weight (the FP8 GEMM would quantise activations)
    assert (len(fp8_calls) > n_moe) if numerics == "native" else not fp8_calls
    assert torch.allclose(got, ref, atol=1e-3, rtol=1e-3), (got - ref).abs().max()


def test_toy_native_packed_kv_same_through_triton(toy_path, monkeypatch):
    """Native numerics hold the KV rows packed (200-byte FP8 rows at the toy's head_dim 128) and
    the Triton attention kernel reads them directly (KV_FP8 path), prefill and decode, past the
    16-token window and with CSA and HCA rows in the candidate set."""
    from model.generate import load_model

    toy_native = load_model(toy_path, dtype="float32", numerics="native", progress=False)
    ids = list(range(100, 120))  # 18-token prefill: past the 16-row window, 1 HCA row
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")
    ref = _prefill_then_decode(toy_native, ids, 2)
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    packed_reads = []
    real = ops._sparse_attn.sparse_attn_triton

    def counting(*args, **kwargs):
        if kwargs.get("layout") is not None and args[1].dtype == torch.uint8:
            packed_reads.append(args[1].shape[-1])
        return real(*args, **kwargs)

    monkeypatch.setattr(ops._sparse_attn, "sparse_attn_triton", counting)
    got = _prefill_then_decode(toy_native, ids, 2)
    n_layers = toy_native.config.n_layers
    assert packed_reads == [200] * (3 * n_layers)  # every layer, prefill + 2 decode steps
    assert torch.allclose(got, ref, atol=1e-3, rtol=1e-3), (got - ref).abs().max()


def test_overlapping_launches_follow_the_setting_then_the_gpus_table(monkeypatch, tmp_path):
    """``launch.pdl``: V4CODER_PDL says 1 or 0; unset, the launch-choices table's "pdl"
    decision (none on a CPU: off); a bad value is one line; ``overlapping`` overrides both."""
    import json

    from model.kernels import choices, launch

    cpu = torch.device("cpu")
    on = {"PDL": True, "launch_pdl": True}
    monkeypatch.delenv(launch.PDL_ENV, raising=False)
    monkeypatch.delenv(choices.CHOICES_ENV, raising=False)
    choices.clear_cache()
    assert launch.pdl(cpu) == {}
    monkeypatch.setenv(launch.PDL_ENV, "1")
    assert launch.pdl(cpu) == on   # here: the interpreter, its waits no-ops
    with launch.overlapping(False):
        assert launch.pdl(cpu) == {}
    monkeypatch.setenv(launch.PDL_ENV, "0")
    assert launch.pdl(cpu) == {}
    with launch.overlapping():
        assert launch.pdl(cpu) == on
    monkeypatch.setenv(launch.PDL_ENV, "sometimes")
    with pytest.raises(ValueError, match=r"V4CODER_PDL='sometimes': expected 1"):
        launch.pdl(cpu)
    monkeypatch.delenv(launch.PDL_ENV)
    table = tmp_path / "choices.json"
    table.write_text(json.dumps({"choices": {"pdl": {"options": {"pdl": True}}}}))
    monkeypatch.setenv(choices.CHOICES_ENV, str(table))   # a table for any device
    choices.clear_cache()
    assert launch.pdl(cpu) == on
    table.write_text(json.dumps({"choices": {"pdl": {"options": {}}}}))
    choices.clear_cache()
    assert launch.pdl(cpu) == {}
    choices.clear_cache()


def test_a_grown_device_table_leaves_the_shorter_one_allocated():
    """``launch.arrivals`` (and ``counting``) grow by replacing their table; a CUDA graph
    captured with the shorter one keeps its address (a decode piece's FP8 GEMM counts its
    arrivals there), so the shorter one must never be freed and reused under it."""
    import gc
    import weakref

    from model.kernels import launch

    dev = torch.device("cpu")
    first = launch.arrivals(8, dev)
    table = weakref.ref(first._base if first._base is not None else first)
    longer = launch.arrivals(table().numel() + 1, dev)
    del first
    gc.collect()
    assert table() is not None and table() is not longer._base
    assert longer.numel() == table().numel() + 1 and not longer.any()
