"""Every sequence's new rows after its past ones, in one launch: a decode step's cache appends.

At a decode step of several sequences each layer grows, per sequence, its window (past rows +
the new KV row) and each compressor's open block (past tail + the new pooling inputs). Each is
``torch.cat([past, new], dim=1)`` into a fresh tensor — one launch per sequence per buffer.
``append_rows_triton`` makes all of a layer's fresh tensors (allocations: no launch), and one
kernel copies each item's past bytes then its new bytes into its own, reading their addresses
from a table (int64 [5, items]: past address and bytes, new address and bytes, destination),
which goes up once (pinned memory, no host wait). The copies move the same bytes as the cats,
in 8-byte words when every address and size allows (FP8 rows of 584 bytes, fp32 rows).

Items are (past or None, new[, dest]): [1, n, ...] and [1, m, ...] of one dtype and row shape,
each contiguous (b = 1: the rows of one sequence), and where they go ([1, n + m, ...]; a fresh
tensor when not given). A window with room in its store names the store's rows right past it
and no past (``LayerCache.join_window``): its step copies one row, not the window.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from model.kernels.launch import address, device_table, grid_entry, pdl

APPEND_BLOCK = 4096   # bytes a program copies per step of its loop
APPEND_PROGRAMS = 8   # programs per item (the copies of a V4 window: 74 KB each)


@triton.jit
def _append_rows_kernel(tab_ptr, ITEMS, BLOCK: tl.constexpr, WORDS: tl.constexpr = False,
                        PDL: tl.constexpr = False):
    """Program (item, part): its share of item's destination — the past's first, then the new
    rows' — from table rows past address, past size, new address, new size, dest; sizes in
    bytes, or in 8-byte words when WORDS (every address and size a multiple of 8: a word a
    load, not a byte)."""
    grid_entry(PDL)
    item = tl.program_id(0)
    part = tl.program_id(1)
    parts = tl.num_programs(1)
    unit = tl.pointer_type(tl.int64 if WORDS else tl.uint8)
    past = tl.load(tab_ptr + item).to(unit)
    past_bytes = tl.load(tab_ptr + ITEMS + item)
    new = tl.load(tab_ptr + 2 * ITEMS + item).to(unit)
    new_bytes = tl.load(tab_ptr + 3 * ITEMS + item)
    dest = tl.load(tab_ptr + 4 * ITEMS + item).to(unit)
    total = past_bytes + new_bytes
    for start in range(part * BLOCK, total, parts * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        from_past = offs < past_bytes
        in_new = (offs >= past_bytes) & (offs < total)
        data = tl.load(past + offs, mask=from_past, other=0)
        data = tl.where(in_new, tl.load(new + (offs - past_bytes), mask=in_new, other=0), data)
        tl.store(dest + offs, data, mask=offs < total)


Item = tuple[torch.Tensor | None, torch.Tensor] | tuple[torch.Tensor | None, torch.Tensor,
                                                          torch.Tensor | None]


def _parts(item: Item) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(past, new, dest): an item's destination, or a fresh tensor when it names none."""
    past, new, dest = (*item, None)[:3]
    n = 0 if past is None else past.shape[1]
    if dest is None:
        dest = new.new_empty(new.shape[0], n + new.shape[1], *new.shape[2:])
    elif dest.shape[1] != n + new.shape[1] or dest.shape[2:] != new.shape[2:]:
        raise ValueError(f"cannot append {n} + {new.shape[1]} rows into {tuple(dest.shape)}")
    return past, new, dest


def append_rows_reference(items: Sequence[Item]) -> list[torch.Tensor]:
    """Per item (past [1, n, ...] or None, new [1, m, ...], and where they go: dest [1, n + m,
    ...], or a fresh tensor when it is None or left out): the past rows then the new ones, as
    ``torch.cat([past, new], dim=1)`` makes them → the destinations. A window's row goes
    straight into its store (past None, dest the store's rows past the window's)."""
    outs = []
    for item in items:
        past, new, dest = _parts(item)
        if past is None:
            dest.copy_(new)
        elif dest.is_contiguous():   # one op
            torch.cat([past, new], dim=1, out=dest)
        else:
            dest[:, :past.shape[1]] = past
            dest[:, past.shape[1]:] = new
        outs.append(dest)
    return outs


def append_rows_triton(items: Sequence[Item]) -> list[torch.Tensor]:
    """Same contract as ``append_rows_reference``: one launch for all the items (each item's
    tensors contiguous)."""
    outs, rows = [], [[], [], [], [], []]
    for item in items:
        past, new, out = _parts(item)
        if past is not None:
            _check(past, new)
        assert new.shape[0] == 1 and new.is_contiguous() and out.is_contiguous(), new.shape
        outs.append(out)
        size = new.element_size()
        for row, value in zip(rows, (address(past), 0 if past is None else past.numel() * size,
                                     address(new), new.numel() * size, address(out)),
                              strict=True):
            row.append(value)
    if not outs:
        return outs
    most = max(p + m for p, m in zip(rows[1], rows[3], strict=True))
    parts = max(1, min(APPEND_PROGRAMS, triton.cdiv(most, APPEND_BLOCK)))
    words = all(value % 8 == 0 for row in rows for value in row)
    if words:   # sizes in words (addresses stay bytes: the kernel casts them)
        rows[1] = [value // 8 for value in rows[1]]
        rows[3] = [value // 8 for value in rows[3]]
    table = device_table(rows, outs[0].device)
    _append_rows_kernel[(len(outs), parts)](table, len(outs),
                                            BLOCK=APPEND_BLOCK // 8 if words else APPEND_BLOCK,
                                            WORDS=words, **pdl(outs[0].device))
    return outs


def _check(past: torch.Tensor, new: torch.Tensor) -> None:
    if (past.shape[0] != 1 or past.shape[2:] != new.shape[2:] or past.dtype != new.dtype
            or not past.is_contiguous()):
        raise ValueError(f"cannot append rows {tuple(new.shape)} {new.dtype} to "
                         f"{tuple(past.shape)} {past.dtype}")
