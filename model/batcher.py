"""Continuous batching: many requests share each forward of the engine.

    batcher = Batcher(engine, max_batch=16)
    gen = batcher.submit(prompt_ids, params, constraint)   # from any thread
    for event in gen: ...                                   # TokenEvent, as Engine.generate
    batcher.close()

One scheduler thread owns the engine. Each step it runs ONE forward (``Engine.forward_batch``)
holding a decode token for every running request plus, when requests are waiting, the next
prefill chunks of the oldest ones within one chunk's token budget (chunked prefill rides along
with decode, so a long prompt does not stall the others' streams, and short prompts that
arrive together prefill together). Requests join as soon as their prompt is in and leave the
step they finish; at decode the weights (the experts above all) are read once per step for the
whole batch instead of once per request.

Admission: a request is checked against the memory plan alone when submitted (too long → an
error at once); it then waits until its prompt + max_tokens fit beside the running requests'
reservations (``MemoryPlan.fits_batch``) and a batch slot is free. Prompts prefill one after
another, and each looks up the prefix cache only when its turn comes, so agents that send the
same packed repository at once compute it once. A consumer that stops
reading (a client gone) is dropped at the next step. Under ``--ep/--tp`` each forward is one
BATCH step of the rank protocol (model/serve_ranks.py). An engine that cannot batch (MTP
speculation) serves requests one at a time through ``Engine.generate``, in order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from model.engine import (
    Decoding,
    Engine,
    EngineError,
    Generation,
    PrefillProgress,
    RequestStats,
    Sequence_,
    TokenConstraint,
    TokenEvent,
)
from model.sampling import SamplingParams

_END = object()   # queue sentinel after the last event


@dataclass(slots=True)
class BatchCounters:
    steps: int = 0                 # forwards run
    decode_tokens: int = 0         # decode tokens across all steps
    prefill_tokens: int = 0        # prefill tokens across all steps
    max_batch_seen: int = 0        # most requests in one step


@dataclass(slots=True)
class _Request:
    prompt: list[int]
    params: SamplingParams
    constraint: TokenConstraint | None
    stats: RequestStats
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    submitted: float = field(default_factory=time.perf_counter)
    seq: Sequence_ | None = None
    decoding: Decoding | None = None
    next_token: int = -1           # the token the next decode step feeds
    cancelled: bool = False

    @property
    def reserved(self) -> int:
        return len(self.prompt) + self.params.max_new_tokens


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        self.engine = engine
        self.max_batch = max_batch if engine.can_batch else 1
        self.counters = BatchCounters()
        self._inbox: deque[_Request] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="v4coder-batcher", daemon=True)
        self._thread.start()

    # -- client side (any thread) --------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None,
               constraint: TokenConstraint | None = None) -> Generation:
        """Queue a request. Raises at once (ValueError / EngineError) when it can never run."""
        params = (params or self.engine.defaults).validated()
        if not prompt_ids:
            raise EngineError("the prompt is empty")
        if self.engine.plan is not None:
            self.engine.plan.check(len(prompt_ids), params.max_new_tokens)
        req = _Request([int(t) for t in prompt_ids], params, constraint, RequestStats())
        with self._wake:
            if self._closed:
                raise EngineError("the server is shutting down")
            self._inbox.append(req)
            self._wake.notify()
        return Generation(self._events(req), req.stats)

    @staticmethod
    def _events(req: _Request) -> Iterator[TokenEvent | PrefillProgress]:
        try:
            while (item := req.events.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            req.cancelled = True   # the scheduler drops it (no-op once finished)

    def close(self, timeout: float = 30.0) -> None:
        """Finish the requests already queued, then stop the scheduler thread."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)

    # -- scheduler thread ----------------------------------------------------------------
    def _loop(self) -> None:
        waiting: deque[_Request] = deque()   # submitted, not yet prefilling
        prefilling: deque[_Request] = deque()
        running: list[_Request] = []
        while True:
            with self._wake:
                while not (self._inbox or waiting or prefilling or running or self._closed):
                    self._wake.wait()
                waiting.extend(self._inbox)
                self._inbox.clear()
                if self._closed and not (waiting or prefilling or running):
                    return
            if not self.engine.can_batch:
                self._one_at_a_time(waiting.popleft())
                continue
            for gone in [r for r in running if r.cancelled]:
                running.remove(gone)
                self.engine.release(gone.seq)
            self._admit(waiting, prefilling, running)
            try:
                with torch.inference_mode():
                    self._step(prefilling, running)
            except Exception as exc:  # noqa: BLE001 - every request in the step learns why
                started = [r for r in prefilling if r.seq is not None]   # caches touched
                for req in [*running, *started]:
                    self._fail(req, exc)
                running.clear()
                for req in started:
                    prefilling.remove(req)

    def _admit(self, waiting: deque[_Request], prefilling: deque[_Request],
               running: list[_Request]) -> None:
        """Move waiting requests to prefilling, oldest first, while slots and memory allow."""
        plan = self.engine.plan
        while waiting and len(running) + len(prefilling) < self.max_batch:
            req = waiting[0]
            if req.cancelled:
                waiting.popleft()
                continue
            held = [r.reserved for r in (*running, *prefilling)]
            if plan is not None and held and not plan.fits_batch([*held, req.reserved]):
                return   # wait for a running request to finish
            prefilling.append(waiting.popleft())

    def _prefill_chunks(self, prefilling: deque[_Request]) -> list[tuple[_Request, list[int]]]:
        """This step's prefill work: the oldest prompts' next chunks, in order, within one
        chunk's token budget (short prompts arriving together share a step). Each prompt
        matches the prefix cache only when its turn comes; a prompt whose first block equals
        that of one already in this step waits for the next step, so requests that arrive
        together with the same packed repository compute it once."""
        picked: list[tuple[_Request, list[int]]] = []
        budget: int | None = None
        block = self.engine.prefix.block_tokens if self.engine.prefix is not None else 0
        for req in list(prefilling):
            if req.cancelled:
                prefilling.remove(req)
                if req.seq is not None:
                    self.engine.release(req.seq)
                continue
            if budget is not None and (budget <= 0 or block and any(
                    req.prompt[:block] == r.prompt[:block] for r, _ in picked)):
                break
            if req.seq is None and not self._start(req, prefilling):
                continue
            if budget is None:   # the plan's chunk size at the oldest prompt's context
                budget = self.engine.chunk_size(req.seq)
            chunk = self.engine.next_chunk(req.seq, req.prompt, budget)
            budget -= len(chunk)
            picked.append((req, chunk))
        return picked

    def _start(self, req: _Request, prefilling: deque[_Request]) -> bool:
        """Match ``req``'s prompt against the prefix cache and set up its decoding. → False
        when it ended here (a bad prompt, or nothing to generate)."""
        try:
            req.seq, req.prompt = self.engine.admit(req.prompt, req.stats)
        except (EngineError, ValueError) as exc:
            prefilling.remove(req)
            self._fail(req, exc)
            return False
        req.decoding = Decoding(req.params, req.constraint, self.engine.tokenizer,
                                req.stats, req.submitted)
        if req.decoding.done:   # max_tokens 0: nothing to generate
            prefilling.remove(req)
            self._finish(req, None)
            return False
        self._progress(req)
        return True

    @staticmethod
    def _progress(req: _Request) -> None:
        """Tell the consumer how far its prompt is in (after the restore, after each chunk)."""
        req.events.put(PrefillProgress(len(req.seq.tokens), len(req.prompt),
                                       req.stats.reused_tokens))

    def _step(self, prefilling: deque[_Request], running: list[_Request]) -> None:
        """One forward: a decode token per running request + the next prefill chunks."""
        prefills = self._prefill_chunks(prefilling)
        seqs = [r.seq for r in running] + [r.seq for r, _ in prefills]
        ids = [[r.next_token] for r in running] + [chunk for _, chunk in prefills]
        if not seqs:
            return
        t0 = time.perf_counter()
        logits = self.engine.forward_batch(seqs, ids).float().cpu()   # one copy for the batch
        c = self.counters
        c.steps += 1
        c.decode_tokens += len(running)
        c.prefill_tokens += sum(len(chunk) for _, chunk in prefills)
        c.max_batch_seen = max(c.max_batch_seen, len(seqs))
        decoded = len(running)
        finished = [r for r, row in zip(running, logits[:decoded], strict=True)
                    if self._emit(r, row)]
        for req in finished:
            running.remove(req)
        for (req, _), row in zip(prefills, logits[decoded:], strict=True):
            req.stats.prefill_s += time.perf_counter() - t0
            self._progress(req)
            if len(req.seq.tokens) == len(req.prompt):   # the prompt is in: first token
                prefilling.remove(req)
                self.engine.prefilled(req.seq)
                if not self._emit(req, row):
                    running.append(req)

    def _emit(self, req: _Request, logits: torch.Tensor) -> bool:
        """Sample ``req``'s next token and hand it to its consumer. → True when it finished."""
        try:
            event = req.decoding.take(logits)
        except Exception as exc:  # noqa: BLE001 - a grammar or sampling error ends this one
            self._fail(req, exc)
            return True
        req.events.put(event)
        if req.decoding.done:
            self._finish(req, None)
            return True
        req.next_token = event.token_id
        return False

    def _finish(self, req: _Request, error: BaseException | None) -> None:
        if req.seq is not None:
            self.engine.release(req.seq)
        if error is None:
            self.engine.finished(req.stats)
        req.events.put(error if error is not None else _END)

    def _fail(self, req: _Request, exc: BaseException) -> None:
        self._finish(req, exc if isinstance(exc, EngineError | ValueError)
                     else EngineError(f"the engine failed: {exc}"))

    def _one_at_a_time(self, req: _Request) -> None:
        """MTP: the whole request through Engine.generate, then the next."""
        if req.cancelled:
            return
        try:
            for event in self.engine.generate(req.prompt, req.params, req.constraint,
                                              stats=req.stats).stream():
                req.events.put(event)
                if req.cancelled:
                    break
            req.events.put(_END)
        except Exception as exc:  # noqa: BLE001
            self._fail(req, exc)
