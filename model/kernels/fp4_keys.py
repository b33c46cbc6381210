"""The packed indexer-key layout (fact sheet §2.8, §4): FP4 e2m1 codes + ue8m0 block exponents.

One row per compressed indexer key, ``row_bytes`` bytes (68 for V4's index_head_dim 128):

    [0, dim/2)                 e2m1 codes, two per byte: dim 2i in the low nibble of byte i,
                               dim 2i+1 in the high nibble (the checkpoint's FP4 expert packing,
                               model/kernels/quant.py ``unpack_fp4``); code = sign·8 + magnitude
                               index into (0, 0.5, 1, 1.5, 2, 3, 4, 6) (standard e2m1 bits)
    [dim/2, dim/2 + dim/block) ue8m0 exponents, one per block of ``block`` dims: scale 2^(e−127)

No padding. The native indexer compressor fake-quantises its keys to exactly these values (FP4
per 1×32 with power-of-two scales after the Hadamard rotation), so holding them packed is
lossless: ``unpack_index_keys(pack_index_keys(x))`` equals ``quant.fp4_fake_quant(x)`` (in fp32),
and equals x itself for any x already on that grid.

``load_key_tile`` is the Triton side: the indexer kernels load a tile of key rows through it,
float rows as they are or packed rows decoded in registers (nibble → e2m1 bits, × 2^scale).
``load_key_pairs`` decodes packed rows as the FP4 expert GEMMs' tensor-core decoder does
(``fp4_pairs.fp4_words_tile``: two codes a register; in the indexer's decode scores loop on
sm_90 about 4.5 instructions a value beyond what bf16 keys cost, where ``load_key_tile`` adds
about 17), in that decoder's column order, which the caller's query tile takes too
(``key_pairs``: where the rows allow it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from model.kernels import quant
from model.kernels.fp4_pairs import fp4_words_tile
from model.kernels.launch import grid_entry, pdl

INDEX_KEY_BLOCK = 32  # indexer keys share one power-of-two scale per 1×32 block (§2.8)


@dataclass(frozen=True, slots=True)
class IndexKeyLayout:
    dim: int = 128
    block: int = INDEX_KEY_BLOCK

    def __post_init__(self) -> None:
        if self.dim % self.block or self.block % 2:
            raise ValueError(f"indexer key dim {self.dim} is not a multiple of {self.block}")

    @property
    def code_bytes(self) -> int:
        return self.dim // 2

    @property
    def n_scales(self) -> int:
        return self.dim // self.block

    @property
    def row_bytes(self) -> int:
        return self.code_bytes + self.n_scales


V4_INDEX_KEY_LAYOUT = IndexKeyLayout()  # 68-byte rows


def pack_index_keys(keys: torch.Tensor, layout: IndexKeyLayout = V4_INDEX_KEY_LAYOUT
                    ) -> torch.Tensor:
    """keys [..., dim] (any float dtype) → uint8 [..., row_bytes]: the FP4 quantisation of
    ``quant.fp4_fake_quant`` (exact for keys already on the FP4 grid)."""
    assert keys.shape[-1] == layout.dim, (keys.shape, layout)
    values, scales = quant.fp4_quant_scales(keys, layout.block)
    codes = quant.fp4_codes(values)
    out = torch.empty(*keys.shape[:-1], layout.row_bytes, dtype=torch.uint8, device=keys.device)
    out[..., : layout.code_bytes] = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    out[..., layout.code_bytes :] = quant.float_to_e8m0(scales).view(torch.uint8)
    return out


def unpack_index_keys(packed: torch.Tensor, layout: IndexKeyLayout = V4_INDEX_KEY_LAYOUT
                      ) -> torch.Tensor:
    """uint8 [..., row_bytes] → float32 [..., dim] (the keys' values)."""
    assert packed.shape[-1] == layout.row_bytes, (packed.shape, layout)
    values = quant.unpack_fp4(packed[..., : layout.code_bytes])
    scales = quant.e8m0_to_float(packed[..., layout.code_bytes :].contiguous())
    return (values.unflatten(-1, (layout.n_scales, layout.block)) * scales.unsqueeze(-1)
            ).flatten(-2)


def key_rows(keys: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    """The first ``m`` keys of keys [b, n, dim] float or [b, n, row_bytes] packed → fp32
    [b, m, dim] (a packed store is decoded only for those rows)."""
    if keys.dtype == torch.uint8:
        return unpack_index_keys(keys[:, :m], IndexKeyLayout(dim))
    return keys[:, :m].float()


def key_rows_aligned(keys: torch.Tensor) -> bool:
    """``load_key_tile``'s ALIGNED promise for packed keys uint8 [..., row_bytes]."""
    return keys.dtype == torch.uint8 and keys.shape[-1] % 4 == 0 and keys.data_ptr() % 4 == 0


def key_pairs(dim: int, block_d: int, block: int, aligned: bool) -> bool:
    """Whether ``load_key_pairs`` reads these packed rows: 4-byte aligned (``key_rows_aligned``),
    scales per 32 dims, and the whole row one tile of whole scale words (dim a multiple of 128)."""
    return aligned and block == 32 and dim % 128 == 0 and block_d == dim


@triton.jit
def load_key_pairs(k_ptr, rows, mask_n, D, BLOCK_D: tl.constexpr, BF16: tl.constexpr):
    """Packed key rows ``rows`` [BLOCK_N] (int64, zero where not ``mask_n``; ``key_pairs``: D =
    BLOCK_D, a multiple of 128, rows 4-byte aligned) → their values × 2^-63, [BLOCK_N, D] bf16
    (BF16) or float32, in ``fp4_pairs.fp4_mma_order``'s columns: a tl.dot operand against a
    query tile taken to that order and × 2^63 (``to_mma_order``, ``FP4_MMA_ACT_SHIFT``).
    A row is D/8 words of codes then D/128 words of four scale bytes: 17 words at D = 128."""
    WORDS: tl.constexpr = BLOCK_D // 8
    SCALE_WORDS: tl.constexpr = BLOCK_D // 128
    row = k_ptr.to(tl.pointer_type(tl.int32)) + rows[:, None] * ((D // 128) * 17)
    words = tl.load(row + tl.arange(0, WORDS)[None, :], mask=mask_n[:, None], other=0)
    packed = tl.load(row + WORDS + tl.arange(0, SCALE_WORDS)[None, :], mask=mask_n[:, None],
                     other=0)
    s = (packed[:, :, None] >> (8 * tl.arange(0, 4))[None, None, :]) & 0xFF   # little-endian
    return fp4_words_tile(words, tl.reshape(s, [rows.shape[0], SCALE_WORDS * 4]), BF16)


@triton.jit
def load_key_tile(k_ptr, rows, mask_n, offs_d, D, PACKED: tl.constexpr,
                  BLOCK: tl.constexpr, ALIGNED: tl.constexpr = False):
    """Key rows ``rows`` [BLOCK_N] (int64, masked by ``mask_n``) × dims ``offs_d`` → tile
    [BLOCK_N, BLOCK_D], 0 where masked: float rows in their own dtype, or packed rows
    (``IndexKeyLayout(D, BLOCK)``) decoded to fp32. ``offs_d`` is arange(0, BLOCK_D): a packed
    row's code bytes load as one contiguous slice (each byte once, split into its two nibbles
    in registers) and its scales as one small tile spread over their BLOCK dims — not a byte
    load per dim for each (when BLOCK_D is a multiple of BLOCK; else per dim). ALIGNED: the
    caller's promise that a packed row's bytes (D/2 + D/BLOCK) are a multiple of 4 and k_ptr
    4-byte aligned (``key_rows_aligned``), told to the compiler for vector loads."""
    mask = mask_n[:, None] & (offs_d < D)[None, :]
    if PACKED:
        base = rows[:, None] * (D // 2 + D // BLOCK)
        BLOCK_N: tl.constexpr = rows.shape[0]
        BLOCK_D: tl.constexpr = offs_d.shape[0]
        if BLOCK_D % BLOCK == 0:
            if ALIGNED:   # the compiler cannot see it through D // BLOCK
                base = rows[:, None] * tl.multiple_of((D // 2 + D // BLOCK), 4)
            cols = tl.arange(0, BLOCK_D // 2)
            byte = tl.load(k_ptr + base + cols[None, :], mask=mask_n[:, None] &
                           (cols < D // 2)[None, :], other=0).to(tl.int32)
            code = tl.reshape(tl.join(byte & 0xF, (byte >> 4) & 0xF), [BLOCK_N, BLOCK_D])
            blocks = tl.arange(0, BLOCK_D // BLOCK)
            exp = tl.load(k_ptr + base + D // 2 + blocks[None, :], mask=mask_n[:, None] &
                          (blocks < D // BLOCK)[None, :], other=127).to(tl.int32)
            exp = tl.reshape(tl.broadcast_to(exp[:, :, None], [BLOCK_N, BLOCK_D // BLOCK, BLOCK]),
                             [BLOCK_N, BLOCK_D])
        else:
            byte = tl.load(k_ptr + base + (offs_d // 2)[None, :], mask=mask,
                           other=0).to(tl.int32)
            code = (byte >> ((offs_d % 2) * 4)[None, :]) & 0xF
            exp = tl.load(k_ptr + base + (D // 2 + offs_d // BLOCK)[None, :], mask=mask,
                          other=127).to(tl.int32)
        e = (code >> 1) & 3
        m = code & 1
        normal = (((e + 126) << 23) | (m << 22)).to(tl.float32, bitcast=True)  # 2^(e−1)·(1+m/2)
        magnitude = tl.where(e == 0, m.to(tl.float32) * 0.5, normal)
        scale = tl.where(exp == 0, 0x400000, exp << 23).to(tl.float32, bitcast=True)
        value = magnitude * scale
        tile = tl.where((code & 8) != 0, -value, value)
    else:
        tile = tl.load(k_ptr + rows[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
    return tile


# a prefill's packed keys up-converted once (``upconvert_index_keys``) only while they take at
# most this much: a 1M context's 256K keys are 64 MiB in bf16
KEYS_UPCONVERT_MAX_BYTES = 64 << 20
UPCONVERT_BLOCK_R = 32


@triton.jit
def _upconvert_keys_kernel(k_ptr, out_ptr, NROWS, D, BLOCK: tl.constexpr,
                           ALIGNED: tl.constexpr, BLOCK_R: tl.constexpr,
                           BLOCK_D: tl.constexpr, PDL: tl.constexpr = False):
    """Packed key rows [NROWS, row bytes] → out [NROWS, D] in out's dtype, BLOCK_R rows a
    program, each value ``load_key_tile``'s."""
    grid_entry(PDL)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    valid = rows < NROWS
    offs_d = tl.arange(0, BLOCK_D)
    tile = load_key_tile(k_ptr, tl.where(valid, rows, 0), valid, offs_d, D, True, BLOCK,
                         ALIGNED)
    tl.store(out_ptr + rows[:, None] * D + offs_d[None, :], tile.to(out_ptr.dtype.element_ty),
             mask=valid[:, None] & (offs_d < D)[None, :])


def upconvert_index_keys(packed: torch.Tensor, layout: IndexKeyLayout, dtype: torch.dtype
                         ) -> torch.Tensor:
    """Packed keys uint8 [..., row_bytes] → [..., dim] in ``dtype``: ``unpack_index_keys``'s
    values (e2m1 × a power of two: exact in bf16), in one launch."""
    assert packed.dtype == torch.uint8 and packed.shape[-1] == layout.row_bytes, packed.shape
    src = packed.contiguous()
    out = torch.empty(*src.shape[:-1], layout.dim, dtype=dtype, device=src.device)
    count = out.numel() // layout.dim
    if count:
        _upconvert_keys_kernel[(triton.cdiv(count, UPCONVERT_BLOCK_R),)](
            src, out, count, layout.dim, BLOCK=layout.block, ALIGNED=key_rows_aligned(src),
            BLOCK_R=UPCONVERT_BLOCK_R, BLOCK_D=max(16, triton.next_power_of_2(layout.dim)),
            **pdl(src.device))
    return out
