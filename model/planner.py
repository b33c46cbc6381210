"""Placement planner: from the GPUs (count, memory, bandwidth), host memory and the checkpoint
config, choose tensor parallelism (attention heads), expert parallelism (routed experts over all
GPUs) or expert offload, print the plan before loading, and refuse plans that cannot fit.

Bytes are what the embedded runtime holds (``Linear.prepare(resident=True)``, the default): FP8
linears as in the checkpoint (1 B/param + one ue8m0 byte per 128×128 block), FP4 experts packed
(0.5 B + one 1-B scale per 32), BF16 tensors (head, embedding, compressors, router) at 2 B, norms
(widened at load) and mHC at 4 B; KV rows as ``model.memory.cache_bytes_per_token`` counts them
at 2 B per value (bf16), or packed FP8 rows (584 B) with ``--numerics native``. Under tp > 1 ``parallel.shard_attention`` dequantises each
rank's wq_b / wo_a / wo_b shard to bf16 (2 B/param / tp) and the FP8 tensors stay loaded beside
it, so a rank holds both and reads only its bf16 shard. Expected tokens/s is bandwidth arithmetic
for batch-1 decode: bytes each GPU reads per token / its memory bandwidth, plus expert bytes moved
over the host link when offloading; an upper bound, not a measurement. docs/DEPLOY.md repeats the
arithmetic by hand.

    v4coder plan --machine 1xH200+128G       # or --gpus 2 --gpu-mem 141 --gpu-bw 4.8 ...
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from model.config import ModelConfig
from model.layers.attention import Attention
from model.layers.linear import Linear
from model.layers.norm import RMSNorm
from model.memory import cache_bytes_per_token

GB = 1e9
GPU_RESERVE_GB = 4.0    # CUDA context, activations, allocator slack, per GPU
HOST_RESERVE_GB = 16.0  # OS, the Python process, page cache
FLASH = {  # DeepSeek-V4-Flash config.json values (fact sheet §1.1) over the toy base keys
    "hidden_size": 4096, "num_hidden_layers": 43, "num_attention_heads": 64, "head_dim": 512,
    "q_lora_rank": 1024, "o_groups": 8, "o_lora_rank": 1024, "sliding_window": 128,
    "compress_ratios": [0, 0] + [4, 128] * 20 + [4, 0], "n_routed_experts": 256,
    "num_experts_per_tok": 6, "moe_intermediate_size": 2048, "num_hash_layers": 3,
    "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512,
}


@dataclass(frozen=True, slots=True)
class Machine:
    name: str
    gpus: int
    gpu_mem_gb: float
    gpu_bw_tbs: float
    host_mem_gb: float
    link_gbs: float = 55.0    # host → GPU (PCIe Gen5 x16, effective)
    unified: bool = False     # CPU and GPU share gpu_mem_gb (host_mem_gb ignored)
    nvme_gbs: float = 6.0     # checkpoint reads when experts stream from disk


MACHINES = {
    "1xH200+128G": Machine("1×H200 + 128 GB host", 1, 141, 4.8, 128),
    "2xH200": Machine("2×H200", 2, 141, 4.8, 512),
    "4xH200": Machine("4×H200", 4, 141, 4.8, 1024),
    "8xH100": Machine("8×H100", 8, 80, 3.35, 1024),
    "unified128": Machine("128 GB unified memory (273 GB/s)", 1, 128, 0.273, 0, unified=True),
}


@dataclass(frozen=True, slots=True)
class Census:
    """Runtime bytes by role (GB). ``attn_split``: the head-sharded part under TP."""

    experts: float          # all routed experts
    expert_active: float    # routed experts read per token (top-k in every layer)
    attn_split: float       # wq_b, wo_a, wo_b (FP8), attn_sink: held at every tp, read at tp=1
    attn_split_bf16: float  # the same dequantised to bf16: under tp > 1, / tp held and read
    attn_rest: float        # wq_a, wkv, norms, compressors, indexers (replicated under TP)
    shared: float           # shared experts
    router: float           # gate weights / biases / hash tables
    head: float             # output head, bf16 (read every token)
    embed: float            # embedding (one row read per token)
    mhc: float              # hyper-connection mixers and norms
    kv_bytes_per_token: float


def flash_config() -> ModelConfig:
    from model.toy import preset_config

    return ModelConfig.from_hf({**preset_config("tiny"), **FLASH})


def _linear_bytes(lin: Linear) -> int:
    """Bytes of one Linear as held resident (checkpoint format)."""
    n = lin.out_features * lin.in_features
    if lin.fmt == "fp4":
        return n // 2 + n // 32
    if lin.fmt == "fp8":  # e4m3 + one ue8m0 byte per 128×128 block
        return n + -(-lin.out_features // 128) * -(-lin.in_features // 128)
    return n * (2 if lin.fmt == "bf16" else 4)


def _module_bytes(module: torch.nn.Module, split: tuple[str, ...] = ()) -> tuple[int, int, int]:
    """(bytes under names in ``split``, all other bytes, bytes of ``split`` with its linears
    dequantised to bf16) as the runtime holds them."""
    parts = [0, 0, 0]
    for name, sub in module.named_modules():
        top = name.split(".")[0]
        target = 0 if top in split else 1
        if isinstance(sub, Linear):
            parts[target] += _linear_bytes(sub)
            if target == 0:
                parts[2] += sub.out_features * sub.in_features * 2
            continue
        for leaf, buf in sub.named_buffers(recurse=False):
            size = 4 if isinstance(sub, RMSNorm) else buf.element_size()
            t = 0 if leaf in split and name == "" else target
            parts[t] += buf.numel() * size
            if t == 0:
                parts[2] += buf.numel() * size
    return parts[0], parts[1], parts[2]


def census(cfg: ModelConfig, numerics: str = "dequant") -> Census:
    split = ("wq_b", "wo_a", "wo_b", "attn_sink")
    attn_split = attn_rest = attn_split_bf16 = 0
    kinds: dict[int, tuple[int, int, int]] = {}
    for ratio in cfg.compress_ratios[: cfg.n_layers]:
        if ratio not in kinds:
            kinds[ratio] = _module_bytes(Attention(cfg, ratio), split)
        attn_split += kinds[ratio][0]
        attn_rest += kinds[ratio][1] + 2 * 4 * cfg.dim  # + attn_norm, ffn_norm (fp32)
        attn_split_bf16 += kinds[ratio][2]
    per_expert = 3 * cfg.dim * cfg.moe_inter_dim * (0.5 + 1 / 32)
    shared_w = (2 * _linear_bytes(Linear(cfg.dim, cfg.moe_inter_dim))  # FP8 w1, w3, w2
                + _linear_bytes(Linear(cfg.moe_inter_dim, cfg.dim)))
    mix = (2 + cfg.hc_mult) * cfg.hc_mult
    hc = cfg.n_layers * 2 * (mix * cfg.hc_dim + mix + 3) * 4 + (cfg.hc_mult * cfg.hc_dim + 5) * 4
    hash_layers = min(cfg.n_hash_layers, cfg.n_layers)
    router = (cfg.n_layers * cfg.n_routed_experts * cfg.dim * 2
              + (cfg.n_layers - hash_layers) * cfg.n_routed_experts * 4
              + hash_layers * cfg.vocab_size * cfg.n_activated_experts * 8)
    kv = cache_bytes_per_token(cfg, 2, numerics)  # bf16 compute; native: packed FP8 KV rows
    return Census(
        experts=per_expert * cfg.n_routed_experts * cfg.n_layers / GB,
        expert_active=per_expert * cfg.n_activated_experts * cfg.n_layers / GB,
        attn_split=attn_split / GB, attn_split_bf16=attn_split_bf16 / GB,
        attn_rest=attn_rest / GB,
        shared=cfg.n_layers * cfg.n_shared_experts * shared_w / GB,
        router=router / GB, head=cfg.vocab_size * cfg.dim * 2 / GB,
        embed=cfg.vocab_size * cfg.dim * 2 / GB, mhc=(hc + 4 * cfg.dim) / GB,
        kv_bytes_per_token=kv)


class PlanError(ValueError):
    """No placement fits; the message says what is missing."""


@dataclass(frozen=True, slots=True)
class Plan:
    machine: str
    tp: int
    ep: int
    offload: str               # "none", "host" (pinned RAM) or "nvme" (mmapped checkpoint)
    gpu_used_gb: float         # per GPU, including KV and the reserve
    gpu_capacity_gb: float
    expert_cache_gb: float     # routed-expert bytes resident per GPU
    resident_fraction: float   # of all routed experts, on GPUs
    host_experts_gb: float     # routed-expert bytes kept in host RAM (offload "host")
    read_gb_per_token: float   # HBM bytes read per token by the busiest GPU
    moved_gb_per_token: float  # expert bytes copied to the GPU per token (uniform routing)
    tokens_per_s: float        # bandwidth bound, batch 1

    def render(self) -> str:
        lines = [f"plan for {self.machine}: tp={self.tp} ep={self.ep} offload={self.offload} "
                 f"(attention heads split {self.tp} ways, routed experts over all "
                 f"{self.tp * self.ep} GPUs)",
                 f"  memory per GPU   {self.gpu_used_gb:7.1f} / {self.gpu_capacity_gb:.0f} GB"
                 f" (routed experts {self.expert_cache_gb:.1f} GB,"
                 f" {100 * self.resident_fraction:.0f}% of all experts on GPU)"]
        if self.offload != "none":
            lines.append(f"  host experts     {self.host_experts_gb:7.1f} GB; moved per token "
                         f"{self.moved_gb_per_token:.3f} GB")
        lines.append(f"  HBM read/token   {self.read_gb_per_token:7.2f} GB -> about "
                     f"{self.tokens_per_s:g} tokens/s (batch-1 bandwidth bound)")
        return "\n".join(lines)


def _tp_options(m: Machine, cfg: ModelConfig) -> list[int]:
    return [tp for tp in range(1, m.gpus + 1) if m.gpus % tp == 0
            and cfg.n_heads % tp == 0 and cfg.o_groups % tp == 0]


def plan(m: Machine, cfg: ModelConfig | None = None, context_tokens: int = 262_144,
         allow_nvme: bool = False, numerics: str = "dequant") -> Plan:
    """The fastest placement that fits, or PlanError with the shortfall."""
    cfg = cfg or flash_config()
    c = census(cfg, numerics)
    kv = c.kv_bytes_per_token * context_tokens / GB
    usable = m.gpu_mem_gb - GPU_RESERVE_GB - (HOST_RESERVE_GB if m.unified else 0)
    dense_read = c.attn_rest + c.shared + c.head + c.router + c.mhc  # per token, every GPU
    fitting: list[Plan] = []
    if cfg.n_routed_experts % m.gpus == 0:
        for tp in _tp_options(m, cfg):
            # tp > 1: the FP8 attention stays loaded beside this rank's bf16 shard
            held, attn_read = ((c.attn_split, c.attn_split) if tp == 1 else
                               (c.attn_split + c.attn_split_bf16 / tp, c.attn_split_bf16 / tp))
            base = held + c.attn_rest + c.shared + c.router + c.head + c.embed + c.mhc
            experts = c.experts / m.gpus
            if base + kv + experts <= usable:
                read = attn_read + dense_read + c.expert_active / m.gpus
                fitting.append(Plan(m.name, tp, m.gpus // tp, "none",
                                    round(base + kv + experts + GPU_RESERVE_GB, 1), m.gpu_mem_gb,
                                    round(experts, 1), 1.0, 0.0, round(read, 2), 0.0,
                                    round(m.gpu_bw_tbs * 1000 / read)))
    if fitting:
        return max(fitting, key=lambda p: (p.tokens_per_s, -p.tp))
    base = c.attn_split + c.attn_rest + c.shared + c.router + c.head + c.embed + c.mhc
    need = base + kv + c.experts
    cache = usable - base - kv
    minimum = c.expert_active / cfg.n_layers  # one layer's top-k experts
    if m.gpus > 1 or cache < minimum:
        raise PlanError(f"{m.name}: the model needs {need:.1f} GB per GPU set "
                        f"({base:.1f} GB dense + {c.experts:.1f} GB experts + {kv:.1f} GB KV), "
                        f"{usable:.1f} GB usable; use more or larger GPUs")
    cold = c.experts - cache
    host_free = m.host_mem_gb - HOST_RESERVE_GB
    frac = cache / c.experts
    moved = c.expert_active * (1 - frac)
    read = dense_read + c.attn_split + c.expert_active * frac
    if not m.unified and cold <= host_free:
        tier, link = "host", m.link_gbs
    elif allow_nvme:
        tier, link = "nvme", m.nvme_gbs
    else:
        where = (f"{cold:.1f} GB of experts do not fit in {usable:.1f} GB of unified memory"
                 if m.unified else f"{cold:.1f} GB of cold experts exceed {host_free:.1f} GB "
                 "of free host memory")
        raise PlanError(f"{m.name}: cannot hold the model ({need:.1f} GB needed): {where}; "
                        "pass --allow-nvme to stream experts from the checkpoint on disk")
    seconds = read / (m.gpu_bw_tbs * 1000) + moved / link
    return Plan(m.name, 1, 1, tier, round(usable + GPU_RESERVE_GB, 1), m.gpu_mem_gb, round(cache, 1),
        round(frac, 3), round(cold if tier == "host" else 0.0, 1), round(read, 2),
        round(moved, 3), round(1 / seconds, 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="v4coder plan", description="choose TP/EP/offload")
    p.add_argument("--machine", choices=sorted(MACHINES))
    p.add_argument("--gpus", type=int)
    p.add_argument("--gpu-mem", type=float, help="GB per GPU")
    p.add_argument("--gpu-bw", type=float, default=4.8, help="TB/s per GPU")
    p.add_argument("--host-mem", type=float, default=0.0, help="GB of host RAM")
    p.add_argument("--link", type=float, default=55.0, help="GB/s host to GPU")
    p.add_argument("--unified", action="store_true")
    p.add_argument("--checkpoint", type=Path, help="read config.json from here (default V4-Flash)")
    p.add_argument("--context", type=int, default=262_144, help="tokens of KV cache to reserve")
    p.add_argument("--allow-nvme", action="store_true")
    p.add_argument("--numerics", choices=("dequant", "native"), default="dequant",
                   help="native: KV rows held packed in the FP8 layout (584 B per row)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.machine:
            m = MACHINES[args.machine]
        elif args.gpus and args.gpu_mem:
            m = Machine(f"{args.gpus}×{args.gpu_mem:g} GB GPU", args.gpus, args.gpu_mem,
                        args.gpu_bw, args.host_mem, args.link, args.unified)
        else:
            raise PlanError("give --machine, or --gpus and --gpu-mem")
        cfg = ModelConfig.from_file(args.checkpoint) if args.checkpoint else None
        result = plan(m, cfg, args.context, args.allow_nvme, args.numerics)
    except (PlanError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(result)) if args.json else result.render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
