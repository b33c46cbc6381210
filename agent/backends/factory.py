"""``--backend`` spec -> a Backend.

    replay:FILE.jsonl           recorded raw completions
    openai[:URL]                any OpenAI-compatible server (vLLM, SGLang, ...); URL like
                                http://127.0.0.1:8000/v1, else $V4CODER_BASE_URL
    embedded:CHECKPOINT_DIR     our own runtime (model/) on an official-format checkpoint
    embedded:DIR?offload=2GB    ... with options after '?', '&'-separated key=value:
                                offload=BYTES  device bytes for routed experts (5000, 512MB, 2GB);
                                the other experts stay in host memory (model/offload.py)
                                graphs=on      decode steps as CUDA graph pieces (CUDA only;
                                model/decode_graphs.py)
"""

from __future__ import annotations

import os

from agent.backends.base import Backend, BackendError

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


def make_backend(spec: str, model: str | None = None) -> Backend:
    kind, _, rest = spec.partition(":")
    if kind == "replay":
        if not rest:
            raise BackendError("--backend replay needs a file: replay:FILE.jsonl")
        from agent.backends.replay import ReplayBackend
        return ReplayBackend(rest)
    if kind == "openai":
        from agent.backends.openai import OpenAIBackend
        url = rest or os.environ.get("V4CODER_BASE_URL") or DEFAULT_BASE_URL
        if not url.startswith(("http://", "https://")):
            raise BackendError(f"--backend openai:URL needs an http(s) URL, got {url!r}")
        return OpenAIBackend(base_url=url, model=model)
    if kind == "embedded":
        path, _, query = rest.partition("?")
        if not path:
            raise BackendError("--backend embedded needs a checkpoint directory: embedded:DIR")
        options = _embedded_options(query)
        try:
            from agent.backends.embedded import EmbeddedBackend
        except ImportError:
            raise BackendError("the embedded backend is not available in this build") from None
        return EmbeddedBackend(path, **options)
    raise BackendError(f"unknown backend {spec!r}; use replay:FILE, openai[:URL] or embedded:DIR")


def _embedded_options(query: str) -> dict[str, object]:
    """'offload=2GB&graphs=on' → {'offload_bytes': 2147483648, 'decode_graphs': True};
    unknown keys or bad values → BackendError."""
    options: dict[str, object] = {}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key == "graphs":
            if value not in ("on", "off"):
                raise BackendError(f"embedded:...?graphs=: expected on or off, got {value!r}")
            options["decode_graphs"] = value == "on"
            continue
        if key != "offload":
            raise BackendError(f"unknown embedded backend option {key!r} (known: offload, graphs)")
        try:
            from model.serve_ranks import parse_bytes
            options["offload_bytes"] = parse_bytes(value)
        except ValueError as exc:
            raise BackendError(f"embedded:...?offload=: {exc}") from None
    return options
