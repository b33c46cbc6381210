"""``--backend`` spec -> a Backend.

    replay:FILE.jsonl           recorded raw completions
    openai[:URL]                any OpenAI-compatible server (vLLM, SGLang, ...); URL like
                                http://127.0.0.1:8000/v1, else $V4CODER_BASE_URL
    embedded:CHECKPOINT_DIR     our own runtime (model/) on an official-format checkpoint
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
        if not rest:
            raise BackendError("--backend embedded needs a checkpoint directory: embedded:DIR")
        try:
            from agent.backends.embedded import EmbeddedBackend
        except ImportError:
            raise BackendError("the embedded backend is not available in this build") from None
        return EmbeddedBackend(rest)
    raise BackendError(f"unknown backend {spec!r}; use replay:FILE, openai[:URL] or embedded:DIR")
