"""Triton's interpreter runs kernels launched to overlap their neighbours (``launch.pdl``).

Programmatic dependent launch adds two instructions at a kernel's entry (``launch.grid_entry``):
let the next launch start, and wait for the one before to finish. The interpreter runs each
launch to its end before the next begins, so both have nothing to do; it has no rule for
either: it refuses inline PTX, the form ``grid_entry`` writes them in. ``install()`` makes
them no-ops, so that CI runs every launch site and kernel with ``PDL`` on, as a GPU
would, and checks the results do not change; ``executed`` counts the instructions the programs
ran, so a test can tell the kernels took their PDL branch. The L2 prefetches a kernel asks
between the two (``launch.grid_entry_prefetching``) are no-ops too; ``recording_prefetches``
hands a test their addresses. Installed by ``launch.pdl`` the first time it says yes under the
interpreter; process-wide, once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import triton.language as tl
from triton.runtime import interpreter as ti

_installed = False
executed: Counter[str] = Counter()   # "griddepcontrol.wait", … → programs that ran it
_recording: list[list[int]] = []     # the addresses prefetched, while a test records them


class _NoResult:
    """What the interpreter's inline-asm call hands back: int32 zeros of the operands' shape
    (the ops' dummy)."""

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.shape = shape

    def get_result(self, i: int) -> ti.TensorHandle:
        return ti.TensorHandle(np.zeros(self.shape, dtype=np.int32), tl.int32)


def install() -> None:
    """The grid-dependency instructions as no-ops in the interpreter (idempotent)."""
    global _installed
    if _installed:
        return
    b = ti.InterpreterBuilder
    inline_asm = b.create_inline_asm

    def create_inline_asm(self, asm, constraints, values, type, is_pure, pack):
        if asm.strip().startswith("griddepcontrol."):
            executed[asm.split(";")[0].strip()] += 1
            return _NoResult()
        if "prefetch.global.L2" in asm:   # (address, ask) pairs: the lines asked
            shape = np.broadcast_shapes(*(v.data.shape for v in values))
            at, ask = (np.broadcast_to(v.data, shape) for v in values)
            lines = [int(a) for a in at[ask != 0].ravel()]
            executed["prefetch.global.L2"] += len(lines)
            for record in _recording:
                record.extend(lines)
            return _NoResult(shape)
        return inline_asm(self, asm, constraints, values, type, is_pure, pack)

    b.create_inline_asm = create_inline_asm
    _installed = True


@contextmanager
def recording_prefetches() -> Iterator[list[int]]:
    """Within the block, the addresses of the L2 lines the kernels ask for (in the interpreter,
    with ``install``ed no-ops) are appended to the list it yields."""
    record: list[int] = []
    _recording.append(record)
    try:
        yield record
    finally:
        _recording.remove(record)
