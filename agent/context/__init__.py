"""Whole-repository context: walk, count, render, outline, rank and pack a repository.

Public API:

- ``pack.pack_repository(repo, budget=DEFAULT_BUDGET, question=None, *, use_cache=True)
  -> PackedContext`` (``.text`` stable prefix, ``.files``, ``.outlined``, ``.omitted``,
  ``.skipped``, ``.tokens``, ``.stats()``)
- ``pack.delta_for_edits(packed, repo=None) -> str``: changes since packing, for appending
- ``instructions.load_instructions(repo)`` / ``instructions_prompt(repo)``: AGENTS.md / CLAUDE.md
- ``tokens.count_tokens(texts) -> list[int]``: the real V4 tokenizer
- ``cli.pack_main(argv) -> int`` and ``cli.bench_pack_main(argv) -> int``;
  ``bench.bench_pack(paths) -> dict``
"""
