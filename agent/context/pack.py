"""Pack a repository into one stable, line-numbered prompt prefix within a token budget.

Order is deterministic and question-independent where possible: when the whole
repository fits, every file appears whole in path order (the same prefix serves every
question, so the engine's prefix cache stays warm). Over budget, files are *selected* by
rank (agent.context.rank: named files first, whatever they import or is referenced by
them, their tests, the rest), every other file gets a tree-sitter outline, and the
selection is emitted whole files first, then outlines, each in path order. Edits made
after packing go in :func:`delta_for_edits` (agent.context.delta), never into the prefix.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.context.cache import FileFacts, PackCache, cache_dir_for, content_key, pack_key
from agent.context.linecount import LineTokenCounter
from agent.context.parsing import parse_files
from agent.context.rank import RankInput, named_files, rank_files
from agent.context.render import (
    PREAMBLE,
    file_header,
    outline_header,
    render_body,
    render_outline,
    split_lines,
)
from agent.context.tokens import count_tokens
from agent.context.walk import MAX_FILE_BYTES, Skipped, WalkedFile, walk_repository

CONTEXT_WINDOW = 1_000_000
DEFAULT_RESERVE = 100_000
DEFAULT_BUDGET = CONTEXT_WINDOW - DEFAULT_RESERVE
FIT_SLACK = 1.5  # count a body exactly only if its estimate is within this factor of the room


@dataclass(slots=True)
class PackedContext:
    repo: str
    text: str  # the stable prefix
    files: list[str]  # packed whole, in emitted order
    outlined: list[str]  # packed as outlines, in emitted order
    omitted: list[str]  # walked but left out entirely (budget too small even for outlines)
    skipped: list[Skipped]
    tokens: int
    budget: int
    seconds: float = 0.0
    cache_hit: bool = False
    keys: dict[str, str] = field(default_factory=dict)  # path -> content key at pack time
    contents: dict[str, str] = field(default_factory=dict)  # path -> text at pack time

    def stats(self) -> dict[str, Any]:
        reasons = Counter()
        for s in self.skipped:
            reasons[s.reason] += s.files
        return {
            "repo": self.repo, "files": len(self.files), "outlined": len(self.outlined),
            "omitted": len(self.omitted), "tokens": self.tokens, "budget": self.budget,
            "skipped": {"files": sum(reasons.values()), "by_reason": dict(sorted(reasons.items())),
                        "entries": [{"path": s.path, "reason": s.reason, "files": s.files}
                                    for s in self.skipped]},
            "seconds": round(self.seconds, 4), "cache_hit": self.cache_hit,
        }


def _count_bodies(files: list[WalkedFile], keys: dict[str, str], facts: dict[str, FileFacts],
                  counter: LineTokenCounter) -> None:
    """Token count of each file's numbered body (see agent.context.linecount)."""
    todo = [f for f in files if facts.setdefault(keys[f.path], FileFacts()).body_tokens is None]
    lines = [split_lines(f.text) for f in todo]
    counter.add(lines)
    for f, ls in zip(todo, lines, strict=True):
        facts[keys[f.path]].body_tokens = counter.body(ls)


def _ensure_outlines(files: list[WalkedFile], keys: dict[str, str],
                     facts: dict[str, FileFacts], counter: LineTokenCounter) -> None:
    """Symbols, identifiers and outline (with its token count) of every file.

    Parsing runs in worker processes when the repository is large (agent.context.parsing);
    this process counts the outlines of each batch as it comes back, so the two overlap."""
    todo: list[tuple[WalkedFile, FileFacts]] = []
    for f in files:
        ff = facts.setdefault(keys[f.path], FileFacts())
        if ff.symbols is None or ff.outline_tokens is None:
            todo.append((f, ff))
    for batch, results in parse_files([(f.path, f.data, f.text) for f, _ in todo]):
        counter.add([line for _, line in r.outline] for r in results)
        for i, r in zip(batch, results, strict=True):
            ff = todo[i][1]
            ff.symbols, ff.idents = r.symbols, r.idents
            ff.outline_body = render_outline(r.outline)
            ff.outline_tokens = counter.entries(r.outline)


def _bytes_per_token(files: list[WalkedFile], keys: dict[str, str],
                     facts: dict[str, FileFacts]) -> float:
    """Observed bytes per rendered-body token (3.4 for typical code when nothing is known)."""
    nbytes = sum(len(f.data) for f in files)
    ntok = sum(facts[keys[f.path]].body_tokens or 0 for f in files)
    return max(1.0, nbytes / ntok) if nbytes > 10_000 and ntok else 3.4


def _plan(files: list[WalkedFile], keys: dict[str, str], facts: dict[str, FileFacts],
          budget: int, question: str | None, preamble_tokens: int,
          counter: LineTokenCounter) -> tuple[set[str], set[str], int]:
    """(whole, outlined, tokens) for an over-budget repository.

    The fill upgrades outlines to whole files in rank order while they fit. A body is
    tokenized only when its estimated *extra* cost (bytes / observed bytes-per-token, less
    the outline already paid for) is within FIT_SLACK of the room left, so files that
    cannot fit are not tokenized; the estimate uses only file contents and exact counts of
    earlier batches, so the result does not depend on what the cache held."""
    by_path = {f.path: f for f in files}
    _ensure_outlines(files, keys, facts, counter)
    order = rank_files([RankInput(f.path, frozenset(s.name for s in facts[keys[f.path]].symbols or ()),
                                  facts[keys[f.path]].idents or frozenset()) for f in files], question)
    named = named_files(question, [f.path for f in files])
    lines = {f.path: len(split_lines(f.text)) for f in files}
    heads = count_tokens([file_header(p) for p in order] + [outline_header(p, lines[p]) for p in order])
    whole_head = dict(zip(order, heads[: len(order)], strict=True))
    out_cost = {p: h + (facts[keys[p]].outline_tokens or 0)
                for p, h in zip(order, heads[len(order):], strict=True)}
    _count_bodies([by_path[p] for p in named], keys, facts, counter)
    whole_cost = {p: whole_head[p] + (facts[keys[p]].body_tokens or 0) for p in named}
    whole = set(named)
    outlined = [p for p in order if p not in whole]
    used = preamble_tokens + sum(whole_cost[p] for p in named) + sum(out_cost[p] for p in outlined)
    while used > budget and outlined:  # drop the lowest-ranked outlines first
        used -= out_cost[outlined.pop()]
    for p in reversed(named):  # a named file bigger than the budget falls back to its outline
        if used <= budget:
            break
        whole.discard(p)
        used -= whole_cost[p] - out_cost[p]
    outset = set(outlined) | (set(named) - whole)
    queue = [p for p in order if p in outset and p not in whole]
    ratio = _bytes_per_token([by_path[p] for p in named], keys, facts)
    i = 0
    while i < len(queue) and used < budget:
        room = budget - used
        batch, estimate = [], 0.0
        while i < len(queue) and (estimate < room * 1.05 or not batch):
            p = queue[i]
            i += 1
            size = len(by_path[p].data)
            if size / ratio - out_cost[p] <= room * FIT_SLACK:  # could fit: count it exactly
                batch.append(p)
                estimate += size / ratio - out_cost[p]
        _count_bodies([by_path[p] for p in batch], keys, facts, counter)
        for p in batch:
            extra = whole_head[p] + (facts[keys[p]].body_tokens or 0) - out_cost[p]
            if used + extra <= budget:
                whole.add(p)
                outset.discard(p)
                used += extra
        ratio = _bytes_per_token([by_path[p] for p in batch], keys, facts) if batch else ratio
    return whole, outset, used


def pack_repository(repo: str | Path, budget: int = DEFAULT_BUDGET, question: str | None = None,
                    *, use_cache: bool = True, max_file_bytes: int = MAX_FILE_BYTES) -> PackedContext:
    """Pack ``repo`` into at most ``budget`` tokens (V4 tokenizer); see the module doc."""
    start = time.perf_counter()
    root = Path(repo)
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {repo}")
    walked = walk_repository(root, max_file_bytes)
    files = walked.files
    keys = {f.path: content_key(f.path, f.data) for f in files}
    contents = {f.path: f.text for f in files}
    pairs = [(f.path, keys[f.path]) for f in files]
    cache = PackCache(cache_dir_for(root) if use_cache else None)
    fit_key, q_key = pack_key(pairs, budget, None, PREAMBLE), pack_key(pairs, budget, question, PREAMBLE)
    # a repository that fits is packed the same for any question (fit_key); one that does not
    # is ranked by the question (q_key; without a question the two keys are the same, so the
    # cached pack says whether it fitted)
    for key, need_fit in ((fit_key, True), (q_key, False)):
        hit = cache.load_pack(key)
        if hit is not None and (hit.get("fits") or not need_fit):
            return PackedContext(str(root), hit["text"], hit["files"], hit["outlined"], hit["omitted"],
                                 walked.skipped, hit["tokens"], budget,
                                 time.perf_counter() - start, True, keys, contents)
    facts = cache.load_facts()
    preamble_tokens = count_tokens([PREAMBLE])[0]
    estimate = preamble_tokens + sum(
        (facts[keys[f.path]].body_tokens or 0) if keys[f.path] in facts
        and facts[keys[f.path]].body_tokens is not None else len(f.data) // 3 for f in files)
    fits = False
    counter = LineTokenCounter()
    if estimate <= budget * 1.25:
        _count_bodies(files, keys, facts, counter)
        heads = count_tokens([file_header(f.path) for f in files])
        total = preamble_tokens + sum(heads) + sum(facts[keys[f.path]].body_tokens or 0 for f in files)
        fits = total <= budget
    if fits:
        whole, outset = {f.path for f in files}, set()
    else:
        whole, outset, total = _plan(files, keys, facts, budget, question, preamble_tokens, counter)
    parts = [PREAMBLE]
    wfiles = sorted(whole)
    ofiles = sorted(outset)
    for p in wfiles:
        parts.append(file_header(p) + render_body(contents[p]))
    for p in ofiles:
        parts.append(outline_header(p, len(split_lines(contents[p]))) + (facts[keys[p]].outline_body or ""))
    text = "".join(parts)
    omitted = sorted(set(contents) - whole - outset)
    packed = PackedContext(str(root), text, wfiles, ofiles, omitted, walked.skipped, total, budget,
                           0.0, False, keys, contents)
    cache.save_pack(fit_key if fits else q_key, {"text": text, "files": wfiles, "outlined": ofiles,
                                                 "omitted": omitted, "tokens": total,
                                                 "fits": fits})
    cache.save_facts(set(keys.values()))
    packed.seconds = time.perf_counter() - start
    return packed


def delta_for_edits(packed: PackedContext, repo: str | Path | None = None) -> str:
    """Changed regions of files edited since ``packed`` was made (see agent.context.delta)."""
    from agent.context.delta import render_delta

    return render_delta(packed, Path(repo) if repo is not None else Path(packed.repo))
