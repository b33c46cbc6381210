"""``replay:FILE.jsonl`` — recorded raw completions, for tests, demos and bug reports.

Each line is ``{"completion": "..."}``: the raw text the model wrote after
``<｜Assistant｜></think>`` (no end-of-sentence token). Every call to ``stream`` renders
the prompt exactly as the embedded model would see it, then plays the next line back
through the same streamer and DSML parser as the embedded model's output.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

from agent.backends.base import BackendError, Completion, CompletionRequest, Usage
from agent.dsml import parse_completion
from agent.dsml_stream import DsmlTextStreamer
from agent.encoding import encode_messages
from agent.events import TextDelta


def load_replay(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BackendError(f"cannot read replay file {path}: {exc.strerror}") from None
    completions = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BackendError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("completion"), str):
            raise BackendError(f'{path}:{number}: expected an object {{"completion": "..."}}')
        completions.append(item["completion"])
    if not completions:
        raise BackendError(f"{path}: no completions in the replay file")
    return completions


class ReplayBackend:
    name = "replay"

    def __init__(self, path: str | Path, chunk_chars: int = 12, tokens_per_second: float = 0.0,
                 count_tokens=None) -> None:
        self.path = Path(path)
        self.model = f"replay:{self.path.name}"
        self.completions = load_replay(self.path)
        self.position = 0
        self.chunk_chars = chunk_chars
        # 0 = as fast as possible; otherwise pace the stream (about 4 chars per token).
        self.tokens_per_second = tokens_per_second
        self._count_tokens = count_tokens or (lambda text: max(1, len(text) // 4))

    def stream(self, request: CompletionRequest) -> Iterator[TextDelta | Completion]:
        if self.position >= len(self.completions):
            raise BackendError(
                f"replay {self.path.name} has no completion left (it holds {len(self.completions)})")
        prompt = encode_messages(request.messages, request.tools, thinking=request.thinking)
        raw = self.completions[self.position]
        self.position += 1
        streamer = DsmlTextStreamer(request.thinking)
        # Paced against a deadline (not a fixed sleep per chunk), so a slow consumer does not
        # lower the rate: chunk i is due at start + i * seconds_per_chunk.
        per_chunk = self.chunk_chars / 4 / self.tokens_per_second if self.tokens_per_second else 0.0
        start = time.monotonic()
        for n, i in enumerate(range(0, len(raw), self.chunk_chars)):
            if per_chunk:
                wait = start + (n + 1) * per_chunk - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            yield from streamer.feed(raw[i:i + self.chunk_chars])
        yield from streamer.flush()
        completion = parse_completion(raw, request.tools, thinking=request.thinking)
        completion.usage = Usage(prompt_tokens=self._count_tokens(prompt),
                                 completion_tokens=self._count_tokens(raw))
        yield completion
