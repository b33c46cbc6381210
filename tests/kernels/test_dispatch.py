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
def toy(tmp_path_factory):
    from model.generate import load_model
    from model.toy import write_toy_checkpoint

    path = write_toy_checkpoint(tmp_path_factory.mktemp("kern") / "ckpt", seed=0, preset="tiny")
    return load_model(path, dtype="float32", progress=False)


def _prefill_then_decode(lm, ids: list[int], n_decode: int) -> torch.Tensor:
    cache = lm.new_cache()
    rows = [lm.logits(ids[:-n_decode], cache)]
    rows += [lm.logits([t], cache) for t in ids[-n_decode:]]
    return torch.cat(rows)


def test_toy_model_logits_same_through_triton(toy, monkeypatch):
    """Every routed op (attention, indexer, compressor, mHC, FP4 experts) on the Triton path:
    a 12-token prefill (3 CSA rows < top-8, no HCA row yet) then 2 decode steps."""
    ids = list(range(100, 114))
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")
    ref = _prefill_then_decode(toy, ids, 2)
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    got = _prefill_then_decode(toy, ids, 2)
    assert torch.allclose(got, ref, atol=1e-3, rtol=1e-3), (got - ref).abs().max()
