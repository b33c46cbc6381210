"""The FLOP model behind ``bench engine``'s predicted prefill ratio."""

from __future__ import annotations

import dataclasses

from model.config import ModelConfig
from model.planner import flash_config
from model.prefill_cost import predicted_ratio, prefill_flops
from model.toy import preset_config


def _cfg(preset: str) -> ModelConfig:
    return ModelConfig.from_hf(preset_config(preset))


def test_sliding_window_only_model_scales_linearly():
    cfg = dataclasses.replace(_cfg("tiny"), compress_ratios=(0,) * 6)
    assert abs(predicted_ratio(cfg, 32768, 8192) - 4.0) < 0.01
    assert prefill_flops(cfg, 1000).indexer == 0


def test_context_wide_attention_approaches_dense_scaling():
    # a window as long as the prompt is dense attention: attention FLOPs grow 16× for 4× tokens
    cfg = dataclasses.replace(_cfg("tiny"), compress_ratios=(0,) * 6, window_size=1 << 20)
    a, b = prefill_flops(cfg, 8192), prefill_flops(cfg, 32768)
    assert 15.9 < b.attention / a.attention < 16.1
    assert b.linear / a.linear == 4.0


def test_indexer_is_what_makes_tiny_super_linear():
    tiny = prefill_flops(_cfg("tiny"), 32768)
    assert tiny.indexer / tiny.total > 0.85
    assert predicted_ratio(_cfg("tiny"), 32768, 8192) > 12


def test_proportional_preset_keeps_flash_cost_split():
    flash, prop = prefill_flops(flash_config(), 32768), prefill_flops(_cfg("proportional"), 32768)
    for part in ("linear", "attention", "indexer"):
        assert abs(getattr(flash, part) / flash.total - getattr(prop, part) / prop.total) < 0.01
    ratio_flash = predicted_ratio(flash_config(), 32768, 8192)
    assert 4.0 < ratio_flash < 4.5
    assert abs(predicted_ratio(_cfg("proportional"), 32768, 8192) - ratio_flash) < 0.05
