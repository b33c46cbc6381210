"""Linear layers holding checkpoint-format weights (FP8 + 128×128 scales, FP4 + 1×32 scales,
BF16 / F32), dequantised for compute (fact sheet §3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.kernels import ops

FP8 = torch.float8_e4m3fn
E8M0 = torch.float8_e8m0fnu


@dataclass(frozen=True, slots=True)
class Numerics:
    """How the forward pass computes: ``dequant`` (weights dequantised, activations in the
    compute dtype) or ``native`` (official FP8/FP4 activation, KV and indexer fake quant)."""

    mode: str = "dequant"
    dtype: torch.dtype = torch.float32

    @property
    def native(self) -> bool:
        return self.mode == "native"


class Linear(nn.Module):
    """y = x Wᵀ. ``fmt``: "fp8" (e4m3 + 128×128 ue8m0 scales), "fp4" (packed e2m1 + 1×32 ue8m0,
    kept quantised and dequantised per call), "bf16" or "fp32" (plain; run in fp32 when
    ``fp32_compute``)."""

    def __init__(self, in_features: int, out_features: int, fmt: str = "fp8",
                 fp32_compute: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.fmt = in_features, out_features, fmt
        self.fp32_compute = fp32_compute
        meta = {"device": "meta"}
        if fmt == "fp8":
            self.register_buffer("weight", torch.empty(out_features, in_features, dtype=FP8, **meta))
            self.register_buffer("scale", torch.empty(-(-out_features // 128), -(-in_features // 128),
                                                      dtype=E8M0, **meta))
        elif fmt == "fp4":
            self.register_buffer("weight", torch.empty(out_features, in_features // 2,
                                                       dtype=torch.int8, **meta))
            self.register_buffer("scale", torch.empty(out_features, in_features // 32,
                                                      dtype=E8M0, **meta))
        else:
            dtype = torch.bfloat16 if fmt == "bf16" else torch.float32
            self.register_buffer("weight", torch.empty(out_features, in_features, dtype=dtype, **meta))
            self.scale = None
        self.numerics = Numerics()
        self.dense: torch.Tensor | None = None

    def prepare(self, numerics: Numerics) -> None:
        """After loading: dequantise FP8 once (lossless in bf16/fp32); FP4 stays packed."""
        self.numerics = numerics
        dtype = torch.float32 if self.fp32_compute else numerics.dtype
        if self.fmt == "fp8":
            self.dense = ops.dequant_fp8_block(self.weight, self.scale).to(dtype)
            # the quantised copy is no longer needed once dequantised
            self.weight = torch.empty(0, dtype=FP8)
            self.scale = torch.empty(0, dtype=E8M0)
        elif self.fmt != "fp4":
            self.dense = self.weight.to(dtype)

    def dense_weight(self) -> torch.Tensor:
        if self.dense is not None:
            return self.dense
        dtype = torch.float32 if self.fp32_compute else self.numerics.dtype
        return ops.dequant_fp4(self.weight, self.scale).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quantized = self.numerics.native and self.fmt in ("fp8", "fp4")
        if self.fp32_compute:
            x = x.float()
        if self.fmt == "fp4" and self.dense is None:  # stays packed: W4A16 kernel on Triton
            dtype = torch.float32 if self.fp32_compute else self.numerics.dtype
            return ops.fp4_linear(x, self.weight, self.scale, dtype, quantize_input=quantized)
        return ops.linear(x, self.dense_weight(), quantize_input=quantized)
