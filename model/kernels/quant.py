"""Pure-torch references for the V4 number formats (fact sheet §2.8, §3).

- FP8 e4m3 weights with one ue8m0 (power-of-two) scale per 128×128 block.
- FP4 e2m1 experts, two codes per int8 byte (low nibble = even index), one ue8m0 scale per 1×32.
- Activation / KV / indexer fake quantisation with power-of-two scales computed from float32 bits.
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0
FP4_MAX = 6.0
FP4_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def e8m0_to_float(scale: torch.Tensor) -> torch.Tensor:
    """ue8m0 byte e → 2^(e-127) as float32 (exact; 0xFF would be NaN and is mapped to NaN)."""
    bits = scale.view(torch.uint8).to(torch.int32)
    out = torch.ldexp(torch.ones_like(bits, dtype=torch.float32), bits - 127)
    return torch.where(bits == 255, torch.full_like(out, float("nan")), out)


def float_to_e8m0(pow2: torch.Tensor) -> torch.Tensor:
    """Exact power-of-two float32 values → float8_e8m0fnu bytes."""
    _, exp = torch.frexp(pow2.float())
    return (exp - 1 + 127).clamp(0, 254).to(torch.uint8).view(torch.float8_e8m0fnu)


def pow2_ceil(x: torch.Tensor) -> torch.Tensor:
    """2^ceil(log2(x)) for positive normal float32 x, computed from the bits (no log2 rounding)."""
    bits = x.float().contiguous().view(torch.int32)
    exponent = ((bits >> 23) & 0xFF) - 127
    exponent = exponent + ((bits & 0x7FFFFF) != 0).to(torch.int32)
    return torch.ldexp(torch.ones_like(x, dtype=torch.float32), exponent)


def e4m3_to(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """e4m3 codes → their values × 2^-8 in ``dtype`` (a new tensor), through float16 bit moves
    (vectorised; torch's own fp8 cast is scalar on CPU): sign to bit 15, exponent + mantissa to
    bits 13..7 make a float16 equal to the value × 2^-8 exactly, subnormals included. The NaN
    codes (0x7F / 0xFF) come out as ±480 × 2^-8 instead of NaN."""
    b = weight.contiguous().view(torch.uint8).to(torch.int16)
    bits = ((b & 0x80) << 8) | ((b & 0x7F) << 7)
    return bits.view(torch.float16).to(dtype)


def bf16_to(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """BF16 → ``dtype``; to float32 by moving the bits up 16 (exact, vectorised on CPU)."""
    if weight.dtype != torch.bfloat16 or dtype != torch.float32:
        return weight.to(dtype)
    wide = weight.contiguous().view(torch.int16).to(torch.int32)
    return wide.bitwise_left_shift_(16).view(torch.float32)


# ---- weights --------------------------------------------------------------------------------
def dequant_fp8_block(weight: torch.Tensor, scale: torch.Tensor, block: int = 128,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """FP8 e4m3 [out, in] with ue8m0 scale [ceil(out/b), ceil(in/b)] → ``dtype`` (partial blocks
    ok). Exact in float32 (e4m3 × a power of two); other dtypes are the float32 result cast."""
    out_f, in_f = weight.shape
    s = e8m0_to_float(scale) * 256.0
    rb, cb = s.shape
    w = e4m3_to(weight, torch.float32)  # the e4m3 values × 2^-8; the 2^8 is folded into s
    if out_f == rb * block and in_f == cb * block:  # whole blocks: broadcast, no expanded scales
        w.view(rb, block, cb, block).mul_(s.view(rb, 1, cb, 1))
    else:
        w.mul_(s.repeat_interleave(block, 0)[:out_f].repeat_interleave(block, 1)[:, :in_f])
    return w if dtype == torch.float32 else w.to(dtype)


def quant_fp8_block(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """float → (e4m3 weight, ue8m0 128×128 scales) with power-of-two scales. Used by toy.py."""
    out_f, in_f = w.shape
    rb, cb = -(-out_f // block), -(-in_f // block)
    padded = w.float().new_zeros(rb * block, cb * block)
    padded[:out_f, :in_f] = w.float()
    amax = padded.view(rb, block, cb, block).abs().amax(dim=(1, 3)).clamp_min(1e-4)
    s = pow2_ceil(amax * torch.tensor(1.0 / FP8_MAX, dtype=torch.float32))
    full = s.repeat_interleave(block, 0)[:out_f].repeat_interleave(block, 1)[:, :in_f]
    q = (w.float() / full).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, float_to_e8m0(s)


def _fp4_table(device: torch.device) -> torch.Tensor:
    grid = torch.tensor(FP4_GRID, dtype=torch.float32, device=device)
    return torch.cat([grid, -grid])


def unpack_fp4(packed: torch.Tensor) -> torch.Tensor:
    """int8 [out, in/2] → e2m1 values [out, in] as float32 (low nibble = even index)."""
    raw = packed.view(torch.uint8).to(torch.int64)
    codes = torch.stack([raw & 0xF, raw >> 4], dim=-1).flatten(-2)
    return _fp4_table(packed.device)[codes]


def dequant_fp4(packed: torch.Tensor, scale: torch.Tensor, block: int = 32) -> torch.Tensor:
    """FP4 expert weight int8 [out, in/2] + ue8m0 scale [out, in/32] → float32 [out, in]."""
    values = unpack_fp4(packed)
    return values * e8m0_to_float(scale).repeat_interleave(block, dim=-1)


def round_fp4(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to the nearest e2m1 value, ties to the even code, saturating at ±6."""
    grid = torch.tensor(FP4_GRID, dtype=torch.float32, device=x.device)
    mag = x.float().abs().clamp(max=FP4_MAX)
    hi_idx = torch.searchsorted(grid, mag.contiguous()).clamp(max=len(FP4_GRID) - 1)
    lo_idx = (hi_idx - 1).clamp(min=0)
    lo, hi = grid[lo_idx], grid[hi_idx]
    d_lo, d_hi = mag - lo, hi - mag
    take_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi_idx % 2 == 0))
    return torch.where(take_hi, hi, lo).copysign(x.float())


def fp4_codes(values: torch.Tensor) -> torch.Tensor:
    """Exact e2m1 values → 4-bit codes (sign bit 8)."""
    grid = torch.tensor(FP4_GRID, dtype=torch.float32, device=values.device)
    mag_code = (values.abs().unsqueeze(-1) == grid).to(torch.int64).argmax(-1)
    return mag_code + 8 * torch.signbit(values).to(torch.int64)


def quant_fp4(w: torch.Tensor, block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """float [out, in] → (int8 packed [out, in/2], ue8m0 scale [out, in/32]). Used by toy.py."""
    out_f, in_f = w.shape
    blocks = w.float().view(out_f, in_f // block, block)
    amax = blocks.abs().amax(-1).clamp_min(FP4_MAX * 2.0**-126)
    s = pow2_ceil(amax * torch.tensor(1.0 / FP4_MAX, dtype=torch.float32))
    values = round_fp4(blocks / s.unsqueeze(-1)).view(out_f, in_f)
    codes = fp4_codes(values)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8).view(torch.int8)
    return packed, float_to_e8m0(s)


# ---- activations (native numerics) ------------------------------------------------------------
def _blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    n = x.shape[-1]
    pad = (-n) % block
    xf = x.float()
    if pad:  # a trailing partial block is quantised on its own (= zero padding)
        xf = torch.nn.functional.pad(xf, (0, pad))
    return xf.unflatten(-1, (-1, block)), n


def act_quant_scales(x: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 activation quantisation: (e4m3 codes as float32 [..., n], pow2 scales [..., nblocks])."""
    xb, n = _blocks(x, block)
    amax = xb.abs().amax(-1, keepdim=True).clamp_min(1e-4)
    s = pow2_ceil(amax * torch.tensor(1.0 / FP8_MAX, dtype=torch.float32))
    q = (xb / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
    return q.flatten(-2)[..., :n], s.squeeze(-1)


def fp8_fake_quant(x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """Quantise to e4m3 per 1×block with power-of-two scales, dequantise; returns x.dtype."""
    xb, n = _blocks(x, block)
    amax = xb.abs().amax(-1, keepdim=True).clamp_min(1e-4)
    s = pow2_ceil(amax * torch.tensor(1.0 / FP8_MAX, dtype=torch.float32))
    q = (xb / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * s
    return q.flatten(-2)[..., :n].to(x.dtype)


def fp4_quant_scales(x: torch.Tensor, block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """FP4 quantisation per 1×block: (e2m1 values as float32 [..., n], pow2 scales [...,
    nblocks]); scale = 2^ceil(log2(amax / 6)), amax floored at 6·2^-126 (scales ≥ 2^-126)."""
    xb, n = _blocks(x, block)
    amax = xb.abs().amax(-1, keepdim=True).clamp_min(FP4_MAX * 2.0**-126)
    s = pow2_ceil(amax * torch.tensor(1.0 / FP4_MAX, dtype=torch.float32))
    q = round_fp4((xb / s).clamp(-FP4_MAX, FP4_MAX))
    return q.flatten(-2)[..., :n], s.squeeze(-1)


def fp4_fake_quant(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """Quantise to e2m1 per 1×block with power-of-two scales, dequantise; returns x.dtype."""
    xb, n = _blocks(x, block)
    amax = xb.abs().amax(-1, keepdim=True).clamp_min(FP4_MAX * 2.0**-126)
    s = pow2_ceil(amax * torch.tensor(1.0 / FP4_MAX, dtype=torch.float32))
    q = round_fp4((xb / s).clamp(-FP4_MAX, FP4_MAX)) * s
    return q.flatten(-2)[..., :n].to(x.dtype)
