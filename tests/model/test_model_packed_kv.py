"""Native numerics hold the attention KV rows (window + compressed) packed in the FP8 layout and
read them through ops.sparse_attn(..., layout=): the logits equal those of float rows of the
same values, bit for bit, in fp32 and bf16, for full prefill, chunked prefill and token-by-token decode."""

from __future__ import annotations

import pytest
import torch
from model_helpers import run_chunks, token_ids

from model.cache import index_key_layout, kv_layout
from model.generate import LoadedModel, load_model
from model.kernels.kv_fp8 import unpack_kv_fp8
from model.layers.attention import Attention

IDS = token_ids(150, seed=7)  # > window 16, 37 CSA rows (> top-8), 9 HCA rows


def set_packed(lm: LoadedModel, packed: bool) -> None:
    for module in lm.model.modules():
        if isinstance(module, Attention):
            module.pack_kv = packed


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def native(request, tiny_ckpt) -> LoadedModel:
    lm = load_model(tiny_ckpt, dtype=request.param, numerics="native", progress=False)
    yield lm
    set_packed(lm, True)


def test_cache_holds_packed_rows_of_the_config_layout(native):
    cfg, layout = native.config, kv_layout(native.config)
    assert layout.row_bytes == 200  # toy head_dim 128 / rope 64: 64 e4m3 + 128 B bf16 + 1 scale
    cache = native.new_cache()
    native.logits(IDS, cache)
    for i, layer in enumerate(cache.layers):
        assert layer.window.dtype == torch.uint8
        assert layer.window.shape == (1, cfg.window_size - 1, layout.row_bytes)
        if cfg.compress_ratios[i]:
            rows = layer.compressor.rows
            assert rows.dtype == torch.uint8
            assert rows.shape == (1, len(IDS) // cfg.compress_ratios[i], layout.row_bytes)
        if cfg.layer_kind(i) == "csa":  # FP4 keys: test_model_packed_index.py
            assert layer.indexer.rows.shape == (1, len(IDS) // 4, index_key_layout(cfg).row_bytes)


@pytest.mark.parametrize("sizes", [[150], [1, 3, 17, 33], [120] + [1] * 12])
def test_packed_logits_equal_float_row_logits(native, sizes):
    set_packed(native, False)
    want, float_cache = run_chunks(native, IDS, sizes)
    set_packed(native, True)
    got, packed_cache = run_chunks(native, IDS, sizes)
    assert torch.equal(got, want), (got - want).abs().max()
    layout = kv_layout(native.config)
    for fl, pk in zip(float_cache.layers, packed_cache.layers, strict=True):
        dtype = fl.window.dtype
        assert torch.equal(unpack_kv_fp8(pk.window, layout).to(dtype), fl.window)
        if fl.compressor.rows is not None:
            assert torch.equal(unpack_kv_fp8(pk.compressor.rows, layout).to(dtype),
                               fl.compressor.rows)
    assert packed_cache.nbytes() < float_cache.nbytes()


def test_packed_chunked_and_decode_equal_full_prefill(native):
    full, _ = run_chunks(native, IDS, [150])
    tol = 1e-5 if native.model.numerics.dtype == torch.float32 else 2e-3
    for sizes in ([5, 6, 7, 8, 9, 10, 11, 12], [120] + [1] * 12):
        got, cache = run_chunks(native, IDS, sizes)
        assert ((got - full).abs().max() / full.abs().max()).item() < tol
        assert cache.length == len(IDS)


def test_a_cache_refuses_rows_of_the_other_format(native):
    cache = native.new_cache()
    native.logits(IDS[:20], cache)  # packed rows
    set_packed(native, False)
    try:
        with pytest.raises(ValueError, match="another format"):
            native.logits(IDS[20:21], cache)
    finally:
        set_packed(native, True)
