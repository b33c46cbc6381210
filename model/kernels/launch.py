"""What every Triton wrapper in model/kernels/ shares about launching: whether kernels run in
Triton's interpreter (``TRITON_INTERPRET=1``, which Triton reads when it is imported; the
interpreter mishandles bf16, so wrappers hand it fp32), and how many short rows one program
takes so that a tile holds about ``TILE_ELEMENTS`` elements."""

from __future__ import annotations

import os

import triton

TILE_ELEMENTS = 4096  # elements per program: small rows are batched into one tile


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def rows_per_program(n_rows: int, row_elements: int) -> int:
    """Power-of-two rows per program (≤ 16) so one tile holds about TILE_ELEMENTS elements."""
    return max(1, min(16, TILE_ELEMENTS // row_elements, triton.next_power_of_2(n_rows)))
