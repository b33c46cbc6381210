"""``interpret_bounds``: every access of an interpreted launch lies in the memory the launch may
touch — its tensors' storages and the tensors whose addresses it reads from a table
(``launch.address``) — or the launch fails, as a GPU's would with an illegal address (installed
for every test that interprets kernels by tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from model.kernels import launch


@triton.jit
def _copy_kernel(x_ptr, out_ptr, n, N: tl.constexpr, MASKED: tl.constexpr):
    i = tl.arange(0, N)
    x = tl.load(x_ptr + i, mask=i < n) if MASKED else tl.load(x_ptr + i)
    tl.store(out_ptr + i, x, mask=i < n)


def test_a_read_past_the_end_fails_and_a_masked_off_lane_does_not():
    storage = torch.arange(12.0)
    x, out = storage[:10], torch.zeros(16)
    _copy_kernel[(1,)](x, out, 10, N=16, MASKED=True)      # lanes 10..15 masked off
    assert out[:10].tolist() == list(range(10))
    _copy_kernel[(1,)](x, out, 10, N=8, MASKED=False)      # 8 of a 10-element view
    big = torch.arange(4.0)
    with pytest.raises(Exception, match=r"_copy_kernel: a load of 4 bytes at 0x[0-9a-f]+, 0 bytes "
                                        r"past a tensor's end"):
        _copy_kernel[(1,)](big, out, 4, N=8, MASKED=False)  # lane 4 reads past the storage


def test_a_view_may_read_its_whole_storage():
    whole = torch.arange(16.0)
    out = torch.zeros(8)
    _copy_kernel[(1,)](whole[:2], out, 8, N=8, MASKED=False)   # reaches past the view only
    assert out.tolist() == list(range(8))


@triton.jit
def _table_kernel(table_ptr, any_ptr, out_ptr, N: tl.constexpr):
    address = tl.load(table_ptr)
    src = any_ptr + (address - any_ptr.to(tl.int64)) // 4    # float32 elements
    tl.store(out_ptr + tl.arange(0, N), tl.load(src + tl.arange(0, N)))


def test_rows_reached_through_a_table_are_in_bounds_only_when_addressed():
    rows, out = torch.arange(8.0) + 100, torch.zeros(8)
    _table_kernel[(1,)](torch.tensor([launch.address(rows)]), out, out, N=8)
    assert out.tolist() == (torch.arange(8.0) + 100).tolist()
    other = torch.arange(8.0)
    with pytest.raises(Exception, match="OutOfBounds|_table_kernel: a load"):
        _table_kernel[(1,)](torch.tensor([other.data_ptr()]), out, out, N=8)
