"""Test-only: build transformers' DeepseekV4ForCausalLM (the oracle) from one of our
official-format checkpoints, converting names and dequantising to float32."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from model.checkpoint import Checkpoint
from model.config import ModelConfig
from model.kernels.quant import dequant_fp4, dequant_fp8_block

LAYER_RENAMES = [
    (r"attn_norm\.", "input_layernorm."), (r"ffn_norm\.", "post_attention_layernorm."),
    (r"hc_attn_(fn|base|scale)$", r"attn_hc.\1"), (r"hc_ffn_(fn|base|scale)$", r"ffn_hc.\1"),
    (r"attn\.indexer\.compressor\.", "self_attn.compressor.indexer.c."),
    (r"attn\.indexer\.weights_proj\.", "self_attn.compressor.indexer.scorer.weights_proj."),
    (r"attn\.indexer\.wq_b\.", "self_attn.compressor.indexer.q_b_proj."),
    (r"attn\.compressor\.", "self_attn.compressor.c."),
    (r"attn\.wq_a\.", "self_attn.q_a_proj."), (r"attn\.q_norm\.", "self_attn.q_a_norm."),
    (r"attn\.wq_b\.", "self_attn.q_b_proj."), (r"attn\.wkv\.", "self_attn.kv_proj."),
    (r"attn\.kv_norm\.", "self_attn.kv_norm."), (r"attn\.wo_a\.", "self_attn.o_a_proj."),
    (r"attn\.wo_b\.", "self_attn.o_b_proj."), (r"attn\.attn_sink$", "self_attn.sinks"),
    (r"ffn\.gate\.bias$", "mlp.gate.e_score_correction_bias"), (r"ffn\.gate\.", "mlp.gate."),
    (r"ffn\.shared_experts\.w1\.", "mlp.shared_experts.gate_proj."),
    (r"ffn\.shared_experts\.w3\.", "mlp.shared_experts.up_proj."),
    (r"ffn\.shared_experts\.w2\.", "mlp.shared_experts.down_proj."),
]
COMPRESSOR_RENAMES = [(r"c\.wkv\.", "kv_proj."), (r"c\.wgate\.", "gate_proj."),
                      (r"c\.ape$", "position_bias"), (r"c\.norm\.", "kv_norm.")]
GLOBAL_RENAMES = {"embed.weight": "model.embed_tokens.weight", "head.weight": "lm_head.weight",
                  "norm.weight": "model.norm.weight", "hc_head_fn": "model.hc_head.hc_fn",
                  "hc_head_base": "model.hc_head.hc_base", "hc_head_scale": "model.hc_head.hc_scale"}


def hf_config(cfg: ModelConfig):
    from transformers import DeepseekV4Config

    kinds = {"swa": "sliding_attention", "csa": "compressed_sparse_attention",
             "hca": "heavily_compressed_attention"}
    hca = sorted({r for r in cfg.compress_ratios[: cfg.n_layers] if r not in (0, 4)}) or [128]
    assert len(hca) == 1, "transformers supports one HCA ratio per model"
    config = DeepseekV4Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, moe_intermediate_size=cfg.moe_inter_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, head_dim=cfg.head_dim,
        q_lora_rank=cfg.q_lora_rank, num_experts_per_tok=cfg.n_activated_experts,
        n_routed_experts=cfg.n_routed_experts, scoring_func=cfg.score_func,
        routed_scaling_factor=cfg.route_scale, rope_theta=cfg.rope_theta,
        compress_rope_theta=cfg.compress_rope_theta,
        layer_types=[kinds[cfg.layer_kind(i)] for i in range(cfg.n_layers)],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": hca[0]},
        mlp_layer_types=["hash_moe" if i < cfg.n_hash_layers else "moe" for i in range(cfg.n_layers)],
        hc_mult=cfg.hc_mult, hc_sinkhorn_iters=cfg.hc_sinkhorn_iters, hc_eps=cfg.hc_eps,
        swiglu_limit=cfg.swiglu_limit, sliding_window=cfg.window_size, o_groups=cfg.o_groups,
        o_lora_rank=cfg.o_lora_rank, index_n_heads=cfg.index_n_heads,
        index_head_dim=cfg.index_head_dim, index_topk=cfg.index_topk, rms_norm_eps=cfg.norm_eps,
        partial_rotary_factor=cfg.rope_head_dim / cfg.head_dim,
        rope_parameters={"rope_type": "yarn", "factor": cfg.rope_factor,
                         "original_max_position_embeddings": cfg.original_seq_len,
                         "beta_fast": cfg.beta_fast, "beta_slow": cfg.beta_slow},
        max_position_embeddings=cfg.max_position_embeddings,
    )
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    return config


def _rename(name: str) -> str | None:
    if name in GLOBAL_RENAMES:
        return GLOBAL_RENAMES[name]
    m = re.match(r"layers\.(\d+)\.(.*)$", name)
    if m is None:
        return None  # mtp.* — transformers ignores the MTP block
    rest = m.group(2)
    for pattern, repl in LAYER_RENAMES:
        new = re.sub("^" + pattern, repl, rest)
        if new != rest:
            rest = new
            break
    for pattern, repl in COMPRESSOR_RENAMES:
        rest = re.sub(r"(compressor\.|indexer\.)" + pattern, r"\g<1>" + repl, rest)
    return f"model.layers.{m.group(1)}.{rest}"


def hf_state_dict(ckpt_dir: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    ckpt = Checkpoint.open(ckpt_dir)
    cfg = ckpt.config
    raw = {name: ckpt.shard(f).tensor(name) for name, f in ckpt.weight_map.items()}
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, int, str], torch.Tensor] = {}
    for name, t in raw.items():
        if name.endswith(".scale") and t.dtype == torch.float8_e8m0fnu:
            continue
        if t.dtype == torch.float8_e4m3fn:
            t = dequant_fp8_block(t, raw[name[: -len("weight")] + "scale"])
        elif t.dtype == torch.int8:
            t = dequant_fp4(t, raw[name[: -len("weight")] + "scale"])
        m = re.match(r"layers\.(\d+)\.ffn\.experts\.(\d+)\.(w[123])\.weight$", name)
        if m:
            experts[(int(m.group(1)), int(m.group(2)), m.group(3))] = t.float()
            continue
        new = _rename(name)
        if new is not None:
            out[new] = t if t.dtype in (torch.int64, torch.int32) else t.float()
    for layer in range(cfg.n_layers):
        prefix = f"model.layers.{layer}.mlp.experts."
        e = range(cfg.n_routed_experts)
        out[prefix + "gate_up_proj"] = torch.stack(
            [torch.cat([experts[(layer, i, "w1")], experts[(layer, i, "w3")]], 0) for i in e])
        out[prefix + "down_proj"] = torch.stack([experts[(layer, i, "w2")] for i in e])
    return cfg, out


def load_hf_model(ckpt_dir: str | Path):
    from transformers import DeepseekV4ForCausalLM

    cfg, state = hf_state_dict(ckpt_dir)
    torch.manual_seed(0)
    model = DeepseekV4ForCausalLM(hf_config(cfg)).float().eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    assert not missing and not unexpected, (missing, unexpected)
    return model
