"""The inference engine: chunked prefill from any start position, prefix reuse, decode,
sampling, stop conditions and streaming. ``generate`` runs one sequence (callers serialise);
``forward_batch`` runs several in one forward, which model/batcher.py schedules (continuous
batching for ``v4coder serve``).

    engine = Engine.from_checkpoint("/ckpt", cache_dir="~/.cache/v4coder/kv")
    gen = engine.generate(prompt_ids, SamplingParams(temperature=0.0, max_new_tokens=64))
    for event in gen:                       # TokenEvent(token_id, text, finish_reason)
        print(event.text, end="")
    gen.stats.reused_tokens, gen.stats.computed_tokens   # prefix reuse counters

Every forward runs with the prefix cache's capture on, so each 128-token block the sequence
completes (prompt or generated) is stored; the next request sharing the prefix restores it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from model import prefix_cache as pcache
from model.cache import SequenceCache
from model.decode_graphs import DecodeGraphs
from model.decode_graphs import unsupported as graphs_unsupported
from model.generate import LoadedModel, load_model
from model.memory import MemoryPlan, plan_memory
from model.sampling import SamplingParams, generation_defaults, sample_token


class EngineError(RuntimeError):
    """A request the engine cannot run (bad prompt, does not fit)."""


class TokenConstraint(Protocol):
    """Grammar-constrained decoding hook (model/grammar.py)."""

    def allowed(self) -> torch.Tensor | None: ...  # bool [vocab] mask, or None = unconstrained

    def advance(self, token_id: int) -> None: ...


@dataclass(slots=True)
class EngineConfig:
    chunk_tokens: int = 2048
    prefix_cache: bool = True
    cache_bytes: int = 1 << 30           # in-memory prefix-cache budget
    cache_dir: Path | None = None        # on-disk prefix cache (survives restarts)
    cache_dir_bytes: int = 64 << 30      # its budget; least recently used blocks go first
    state_every: int = 1                 # keep window state on every n-th block (1 = all)
    memory_bytes: int | None = None      # override the measured free memory (tests)
    decode_graphs: bool = False          # decode steps as CUDA graph pieces (model/decode_graphs.py)


@dataclass(slots=True)
class TokenEvent:
    token_id: int
    text: str                            # new text this token completes ("" while held back)
    finish_reason: str | None = None     # "stop" | "length" | "tool_calls" on the last event


@dataclass(slots=True)
class PrefillProgress:
    """How far a request's prompt is into the cache: ``done`` of ``total`` tokens, of which
    ``reused`` were restored from the prefix cache. One after the restore, one per chunk."""
    done: int
    total: int
    reused: int


@dataclass(slots=True)
class RequestStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0               # prompt tokens restored from the prefix cache
    computed_tokens: int = 0             # prompt tokens run through the model
    completion_tokens: int = 0
    prefill_s: float = 0.0
    ttft_s: float = 0.0
    decode_s: float = 0.0
    finish_reason: str = ""


@dataclass(slots=True)
class EngineCounters:
    requests: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    computed_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class Sequence_:
    tokens: list[int]
    cache: SequenceCache
    block_keys: list[str] = field(default_factory=list)  # prefix-cache key of each full block
    slot: int = 0                # the engine's name for it (other ranks key their copies by it)


class Detokenizer:
    """Incremental decode (constant work per token): text pieces, holding back an incomplete
    UTF-8 character; ``tail`` keeps the last characters for stop-string checks."""

    def __init__(self, tokenizer: object | None, tail_chars: int = 64) -> None:
        self.tokenizer, self.ids = tokenizer, []
        self.prefix_at = self.read_at = 0
        self.tail, self.tail_chars = "", tail_chars

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        if self.tokenizer is None:
            return ""
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_at:self.read_at], skip_special_tokens=False)
        after = decode(self.ids[self.prefix_at:], skip_special_tokens=False)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        piece = after[len(before):]
        self.prefix_at, self.read_at = self.read_at, len(self.ids)
        self.tail = (self.tail + piece)[-self.tail_chars:]
        return piece

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        if self.tokenizer is None or self.read_at == len(self.ids):
            return ""
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_at:self.read_at], skip_special_tokens=False)
        after = decode(self.ids[self.prefix_at:], skip_special_tokens=False)
        self.prefix_at = self.read_at = len(self.ids)
        return after[len(before):]


class Decoding:
    """One request's side of decoding: sample a token from each step's logits (temperature,
    top-p, seed, grammar mask), detokenize it, and decide when the request is done (a stop id,
    a stop string such as the end of a tool-call block, or max_new_tokens)."""

    def __init__(self, params: SamplingParams, constraint: TokenConstraint | None,
                 tokenizer: object | None, stats: RequestStats, t0: float) -> None:
        self.params, self.constraint, self.stats, self.t0 = params, constraint, stats, t0
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, ()))
        self.gen = torch.Generator().manual_seed(seed)
        self.detok = Detokenizer(tokenizer)
        self.stops = set(params.stop_ids)
        self.done = params.max_new_tokens == 0
        if self.done:
            stats.finish_reason = "length"

    def take(self, logits: torch.Tensor) -> TokenEvent:
        """The next token from ``logits`` [vocab]; its event carries the finish reason when it
        is the last."""
        p, stats = self.params, self.stats
        allowed = self.constraint.allowed() if self.constraint is not None else None
        token = sample_token(logits, p.temperature, p.top_p, self.gen, allowed)
        if self.constraint is not None:
            self.constraint.advance(token)
        stats.completion_tokens += 1
        piece = self.detok.push(token)
        now = time.perf_counter()
        if stats.completion_tokens == 1:
            stats.ttft_s = now - self.t0
        finish = None
        if token in self.stops:
            finish = "stop"
        elif any(self.detok.tail.endswith(s) for s in p.stop_strings):
            finish = "tool_calls"
        elif stats.completion_tokens >= p.max_new_tokens:
            finish = "length"
        if finish is None:
            return TokenEvent(token, piece)
        self.done = True
        stats.finish_reason = finish
        stats.decode_s = now - self.t0 - stats.prefill_s
        return TokenEvent(token, piece + self.detok.flush(), finish)


class Generation:
    """An iterator of TokenEvent; ``stats`` fills in as it runs, ``tokens`` are the new ids.
    ``stream()`` also yields the prefill's PrefillProgress before the first token (a 1M-token
    prompt takes minutes to prefill; a UI can show how far it is)."""

    def __init__(self, events: Generator[TokenEvent | PrefillProgress],
                 stats: RequestStats) -> None:
        self._events, self.stats, self.tokens = events, stats, []

    def stream(self) -> Iterator[TokenEvent | PrefillProgress]:
        try:
            for event in self._events:
                if isinstance(event, TokenEvent):
                    self.tokens.append(event.token_id)
                yield event
        finally:   # a consumer that stops early ends the request (the batcher drops it)
            self._events.close()

    def __iter__(self) -> Iterator[TokenEvent]:
        events = self.stream()
        try:
            for event in events:
                if isinstance(event, TokenEvent):
                    yield event
        finally:
            events.close()

    def text(self) -> str:
        return "".join(e.text for e in self)


def load_tokenizer(checkpoint_dir: str | Path) -> object | None:
    path = Path(checkpoint_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(path))


@dataclass(slots=True)
class Engine:
    lm: LoadedModel
    config: EngineConfig = field(default_factory=EngineConfig)
    tokenizer: object | None = None
    defaults: SamplingParams = field(default_factory=SamplingParams)
    prefix: pcache.PrefixCache | None = None
    plan: MemoryPlan | None = None
    counters: EngineCounters = field(default_factory=EngineCounters)
    speculator: object | None = None     # model.mtp.MTPSpeculator when MTP is on
    step_hook: Any = None                # model.serve_ranks.StepLeader under --ep/--tp > 1
    slot_numbers: Iterator[int] = field(default_factory=itertools.count)  # for Sequence_.slot
    graphs: DecodeGraphs | None = None   # set from ``config.decode_graphs``

    def __post_init__(self) -> None:
        cfg = self.lm.config
        if self.config.prefix_cache and self.prefix is None:
            extra = f"{self.lm.model.numerics.mode}:{self.lm.model.numerics.dtype}"
            root = pcache.checkpoint_fingerprint(self.lm.checkpoint_dir, extra)
            self.prefix = pcache.PrefixCache(
                root, pcache.block_size(cfg.compress_ratios[:cfg.n_layers]),
                self.config.cache_bytes, self.config.cache_dir, self.config.state_every,
                disk_budget_bytes=self.config.cache_dir_bytes)
        if self.config.decode_graphs and self.graphs is None:
            reason = graphs_unsupported(self.lm.model)
            if reason is not None:
                raise EngineError(f"decode graphs cannot be used: {reason}")
            self.graphs = DecodeGraphs(self.lm.model)
        if self.plan is None:
            self.plan = plan_memory(
                cfg, self.lm.model.numerics.dtype, self.lm.device, self.config.chunk_tokens,
                self.config.cache_bytes if self.config.prefix_cache else 0,
                available=self.config.memory_bytes, numerics=self.lm.model.numerics.mode)

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path, dtype: str = "float32",
                        device: str = "cpu", mtp: bool = False, numerics: str = "dequant",
                        progress: bool = False,
                        on_progress: Callable[[int, int], None] | None = None,
                        transforms: Sequence[Any] = (), **config: object) -> Engine:
        """``transforms`` go to ``load_model`` (OffloadTransform, ParallelTransform)."""
        lm = load_model(checkpoint_dir, dtype=dtype, device=device, numerics=numerics,
                        progress=progress, with_mtp=mtp, on_progress=on_progress,
                        transforms=transforms)
        engine = cls(lm, EngineConfig(**config), load_tokenizer(checkpoint_dir),  # type: ignore[arg-type]
                     generation_defaults(checkpoint_dir))
        if mtp:
            from model.mtp import MTPSpeculator
            engine.speculator = MTPSpeculator(engine)
        return engine

    # -- forward -------------------------------------------------------------------------
    @property
    def can_batch(self) -> bool:
        """Whether sequences may share a forward (MTP speculation steps one at a time)."""
        return self.speculator is None

    def forward(self, seq: Sequence_, new_ids: Sequence[int],
                run: Callable[[list[int], SequenceCache], Any] | None = None) -> Any:
        """Run ``new_ids`` after ``seq`` (one chunk); store completed blocks. → last logits,
        or whatever ``run(ids, cache)`` returns (the MTP speculator asks for hidden states)."""
        if run is None:
            return self.forward_batch([seq], [new_ids])[0]
        with self._capturing([seq]):
            if self.step_hook is not None:   # other ranks keep hidden states too
                self.step_hook.hidden_forward(seq.slot, seq.cache, new_ids)
            seq.tokens.extend(new_ids)
            return run(list(new_ids), seq.cache)

    def forward_batch(self, seqs: Sequence[Sequence_], new_ids: Sequence[Sequence[int]]
                      ) -> torch.Tensor:
        """One forward for several sequences (``new_ids[i]`` after ``seqs[i]``: decode tokens
        and prefill chunks alike); store the blocks each completes. → last logits [n, vocab]."""
        if len(seqs) > 1 and not self.can_batch:
            raise EngineError("this engine steps one sequence at a time (MTP)")
        with self._capturing(seqs):
            if self.step_hook is not None:   # other ranks run this same forward in step
                self.step_hook.batch([s.slot for s in seqs], [s.cache for s in seqs], new_ids)
            for seq, ids in zip(seqs, new_ids, strict=True):
                seq.tokens.extend(ids)
            caches = [seq.cache for seq in seqs]
            if (self.graphs is not None and self.step_hook is None
                    and all(len(ids) == 1 for ids in new_ids)
                    and all(c.length > 0 for c in caches)):
                logits = self.graphs.step([ids[0] for ids in new_ids], caches)
                if logits is not None:   # None: capture failed, graphs are off (said once)
                    return logits
            return self.lm.model.forward_batch(new_ids, caches)

    @contextmanager
    def _capturing(self, seqs: Sequence[Sequence_]) -> Iterator[None]:
        """Prefix-cache capture around a forward: afterwards each 128-token block a sequence
        completed is stored."""
        if self.prefix is None:
            yield
            return
        starts = [seq.cache.length for seq in seqs]
        for seq in seqs:
            pcache.start_capture(seq.cache)
        try:
            yield
            cfg = self.lm.config
            for seq, start in zip(seqs, starts, strict=True):
                for block in pcache.collect_blocks(self.prefix, seq.cache, seq.tokens, start,
                                                   cfg.compress_ratios, cfg.window_size,
                                                   seq.block_keys):
                    self.prefix.put(block)
        finally:
            for seq in seqs:
                pcache.stop_capture(seq.cache)

    def admit(self, prompt_ids: Sequence[int], stats: RequestStats) -> tuple[Sequence_, list[int]]:
        """Check a prompt and restore its longest cached prefix. → (the sequence so far, the
        whole prompt); the caller runs the rest in chunks (``next_chunk``), then ``finished``."""
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise EngineError("the prompt is empty")
        vocab = self.lm.config.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise EngineError(f"prompt holds a token id outside the vocabulary (0..{vocab - 1})")
        seq = Sequence_([], self.lm.new_cache(), slot=next(self.slot_numbers))
        if self.prefix is not None:
            blocks = self.prefix.match(prompt, len(prompt) - 1)
            if blocks:
                seq.tokens = prompt[:len(blocks) * self.prefix.block_tokens]
                seq.cache = pcache.restore(blocks, self.lm.config.n_layers, self.lm.device)
                seq.block_keys = [b.key for b in blocks]
                if self.step_hook is not None:   # other ranks continue from the same cache
                    self.step_hook.restore(seq.slot, seq.cache)
        stats.prompt_tokens, stats.reused_tokens = len(prompt), len(seq.tokens)
        stats.computed_tokens = len(prompt) - len(seq.tokens)
        self._count(stats)
        return seq, prompt

    def chunk_size(self, seq: Sequence_) -> int:
        """The largest prefill chunk at ``seq``'s context (the memory plan's, or the config's)."""
        return self.plan.chunk_for(len(seq.tokens)) if self.plan else self.config.chunk_tokens

    def next_chunk(self, seq: Sequence_, prompt: list[int], budget: int | None = None
                   ) -> list[int]:
        """The next prefill chunk of ``prompt`` after ``seq`` (``chunk_size``, at most
        ``budget`` tokens)."""
        pos, size = len(seq.tokens), self.chunk_size(seq)
        return prompt[pos:pos + (size if budget is None else min(size, budget))]

    def release(self, seq: Sequence_) -> None:
        """A sequence is done (finished, failed or abandoned): other ranks drop their copy."""
        if self.step_hook is not None and not self.step_hook.stopped:
            self.step_hook.release(seq.slot)

    def prefilled(self, seq: Sequence_) -> None:
        """A prompt is in: its cached blocks become the most recently used."""
        if self.prefix is not None:
            self.prefix.touch(seq.block_keys)

    @torch.inference_mode()
    def prefill(self, prompt_ids: Sequence[int], stats: RequestStats | None = None
                ) -> tuple[Sequence_, torch.Tensor]:
        """Restore the longest cached prefix, then run the rest in chunks. → (seq, logits)."""
        steps = self._prefill_steps(prompt_ids, stats if stats is not None else RequestStats())
        while True:
            try:
                next(steps)
            except StopIteration as end:
                return end.value

    def _prefill_steps(self, prompt_ids: Sequence[int], stats: RequestStats
                       ) -> Generator[PrefillProgress, None, tuple[Sequence_, torch.Tensor]]:
        """``prefill`` one chunk per step: yields PrefillProgress after the restore and after
        each chunk, returns (seq, logits)."""
        with torch.inference_mode():
            seq, prompt = self.admit(prompt_ids, stats)
        logits = None
        try:
            yield PrefillProgress(len(seq.tokens), len(prompt), stats.reused_tokens)
            while len(seq.tokens) < len(prompt):
                with torch.inference_mode():
                    logits = self.forward(seq, self.next_chunk(seq, prompt))
                yield PrefillProgress(len(seq.tokens), len(prompt), stats.reused_tokens)
        except BaseException:
            self.release(seq)
            raise
        self.prefilled(seq)
        return seq, logits

    @torch.inference_mode()
    def warm_up(self, limit: int | None = None) -> float:
        """Run every compute path once on throwaway tokens — full and ragged prefill chunks past
        ``index_topk`` compressed rows, decode — so JIT compiles (Triton specialises kernels on
        sizes mod 16) and first-call costs do not land on the first request. ``limit`` caps the
        prompt before its ragged tail (a short bench needs no more). The prefix cache and the
        counters are left as they were. → seconds taken."""
        cfg = self.lm.config
        n = 4 * cfg.index_topk + self.config.chunk_tokens
        n = (n if limit is None else min(n, limit)) + 37
        ids = [(7919 * i) % (cfg.vocab_size - 2) + 2 for i in range(n)]
        prefix, counters = self.prefix, self.counters
        t0 = time.perf_counter()
        self.prefix, self.counters = None, EngineCounters()   # throwaway: store and count nothing
        try:
            list(self.generate(ids, SamplingParams(temperature=0.0, max_new_tokens=3,
                                                   stop_ids=())))
        finally:
            self.prefix, self.counters = prefix, counters
        if self.lm.device.type == "cuda":
            torch.cuda.synchronize(self.lm.device)
        return time.perf_counter() - t0

    # -- generation ----------------------------------------------------------------------
    def generate(self, prompt_ids: Sequence[int], params: SamplingParams | None = None,
                 constraint: TokenConstraint | None = None,
                 stats: RequestStats | None = None) -> Generation:
        """Stream the completion of ``prompt_ids`` (checked against the memory plan first);
        ``stats`` (else a new one) fills in as it runs."""
        params = (params or self.defaults).validated()
        if self.plan is not None:
            self.plan.check(len(prompt_ids), params.max_new_tokens)
        stats = stats if stats is not None else RequestStats()
        return Generation(self._run(list(prompt_ids), params, constraint, stats), stats)

    def _run(self, prompt: list[int], params: SamplingParams, constraint: TokenConstraint | None,
             stats: RequestStats) -> Iterator[TokenEvent | PrefillProgress]:
        t0 = time.perf_counter()
        seq, logits = yield from self._prefill_steps(prompt, stats)
        stats.prefill_s = time.perf_counter() - t0
        decoding = Decoding(params, constraint, self.tokenizer, stats, t0)
        step = self._step_fn(seq, constraint)
        try:
            while not decoding.done:
                event = decoding.take(logits)
                if decoding.done:
                    self.finished(stats)
                    yield event
                    return
                yield event              # stream first, then compute the next step
                with torch.inference_mode():
                    logits = step(event.token_id)
        finally:
            self.release(seq)

    def finished(self, stats: RequestStats) -> None:
        self.counters.completion_tokens += stats.completion_tokens

    def _step_fn(self, seq: Sequence_, constraint: TokenConstraint | None):  # noqa: ANN202
        """token → logits of the next position: speculative (MTP) when on and unconstrained."""
        if self.speculator is not None and constraint is None:
            return self.speculator.stepper(seq)
        return lambda token: self.forward(seq, [token])

    def _count(self, stats: RequestStats) -> None:
        c = self.counters
        c.requests += 1
        c.prompt_tokens += stats.prompt_tokens
        c.reused_tokens += stats.reused_tokens
        c.computed_tokens += stats.computed_tokens

    def tool_grammar(self, tools: list[dict[str, Any]], force_open: bool = False,
                     **limits: int) -> TokenConstraint:
        """A grammar constraint for DSML tool calls naming only ``tools`` (OpenAI format)."""
        from model.grammar import ToolCallGrammar
        if self.tokenizer is None:
            raise EngineError("constrained tool calls need the checkpoint's tokenizer.json")
        return ToolCallGrammar.for_tools(self.tokenizer, self.lm.config.vocab_size, tools,
                                         force_open=force_open, **limits)

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise EngineError("this checkpoint ships no tokenizer.json")
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return "" if self.tokenizer is None else self.tokenizer.decode(
            list(ids), skip_special_tokens=False)
