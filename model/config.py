"""The official Hugging Face ``config.json`` of DeepSeek-V4 (Flash / Pro) as one frozen dataclass.

Field names follow DeepSeek's reference ``ModelArgs`` (fact sheet §1.2); ``from_hf`` maps the
HF keys (§1.1) onto them. Later variants (V4.1 DSpark / engram / cross-layer sharing) are
refused: they are a different architecture.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REFUSED_KEY_PREFIXES = ("dspark_", "engram_")
REFUSED_KEYS = (
    "kv_source_layers",
    "index_source_layers",
    "candidate_source_layer",
    "vision_config",
)
KNOWN_COMPRESS_RATIOS = (0, 4, 128)


class ConfigError(ValueError):
    """The config.json does not describe a DeepSeek-V4 (Flash/Pro) model this runtime runs."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    head_dim: int
    rope_head_dim: int
    q_lora_rank: int
    o_groups: int
    o_lora_rank: int
    window_size: int
    compress_ratios: tuple[int, ...]
    n_routed_experts: int
    n_shared_experts: int
    n_activated_experts: int
    moe_inter_dim: int
    n_hash_layers: int
    score_func: str
    route_scale: float
    swiglu_limit: float
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    hc_mult: int
    hc_sinkhorn_iters: int
    hc_eps: float
    norm_eps: float
    rope_theta: float
    compress_rope_theta: float
    rope_factor: float
    original_seq_len: int
    beta_fast: float
    beta_slow: float
    max_position_embeddings: int
    n_mtp_layers: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 1
    expert_dtype: str = "fp4"
    weight_block_size: tuple[int, int] = (128, 128)
    hf: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    # ---- derived ---------------------------------------------------------------------------
    @property
    def nope_head_dim(self) -> int:
        return self.head_dim - self.rope_head_dim

    @property
    def hc_dim(self) -> int:
        return self.hc_mult * self.dim

    def layer_ratio(self, layer: int) -> int:
        """Compression ratio of a backbone layer (0 = pure sliding window)."""
        return self.compress_ratios[layer]

    def layer_kind(self, layer: int) -> str:
        ratio = self.compress_ratios[layer]
        return "swa" if ratio == 0 else ("csa" if ratio == 4 else "hca")

    @property
    def mtp_ratios(self) -> tuple[int, ...]:
        extra = self.compress_ratios[self.n_layers :]
        return tuple(extra[: self.n_mtp_layers]) + (0,) * max(0, self.n_mtp_layers - len(extra))

    # ---- parsing ---------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no config.json") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable JSON file ({exc})") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_hf(raw)

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> ModelConfig:
        """Map an official HF config.json (dict) to a ModelConfig, validating as we go."""
        refused = sorted(
            k for k in raw if k.startswith(REFUSED_KEY_PREFIXES) or k in REFUSED_KEYS
        )
        if refused:
            raise ConfigError(
                "unsupported DeepSeek variant (V4.1 / DSpark / engram keys: "
                + ", ".join(refused)
                + "); this runtime runs DeepSeek-V4 Flash/Pro only"
            )
        model_type = raw.get("model_type")
        if model_type != "deepseek_v4":
            raise ConfigError(f"model_type is {model_type!r}, expected 'deepseek_v4'")

        def need(key: str) -> Any:
            if key not in raw:
                raise ConfigError(f"config.json lacks the key {key!r}")
            return raw[key]

        n_layers = int(need("num_hidden_layers"))
        n_mtp = int(raw.get("num_nextn_predict_layers", 1))
        ratios = tuple(int(r) for r in need("compress_ratios"))
        if len(ratios) < n_layers:
            raise ConfigError(
                f"compress_ratios has {len(ratios)} entries for {n_layers} layers"
            )
        bad = sorted({r for r in ratios if r < 0 or (r not in KNOWN_COMPRESS_RATIOS and r % 4)})
        if bad:
            raise ConfigError(f"compress_ratios contains unsupported ratios {bad}")
        rope = raw.get("rope_scaling") or {}
        if rope and rope.get("type", rope.get("rope_type")) not in ("yarn", None):
            raise ConfigError(f"rope_scaling type {rope.get('type')!r} is not yarn")
        quant = raw.get("quantization_config") or {}
        if quant and quant.get("fmt", "e4m3") != "e4m3":
            raise ConfigError(f"quantization fmt {quant.get('fmt')!r} is not e4m3")
        if quant and quant.get("scale_fmt", "ue8m0") != "ue8m0":
            raise ConfigError(
                f"scale_fmt {quant.get('scale_fmt')!r} is not ue8m0 (V4-Base checkpoints are not supported)"
            )
        expert_dtype = str(raw.get("expert_dtype", quant.get("expert_dtype", "fp4")))
        if expert_dtype != "fp4":
            raise ConfigError(f"expert_dtype {expert_dtype!r} is not supported (only fp4)")
        score = str(raw.get("scoring_func", "sqrtsoftplus"))
        if score not in ("sqrtsoftplus", "sigmoid", "softmax"):
            raise ConfigError(f"scoring_func {score!r} is not supported")
        if int(raw.get("num_key_value_heads", 1)) != 1:
            raise ConfigError("num_key_value_heads must be 1 (shared-KV MQA)")
        eos = raw.get("eos_token_id", 1)
        try:
            cfg = cls(
                vocab_size=int(need("vocab_size")),
                dim=int(need("hidden_size")),
                n_layers=n_layers,
                n_heads=int(need("num_attention_heads")),
                head_dim=int(need("head_dim")),
                rope_head_dim=int(need("qk_rope_head_dim")),
                q_lora_rank=int(need("q_lora_rank")),
                o_groups=int(need("o_groups")),
                o_lora_rank=int(need("o_lora_rank")),
                window_size=int(need("sliding_window")),
                compress_ratios=ratios,
                n_routed_experts=int(need("n_routed_experts")),
                n_shared_experts=int(raw.get("n_shared_experts", 1)),
                n_activated_experts=int(need("num_experts_per_tok")),
                moe_inter_dim=int(need("moe_intermediate_size")),
                n_hash_layers=int(raw.get("num_hash_layers", 0)),
                score_func=score,
                route_scale=float(raw.get("routed_scaling_factor", 1.0)),
                swiglu_limit=float(raw.get("swiglu_limit", 0.0)),
                index_n_heads=int(need("index_n_heads")),
                index_head_dim=int(need("index_head_dim")),
                index_topk=int(need("index_topk")),
                hc_mult=int(raw.get("hc_mult", 4)),
                hc_sinkhorn_iters=int(raw.get("hc_sinkhorn_iters", 20)),
                hc_eps=float(raw.get("hc_eps", 1e-6)),
                norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=float(raw.get("rope_theta", 10000.0)),
                compress_rope_theta=float(raw.get("compress_rope_theta", 160000.0)),
                rope_factor=float(rope.get("factor", 1.0)),
                original_seq_len=int(rope.get("original_max_position_embeddings", 0)),
                beta_fast=float(rope.get("beta_fast", 32)),
                beta_slow=float(rope.get("beta_slow", 1)),
                max_position_embeddings=int(raw.get("max_position_embeddings", 1 << 20)),
                n_mtp_layers=n_mtp,
                bos_token_id=int(raw.get("bos_token_id", 0)),
                eos_token_id=int(eos[0] if isinstance(eos, list) else eos),
                expert_dtype=expert_dtype,
                weight_block_size=tuple(int(v) for v in quant.get("weight_block_size", (128, 128))),
                hf=dict(raw),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config.json has a malformed value: {exc}") from exc
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        checks = [
            (self.rope_head_dim % 2 == 0 and 0 < self.rope_head_dim <= self.head_dim,
             "qk_rope_head_dim must be even and ≤ head_dim"),
            ((self.n_heads * self.head_dim) % self.o_groups == 0,
             "num_attention_heads·head_dim must divide into o_groups"),
            (self.n_heads % self.o_groups == 0, "o_groups must divide num_attention_heads"),
            (0 < self.n_activated_experts <= self.n_routed_experts,
             "num_experts_per_tok must be in 1..n_routed_experts"),
            (self.n_hash_layers <= self.n_layers, "num_hash_layers exceeds num_hidden_layers"),
            (self.window_size > 0, "sliding_window must be positive"),
            (self.weight_block_size == (128, 128), "weight_block_size must be [128, 128]"),
            (self.moe_inter_dim % 32 == 0 and self.dim % 32 == 0,
             "FP4 experts need hidden and moe_intermediate sizes divisible by 32"),
            (self.index_head_dim % 32 == 0 and (self.index_head_dim & (self.index_head_dim - 1)) == 0,
             "index_head_dim must be a power of two ≥ 32"),
            (self.index_head_dim > self.rope_head_dim, "index_head_dim must exceed qk_rope_head_dim"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("hf")
        return out
