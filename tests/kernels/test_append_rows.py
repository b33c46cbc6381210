"""A decode step's cache appends (every sequence's window and compressor tails) in one launch
(interpreter) against torch.cat."""

from __future__ import annotations

import pytest
import torch

from model.kernels.append_rows import append_rows_reference, append_rows_triton
from model.op_audit import OpAudit


def test_every_item_gets_its_past_then_its_new_rows_in_one_launch():
    g = torch.Generator().manual_seed(0)
    big = torch.randint(0, 256, (1, 3000, 200), generator=g, dtype=torch.uint8)
    step = torch.randint(0, 256, (1, 3, 200), generator=g, dtype=torch.uint8)
    pooled = torch.randn(1, 4, 2, 16, generator=g)
    items = [
        (big[:, 1:2999], step[:, 0:1]),            # a long window: a view past its start
        (None, step[:, 1:2]),                      # a first row: a copy of the new one
        (big[:, 5:9], step[:, 2:3]),
        (pooled[:, :3], pooled[:, 3:4]),           # a compressor's tail, fp32 [.., 2, 16]
    ]
    want = append_rows_reference(items)
    with OpAudit() as audit:
        got = append_rows_triton(items)
    assert dict(audit.triton) == {"_append_rows_kernel": 1}
    for g_, w_, (past, new) in zip(got, want, items, strict=True):
        assert g_.shape == w_.shape and g_.dtype == w_.dtype and torch.equal(g_, w_)
        assert g_.data_ptr() not in (new.data_ptr(), 0 if past is None else past.data_ptr())
    assert append_rows_triton([]) == []


def test_rows_of_another_shape_or_dtype_are_refused():
    rows = torch.zeros(1, 4, 8)
    with pytest.raises(ValueError, match="cannot append rows"):
        append_rows_triton([(rows, torch.zeros(1, 1, 9))])
    with pytest.raises(ValueError, match="cannot append rows"):
        append_rows_triton([(rows, torch.zeros(1, 1, 8, dtype=torch.float64))])


@pytest.mark.parametrize("append", [append_rows_reference, append_rows_triton])
def test_items_that_name_their_destination_are_written_there(append):
    """A window with room in its store: its new row goes right past its rows (no past to
    copy), into the store itself; an item with a past and a destination fills all of it."""
    g = torch.Generator().manual_seed(1)
    store = torch.randint(0, 256, (1, 12, 200), generator=g, dtype=torch.uint8)
    before = store.clone()
    fresh = torch.zeros(1, 12, 200, dtype=torch.uint8)
    step = torch.randint(0, 256, (1, 2, 200), generator=g, dtype=torch.uint8)
    got = append([(None, step[:, 0:1], store[:, 7:8]),
                  (store[:, 2:7], step[:, 1:2], fresh[:, :6])])
    assert got[0].data_ptr() == store[:, 7:8].data_ptr()
    assert torch.equal(store[:, 7], step[:, 0]) and torch.equal(store[:, :7], before[:, :7])
    assert torch.equal(store[:, 8:], before[:, 8:])     # nothing past the row it was given
    assert torch.equal(fresh[:, :6], torch.cat([before[:, 2:7], step[:, 1:2]], dim=1))
    assert not fresh[:, 6:].any()
    with pytest.raises(ValueError, match="cannot append 0 \\+ 1 rows into"):
        append([(None, step[:, 0:1], store[:, 7:9])])


def test_items_not_in_whole_words_are_copied_a_byte_at_a_time():
    """Every address and size a multiple of 8 (FP8 rows of 584 or 200 bytes, fp32 rows): the
    kernel copies 8-byte words; one item that is not (7-byte rows) and the launch copies bytes
    — the same result either way."""
    g = torch.Generator().manual_seed(2)
    odd = torch.randint(0, 256, (1, 40, 7), generator=g, dtype=torch.uint8)
    rows = torch.randint(0, 256, (1, 40, 200), generator=g, dtype=torch.uint8)
    words = [(rows[:, 2:30], rows[:, 30:31]), (None, rows[:, 31:33])]
    for items in (words, [*words, (odd[:, 1:20], odd[:, 20:21])]):
        want = append_rows_reference(items)
        for g_, w_ in zip(append_rows_triton(items), want, strict=True):
            assert torch.equal(g_, w_)
