"""The FP8 KV-cache row layout at the configs' own head dims: exact round trips, byte positions."""

from __future__ import annotations

import pytest
import torch

from model.cache import kv_layout
from model.config import ModelConfig
from model.kernels import quant
from model.kernels.kv_fp8 import KVLayout, pack_kv_fp8, unpack_kv_fp8
from model.planner import flash_config
from model.toy import preset_config


def _native_rows(kv: torch.Tensor, layout: KVLayout) -> torch.Tensor:
    """What native numerics hold: e4m3 × pow2 per 1×block no-RoPE dims, bf16 RoPE dims."""
    nope = layout.nope
    return torch.cat([quant.fp8_fake_quant(kv[..., :nope], layout.block),
                      kv[..., nope:].to(torch.bfloat16).to(kv.dtype)], dim=-1)


def test_layout_follows_the_config():
    flash = kv_layout(flash_config())
    assert (flash.head_dim, flash.rope_dim, flash.row_bytes) == (512, 64, 584)
    toy = kv_layout(ModelConfig.from_hf(preset_config("tiny")))
    # 64 e4m3 + 64 bf16 (128 B) + 1 scale = 193, padded to 200
    assert (toy.head_dim, toy.nope, toy.n_scales, toy.row_bytes) == (128, 64, 1, 200)


@pytest.mark.parametrize("preset", ["tiny", "flash"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pack_unpack_is_exact_on_native_rows(preset, dtype):
    cfg = flash_config() if preset == "flash" else ModelConfig.from_hf(preset_config(preset))
    layout = kv_layout(cfg)
    gen = torch.Generator().manual_seed(1)
    spread = torch.logspace(-6, 3, layout.head_dim)  # blocks with very different scales
    kv = (torch.randn(2, 9, layout.head_dim, generator=gen) * spread).to(dtype)
    kv[0, 0] = 0.0  # an all-zero row: scale from the 1e-4 amax floor
    packed = pack_kv_fp8(kv, layout)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 9, layout.row_bytes)
    want = _native_rows(kv, layout)
    assert torch.equal(unpack_kv_fp8(packed, layout).to(dtype), want)
    # packing rows that already hold native values changes nothing (prefix cache, re-pack)
    assert torch.equal(unpack_kv_fp8(pack_kv_fp8(want, layout), layout).to(dtype), want)
    assert not packed[..., layout.scale_offset + layout.n_scales:].any()  # zero padding


def test_bytes_sit_where_the_layout_says():
    layout = KVLayout(head_dim=128, rope_dim=64, block=64)
    kv = torch.zeros(128)
    kv[0], kv[64] = 3.0, 1.5  # 3 → amax/448 → scale 2^-7, code 384 = 0x7C; rope 1.5 = 0x3FC0
    row = pack_kv_fp8(kv, layout)
    assert row[0].item() == torch.tensor(384.0).to(torch.float8_e4m3fn).view(torch.uint8).item()
    assert row[64:66].tolist() == [0xC0, 0x3F]  # little-endian bf16
    assert row[layout.scale_offset].item() == 127 - 7  # ue8m0 exponent byte


def test_fp8_reference_unpacks_only_picked_rows_and_matches_unpacking_all():
    """The packed-cache reference gathers, then unpacks: equal to unpacking every row first,
    including -1 padding, repeated picks and a query that picks nothing."""
    import torch

    from model.kernels.kv_fp8 import KVLayout, pack_kv_fp8, unpack_kv_fp8
    from model.kernels.sparse_attn import sparse_attn_fp8_reference, sparse_attn_reference

    gen = torch.Generator().manual_seed(3)
    layout = KVLayout(128, 64, 64)
    rows = pack_kv_fp8(torch.randn(2, 50, 128, generator=gen), layout)
    q = torch.randn(2, 3, 4, 128, generator=gen)
    sink = torch.randn(4, generator=gen)
    idx = torch.tensor([[[0, 7, 7, -1], [49, 3, -1, -1], [-1, -1, -1, -1]],
                        [[5, 6, 7, 8], [8, 8, 8, 8], [1, -1, 2, -1]]])
    got = sparse_attn_fp8_reference(q, rows, sink, idx, 0.1, layout)
    want = sparse_attn_reference(q, unpack_kv_fp8(rows, layout), sink, idx, 0.1)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-6)
