"""How the torch references bound their scratch: queries are taken a block at a time so that no
per-call tensor grows past ``REFERENCE_BLOCK_ELEMENTS`` fp32 elements (64 MiB), however long the
prefill chunk. model/memory.py counts the same bound."""

from __future__ import annotations

from collections.abc import Iterator

REFERENCE_BLOCK_ELEMENTS = 1 << 24


def query_blocks(s: int, per_query: int) -> Iterator[tuple[int, int]]:
    """[lo, hi) ranges covering ``s`` queries, each block's ``per_query`` elements per query
    under the bound (at least one query per block)."""
    step = max(1, REFERENCE_BLOCK_ELEMENTS // max(1, per_query))
    return ((i, min(s, i + step)) for i in range(0, s, step))
