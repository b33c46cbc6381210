"""``interpret_order``: the interpreter runs a launch's programs in a shuffled order (installed
for every test that interprets kernels by tests/conftest.py), so a kernel's last-arriving
program is not always its last program id."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _arrival_kernel(counter_ptr, out_ptr):
    pid = (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(2) \
        + tl.program_id(2)
    tl.store(out_ptr + pid, tl.atomic_add(counter_ptr, 1))


def test_every_program_runs_once_in_an_order_that_changes_launch_to_launch():
    orders = []
    for grid in [(24,), (4, 3, 2), (4, 3, 2)]:
        counter = torch.zeros(1, dtype=torch.int32)
        arrival = torch.full((24,), -1, dtype=torch.int32)
        _arrival_kernel[grid](counter, arrival)
        assert sorted(arrival.tolist()) == list(range(24))   # each program once
        orders.append(arrival.tolist())
    assert all(order != list(range(24)) for order in orders)  # not in program-id order
    assert orders[1] != orders[2]                             # and not the same twice
