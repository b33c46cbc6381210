"""HTTP machinery of ``v4coder serve``: a threading stdlib server, JSON and SSE replies.

Each connection gets a thread; the threads hand their requests to one scheduler
(model/batcher.py) that owns the engine and batches them, so clients never touch the model
concurrently. SIGINT/SIGTERM stop accepting, let in-flight requests finish, then exit.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 64 << 20


@dataclass(frozen=True, slots=True)
class SseComment:
    """A comment line in an event stream (``: text``): clients skip it, so it can carry
    progress (and keeps a connection that waits minutes for a long prompt's prefill busy)."""
    text: str


class HttpError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


# A route returns a JSON-able dict, or an iterator of JSON-able chunks (sent as SSE).
Route = Callable[[dict[str, Any]], "dict[str, Any] | Iterator[dict[str, Any]]"]


def error_body(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": None}}


def make_handler(get_routes: dict[str, Callable[[], dict[str, Any]]],
                 post_routes: dict[str, Route]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "v4coder"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # quiet; errors reach the client as JSON

        def _path(self) -> str:
            return self.path.split("?", 1)[0].rstrip("/")

        def do_GET(self) -> None:  # noqa: N802
            route = get_routes.get(self._path())
            if route is None:
                self._json(404, error_body(f"no route GET {self._path()}", "not_found_error"))
                return
            self._json(200, route())

        def do_POST(self) -> None:  # noqa: N802
            route = post_routes.get(self._path())
            try:
                if route is None:
                    raise HttpError(404, f"no route POST {self._path()}", "not_found_error")
                result = route(self._body())
            except HttpError as exc:
                self._json(exc.status, error_body(exc.message, exc.kind))
                return
            except Exception as exc:  # noqa: BLE001 - one JSON line, never a traceback
                self._json(500, error_body(f"internal error: {exc}", "server_error"))
                return
            if isinstance(result, dict):
                self._json(200, result)
            else:
                self._sse(result)

        def _body(self) -> dict[str, Any]:
            try:
                length = int(self.headers.get("content-length") or 0)
            except ValueError:
                raise HttpError(400, "bad Content-Length header") from None
            if length > MAX_BODY:
                raise HttpError(413, f"request body over {MAX_BODY} bytes")
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"null")
            except (ValueError, UnicodeDecodeError) as exc:
                raise HttpError(400, f"request body is not valid JSON: {exc}") from None
            if not isinstance(body, dict):
                raise HttpError(400, "request body must be a JSON object")
            return body

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _sse(self, chunks: Iterator[dict[str, Any] | SseComment]) -> None:
            try:
                first = next(chunks)  # errors before the first chunk still get a status code
            except HttpError as exc:
                self._json(exc.status, error_body(exc.message, exc.kind))
                return
            except StopIteration:
                first = None
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                if first is not None:
                    self._event(first)
                for chunk in chunks:
                    self._event(chunk)
            except (BrokenPipeError, ConnectionResetError):
                chunks.close()  # type: ignore[attr-defined]
                return
            except Exception as exc:  # noqa: BLE001
                self._event(error_body(f"internal error: {exc}", "server_error"))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def _event(self, chunk: dict[str, Any] | SseComment) -> None:
            if isinstance(chunk, SseComment):
                self.wfile.write(b": " + chunk.text.encode() + b"\n\n")
            else:
                self.wfile.write(b"data: " + json.dumps(chunk, ensure_ascii=False).encode()
                                 + b"\n\n")
            self.wfile.flush()

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = False       # shutdown waits for in-flight requests
    block_on_close = True
    allow_reuse_address = True
    request_queue_size = 128     # listen backlog: many agents connect at once (the default 5
                                 # reset connections when 20 clients arrived together)
    on_close: Callable[[], None] | None = None   # after the in-flight requests are done

    def server_close(self) -> None:
        super().server_close()
        if self.on_close is not None:
            self.on_close()


def make_server(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> Server:
    return Server((host, port), handler)


def run_until_signal(server: Server) -> int:
    """Serve until SIGINT/SIGTERM; then stop accepting and finish in-flight requests."""
    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    host, port = server.server_address[:2]
    print(f"v4coder serve: listening on http://{host}:{port}/v1", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print("v4coder serve: stopped", file=sys.stderr, flush=True)
    return 0
