"""Partial, interleaved (GPT-J pairs) rotary embedding on the trailing ``rope_head_dim`` dims.

SWA layers: base ``rope_theta`` without YaRN. CSA/HCA layers, their compressors and the indexer:
base ``compress_rope_theta`` with DeepSeek's YaRN frequency ramp (no mscale) — fact sheet §2.3.
"""

from __future__ import annotations

import math

import torch

from model.config import ModelConfig


def inv_frequencies(dim: int, base: float, factor: float, original_seq_len: int,
                    beta_fast: float, beta_slow: float) -> torch.Tensor:
    """One angular frequency per rotated pair, YaRN-interpolated when original_seq_len > 0."""
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if original_seq_len > 0 and factor != 1.0:
        def correction_dim(rotations: float) -> float:
            return dim * math.log(original_seq_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(correction_dim(beta_fast)), 0)
        high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        smooth = 1 - ramp
        freqs = freqs / factor * (1 - smooth) + freqs * smooth
    return freqs


class RotaryEmbedding:
    """cos/sin tables for one rope flavour, computed on demand for given positions."""

    def __init__(self, cfg: ModelConfig, compressed: bool) -> None:
        if compressed:
            self.inv_freq = inv_frequencies(cfg.rope_head_dim, cfg.compress_rope_theta,
                                            cfg.rope_factor, cfg.original_seq_len,
                                            cfg.beta_fast, cfg.beta_slow)
        else:
            self.inv_freq = inv_frequencies(cfg.rope_head_dim, cfg.rope_theta, 1.0, 0, 0, 0)
        self.rope_dim = cfg.rope_head_dim
        self.on_device: dict[torch.device, torch.Tensor] = {}   # inv_freq copied once per device

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """positions [n] (int) → angles [n, rope_dim/2] float32."""
        return positions.float().unsqueeze(-1) * self.inverse_frequencies(positions.device)

    def inverse_frequencies(self, device: torch.device) -> torch.Tensor:
        """[rope_dim/2] fp32 on ``device``, kept there (not a host→device copy per call)."""
        inv = self.on_device.get(device)
        if inv is None:
            inv = self.on_device[device] = self.inv_freq.to(device)
        return inv


def apply_rope(x: torch.Tensor, angles: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotate the trailing 2·angles.shape[-1] dims of x; pairs are (2i, 2i+1).

    x [..., s, (heads,) d]; angles [s, r/2] broadcast over batch (and heads when x is 4-D).
    Dispatched by ``ops.apply_rope`` (one Triton launch on CUDA, the torch reference elsewhere).
    """
    from model.kernels import ops  # imported here: ops → kernels.compressor → this module

    return ops.apply_rope(x, angles, inverse)
