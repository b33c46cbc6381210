"""Linear layers holding checkpoint-format weights (FP8 + 128×128 scales, FP4 + 1×32 scales,
BF16 / F32), dequantised for compute (fact sheet §3).

Residency (``Linear.prepare(numerics, resident=...)``, ``load_model(..., fp8_resident=...)``):

- resident (the default): every weight stays as mapped from the checkpoint — FP8 e4m3 with its
  ue8m0 128×128 scales, BF16 as BF16, FP4 packed — and is dequantised / cast to the compute
  dtype on each use by ``ops.dequant_linear`` (on CPU 8192 output rows at a time, so the slice
  stays in cache; e4m3 and bf16 are widened by vectorised bit moves, since torch's fp8 cast is
  scalar on CPU). Blockwise dequantisation is exact (e4m3 × a power of two), so the values and
  the logits are bit-identical to dequantising once, in ``dequant`` and ``native`` numerics,
  fp32 and bf16 (tests/model/test_model_residency.py). Memory held by the model ≈ the file:
  toy fp32, (owned + mapped) / file bytes = 0.995 (tiny) / 0.989 (small) vs 2.35 / 2.33 when
  dequantised once.
- dequantised once (``resident=False``): FP8 and BF16 weights are converted at load to the
  compute dtype (FP8: 2× its bytes in bf16, 4× in fp32; the BF16 head is fp32 either way) and
  the mapped FP8 copy is dropped. Faster per token on CPU, several times the memory.

Decision: resident is the default because it meets the issue's memory target (≤ 1.3× the file)
with identical logits; the per-use cost is one extra pass over the weight bytes per matmul.
Measured on 2 CPU cores (median decode step, both modes interleaved in one process; bench_model
gives the same within noise): toy small fp32 17.2 vs 16.9 tok/s resident vs once (≈ 1.0×),
small bf16 14.5 vs 15.7 (0.92×), tiny fp32 34 vs 60 (0.56×: at dim 64 the per-op overhead of
the conversion dominates); load 0.06 s vs 0.2-1 s. On CUDA ``dequant_linear`` converts whole weights per use (cheap at HBM
bandwidth).

What runs where (``ops.dequant_linear`` decides, the one dispatch point): a resident FP8 weight
in ``native`` numerics on the Triton backend runs ``ops.fp8_linear`` — the block-scaled FP8 GEMM
reads e4m3 directly and quantises the activation per 1×128 in the kernel, which is exactly
``linear(x, dequant(W), quantize_input=True)``; ``dequant`` numerics and the reference backend
dequantise per use as above (an FP8 GEMM would quantise dequant-mode activations). FP4 weights
called through ``Expert.forward`` (expert offload; the MoE layer itself calls ``ops.moe_fp4``
over its expert bank) run ``ops.fp4_linear``: W4A16 on Triton, dequantised on the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.kernels import ops
from model.kernels.gemm import SplitK

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

    def prepare(self, numerics: Numerics, resident: bool = True) -> None:
        """After loading. ``resident`` (default): the weight stays as mapped from the checkpoint
        (FP8 e4m3 + 128×128 ue8m0 scales, or BF16) and is dequantised / cast to the compute dtype
        per use — the same values, so the same logits, at ≈ file-size memory. Otherwise FP8 and
        BF16 are converted once here (lossless; 2× / 4× the file bytes in bf16 / fp32). FP4
        always stays packed."""
        self.numerics = numerics
        self.dense = None
        if resident or self.fmt == "fp4":
            return
        dtype = torch.float32 if self.fp32_compute else numerics.dtype
        if self.fmt == "fp8":
            self.dense = ops.dequant_fp8_block(self.weight, self.scale).to(dtype)
            # the quantised copy is no longer needed once dequantised
            self.weight = torch.empty(0, dtype=FP8)
            self.scale = torch.empty(0, dtype=E8M0)
        else:
            self.dense = self.weight.to(dtype)

    def dense_weight(self) -> torch.Tensor:
        """The weight in the compute dtype: the prepared copy, else dequantised / cast now."""
        if self.dense is not None:
            return self.dense
        dtype = torch.float32 if self.fp32_compute else self.numerics.dtype
        if self.fmt == "fp8":
            return ops.dequant_fp8_block(self.weight, self.scale, dtype=dtype)
        if self.fmt == "fp4":
            return ops.dequant_fp4(self.weight, self.scale).to(dtype)
        return ops.bf16_to(self.weight, dtype)

    def grouped(self, x: torch.Tensor, groups: int, reduce: bool = True
                ) -> torch.Tensor | SplitK:
        """x [..., G, in/G·…]: group g of x against the g-th block of output rows (the
        attention's grouped output projection), unquantised in the compute dtype — the weight
        read as held (FP8 / BF16 as mapped, or the prepared dense copy). ``reduce=False``: a
        decode GEMV's K splits may come back unsummed (``SplitK``) for the next linear to sum
        as it reads them."""
        if self.dense is not None:
            return ops.grouped_linear(x, self.dense, None, groups, self.dense.dtype, reduce)
        if self.fmt == "fp4":
            raise ValueError("grouped projections of FP4 weights are not supported")
        scale = self.scale if self.fmt == "fp8" else None
        return ops.grouped_linear(x, self.weight, scale, groups, self.numerics.dtype, reduce)

    def forward(self, x: torch.Tensor | SplitK, glu: tuple[torch.Tensor, float] | None = None,
                norm: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
        """y = x Wᵀ; ``glu`` = (up, limit): of an expert's activation swiglu(x, up) instead;
        ``norm`` = (weight, eps): of RMSNorm(x); a ``SplitK`` x: of its sum — in x's dtype (a
        resident FP8 weight's GEMM computes any of them as it reads its input)."""
        resident_fp8 = self.dense is None and self.fmt == "fp8"   # its GEMM takes prologues
        if isinstance(x, SplitK) and (self.fp32_compute or not resident_fp8):
            x = x.sum()
        quantized = self.numerics.native and self.fmt in ("fp8", "fp4")
        if not resident_fp8:
            if glu is not None:
                x, glu = ops.swiglu(x, glu[0], glu[1], None, x.dtype), None
            if norm is not None:
                x, norm = ops.rms_norm(x, norm[0], norm[1]), None
        if self.fp32_compute:
            x = x.float()
        dtype = torch.float32 if self.fp32_compute else self.numerics.dtype
        if self.fmt == "fp4" and self.dense is None:  # stays packed: W4A16 kernel on Triton
            return ops.fp4_linear(x, self.weight, self.scale, dtype, quantize_input=quantized)
        if self.dense is None:  # resident FP8 / BF16: dequantised per use
            return ops.dequant_linear(x, self.weight, self.scale, dtype, quantize_input=quantized,
                                      glu=glu, norm=norm)
        return ops.linear(x, self.dense_weight(), quantize_input=quantized)


class StackedLinear:
    """Sibling linears that read the same input, run as one GEMM over their weights stacked
    along the output rows: attention's ``wq_a`` and ``wkv``, its ``wq_b`` and the indexer's, the
    compressors' ``wkv`` / ``wgate`` with the indexer's head weights, the shared expert's ``w1``
    and ``w3``. At decode each of those is a GEMV or an FP8 GEMM of one row: stacked, the
    weights are read in one launch instead of one each (and one split-K sum instead of one each).

    ``stack()`` (after loading; ``Transformer.prepare``) concatenates the members' weights — and
    their 128×128 scales, so each FP8 member must have a multiple of 128 output rows — and
    re-points every member at its rows of the stack: no second copy, and the members keep the
    checkpoint names. It stacks only where the Triton kernels run (on the reference backend
    separate torch GEMMs cost nothing extra, and a CPU keeps the weights zero-copy as mapped)
    and only members held alike (format, input width, resident or dense). Otherwise, and
    before ``stack()``, a call runs the members one by one: the same values either way, up to
    the GEMM's summation order. Calling it returns each member's output, a column view of the
    one result, in that member's own output dtype; ``norm`` makes an RMSNorm of the input the
    FP8 GEMM's prologue (q_norm), and ``partials`` leaves a GEMV's K splits for the kernel that
    reads the result to sum. Not a module: the members are."""

    def __init__(self, *members: Linear) -> None:
        self.members = members
        self.fused: Linear | None = None
        ends = [sum(m.out_features for m in members[: i + 1]) for i in range(len(members))]
        # each member's columns [lo, hi) of the stacked output
        self.bounds = [(end - m.out_features, end) for m, end in zip(members, ends, strict=True)]

    def stackable(self) -> bool:
        """Whether the members are held alike: format, input width, device, resident (as
        mapped) or dense in one dtype; FP8 members in whole 128-row scale blocks."""
        if len(self.members) < 2:
            return False
        held = {(m.fmt, m.in_features, m.weight.device, None if m.dense is None else m.dense.dtype)
                for m in self.members}
        first = self.members[0]
        if len(held) != 1 or first.weight.is_meta:
            return False
        if first.dense is None and first.fmt == "fp8":
            return all(m.out_features % 128 == 0 and m.weight.shape[0] == m.out_features
                       for m in self.members)
        return True

    def stack(self) -> bool:
        """Stack the members' weights (again, after a change to one of them). → stacked?"""
        self.fused = None
        if not self.stackable() or ops.backend(self.members[0].weight) != "triton":
            return False
        first = self.members[0]
        fused = Linear(first.in_features, sum(m.out_features for m in self.members), first.fmt,
                       fp32_compute=any(m.fp32_compute for m in self.members))
        fused.numerics = first.numerics
        if first.dense is not None:
            fused.weight, fused.scale = first.weight, first.scale
            fused.dense = _cat_rows([m.dense for m in self.members])
            for m, (a, b) in zip(self.members, self.bounds, strict=True):
                m.dense = fused.dense[a:b]
        else:
            fused.weight = _cat_rows([m.weight for m in self.members])
            fused.scale = None if first.scale is None else _cat_rows(
                [m.scale for m in self.members])
            for m, (a, b) in zip(self.members, self.bounds, strict=True):
                m.weight = fused.weight[a:b]
                if m.scale is not None:
                    m.scale = fused.scale[a // 128: -(-b // 128)] if m.fmt == "fp8" else \
                        fused.scale[a:b]
        self.fused = fused
        return True

    def __call__(self, x: torch.Tensor, norm: tuple[torch.Tensor, float] | None = None
                 ) -> tuple[torch.Tensor, ...]:
        """Each member's output of x (``norm`` = (weight, eps): of RMSNorm(x), computed once)."""
        if self.fused is None:
            if len(self.members) == 1:
                return (self.members[0](x, norm=norm),)
            if norm is not None:
                x = ops.rms_norm(x, norm[0], norm[1])
            return tuple(m(x) for m in self.members)
        y = self.fused(x, norm=norm)
        return tuple(y[..., a:b].to(_out_dtype(m)) for m, (a, b) in
                     zip(self.members, self.bounds, strict=True))

    def partials(self, x: torch.Tensor) -> torch.Tensor:
        """All members' outputs side by side (columns ``bounds``) as fp32 partial sums
        [S, ..., N] whose sum over S is the output: a stacked bf16 / fp32 weight at decode
        leaves the GEMV's K splits unsummed for the consuming kernel to sum as it reads them
        (``ops.linear_partials``); S = 1 otherwise. Not rounded to a member's output dtype."""
        f = self.fused
        if f is None:
            return torch.cat([m(x).float() for m in self.members], dim=-1).unsqueeze(0)
        if f.dense is None and f.fmt in ("bf16", "fp32"):
            dtype = _out_dtype(f)
            return ops.linear_partials(x.float() if f.fp32_compute else x, f.weight, None, dtype)
        return f(x).float().unsqueeze(0)


def _out_dtype(linear: Linear) -> torch.dtype:
    return torch.float32 if linear.fp32_compute else linear.numerics.dtype


def _cat_rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0 (through uint8 views: cat has no kernel for some FP8 dtypes)."""
    if tensors[0].element_size() == 1 and tensors[0].is_floating_point():
        return torch.cat([t.view(torch.uint8) for t in tensors]).view(tensors[0].dtype)
    return torch.cat(tensors)
