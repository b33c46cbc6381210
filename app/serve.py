"""``v4coder serve``: an OpenAI-compatible server over the embedded engine (model/engine.py).

    v4coder serve --checkpoint DIR [--host 127.0.0.1] [--port 8000] [--cache-dir DIR]
                  [--max-batch 16] [--ep N] [--tp M] [--mtp] [--offload BYTES] [--cuda-graphs]
                  [--autotune]

Concurrent requests are batched continuously (model/batcher.py): each forward carries a decode
token of every running request plus the next prefill chunk of a waiting one; requests join and
leave between forwards. ``--ep N --tp M`` runs N·M ranks (spawned here, or one per process
under torchrun): rank 0 serves HTTP and runs the engine, the others follow its forwards step by
step (model/serve_ranks.py), batched the same way (with ``--mtp``, one request at a time).
``--offload BYTES`` (e.g. 2GB) keeps at most that many bytes of routed experts on the device,
the rest in host memory (model/offload.py). ``--cuda-graphs`` runs decode steps as CUDA graph
pieces around attention's cache side (model/decode_graphs.py). ``--autotune`` measures the
kernel launch choices of this GPU model once, before loading, when no table is committed or
cached for it (model/kernels/choices.py).

/v1/chat/completions (V4 chat encoding, tools → DSML with grammar-constrained tool calls,
streaming SSE, usage with prompt_tokens_details.cached_tokens), /v1/completions, /v1/models;
GET /stats: the engine's counters (prompt tokens reused vs computed, completion tokens) and
the batcher's (forwards, decode and prefill tokens, largest batch).
The engine stays in model/; rendering and DSML parsing come from agent/, which is why the
server lives in app/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.dsml import parse_completion
from agent.dsml_stream import DsmlTextStreamer
from agent.encoding import encode_messages
from app.serve_http import (
    HttpError,
    Server,
    SseComment,
    make_handler,
    make_server,
    run_until_signal,
)
from model.batcher import Batcher
from model.engine import Engine, EngineError, Generation, PrefillProgress
from model.grammar import ToolCallGrammar, check_tools
from model.sampling import SamplingParams

ROLES = ("system", "user", "assistant", "tool", "developer", "latest_reminder")


@dataclass(slots=True)
class ServeApp:
    engine: Engine
    model_name: str
    default_max_tokens: int = 1024
    max_value_tokens: int | None = None  # grammar: force a long parameter value closed (off)
    max_invokes: int = 8                 # grammar: invokes per tool-call block
    max_batch: int = 16                  # requests sharing one forward (continuous batching)
    batcher: Batcher = field(init=False)

    def __post_init__(self) -> None:
        self.batcher = Batcher(self.engine, self.max_batch)

    def routes(self) -> tuple[dict, dict]:
        return ({"/v1/models": self.models, "/stats": self.stats},
                {"/v1/chat/completions": self.chat, "/v1/completions": self.completions})

    def stats(self) -> dict[str, Any]:
        """The engine's and the batcher's counters since start (GET /stats)."""
        return {"engine": dataclasses.asdict(self.engine.counters),
                "batching": {"max_batch": self.batcher.max_batch,
                             **dataclasses.asdict(self.batcher.counters)}}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model",
                                            "created": 0, "owned_by": "v4coder"}]}

    # -- parameters ----------------------------------------------------------------------
    def sampling(self, body: dict[str, Any]) -> SamplingParams:
        d = self.engine.defaults
        temperature = _number(body, "temperature", d.temperature, 0.0, 2.0)
        top_p = _number(body, "top_p", d.top_p, 1e-9, 1.0)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is None:
            max_tokens = self.default_max_tokens
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise HttpError(400, "max_tokens must be a positive integer")
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise HttpError(400, "seed must be an integer")
        return d.with_(temperature=temperature, top_p=top_p, max_new_tokens=max_tokens, seed=seed)

    def _check(self, ids: list[int], params: SamplingParams) -> None:
        try:
            if self.engine.plan is not None:
                self.engine.plan.check(len(ids), params.max_new_tokens)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None

    def _run(self, ids: list[int], params: SamplingParams, grammar: ToolCallGrammar | None
             ) -> Iterator[tuple[str | SseComment, Generation]]:
        """Yield (text piece, generation) as the batcher produces them, and while the prompt
        is read a progress comment (``: prefill {"done", "total", "cached"}``) after each chunk;
        errors become HTTP 400 (a request that fails mid-stream ends with an error event)."""
        try:
            gen = self.batcher.submit(ids, params, constraint=grammar)
            for event in gen.stream():
                if isinstance(event, PrefillProgress):
                    yield SseComment("prefill " + json.dumps(
                        {"done": event.done, "total": event.total, "cached": event.reused})), gen
                else:
                    yield event.text, gen
        except (EngineError, ValueError) as exc:
            raise HttpError(400, str(exc)) from None

    # -- chat ----------------------------------------------------------------------------
    def chat(self, body: dict[str, Any]) -> dict[str, Any] | Iterator[dict[str, Any] | SseComment]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HttpError(400, "messages must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise HttpError(400, f"messages[{i}] needs a role among {', '.join(ROLES)}")
            if isinstance(m.get("content"), list):  # OpenAI content parts → text
                m["content"] = "".join(p.get("text", "") for p in m["content"]
                                       if isinstance(p, dict))
        tools, forced = _tools(body)
        kwargs = body.get("chat_template_kwargs") or {}
        thinking = bool(kwargs.get("thinking", False)) if isinstance(kwargs, dict) else False
        params = self.sampling(body)
        try:
            prompt = encode_messages(messages, tools or None, thinking=thinking)
            ids = self.engine.encode(prompt)
        except (ValueError, KeyError, TypeError, EngineError) as exc:
            raise HttpError(400, f"cannot render the conversation: {exc}") from None
        grammar = None
        if tools:
            grammar = ToolCallGrammar.for_tools(self.engine.tokenizer, self.engine.lm.config
                                                .vocab_size, tools, force_open=forced,
                                                max_value_tokens=self.max_value_tokens,
                                                max_invokes=self.max_invokes)
        stream = self._chat_stream(ids, params, grammar, tools, thinking, body)
        if body.get("stream"):
            return stream
        return _collect_chat(stream)

    def _chat_stream(self, ids: list[int], params: SamplingParams,
                     grammar: ToolCallGrammar | None, tools: list[dict[str, Any]],
                     thinking: bool, body: dict[str, Any]) -> Iterator[dict[str, Any] | SseComment]:
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.model_name}
        streamer = DsmlTextStreamer(thinking)
        raw, gen = [], None
        self._check(ids, params)
        yield {**head, "choices": [_choice({"role": "assistant", "content": ""})]}
        for piece, gen in self._run(ids, params, grammar):  # noqa: B007
            if isinstance(piece, SseComment):
                yield piece
                continue
            raw.append(piece)
            for delta in streamer.feed(piece):
                key = "reasoning_content" if delta.channel == "reasoning" else "content"
                yield {**head, "choices": [_choice({key: delta.text})]}
        for delta in streamer.flush():
            key = "reasoning_content" if delta.channel == "reasoning" else "content"
            yield {**head, "choices": [_choice({key: delta.text})]}
        completion = parse_completion("".join(raw), tools, thinking=thinking)
        calls = [{"index": i, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                  "function": {"name": c.name,
                               "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                 for i, c in enumerate(completion.tool_calls)]
        if calls:
            yield {**head, "choices": [_choice({"tool_calls": calls})]}
        stats = gen.stats if gen is not None else None
        finish = "tool_calls" if calls else (
            "length" if stats is not None and stats.finish_reason == "length" else "stop")
        yield {**head, "choices": [_choice({}, finish)]}
        options = body.get("stream_options") or {}
        if not body.get("stream") or (isinstance(options, dict) and options.get("include_usage")):
            yield {**head, "choices": [], "usage": _usage(stats, len(ids))}

    # -- completions ---------------------------------------------------------------------
    def completions(self, body: dict[str, Any]
                    ) -> dict[str, Any] | Iterator[dict[str, Any] | SseComment]:
        prompt = body.get("prompt")
        if isinstance(prompt, str) and prompt:
            ids = self.engine.encode(prompt)
        elif isinstance(prompt, list) and prompt and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
        else:
            raise HttpError(400, "prompt must be a non-empty string or list of token ids")
        params = self.sampling(body)
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                "created": int(time.time()), "model": self.model_name}

        def chunks() -> Iterator[dict[str, Any] | SseComment]:
            gen = None
            self._check(ids, params)
            for piece, gen in self._run(ids, params, None):  # noqa: B007
                yield piece if isinstance(piece, SseComment) else {
                    **head, "choices": [{"index": 0, "text": piece, "finish_reason": None}]}
            stats = gen.stats if gen is not None else None
            finish = "length" if stats is not None and stats.finish_reason == "length" else "stop"
            yield {**head, "choices": [{"index": 0, "text": "", "finish_reason": finish}],
                   "usage": _usage(stats, len(ids))}

        if body.get("stream"):
            return chunks()
        text, last = [], {}
        for chunk in chunks():
            if isinstance(chunk, SseComment):
                continue
            text.append(chunk["choices"][0]["text"])
            last = chunk
        return {**head, "choices": [{"index": 0, "text": "".join(text),
                                     "finish_reason": last["choices"][0]["finish_reason"]}],
                "usage": last["usage"]}


def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": finish}


def _usage(stats: Any, prompt_tokens: int) -> dict[str, Any]:
    completion = stats.completion_tokens if stats else 0
    cached = stats.reused_tokens if stats else 0
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _collect_chat(stream: Iterator[dict[str, Any] | SseComment]) -> dict[str, Any]:
    content, reasoning, calls, finish, usage, head = [], [], [], "stop", {}, {}
    for chunk in stream:
        if isinstance(chunk, SseComment):
            continue
        head = {k: chunk[k] for k in ("id", "created", "model")}
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices", []):
            delta = choice["delta"]
            content.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
            calls.extend({k: v for k, v in c.items() if k != "index"}
                         for c in delta.get("tool_calls") or [])
            finish = choice.get("finish_reason") or finish
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
    if any(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return {**head, "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
        raise HttpError(400, f"{key} must be a number in [{lo:g}, {hi:g}]")
    return float(value)


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """→ (tools offered to the model, whether a tool call is forced)."""
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function", t), dict)
            and isinstance(t.get("function", t).get("name"), str) for t in tools):
        raise HttpError(400, "tools must be a list of {type: function, function: {name, ...}}")
    try:
        check_tools(tools)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    choice = body.get("tool_choice", "auto")
    if choice == "none":
        return [], False
    if choice == "required":
        return tools, bool(tools)
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        picked = [t for t in tools if t.get("function", t).get("name") == name]
        if not picked:
            raise HttpError(400, f"tool_choice names {name!r}, which is not among the tools")
        return picked, True
    if choice != "auto":
        raise HttpError(400, "tool_choice must be auto, none, required or {function: {name}}")
    return tools, False


def _warm_up(engine: Engine, mode: str, max_batch: int) -> None:
    if mode == "on" or (mode == "auto" and engine.lm.device.type == "cuda"):
        seconds = engine.warm_up()
        print(f"v4coder serve: warmed up in {seconds:.1f} s", file=sys.stderr, flush=True)
    if engine.graphs is not None:   # every batch size now, not at its first step mid-serving
        seconds = engine.graphs.prepare(range(1, max_batch + 1))
        if engine.graphs.disabled is None:
            print(f"v4coder serve: decode graphs for batch sizes 1-{max_batch} ready in "
                  f"{seconds:.1f} s", file=sys.stderr, flush=True)


def start_server(engine: Engine, host: str = "127.0.0.1", port: int = 0,
                 model_name: str = "v4coder", **options: Any) -> Server:
    """Build the server (port 0 = any free port); the caller runs serve_forever.
    ``options`` are ServeApp fields (default_max_tokens, max_value_tokens, max_invokes,
    max_batch). ``server_close`` also stops the app's batcher."""
    app = ServeApp(engine, model_name, **options)
    gets, posts = app.routes()
    server = make_server(host, port, make_handler(gets, posts))
    server.on_close = app.batcher.close
    return server


def serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="v4coder serve", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-name", default=None)
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/v4coder/prefix"),
                        help="on-disk prefix cache (survives restarts)")
    parser.add_argument("--cache-dir-size", default="64GB", metavar="BYTES",
                        help="disk budget of --cache-dir; least recently used blocks go first")
    parser.add_argument("--no-prefix-cache", action="store_true")
    parser.add_argument("--warm-up", choices=("auto", "on", "off"), default="auto",
                        help="run every kernel once before serving (auto: on a GPU, where "
                             "Triton compiles on first use)")
    parser.add_argument("--chunk-tokens", type=int, default=2048)
    parser.add_argument("--max-batch", type=int, default=16,
                        help="requests decoded together in one forward (continuous batching; "
                             "1 = one at a time; --mtp serves one at a time)")
    parser.add_argument("--mtp", action="store_true", help="MTP speculative decoding (off)")
    parser.add_argument("--ep", type=int, default=1, help="expert-parallel ranks per TP rank")
    parser.add_argument("--tp", type=int, default=1, help="attention tensor-parallel ranks")
    parser.add_argument("--offload", default="0", metavar="BYTES",
                        help="device bytes for routed experts (e.g. 2GB); the rest stay in host memory")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="run decode steps as CUDA graph pieces around attention's cache "
                             "side (fewer host launches; CUDA only; off until measured)")
    parser.add_argument("--autotune", action="store_true",
                        help="on a GPU model without a committed or cached table of kernel "
                             "launch choices, measure one at start (about a minute, once; "
                             "CUDA only)")
    parser.add_argument("--rank-timeout", type=float, default=7 * 24 * 3600.0,
                        help=argparse.SUPPRESS)  # collective timeout; followers idle between requests
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.max_batch < 1:
        print("v4coder serve: --max-batch must be ≥ 1", file=sys.stderr)
        return 2
    from model.checkpoint import CheckpointError
    from model.config import ConfigError
    from model.serve_ranks import parse_bytes
    try:
        offload = parse_bytes(args.offload)
        args.cache_dir_bytes = parse_bytes(args.cache_dir_size)
    except ValueError as exc:
        print(f"v4coder serve: --offload / --cache-dir-size: {exc}", file=sys.stderr)
        return 2
    for flag, on in (("--cuda-graphs", args.cuda_graphs), ("--autotune", args.autotune)):
        if on and not args.device.startswith("cuda"):
            print(f"v4coder serve: {flag} needs a CUDA device (--device cuda)", file=sys.stderr)
            return 2
        if on and args.ep * args.tp > 1:
            print(f"v4coder serve: {flag} cannot be combined with --ep/--tp yet",
                  file=sys.stderr)
            return 2
    if args.ep * args.tp > 1:
        return _serve_ranks(args, offload)
    if args.autotune:
        _autotune(args.device)
    try:
        engine = Engine.from_checkpoint(
            args.checkpoint, dtype=args.dtype, device=args.device, mtp=args.mtp,
            chunk_tokens=args.chunk_tokens, prefix_cache=not args.no_prefix_cache,
            cache_dir=None if args.no_prefix_cache else args.cache_dir.expanduser(),
            cache_dir_bytes=args.cache_dir_bytes, transforms=_offload_transforms(offload),
            decode_graphs=args.cuda_graphs)
        if engine.tokenizer is None:
            raise EngineError(f"{args.checkpoint}/tokenizer.json: missing")
        _warm_up(engine, args.warm_up, args.max_batch)
        server = start_server(engine, args.host, args.port,
                              args.model_name or args.checkpoint.resolve().name,
                              max_batch=args.max_batch)
    except (CheckpointError, ConfigError, EngineError, ValueError, OSError) as exc:
        print(f"v4coder serve: {exc}", file=sys.stderr)
        return 1
    return run_until_signal(server)


def _autotune(device: str) -> None:
    """``--autotune``: measure this GPU model's kernel launch choices into the user's cache when
    the runtime has no table for it. A failure is one line; the kernels keep their defaults."""
    import os

    import torch

    from model.kernels import choices

    if os.environ.get(choices.CHOICES_ENV, "").strip():
        print(f"v4coder serve: --autotune skipped: {choices.CHOICES_ENV} is set", file=sys.stderr)
        return
    try:
        name = torch.cuda.get_device_name(torch.device(device))
        if choices.has_table(name):
            return
        print(f"v4coder serve: measuring kernel launch choices for {name} (about a minute, "
              "once per GPU model)", file=sys.stderr, flush=True)
        path = choices.cached_path(name)
        choices.write_table(choices.measure(device), path)
    except Exception as exc:  # noqa: BLE001 - no GPU, a kernel failing here: serve with defaults
        print(f"v4coder serve: --autotune failed, kernels keep their defaults: "
              f"{choices.one_line(exc)}", file=sys.stderr)
        return
    choices.clear_cache()
    print(f"v4coder serve: kernel choices written to {path}", file=sys.stderr, flush=True)


def _offload_transforms(offload: int) -> list[Any]:
    from model.serve_ranks import rank_transforms
    return rank_transforms(None, offload)


def _serve_ranks(args: argparse.Namespace, offload: int) -> int:
    """``--ep/--tp`` > 1: rank 0 (this process) serves; ranks 1.. follow its forwards."""
    import os

    import torch

    from model.checkpoint import Checkpoint, CheckpointError
    from model.config import ConfigError
    from model.launch import rank_device, under_torchrun
    from model.parallel import ParallelLayout, init_parallel, teardown
    from model.serve_ranks import Followers, StepLeader, follower_main, rank_transforms

    layout = ParallelLayout(tp=args.tp, ep=args.ep)
    load = {"checkpoint": args.checkpoint, "dtype": args.dtype, "numerics": "dequant",
            "with_mtp": args.mtp}
    try:
        if offload:
            raise ValueError("--offload cannot be combined with --ep/--tp yet")
        cfg = Checkpoint.open(args.checkpoint).config
        layout.check(cfg.n_heads, cfg.o_groups, cfg.n_routed_experts)
    except (CheckpointError, ConfigError, ValueError, OSError) as exc:
        print(f"v4coder serve: {exc}", file=sys.stderr)
        return 1
    world, followers, init_method = layout.world, None, None
    if under_torchrun():
        rank = int(os.environ["RANK"])
        if rank != 0:
            follower_main(rank, world, None, layout, load, offload, args.rank_timeout)
            return 0
    else:
        followers = Followers(follower_main, world,
                              (layout, load, offload, args.rank_timeout))
        init_method = followers.init_method
        torch.set_num_threads(followers.threads)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    hook, code = None, 1
    try:
        ctx = init_parallel(layout, 0, init_method=init_method, timeout_s=args.rank_timeout)
        engine = Engine.from_checkpoint(
            args.checkpoint, dtype=args.dtype, device=rank_device(world), mtp=args.mtp,
            chunk_tokens=args.chunk_tokens, prefix_cache=not args.no_prefix_cache,
            cache_dir=None if args.no_prefix_cache else args.cache_dir.expanduser(),
            cache_dir_bytes=args.cache_dir_bytes, transforms=rank_transforms(ctx, offload))
        if engine.tokenizer is None:
            raise EngineError(f"{args.checkpoint}/tokenizer.json: missing")
        engine.step_hook = hook = StepLeader(engine.lm.device)
        _warm_up(engine, args.warm_up, args.max_batch)
        server = start_server(engine, args.host, args.port,
                              args.model_name or args.checkpoint.resolve().name,
                              max_batch=args.max_batch)
        print(f"v4coder serve: {world} ranks (tp={args.tp} ep={args.ep} offload={offload})",
              file=sys.stderr, flush=True)
        code = run_until_signal(server)  # returns once in-flight requests are done
    except (CheckpointError, ConfigError, EngineError, ValueError, OSError, RuntimeError) as exc:
        print(f"v4coder serve: {exc}", file=sys.stderr)
    finally:
        if hook is not None:
            try:
                hook.stop()
            except Exception as exc:  # noqa: BLE001 - a follower already gone
                print(f"v4coder serve: stopping ranks: {exc}", file=sys.stderr)
                hook = None
        teardown()
        if followers is not None:
            clean = followers.join(30.0 if hook is not None else 0.0)
            if not clean:
                code = code or 1
    return code
