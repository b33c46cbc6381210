"""Exact token counts of numbered blocks from per-line counts.

A rendered body or outline (agent.context.render) is a run of ``<n> <line>\\n`` lines. The V4
tokenizer's first pre-tokenizer isolates every run of digits (``\\p{N}{1,3}``), none of its
added tokens contain whitespace, and the normalizer is empty; so each line number is its own
group of pre-tokens (it follows ``\\n`` and precedes a space), and the rest of a line,
``" <line>\\n"``, is tokenised exactly as it would be alone. Hence

    tokens(block) = Σ tokens(str(n)) + Σ tokens(" " + line + "\\n")

The number part is arithmetic over 1-3 digit chunks (counted once per counter); the line part
is counted once per distinct line, however many files or outlines repeat it. This costs less
than tokenising the rendered text (no line numbers to tokenise, repeated lines counted once)
and gives the same number; tests check the identity against the tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.context.tokens import count_tokens

_CHUNKS = [str(i) for i in range(1000)] + [f"{i:02d}" for i in range(10)] + \
    [f"{i:03d}" for i in range(100)]  # every 1-3 digit run: "7", "07", "007", ...


@dataclass(slots=True)
class LineTokenCounter:
    """Per-line token counts shared by every body and outline of one pack."""

    lines: dict[str, int] = field(default_factory=dict)  # line -> tokens of " line\n"
    _chunk: dict[str, int] = field(default_factory=dict)  # 1-3 digit string -> tokens
    _numbers_upto: list[int] = field(default_factory=lambda: [0])  # Σ tokens(str(k)), k ≤ n

    def add(self, blocks: Iterable[Iterable[str]]) -> None:
        """Count every line of ``blocks`` not counted yet (one tokenizer batch)."""
        known = self.lines
        new: dict[str, None] = {}
        for block in blocks:
            for line in block:
                if line not in known:
                    new[line] = None
        if new:
            fresh = list(new)
            known.update(zip(fresh, count_tokens([f" {line}\n" for line in fresh]), strict=True))

    def number_tokens(self, n: int) -> int:
        """Tokens of the line number ``n`` (digits split into runs of three from the left)."""
        if not self._chunk:
            self._chunk.update(zip(_CHUNKS, count_tokens(_CHUNKS), strict=True))
        s = str(n)
        return sum(self._chunk[s[i:i + 3]] for i in range(0, len(s), 3))

    def numbers_upto(self, n: int) -> int:
        """Σ tokens(str(k)) for k = 1..n."""
        table = self._numbers_upto
        while len(table) <= n:
            table.append(table[-1] + self.number_tokens(len(table)))
        return table[n]

    def body(self, lines: list[str]) -> int:
        """Tokens of ``number_lines(lines)`` (every line must have been :meth:`add`-ed)."""
        return self.numbers_upto(len(lines)) + sum(map(self.lines.__getitem__, lines))

    def entries(self, entries: list[tuple[int, str]]) -> int:
        """Tokens of ``render_outline(entries)`` (every line must have been :meth:`add`-ed)."""
        return sum(self.number_tokens(n) + self.lines[line] for n, line in entries)
