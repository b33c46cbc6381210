"""A scripted HTTP server on 127.0.0.1 for backend tests (real sockets, no mocks).

Queue replies per path; each request takes the next one and is recorded. A reply can
stream server-sent events, stall before answering, or cut the connection mid-body.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    pieces: list[bytes] = field(default_factory=list)  # body, written and flushed piece by piece
    framing: str = "length"  # "length" | "chunked" | "eof" (no length, close when done)
    drop: bool = False  # cut the connection after the pieces, before the body is complete
    delay: float = 0.0  # seconds to stall before the status line


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: dict[str, deque[Reply]] = defaultdict(deque)
        self.requests: list[Recorded] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def queue(self, path: str, *replies: Reply) -> None:
        with self.lock:
            self.replies[path].extend(replies)

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)

    # -- reply builders --

    @staticmethod
    def stall(seconds: float) -> Reply:
        """Say nothing for ``seconds`` (or until the server stops), then answer 200 {}."""
        return Reply(200, {"Content-Type": "application/json"}, [b"{}"], delay=seconds)

    @staticmethod
    def json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        body = json.dumps(obj).encode()
        return Reply(status, {"Content-Type": "application/json", **(headers or {})}, [body])

    @staticmethod
    def sse(
        chunks: list[Any],
        done: bool = True,
        drop: bool = False,
        framing: str = "chunked",
        newline: str = "\n",
    ) -> Reply:
        """One event per chunk (a dict becomes ``data: {json}``; a str is sent verbatim)."""
        pieces = []
        for chunk in chunks:
            text = (
                chunk if isinstance(chunk, str) else f"data: {json.dumps(chunk)}{newline}{newline}"
            )
            pieces.append(text.encode())
        if done:
            pieces.append(f"data: [DONE]{newline}{newline}".encode())
        return Reply(200, {"Content-Type": "text/event-stream"}, pieces, framing, drop)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client hanging up is no error
            super().handle_error(request, client_address)

    def next_reply(self, path: str) -> Reply:
        with self.lock:
            if self.replies[path]:
                return self.replies[path].popleft()
        return self.json({"error": {"message": f"no scripted reply for {path}"}}, status=418)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.server.lock:
            self.server.requests.append(Recorded(self.command, self.path, headers, body))
        reply = self.server.next_reply(self.path)
        try:
            self._send(reply)
        except OSError:  # the client gave up (timeout test): nothing to do
            self.close_connection = True

    def _send(self, reply: Reply) -> None:
        if reply.delay and self.server.stopping.wait(reply.delay):
            self.close_connection = True
            return
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if reply.framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        elif reply.framing == "eof":
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            total = sum(len(p) for p in reply.pieces)
            self.send_header("Content-Length", str(total + (1 if reply.drop else 0)))
        self.end_headers()
        for piece in reply.pieces:
            self.wfile.write(
                b"%x\r\n%s\r\n" % (len(piece), piece) if reply.framing == "chunked" else piece
            )
            self.wfile.flush()
        if reply.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif reply.framing == "chunked":
            self.wfile.write(b"0\r\n\r\n")


@pytest.fixture
def loopback() -> Any:
    server = LoopbackServer()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
