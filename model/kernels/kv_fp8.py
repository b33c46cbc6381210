"""The FP8 KV-cache row layout (fact sheet §2.8, §4) and its pure-torch pack / unpack.

One row per token (window) or compressed entry, ``row_bytes`` bytes (584 for V4: 448 + 128 + 7 + 1):

    [0, nope)                      e4m3 codes of the no-RoPE dims (one ue8m0 scale per 1×block)
    [nope, nope + 2·rope)          the RoPE dims as little-endian bf16
    [nope + 2·rope, … + nblocks)   ue8m0 scale bytes, one per block of ``block`` no-RoPE dims
    then zero padding up to a multiple of 8 bytes

Power-of-two scales make this lossless w.r.t. the reference's FP8 fake quantisation of kv[:nope].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.kernels import quant

KV_QUANT_BLOCK = 64  # no-RoPE KV dims share one power-of-two scale per 1×64 block (§2.8)


@dataclass(frozen=True, slots=True)
class KVLayout:
    head_dim: int = 512
    rope_dim: int = 64
    block: int = KV_QUANT_BLOCK

    @property
    def nope(self) -> int:
        return self.head_dim - self.rope_dim

    @property
    def n_scales(self) -> int:
        return -(-self.nope // self.block)

    @property
    def scale_offset(self) -> int:
        return self.nope + 2 * self.rope_dim

    @property
    def row_bytes(self) -> int:
        return -(-(self.scale_offset + self.n_scales) // 8) * 8


V4_KV_LAYOUT = KVLayout()  # 584-byte rows


def pack_kv_fp8(kv: torch.Tensor, layout: KVLayout = V4_KV_LAYOUT) -> torch.Tensor:
    """kv [..., head_dim] (any float dtype) → uint8 [..., row_bytes]."""
    assert kv.shape[-1] == layout.head_dim, (kv.shape, layout)
    lead = kv.shape[:-1]
    codes, scales = quant.act_quant_scales(kv[..., : layout.nope], layout.block)
    out = torch.zeros(*lead, layout.row_bytes, dtype=torch.uint8, device=kv.device)
    out[..., : layout.nope] = codes.to(torch.float8_e4m3fn).view(torch.uint8)
    rope = kv[..., layout.nope :].to(torch.bfloat16).contiguous().view(torch.uint8)
    out[..., layout.nope : layout.scale_offset] = rope
    so = layout.scale_offset
    out[..., so : so + layout.n_scales] = quant.float_to_e8m0(scales).view(torch.uint8)
    return out


def unpack_kv_fp8(packed: torch.Tensor, layout: KVLayout = V4_KV_LAYOUT) -> torch.Tensor:
    """uint8 [..., row_bytes] → float32 [..., head_dim] (the dequantised rows)."""
    assert packed.shape[-1] == layout.row_bytes, (packed.shape, layout)
    codes = packed[..., : layout.nope].contiguous().view(torch.float8_e4m3fn).float()
    so = layout.scale_offset
    scales = quant.e8m0_to_float(packed[..., so : so + layout.n_scales].contiguous())
    nope = codes * scales.repeat_interleave(layout.block, dim=-1)[..., : layout.nope]
    rope = packed[..., layout.nope : so].contiguous().view(torch.bfloat16).float()
    return torch.cat([nope, rope], dim=-1)
