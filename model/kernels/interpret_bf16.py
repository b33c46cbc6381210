"""bf16 in Triton's interpreter, computed as a GPU computes it, and the one inline PTX
instruction our kernels use — so CI runs the kernels' bf16 branches (the tensor-core FP4
decoder, bf16 tiles and stores) that the fp32 runs never enter.

The interpreter keeps a bf16 tensor as its raw uint16 bits and hands them to numpy as they are:
arithmetic, comparisons, ``tl.dot`` and min / max on bf16 come out wrong, and fp32 → bf16
truncates. ``install()`` patches its builder (class attributes of Triton's
``InterpreterBuilder`` and ``ReduceOps``, once per process) so that

- an op on bf16 operands reads them as the float32 values they are (exact), computes in float32
  and rounds the result to bf16 to nearest even — the GPU's bf16 arithmetic (one rounding for
  ×, min and max; + and − of values 2^16 apart or more, a division or a transcendental round
  twice, as the float32 op then ``cvt.rn.bf16`` do); ``tl.fma`` on bf16 rounds once;
- casts to bf16 round to nearest even (``cvt.rn.bf16.f32``), from bf16 are exact;
- ``tl.dot`` on bf16 operands multiplies their values and accumulates in float32;
- ``tl.dot`` on float32 operands at ``input_precision="tf32"`` reads them as tf32 (the tensor
  core drops the low 13 mantissa bits), and at ``"tf32x3"`` is Triton's three tf32 dots (its
  F32DotTC pass: big = ``cvt.rna.tf32.f32`` of each operand, small = the rest; small·big, then
  big·small, then big·big, accumulated in that order) — where the fp32 interpreter computes
  every float32 dot in full float32 (the mHC's token-block GEMM runs tf32x3 on a GPU);
- ``fma.rn.bf16x2`` (``fp4_pairs.scaled_halves``) is emulated: each half a·b + c with one
  rounding to nearest even, subnormal inputs and results kept (the bf16 forms of ``fma`` have
  no ``.ftz``: only ``.rn`` and ``.rn.relu`` exist). Any other inline assembly still raises.

Other ops that never saw a bf16 operand run as before. Nothing here is used on a GPU: the
wrappers ask ``launch.interpreter_fp32()`` whether to hand the interpreter fp32 instead, and it
says no when ``V4CODER_INTERPRET_BF16=1`` (``launch.interpreter_bf16()``, which installs this)."""

from __future__ import annotations

import os

import numpy as np
import torch
import triton.language as tl
from triton.runtime import interpreter as ti

from model.kernels.launch import BF16_ENV

_installed = False


def bf16_values(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16 / int16 / the low half of wider ints) → their float32 values."""
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 (or float64, rounded to odd on the way) → the nearest bf16, ties to even, as
    uint16 bit patterns. float64 goes through float32 rounded to odd: 16 more bits than bf16
    at every exponent, so the second rounding is the correct one."""
    v = np.asarray(values)
    shape = v.shape
    if v.dtype == np.float64:
        f = v.astype(np.float32)
        inexact = (f.astype(np.float64) != v) & np.isfinite(v)
        toward_zero = inexact & (np.abs(f.astype(np.float64)) > np.abs(v))
        f = np.where(toward_zero, np.nextafter(f, np.float32(0)), f)
        odd = np.ascontiguousarray(f).view(np.uint32) | inexact.astype(np.uint32)
        v = odd.view(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32).reshape(-1))
    out = t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return out.reshape(shape)


def _is_bf16(h) -> bool:
    return isinstance(h, ti.TensorHandle) and h.dtype.scalar == tl.bfloat16


def _as_fp32(h):
    return ti.TensorHandle(bf16_values(h.data), tl.float32) if _is_bf16(h) else h


def _rounded(out):
    """An op's float32 result → bf16 (it had bf16 operands); anything else (bool) as it is."""
    if isinstance(out, ti.TensorHandle) and out.data.dtype == np.float32:
        return ti.TensorHandle(bf16_bits(out.data), tl.bfloat16)
    return out


def _in_fp32(original):
    """A builder op that reads its bf16 operands as float32 and rounds a float result back."""
    def op(self, *args):
        if not any(_is_bf16(a) for a in args):
            return original(self, *args)
        return _rounded(original(self, *(_as_fp32(a) for a in args)))
    return op


def _fma(original):
    def fma(self, x, y, z):
        if not _is_bf16(z):
            return original(self, x, y, z)
        product = bf16_values(x.data).astype(np.float64) * bf16_values(y.data)
        exact = _sum_to_odd(*np.broadcast_arrays(product, bf16_values(z.data).astype(np.float64)))
        return ti.TensorHandle(bf16_bits(exact), tl.bfloat16)
    return fma


def _cast(original):
    def cast(self, src, dst_type):
        dst = dst_type.scalar
        if _is_bf16(src):
            src = _as_fp32(src)
            if dst == tl.float32:
                return src
        if dst == tl.bfloat16:
            if src.dtype.scalar != tl.float32:
                src = original(self, src, tl.float32)
            return ti.TensorHandle(bf16_bits(src.data), tl.bfloat16)
        return original(self, src, dst_type)
    return cast


def _fp_to_fp(original):
    def fp_to_fp(self, src, dst_type, rounding_mode):
        if not (_is_bf16(src) or dst_type.scalar == tl.bfloat16):
            return original(self, src, dst_type, rounding_mode)
        src = _as_fp32(src)
        if dst_type.scalar == tl.bfloat16:
            if src.dtype.scalar != tl.float32:
                src = original(self, src, tl.float32, rounding_mode)
            return ti.TensorHandle(bf16_bits(src.data), tl.bfloat16)
        return original(self, src, dst_type, rounding_mode) if src.dtype.scalar != dst_type.scalar \
            else src
    return fp_to_fp


def tf32_truncated(x: np.ndarray) -> np.ndarray:
    """float32 → what a tf32 tensor core reads of it: the low 13 mantissa bits dropped."""
    return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) & np.uint32(0xFFFFE000)
            ).view(np.float32)


def tf32_rounded(x: np.ndarray) -> np.ndarray:
    """``cvt.rna.tf32.f32``: float32 to 10 mantissa bits, to nearest, ties away from zero (a
    finite x: the carry of the half-unit add may step the exponent, as the rounding does)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)
    return np.where(np.isfinite(x), rounded, x)


def tf32_dot(a: np.ndarray, b: np.ndarray, acc: np.ndarray, triple: bool) -> np.ndarray:
    """acc + a @ b as a tf32 tensor core computes it (``triple``: tf32x3), float32 sums."""
    def mma(x, y, c):
        return np.matmul(tf32_truncated(x), tf32_truncated(y), dtype=np.float32) + c
    if not triple:
        return mma(a, b, acc)
    a_big, b_big = tf32_rounded(a), tf32_rounded(b)
    a_small, b_small = a - a_big, b - b_big
    partial = mma(a_big, b_small, mma(a_small, b_big, acc))
    return mma(a_big, b_big, np.where(np.isnan(partial), np.float32(0), partial))


def _dot(original):
    def dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        precision = getattr(input_precision, "name", "")
        # (float32 dots only while the switch is on: the patch outlives it in the process)
        if (precision in ("TF32", "TF32x3") and a.dtype.scalar == tl.float32 ==
                b.dtype.scalar and d.dtype.scalar == tl.float32 and
                os.environ.get(BF16_ENV) == "1"):
            return ti.TensorHandle(tf32_dot(a.data, b.data, d.data, precision == "TF32x3"),
                                   tl.float32)
        return original(self, _as_fp32(a), _as_fp32(b), d, input_precision, max_num_imprecise_acc)
    return dot


def fma_bf16x2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``fma.rn.bf16x2 d, a, b, c`` on int32 registers: each 16-bit half a·b + c, one rounding
    to nearest even, subnormals kept (the emulated instruction)."""
    def halves(r):
        u = np.asarray(r).astype(np.int64) & 0xFFFFFFFF
        return bf16_values(u & 0xFFFF).astype(np.float64), bf16_values(u >> 16).astype(np.float64)
    (al, ah), (bl, bh), (cl, ch) = halves(a), halves(b), halves(c)
    lo = bf16_bits(_sum_to_odd(al * bl, cl)).astype(np.int64)
    hi = bf16_bits(_sum_to_odd(ah * bh, ch)).astype(np.int64)
    return ((hi << 16) | lo).astype(np.uint32).view(np.int32)


def _sum_to_odd(p: np.ndarray, c: np.ndarray) -> np.ndarray:
    """p + c in float64 rounded to odd (p = a·b of two bf16: exact in float64): the sum's
    rounding error from TwoSum, then the last bit set where it was inexact — so the rounding
    to bf16 after it is the one rounding of the exact a·b + c, ties included."""
    s = p + c
    bp = s - p
    err = (p - (s - bp)) + (c - bp)
    inexact = (err != 0) & np.isfinite(s)
    over = inexact & ((s > 0) != (err > 0))           # |s| > |exact|: truncate toward zero
    s = np.where(over, np.nextafter(s, 0.0), s)
    return np.where(inexact, (np.ascontiguousarray(s).view(np.int64) | 1).view(np.float64), s)


_ASM = {"fma.rn.bf16x2 $0, $1, $2, $3;": fma_bf16x2}


class _AsmResult:
    def __init__(self, handle):
        self.handle = handle

    def get_result(self, i):
        assert i == 0
        return self.handle


def _inline_asm(original):
    def inline_asm(self, asm, constraints, values, type, is_pure, pack):
        emulate = _ASM.get(asm.strip())
        if emulate is None or pack != 1:
            return original(self, asm, constraints, values, type, is_pure, pack)
        data = np.broadcast_arrays(*(v.data for v in values))
        return _AsmResult(ti.TensorHandle(emulate(*data), tl.int32))
    return inline_asm


def _reduce_in_fp32(original):
    """``tl.max`` / ``tl.min`` / ``tl.sum`` over bf16: over its values, the result rounded."""
    def reduce(self, input, *args, **kwargs):
        x = input[0] if isinstance(input, tuple) else input
        if x.dtype != tl.bfloat16:
            return original(self, input, *args, **kwargs)
        as32 = tl.core.tensor(ti.TensorHandle(bf16_values(x.handle.data), tl.float32),
                              x.type.with_element_ty(tl.float32))
        out = original(self, as32, *args, **kwargs)
        outs = out if isinstance(out, tuple) else (out,)
        fixed = tuple(self.to_tensor(bf16_bits(o.handle.data), tl.bfloat16)
                      if o.dtype == tl.float32 else o for o in outs)
        return fixed if isinstance(out, tuple) else fixed[0]
    return reduce


def install() -> None:
    """Patch Triton's interpreter for bf16 (idempotent; process-wide, bf16 operands only)."""
    global _installed
    if _installed:
        return
    b = ti.InterpreterBuilder
    for name in ("binary_op", "unary_op", "ternary_op", "create_erf", "create_rsqrt"):
        setattr(b, name, _in_fp32(getattr(b, name)))
    b.create_fma = _fma(b.create_fma)
    b.cast_impl = _cast(b.cast_impl)
    b.create_fp_to_fp = _fp_to_fp(b.create_fp_to_fp)
    b.create_dot = _dot(b.create_dot)
    b.create_inline_asm = _inline_asm(b.create_inline_asm)
    ti.ReduceOps.min_max = _reduce_in_fp32(ti.ReduceOps.min_max)
    ti.ReduceOps.sum = _reduce_in_fp32(ti.ReduceOps.sum)
    _installed = True
