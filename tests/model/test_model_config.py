import json

import pytest

from model.config import ConfigError, ModelConfig

FLASH = {
    "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
    "hidden_size": 4096, "num_hidden_layers": 43, "num_attention_heads": 64,
    "num_key_value_heads": 1, "head_dim": 512, "qk_rope_head_dim": 64, "q_lora_rank": 1024,
    "o_groups": 8, "o_lora_rank": 1024, "sliding_window": 128,
    "compress_ratios": [0, 0] + [4, 128] * 20 + [4, 0], "compress_rope_theta": 160000,
    "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                     "beta_fast": 32, "beta_slow": 1},
    "max_position_embeddings": 1048576, "index_n_heads": 64, "index_head_dim": 128,
    "index_topk": 512, "vocab_size": 129280, "tie_word_embeddings": False,
    "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 6,
    "moe_intermediate_size": 2048, "num_hash_layers": 3, "scoring_func": "sqrtsoftplus",
    "topk_method": "noaux_tc", "norm_topk_prob": True, "routed_scaling_factor": 1.5,
    "swiglu_limit": 10.0, "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6,
    "rms_norm_eps": 1e-6, "bos_token_id": 0, "eos_token_id": 1, "num_nextn_predict_layers": 1,
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0",
                            "weight_block_size": [128, 128], "activation_scheme": "dynamic"},
    "torch_dtype": "bfloat16", "transformers_version": "4.57.1",
}
PRO = {**FLASH, "hidden_size": 7168, "num_hidden_layers": 61, "num_attention_heads": 128,
       "q_lora_rank": 1536, "o_groups": 16, "index_topk": 1024, "n_routed_experts": 384,
       "moe_intermediate_size": 3072, "routed_scaling_factor": 2.5,
       "compress_ratios": [128, 128] + [4, 128] * 29 + [4, 0], "expert_dtype": "fp4"}


def test_flash_config_maps_to_reference_names():
    cfg = ModelConfig.from_hf(FLASH)
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.rope_head_dim) == (4096, 43, 64, 512, 64)
    assert cfg.nope_head_dim == 448 and cfg.window_size == 128
    assert (cfg.rope_factor, cfg.original_seq_len, cfg.compress_rope_theta) == (16, 65536, 160000)
    assert (cfg.n_activated_experts, cfg.route_scale, cfg.n_hash_layers) == (6, 1.5, 3)
    kinds = [cfg.layer_kind(i) for i in range(cfg.n_layers)]
    assert kinds[:4] == ["swa", "swa", "csa", "hca"] and kinds.count("csa") == 21
    assert kinds.count("hca") == 20 and cfg.mtp_ratios == (0,)
    with pytest.raises(AttributeError):
        cfg.dim = 1  # frozen


def test_pro_config_has_no_pure_swa_layer():
    cfg = ModelConfig.from_hf(PRO)
    kinds = [cfg.layer_kind(i) for i in range(cfg.n_layers)]
    assert "swa" not in kinds and kinds.count("csa") == 30 and kinds.count("hca") == 31
    assert cfg.route_scale == 2.5 and cfg.dim == 7168


@pytest.mark.parametrize("key", ["dspark_block_size", "engram_vocab_size", "kv_source_layers"])
def test_unknown_variants_are_refused(key):
    with pytest.raises(ConfigError, match="unsupported DeepSeek variant"):
        ModelConfig.from_hf({**FLASH, key: 5})


@pytest.mark.parametrize("change, message", [
    ({"model_type": "deepseek_v3"}, "model_type"),
    ({"compress_ratios": [0, 4]}, "compress_ratios"),
    ({"quantization_config": {**FLASH["quantization_config"], "scale_fmt": "fp32"}}, "scale_fmt"),
    ({"expert_dtype": "fp8"}, "expert_dtype"),
    ({"hidden_size": "wide"}, "malformed"),
])
def test_bad_configs_give_one_clear_error(change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf({**FLASH, **change})


def test_missing_key_is_named():
    raw = dict(FLASH)
    del raw["index_topk"]
    with pytest.raises(ConfigError, match="index_topk"):
        ModelConfig.from_hf(raw)


def test_from_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(FLASH))
    assert ModelConfig.from_file(tmp_path).vocab_size == 129280
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not a readable JSON"):
        ModelConfig.from_file(tmp_path)
