"""The OpenAI-compatible HTTP backend: vLLM, SGLang or any server with /v1/chat/completions.

Requests always ask for a stream (and take a plain JSON body if the server ignores that).
Failures that may pass - HTTP 429 and 5xx, refused or dropped connections, timeouts - are
retried with exponential backoff plus jitter (``Retry-After`` wins when the server sends
one); any other 4xx fails at once. Every failure ends as one-line ``BackendError``.

A stream that dies mid-reply is retried from the start. Text already yielded is not
yielded again: the retried reply's first N characters of each channel (N = what the caller
has already seen) are skipped. At temperature 0 / a fixed seed the retried reply repeats
those characters; if it does not, the rendered text may differ from the returned
``Completion``, which is always the retried reply exactly and is the one to trust.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx

from agent.backends.base import BackendError, Completion, CompletionRequest
from agent.backends.sse import ChunkAccumulator, StreamError, error_message, iter_chunks
from agent.events import PrefillEvent, TextDelta

MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 60.0


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class OpenAIBackend:
    """``Backend`` over HTTP. ``timeout`` is the longest the server may stay silent (before
    the first byte or between two chunks); ``connect_timeout`` bounds opening a connection;
    ``max_retries`` counts retries after the first try."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        max_retries: int = 4,
        backoff: float = 1.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._model = model
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        key = api_key or os.environ.get("V4CODER_API_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"User-Agent": "v4coder"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
        )

    # -- model -----------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The model name; when none was given, the first id in GET /models (asked once)."""
        if self._model is None:
            self._model = self._discover_model()
        return self._model

    @model.setter
    def model(self, value: str) -> None:
        self._model = value

    def _discover_model(self) -> str:
        url = f"{self.base_url}/models"
        attempt = 0
        while True:
            try:
                response = self._client.get(url)
                if response.status_code >= 300:
                    raise self._http_failure(response)
                data = response.json().get("data") or []
                ids = [m["id"] for m in data if isinstance(m, dict) and m.get("id")]
                if not ids:
                    raise BackendError(
                        f"server at {self.base_url} lists no models; give the model name explicitly"
                    )
                return str(ids[0])
            except (ValueError, AttributeError, TypeError) as exc:
                raise BackendError(
                    f"server at {self.base_url} sent an unreadable model list: {exc}"
                ) from None
            except httpx.TransportError as exc:
                failure = _Retryable(self._describe(exc))
            except _Retryable as exc:
                failure = exc
            attempt = self._wait_or_give_up(attempt, failure)

    # -- streaming -------------------------------------------------------------------

    def build_payload(self, request: CompletionRequest) -> dict[str, Any]:
        """The JSON body of POST /chat/completions for ``request``."""
        s = request.sampling
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": clean_messages(request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "chat_template_kwargs": {"thinking": bool(request.thinking)},
        }
        if s.seed is not None:
            payload["seed"] = s.seed
        if request.tools:
            payload["tools"] = request.tools
        return payload

    def stream(self, request: CompletionRequest) -> Iterator[TextDelta | PrefillEvent | Completion]:
        payload = self.build_payload(request)
        url = f"{self.base_url}/chat/completions"
        shown = {"text": 0, "reasoning": 0}  # characters the caller has seen, per channel
        attempt = 0
        while True:
            acc = ChunkAccumulator()
            try:
                with self._client.stream("POST", url, json=payload) as response:
                    if response.status_code >= 300:
                        response.read()
                        raise self._http_failure(response)
                    for delta in self._relay(response, acc):
                        if isinstance(delta, PrefillEvent):   # our server's progress
                            yield delta
                            continue
                        unseen = _unseen(delta, acc.lengths[delta.channel], shown)
                        if unseen is not None:
                            yield unseen
                break
            except StreamError as exc:
                raise BackendError(f"server at {self.base_url}: {exc}") from None
            except httpx.TransportError as exc:
                failure = _Retryable(self._describe(exc))
            except _Retryable as exc:
                failure = exc
            attempt = self._wait_or_give_up(attempt, failure)
        yield acc.completion(request.tools)

    def _relay(self, response: httpx.Response, acc: ChunkAccumulator
               ) -> Iterator[TextDelta | PrefillEvent]:
        ctype = response.headers.get("content-type", "")
        if "json" in ctype and "event-stream" not in ctype:  # the server ignored stream=true
            try:
                body = json.loads(response.read())
            except ValueError:
                raise StreamError("the reply is not valid JSON") from None
            if not isinstance(body, dict):
                raise StreamError("the reply is not a JSON object")
            yield from acc.feed(body, whole=True)
            acc.done = True
            return
        try:
            for chunk in iter_chunks(response.iter_lines()):
                if chunk is None:
                    acc.done = True
                    return
                if isinstance(chunk, PrefillEvent):
                    yield chunk
                    continue
                yield from acc.feed(chunk)
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout):
            if acc.finish_reason is None:
                raise
            return  # the reply itself was complete; only the trailer (usage, [DONE]) is lost
        if not acc.done and acc.finish_reason is None:
            raise _Retryable(f"connection to {self.base_url} dropped mid-stream")

    # -- failures --------------------------------------------------------------------

    def _http_failure(self, response: httpx.Response) -> Exception:
        code = response.status_code
        message = _server_message(response)
        if code == 429 or code >= 500:
            return _Retryable(
                f"server at {self.base_url} answered HTTP {code}: {message}",
                _retry_after(response.headers.get("retry-after")),
            )
        hint = ""
        if code in (401, 403):
            hint = " (check the API key: --api-key, V4CODER_API_KEY or OPENAI_API_KEY)"
        elif code == 404:
            hint = " (is the base URL right? it usually ends in /v1)"
        return BackendError(
            f"server at {self.base_url} rejected the request (HTTP {code}): {message}{hint}"
        )

    def _describe(self, exc: httpx.TransportError) -> str:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, httpx.ConnectTimeout):
            return f"server at {self.base_url} unreachable: no connection within {self.connect_timeout:g}s"
        if isinstance(exc, httpx.ConnectError):
            return f"server at {self.base_url} unreachable: {detail}"
        if isinstance(exc, httpx.TimeoutException):
            return f"server at {self.base_url} timed out after {self.timeout:g}s without answering"
        if isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError):
            return f"connection to {self.base_url} dropped: {detail}"
        return f"request to {self.base_url} failed: {detail}"

    def _wait_or_give_up(self, attempt: int, failure: _Retryable) -> int:
        attempt += 1
        if attempt > self.max_retries:
            tries = "1 try" if attempt == 1 else f"{attempt} tries"
            raise BackendError(f"{failure.reason} (gave up after {tries})") from None
        if failure.retry_after is not None:
            delay = min(failure.retry_after, MAX_RETRY_AFTER_S)
        else:
            delay = min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF_S)
            delay *= random.uniform(0.75, 1.25)
        if delay > 0:
            time.sleep(delay)
        return attempt

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def clean_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy the messages without our internal ``_``-keys; tool-call arguments as JSON text."""
    out: list[dict[str, Any]] = []
    for message in messages:
        msg = {k: v for k, v in message.items() if not k.startswith("_")}
        if msg.get("tool_calls"):
            calls = []
            for call in msg["tool_calls"]:
                call = {k: v for k, v in call.items() if not k.startswith("_")}
                fn = dict(call.get("function") or {})
                if not isinstance(fn.get("arguments"), str):
                    fn["arguments"] = json.dumps(fn.get("arguments") or {}, ensure_ascii=False)
                call["function"] = fn
                call.setdefault("type", "function")
                calls.append(call)
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def _unseen(delta: TextDelta, total: int, shown: dict[str, int]) -> TextDelta | None:
    """The part of ``delta`` (ending at ``total`` chars of its channel) not yet yielded."""
    seen = shown[delta.channel]
    if total <= seen:
        return None
    shown[delta.channel] = total
    start = total - len(delta.text)
    return delta if start >= seen else TextDelta(delta.text[seen - start :], channel=delta.channel)


def _server_message(response: httpx.Response) -> str:
    try:
        message = error_message(response.json())
    except ValueError:
        message = None
    text = message if message is not None else response.text
    line = " ".join(text.split()) or response.reason_phrase or "no message"
    return line if len(line) <= 300 else line[:299] + "…"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
