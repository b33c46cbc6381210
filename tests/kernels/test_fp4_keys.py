"""Packed FP4 indexer keys (model/kernels/fp4_keys.py): the layout, the torch pack / unpack
round trip on the FP4 grid, and the Triton tile decoder against the torch unpack, byte by byte."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from model.kernels.fp4_keys import (
    IndexKeyLayout,
    key_rows,
    load_key_tile,
    pack_index_keys,
    unpack_index_keys,
)
from model.kernels.quant import FP4_GRID, fp4_fake_quant, unpack_fp4


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.float().contiguous().view(torch.int32)  # bitwise compare: −0.0 ≠ 0.0, NaN = NaN


def grid_keys(shape: tuple[int, ...], dim: int, seed: int = 0) -> torch.Tensor:
    """Keys on the FP4 grid (fp4_fake_quant output) whose 1×32 blocks span the scale range:
    all-zero blocks, tiny blocks (scale floor 2^-126, subnormal values), negatives, and huge
    blocks (scale 2^125..2^126)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, dim, generator=g)
    blocks = x.unflatten(-1, (-1, 32))
    n_blocks = blocks.shape[-2]
    exps = torch.randint(-60, 60, blocks.shape[:-1], generator=g).float()
    exps[..., 0] = -127                      # under the amax floor: scale 2^-126, subnormals
    if n_blocks > 1:
        exps[..., 1] = 124                   # amax ≈ 2^126: scales 2^124..2^125
    blocks = blocks * torch.exp2(exps).unsqueeze(-1)
    if n_blocks > 2:
        blocks[..., 2, :] = 0.0              # an all-zero block
    if n_blocks > 3:
        blocks[..., 3, :] = -blocks[..., 3, :].abs()  # an all-negative block
        blocks[..., 3, 0] = 1.6 * 2.0**127   # scale 2^126 (3.2 rounds to 3: 1.5·2^127, finite)
    return fp4_fake_quant(blocks.flatten(-2), 32)


def test_layout_is_68_bytes_at_v4_dim_and_derived_from_dim():
    assert IndexKeyLayout(128).row_bytes == 68 == 128 // 2 + 128 // 32
    assert IndexKeyLayout(64).row_bytes == 34 and IndexKeyLayout(32).n_scales == 1
    with pytest.raises(ValueError, match="multiple of 32"):
        IndexKeyLayout(48)


@pytest.mark.parametrize("dim", [128, 256])
def test_round_trip_is_exact_on_the_fp4_grid(dim):
    keys = grid_keys((3, 7), dim)
    assert torch.isfinite(keys).all() and (keys == 0).any() and (keys < 0).any()
    assert keys.abs().max() > 2.0**126 and (keys[keys != 0].abs().min() < 2.0**-126)
    layout = IndexKeyLayout(dim)
    packed = pack_index_keys(keys, layout)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 7, layout.row_bytes)
    assert torch.equal(bits(unpack_index_keys(packed, layout)), bits(keys))
    exps = packed[..., layout.code_bytes:]
    # the extreme scales: the floor 2^-126, and 2^125, the largest a finite FP4 block needs
    # (6·2^125 = 1.5·2^127; fake-quant's 3 × 2^126 is stored as 6 × 2^125, the same value)
    assert exps.min() == 1 and exps.max() == 252


def test_round_trip_in_bf16_and_fake_quant_is_what_pack_stores():
    keys = grid_keys((2, 5), 128, seed=1)
    narrow = keys.bfloat16()
    assert torch.equal(narrow.float(), keys)  # FP4 × power of two is exact in bf16
    assert torch.equal(bits(unpack_index_keys(pack_index_keys(narrow))), bits(keys))
    raw = torch.randn(4, 128) * 3  # off the grid: pack quantises exactly like fp4_fake_quant
    assert torch.equal(bits(unpack_index_keys(pack_index_keys(raw))),
                       bits(fp4_fake_quant(raw, 32)))


def test_nibble_order_matches_the_checkpoint_fp4_packing():
    """Dim 2i in the low nibble of byte i, like the FP4 experts (quant.unpack_fp4)."""
    values = torch.tensor(FP4_GRID * 4 + tuple(-v for v in FP4_GRID) * 12)  # 128 values
    packed = pack_index_keys(values)
    assert packed[0].item() == 0x10 and packed[1].item() == 0x32  # codes 0,1 → 0x10; 2,3 → 0x32
    assert packed[64:].tolist() == [127] * 4  # amax 6 → scale 1
    assert torch.equal(unpack_fp4(packed[:64]), values)


def test_key_rows_decodes_only_the_rows_asked_for():
    keys = grid_keys((2, 9), 64)
    packed = pack_index_keys(keys, IndexKeyLayout(64))
    assert torch.equal(key_rows(packed, 4, 64), keys[:, :4])
    assert torch.equal(key_rows(keys, 4, 64), keys[:, :4])


@triton.jit
def _decode_tile(k_ptr, out_ptr, N, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 PACKED: tl.constexpr, KEY_BLOCK: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < N
    tile = load_key_tile(k_ptr, offs_n.to(tl.int64), mask_n, offs_d, D, PACKED, KEY_BLOCK)
    tl.store(out_ptr + offs_n[:, None] * D + offs_d[None, :], tile.to(tl.float32),
             mask=mask_n[:, None] & (offs_d < D)[None, :])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("dim", [32, 64])
def test_triton_decoder_equals_torch_unpack_for_every_byte(dim):
    """Every code byte (all 16×16 nibble pairs) and every exponent byte 0..254 (2^-127 .. 2^127;
    the largest overflow to ±inf for codes ≥ 4, in both decoders alike)."""
    layout = IndexKeyLayout(dim)
    n = 256
    packed = torch.empty(n, layout.row_bytes, dtype=torch.uint8)
    packed[:, : layout.code_bytes] = (torch.arange(n * layout.code_bytes) % 256).view(n, -1)
    packed[:, layout.code_bytes:] = (torch.arange(n * layout.n_scales) % 255).view(n, -1)
    want = unpack_index_keys(packed, layout)
    for block_d in (dim, 2 * dim):  # BLOCK_D = D, and > D (the extra dims masked)
        out = torch.full((n, dim), float("nan"))
        _decode_tile[(triton.cdiv(n, 16),)](packed, out, n, dim, BLOCK_N=16, BLOCK_D=block_d,
                                            PACKED=True, KEY_BLOCK=32)
        assert torch.equal(bits(out), bits(want))
    floats = torch.randn(n - 3, dim)  # the float branch loads the rows as they are
    out = torch.full_like(floats, float("nan"))
    _decode_tile[(triton.cdiv(n - 3, 16),)](floats, out, n - 3, dim, BLOCK_N=16, BLOCK_D=dim,
                                            PACKED=False, KEY_BLOCK=32)
    assert torch.equal(out, floats)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_upconverted_keys_are_the_unpacked_keys_exactly(dtype):
    """``upconvert_index_keys``: every code byte and exponent byte 8..254, in one launch, 33 rows
    (the last program's block part empty) of a batch of 3 — ``unpack_index_keys``'s values to
    the bit (e2m1 × a power of two is exact in bf16; the overflows are ±inf in both). Not the
    exponents under 8, whose values are subnormal: the interpreter's bf16 flushes them."""
    from model.kernels.fp4_keys import upconvert_index_keys
    from model.op_audit import OpAudit

    layout = IndexKeyLayout(128)
    n = 3 * 33
    packed = torch.empty(n, layout.row_bytes, dtype=torch.uint8)
    packed[:, : layout.code_bytes] = (torch.arange(n * layout.code_bytes) % 256).view(n, -1)
    packed[:, layout.code_bytes:] = (torch.arange(n * layout.n_scales) % 247 + 8).view(n, -1)
    with OpAudit() as audit:
        got = upconvert_index_keys(packed.view(3, 33, -1), layout, dtype)
    assert dict(audit.triton) == {"_upconvert_keys_kernel": 1}
    want = unpack_index_keys(packed, layout).view(3, 33, -1).to(dtype)
    assert got.dtype == dtype and torch.equal(bits(got.float()), bits(want.float()))
