"""``interpret_hints``: the interpreter checks ``tl.multiple_of`` / ``tl.max_contiguous``
promises (installed for every kernel test by conftest.py), so a promise a GPU would turn into a
misaligned vector load fails a CPU test instead."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from model.kernels.interpret_hints import HintBroken, check_max_contiguous, check_multiple_of


@triton.jit
def _gather_kernel(x_ptr, out_ptr, start, N: tl.constexpr, RUN: tl.constexpr):
    off = tl.max_contiguous(tl.multiple_of(start + tl.arange(0, N), RUN), RUN)
    tl.store(out_ptr + tl.arange(0, N), tl.load(x_ptr + off))


@triton.jit
def _scalar_kernel(x_ptr, out_ptr, start):
    tl.store(out_ptr, tl.load(x_ptr + tl.multiple_of(start, 16)))


def test_kept_promises_run_and_broken_ones_fail_the_launch():
    x, out = torch.arange(64.0), torch.empty(8)
    _gather_kernel[(1,)](x, out, 16, N=8, RUN=4)
    assert out.tolist() == list(range(16, 24))
    with pytest.raises(Exception, match="multiple_of.*starts at 18, not a multiple of 4"):
        _gather_kernel[(1,)](x, out, 18, N=8, RUN=4)
    _scalar_kernel[(1,)](x, out, 32)
    with pytest.raises(Exception, match="starts at 40, not a multiple of 16"):
        _scalar_kernel[(1,)](x, out, 40)


def test_multiple_of_is_about_the_first_element_of_each_contiguous_group():
    check_multiple_of(np.array([64, 65, 66, 67, 96, 97]), [32])       # two runs, 64 and 96
    with pytest.raises(HintBroken, match="starts at 65"):
        check_multiple_of(np.array([64, 66, 65, 66]), [2])            # a run starts at 65
    rows = np.arange(4)[:, None] * 8 + np.arange(4)[None, :]           # [[0..3], [8..11], ...]
    check_multiple_of(rows, [1, 8])
    with pytest.raises(HintBroken, match="dimension 1"):
        check_multiple_of(rows + 2, [1, 8])


def test_max_contiguous_wants_each_aligned_group_consecutive():
    check_max_contiguous(np.array([4, 5, 6, 7, 20, 21, 22, 23]), [4])
    with pytest.raises(HintBroken, match="group of 4"):
        check_max_contiguous(np.array([4, 5, 6, 7, 20, 21, 23, 22]), [4])
    with pytest.raises(HintBroken):   # fewer elements than the claim: the whole is one group
        check_max_contiguous(np.array([3, 9]), [4])
