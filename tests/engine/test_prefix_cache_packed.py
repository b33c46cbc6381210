"""Prefix reuse in native numerics, where the window and compressed KV rows are packed FP8 rows:
blocks store and restore the packed rows (memory and disk), and restored = cold logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_support import token_ids

from model.cache import index_key_layout, kv_layout
from model.engine import Engine, EngineConfig
from model.generate import LoadedModel, load_model
from model.sampling import generation_defaults


@pytest.fixture(scope="module")
def native_lm(toy_ckpt: Path) -> LoadedModel:
    return load_model(toy_ckpt, dtype="float32", numerics="native", progress=False)


def _engine(lm: LoadedModel, ckpt: Path, tokenizer: object, **config: object) -> Engine:
    return Engine(lm, EngineConfig(**config), tokenizer, generation_defaults(ckpt))  # type: ignore[arg-type]


def test_packed_blocks_restore_to_cold_logits(native_lm, toy_ckpt, toy_tokenizer, tmp_path):
    row_bytes = kv_layout(native_lm.config).row_bytes
    key_bytes = index_key_layout(native_lm.config).row_bytes
    first = token_ids(300, seed=50)
    engine = _engine(native_lm, toy_ckpt, toy_tokenizer, cache_dir=tmp_path, chunk_tokens=200)
    engine.prefill(first)
    blocks = list(engine.prefix.blocks.values())
    assert len(blocks) == 2
    csa = 0
    for block in blocks:
        for i, lb in enumerate(block.layers):
            assert lb.window.dtype == torch.uint8 and lb.window.shape[-1] == row_bytes
            if native_lm.config.compress_ratios[i]:
                assert lb.rows.dtype == torch.uint8 and lb.rows.shape[-1] == row_bytes
            if native_lm.config.layer_kind(i) == "csa":  # indexer keys: packed FP4 rows
                assert lb.index_rows.dtype == torch.uint8
                assert lb.index_rows.shape[1:] == (len(block.tokens) // 4, key_bytes)
                csa += 1
    assert csa == 2 * sum(native_lm.config.layer_kind(i) == "csa"
                          for i in range(native_lm.config.n_layers)) > 0
    prompt = first[:280] + token_ids(20, seed=51)
    cold = native_lm.logits(prompt)[-1]
    for fresh in (engine, _engine(native_lm, toy_ckpt, toy_tokenizer, cache_dir=tmp_path)):
        seq, logits = fresh.prefill(prompt)  # the second engine reads the blocks from disk
        assert fresh.counters.reused_tokens == 256
        torch.testing.assert_close(logits, cold, rtol=1e-4, atol=1e-4)
        assert seq.cache.layers[0].window.dtype == torch.uint8
        for i, layer in enumerate(seq.cache.layers):
            if native_lm.config.layer_kind(i) == "csa":
                assert layer.indexer.rows.dtype == torch.uint8
                assert layer.indexer.rows.shape == (1, 300 // 4, key_bytes)
