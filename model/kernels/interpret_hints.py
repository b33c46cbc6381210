"""The compiler hints ``tl.multiple_of`` / ``tl.max_contiguous``, checked in Triton's interpreter.

On a GPU a hint is a promise the compiler builds on: offsets promised to be multiples of 4 or 16
become vector loads and stores of 16 bytes, and a broken promise is a misaligned address (the
context dies, and with it the rest of a benchmark run) or silently wrong data. The interpreter
records hints and ignores them. ``install()`` makes it check each hint against the values it is
given, so every kernel test is also a test of the kernels' promises:

- ``multiple_of(x, v)``: along each dimension d, the first element of every run of consecutive
  values (the contiguous groups the compiler sees) is a multiple of ``v[d]``;
- ``max_contiguous(x, c)``: along each dimension d, each aligned group of ``c[d]`` elements is
  consecutive (x[g·c + j] = x[g·c] + j).

A broken promise raises ``HintBroken`` naming the hint, the value and where it is. Installed for
every test that interprets kernels (tests/conftest.py); process-wide, once."""

from __future__ import annotations

import numpy as np
import triton.language as tl
from triton.runtime import interpreter as ti

_installed = False


class HintBroken(AssertionError):
    """A kernel's ``tl.multiple_of`` / ``tl.max_contiguous`` promise is false for its values."""


def _values(hint_values) -> list[int]:
    vals = hint_values if isinstance(hint_values, (list, tuple)) else [hint_values]
    return [int(v.value if isinstance(v, tl.constexpr) else v) for v in vals]


def _runs_starts(a: np.ndarray) -> np.ndarray:
    """Along the last axis: True where a run of +1 steps begins."""
    starts = np.ones(a.shape, dtype=bool)
    starts[..., 1:] = np.diff(a, axis=-1) != 1
    return starts


def check_multiple_of(data: np.ndarray, values: list[int]) -> None:
    a = np.asarray(data).astype(np.int64)
    if a.ndim == 0:
        if a % values[0]:
            raise HintBroken(f"tl.multiple_of(x, {values[0]}): x = {int(a)}")
        return
    for d, v in enumerate(values):
        along = np.moveaxis(a, d, -1)
        firsts = along[_runs_starts(along)]
        bad = firsts[firsts % v != 0]
        if bad.size:
            raise HintBroken(f"tl.multiple_of(x, {values}): along dimension {d} a contiguous "
                             f"group starts at {int(bad[0])}, not a multiple of {v}")


def check_max_contiguous(data: np.ndarray, values: list[int]) -> None:
    a = np.asarray(data).astype(np.int64)
    for d, c in enumerate(values):
        along = np.moveaxis(a, d, -1)
        n = along.shape[-1]
        c = min(c, n)
        if c <= 1 or n % c:
            continue
        groups = along.reshape(*along.shape[:-1], n // c, c)
        steps = groups - groups[..., :1]
        if not np.array_equal(steps, np.broadcast_to(np.arange(c), steps.shape)):
            raise HintBroken(f"tl.max_contiguous(x, {values}): along dimension {d} a group of "
                             f"{c} is not consecutive")


def _checking(hint, check):
    def checked(input, values, *args, **kwargs):
        if isinstance(input, tl.tensor) and isinstance(input.handle, ti.TensorHandle):
            check(input.handle.data, _values(values))
        return hint(input, values, *args, **kwargs)
    return checked


def install() -> None:
    """Check hints in every interpreted launch from now on (idempotent)."""
    global _installed
    if _installed:
        return
    patch_core = ti._patch_lang_core

    def patch_lang_core(lang, scope):
        patch_core(lang, scope)
        scope.set_attr(lang, "multiple_of", _checking(lang.multiple_of, check_multiple_of))
        scope.set_attr(lang, "max_contiguous",
                       _checking(lang.max_contiguous, check_max_contiguous))

    ti._patch_lang_core = patch_lang_core
    _installed = True
