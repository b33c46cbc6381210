"""Whole-repository context: walk, count, render, outline, rank and pack a repository.

Public API:

- ``pack.pack_repository(repo, budget=DEFAULT_BUDGET, question=None, *, use_cache=True)
  -> PackedContext`` (``.text`` stable prefix, ``.files``, ``.outlined``, ``.omitted``,
  ``.skipped``, ``.tokens``, ``.stats()``)
- ``pack.delta_for_edits(packed, repo=None) -> str``: changes since packing, for appending
- ``instructions.load_instructions(repo)`` / ``instructions_prompt(repo)``: AGENTS.md / CLAUDE.md
- ``tokens.count_tokens(texts) -> list[int]``: the real V4 tokenizer;
  ``linecount.LineTokenCounter``: exact counts of numbered blocks from per-line counts;
  ``parsing.parse_files(items)``: tree-sitter facts, in forked workers for large inputs
- ``live.LiveContext``: a session's pack snapshot (saved as ``<session>.pack.json``) and
  ``prepare_messages(messages)``: the transcript + one trailing, unstored delta message
- ``compaction.compact(session, limit=None, ...) -> CompactionEvent | None`` and
  ``Compactor`` (the loop's hook): old tool outputs and large tool-call arguments
  (``archive_args``) -> stubs, full text in ``archive.Archive`` (``<session>.archive``), read
  back (in pages past 30,000 characters) by ``archive.recall_tool(archive)``
- ``session_context``: ``pack_for_session`` / ``attach_context`` / ``resume_context`` ->
  ``SessionContext`` (``.tools``, ``.compactor``, ``.prepare_messages``, ``.compact_now``)
- ``citations.check_citations(repo, text, known_paths=None) -> list[Citation]``, ``citation_report``
- ``cli.pack_main(argv) -> int`` and ``cli.bench_pack_main(argv) -> int``;
  ``bench.bench_pack(paths) -> dict``
"""
