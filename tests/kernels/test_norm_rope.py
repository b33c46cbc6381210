"""RMSNorm and RoPE: Triton (interpreter) vs torch reference, and the references vs the old math."""

from __future__ import annotations

import pytest
import torch

from model.kernels import norm_rope, ops
from model.kernels.norm_rope import (
    apply_rope_reference,
    apply_rope_triton,
    rms_norm_reference,
    rms_norm_triton,
)
from model.layers import rope as rope_layer
from model.op_audit import OpAudit


def _torch_rms_norm(x, weight, eps):
    """An independent oracle: torch's own RMSNorm in float32, cast back."""
    w = None if weight is None else weight.float()
    return torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), w, eps).to(x.dtype)


def _old_apply_rope(x, angles, inverse=False):
    """The torch math model.layers.rope.apply_rope used before this module (the oracle)."""
    rd = angles.shape[-1] * 2
    nope, rope = x[..., :-rd], x[..., -rd:]
    cos, sin = angles.cos(), angles.sin()
    if inverse:
        sin = -sin
    if x.dim() == 4:
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    pairs = rope.float().unflatten(-1, (-1, 2))
    re, im = pairs[..., 0], pairs[..., 1]
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).flatten(-2)
    return torch.cat([nope, out.to(x.dtype)], dim=-1)


def _close(got, want, rtol=1e-6):
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape)
    scale = want.float().abs().max().clamp(min=1e-30)
    err = (got.float() - want.float()).abs().max() / scale
    assert err <= rtol, err


def _angles(s, r2, start=0):
    inv_freq = 1.0 / (10000 ** (torch.arange(r2).float() / r2))
    return torch.arange(start, start + s).float().unsqueeze(-1) * inv_freq


# ---------------------------------------------------------------- RMSNorm

@pytest.mark.parametrize("shape,weighted,scale", [
    ((3, 64), True, 3.0),              # 2-D
    ((2, 5, 96), True, 3.0),           # 3-D, last dim not a power of two
    ((1, 3, 4, 32), False, 3.0),       # 4-D per-head norm, no weight
    ((37, 48), False, 1e-3),           # rows not a multiple of the rows per program; eps matters
])
def test_rms_norm_matches_reference(shape, weighted, scale):
    x = torch.randn(*shape) * scale
    w = torch.rand(shape[-1]) + 0.5 if weighted else None
    _close(rms_norm_triton(x, w, 1e-6), rms_norm_reference(x, w, 1e-6))


def test_rms_norm_non_contiguous_input():
    x = torch.randn(4, 6, 80)[:, ::2, :40]  # strided rows and a sliced last dim
    w = torch.rand(40) + 0.5
    assert not x.is_contiguous()
    _close(rms_norm_triton(x, w, 1e-5), rms_norm_reference(x, w, 1e-5))


@pytest.mark.parametrize("chunked", [False, True])
def test_rms_norm_reads_a_column_slice_in_place(monkeypatch, chunked):
    """A stacked projection's output slice (rows one wide row apart): one launch, no copy."""
    if chunked:
        monkeypatch.setattr(norm_rope, "MAX_BLOCK_D", 32)
    y = torch.randn(2, 3, 200)
    x = y[..., 64:160]
    w = torch.rand(96) + 0.5
    with OpAudit() as audit:
        got = rms_norm_triton(x, w, 1e-6)
    assert audit.launches() == 1 and got.is_contiguous()
    _close(got, rms_norm_reference(x, w, 1e-6))


def test_rms_norm_rows_wider_than_one_chunk(monkeypatch):
    from model.kernels import norm_rope

    monkeypatch.setattr(norm_rope, "MAX_BLOCK_D", 32)  # 100 = 4 chunks of 32, the last partial
    x, w = torch.randn(3, 100), torch.rand(100) + 0.5
    _close(rms_norm_triton(x, w, 1e-6), rms_norm_reference(x, w, 1e-6))


def test_rms_norm_bf16_rounds_like_reference():
    x = torch.randn(4, 64).to(torch.bfloat16)
    w = (torch.rand(64) + 0.5).to(torch.bfloat16)
    got, want = rms_norm_triton(x, w, 1e-6), rms_norm_reference(x, w, 1e-6)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want.float()).abs().max() <= 2 ** -7 * want.float().abs().max()


@pytest.mark.parametrize("weighted", [True, False])
def test_rms_norm_reference_is_torch_rms_norm(weighted):
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(2, 3, 72) * 2).to(dtype)
        w = (torch.rand(72) + 0.5).to(torch.bfloat16) if weighted else None
        assert torch.equal(rms_norm_reference(x, w, 1e-6), _torch_rms_norm(x, w, 1e-6))


# ---------------------------------------------------------------- RoPE

@pytest.mark.parametrize("shape,r2,start,inverse", [
    ((2, 3, 24), 4, 0, False),         # 3-D, rope dims < d
    ((1, 4, 3, 32), 8, 5, False),      # 4-D [b, s, h, d], several positions
    ((1, 4, 3, 32), 8, 5, True),       # inverse
    ((1, 1, 6, 40), 20, 100000, False),  # a single token at a large position, rope over all d
    ((2, 1, 36), 6, 7, True),          # 3-D single token, d/2 not a power of two
])
def test_apply_rope_matches_reference(shape, r2, start, inverse):
    x = torch.randn(*shape)
    seq = shape[1]
    angles = _angles(seq, r2, start)
    got = apply_rope_triton(x, angles, inverse)
    want = apply_rope_reference(x, angles, inverse)
    _close(got, want)
    nope = shape[-1] - 2 * r2
    assert torch.equal(got[..., :nope], x[..., :nope])  # no-rope dims copied exactly


def test_apply_rope_rotates_each_position_by_its_angle():
    """Independent of the reference: rope pair i at token t turns by angles[t, i]."""
    x = torch.zeros(1, 2, 8)
    x[..., 4::2] = 1.0  # rope pairs (4, 5) and (6, 7) = (1, 0)
    angles = torch.tensor([[0.5, 1.0], [2.0, -3.0]])
    got = apply_rope_triton(x, angles)
    assert torch.allclose(got[0, :, 4::2], angles.cos(), atol=1e-6)
    assert torch.allclose(got[0, :, 5::2], angles.sin(), atol=1e-6)
    back = apply_rope_triton(got, angles, inverse=True)
    assert torch.allclose(back, x, atol=1e-6)


def test_rope_turns_angles_past_the_fast_sin_range_as_float64_would():
    """Angles of a long context — positions past 105,615, where a GPU's precise sin / cos take
    their slow path, up to a million — are reduced by whole turns in the kernel
    (``rope_cos_sin``) and rotate as float64's cos / sin of the same fp32 angle do, to 5e-7
    (the reduction's error is about 3e-7 radians at a million)."""
    positions = torch.tensor([0.0, 1.0, 105_616.0, 131_071.0, 524_287.0, 1_000_000.0])
    angles = (positions[:, None] * torch.tensor([1.0, 0.75, 3e-3, 1e-4])).float()
    x = torch.zeros(1, len(positions), 8)
    x[..., 0::2] = 1.0                                  # each pair (1, 0): it turns to (cos, sin)
    got = apply_rope_triton(x, angles)
    exact = angles.double()
    torch.testing.assert_close(got[0, :, 0::2].double(), exact.cos(), rtol=0, atol=5e-7)
    torch.testing.assert_close(got[0, :, 1::2].double(), exact.sin(), rtol=0, atol=5e-7)


def test_apply_rope_non_contiguous_bf16():
    x = torch.randn(1, 4, 3, 64).to(torch.bfloat16).transpose(1, 2)  # [b, s=3, h=4, d], strided
    assert not x.is_contiguous()
    angles = _angles(3, 16, 9)
    got, want = apply_rope_triton(x, angles), apply_rope_reference(x, angles)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want.float()).abs().max() <= 2 ** -7 * want.float().abs().max()


@pytest.mark.parametrize("dim", [3, 4])
@pytest.mark.parametrize("inverse", [False, True])
def test_apply_rope_reference_is_the_old_math(dim, inverse, monkeypatch):
    monkeypatch.delenv(ops.BACKEND_ENV, raising=False)  # CPU tensors: the layer runs the reference
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 5, 3, 48)[..., 0, :] if dim == 3 else torch.randn(2, 5, 3, 48)
        x = x.to(dtype)
        angles = _angles(5, 8, 11)
        want = _old_apply_rope(x, angles, inverse)
        assert torch.equal(apply_rope_reference(x, angles, inverse), want)
        assert torch.equal(rope_layer.apply_rope(x, angles, inverse), want)


# ---------------------------------------------------------------- dispatch

def test_ops_route_norm_and_rope_to_triton(monkeypatch):
    from model.kernels import norm_rope

    calls = []
    for name in ("rms_norm_triton", "apply_rope_triton"):
        real = getattr(norm_rope, name)
        monkeypatch.setattr(norm_rope, name,
                            lambda *a, _real=real, _n=name, **k: calls.append(_n) or _real(*a, **k))
    x, w, angles = torch.randn(1, 2, 3, 16), torch.rand(16), _angles(2, 4, 3)
    monkeypatch.setenv(ops.BACKEND_ENV, "reference")
    ref = rope_layer.apply_rope(ops.rms_norm(x, w, 1e-6), angles, inverse=True)
    assert not calls
    monkeypatch.setenv(ops.BACKEND_ENV, "triton")
    got = rope_layer.apply_rope(ops.rms_norm(x, w, 1e-6), angles, inverse=True)
    assert calls == ["rms_norm_triton", "apply_rope_triton"]
    _close(got, ref)
