"""tree-sitter facts of many files at once, in worker processes when that pays.

tree-sitter holds the GIL while it parses, so threads cannot spread parsing over cores; a
process pool (forked) can. Each worker gets a batch of (path, bytes, text) and returns, per file, the
definitions, the identifiers and the outline entries (agent.context.outline) — small,
picklable results. Batches are balanced by bytes, largest files first, and handed back as they
finish so the caller can count outline tokens while other batches are still being parsed.

Small inputs (under :data:`PARALLEL_MIN_BYTES` of files with a grammar), single-core machines,
processes running other Python threads (forking those can deadlock the child) and environments
where a pool cannot start are parsed in this process; the results are the same either way.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from agent.context.outline import Symbol, extract_symbols, identifiers, language_of, outline_entries
from agent.context.render import split_lines

PARALLEL_MIN_BYTES = 1_000_000
MAX_WORKERS = 8
BATCHES_PER_WORKER = 8  # small batches: the last one leaves little idle time


@dataclass(slots=True, frozen=True)
class ParsedFile:
    symbols: list[Symbol]
    idents: frozenset[str]
    outline: list[tuple[int, str]]  # (line number, source line)


def parse_one(path: str, data: bytes, text: str) -> ParsedFile:
    symbols = extract_symbols(path, data)
    return ParsedFile(symbols, frozenset(identifiers(text)),
                      outline_entries(path, split_lines(text), symbols))


def parse_batch(batch: list[tuple[str, bytes, str]]) -> list[ParsedFile]:
    return [parse_one(*item) for item in batch]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _batches(items: list[tuple[str, bytes, str]], n: int) -> list[list[int]]:
    """Indices of ``items`` in ``n`` batches of about equal bytes (greedy, largest first)."""
    order = sorted(range(len(items)), key=lambda i: (-len(items[i][1]), i))
    batches: list[list[int]] = [[] for _ in range(min(n, len(items)))]
    loads = [0] * len(batches)
    for i in order:
        k = loads.index(min(loads))
        batches[k].append(i)
        loads[k] += len(items[i][1]) + 1
    return [b for b in batches if b]


def _start_pool(workers: int, first: list[tuple[str, bytes, str]]) -> tuple[ProcessPoolExecutor, Future]:
    """A forked pool running ``parse_batch(first)``: all workers fork on that first submit.

    fork, not spawn or forkserver: nothing to import or re-run (those re-import the caller's
    ``__main__``), and a worker starts in milliseconds. The children only parse: they never
    use the tokenizer, whose fork handler would otherwise print a warning in each of them
    unless TOKENIZERS_PARALLELISM is set (set here for the fork only, to its default)."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    unset = "TOKENIZERS_PARALLELISM" not in os.environ
    if unset:
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
            return pool, pool.submit(parse_batch, first)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if unset:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)


def _parallel(items: list[tuple[str, bytes, str]], workers: int
              ) -> Iterator[tuple[list[int], list[ParsedFile]]]:
    """``workers - 1`` forked children and this process share the batches: children get up
    to two batches each in flight, and this process parses the next batch itself whenever
    none of theirs has come back (so one core needs no fork and no pickling)."""
    batches = _batches(items, workers * BATCHES_PER_WORKER)
    children = workers - 1
    done: set[int] = set()
    pending: dict[Future, int] = {}
    taken = 0
    pool: ProcessPoolExecutor | None = None
    try:
        try:
            pool, first = _start_pool(children, [items[i] for i in batches[0]])
            pending[first], taken = 0, 1
        except (OSError, ValueError):  # cannot fork here (limits, no /dev/shm): all in-process
            pool = None
        while len(done) < len(batches):
            while pool is not None and taken < len(batches) and len(pending) < 2 * children:
                pending[pool.submit(parse_batch, [items[i] for i in batches[taken]])] = taken
                taken += 1
            finished = [f for f in pending if f.done()]
            if not finished and taken < len(batches):
                k, taken = taken, taken + 1
                result = parse_batch([items[i] for i in batches[k]])
                done.add(k)
                yield batches[k], result
                continue
            if not finished:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                k = pending.pop(fut)
                result = fut.result()
                done.add(k)
                yield batches[k], result
    except BrokenProcessPool:  # a worker died (killed, out of memory): finish in-process
        for k, batch in enumerate(batches):
            if k not in done:
                yield batch, parse_batch([items[i] for i in batch])
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def parse_files(items: list[tuple[str, bytes, str]], workers: int | None = None
                ) -> Iterator[tuple[list[int], list[ParsedFile]]]:
    """(indices, results) for every item of ``items``, batch by batch as they finish.

    ``workers``: processes to use (default: the usable cores, at most :data:`MAX_WORKERS`,
    and 1 for inputs under :data:`PARALLEL_MIN_BYTES`); 1 parses in this process."""
    if workers is None:
        parsed_bytes = sum(len(data) for path, data, _ in items if language_of(path))
        workers = min(usable_cores(), MAX_WORKERS) if parsed_bytes >= PARALLEL_MIN_BYTES else 1
    # fork only from a single-threaded Python process: a lock held by another thread at the
    # fork would stay held in the child forever (the TUI packs from a worker thread: in-process)
    if workers > 1 and len(items) > 1 and "fork" in multiprocessing.get_all_start_methods() \
            and threading.active_count() == 1 \
            and not multiprocessing.current_process().daemon:  # daemons may not have children
        yield from _parallel(items, workers)
        return
    for batch in _batches(items, max(1, len(items) // 16)):
        yield batch, parse_batch([items[i] for i in batch])
