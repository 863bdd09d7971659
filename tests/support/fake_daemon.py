"""A hostile stand-in for bangerd: an HTTP server on a Unix socket with canned answers.

It speaks real HTTP over a real socket, so the client's own checks (owner,
content type, redirects, response data) meet what a broken or fake daemon
would send.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Answer:
        return cls(status, json.dumps(data).encode())


@dataclass
class FakeDaemon:
    socket: Path
    answers: dict[str, Answer]
    seen: list[str] = field(default_factory=list)
    bodies: dict[str, bytes] = field(default_factory=dict)  # the last body per "METHOD /path"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    fake: FakeDaemon


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _answer(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            fake.bodies[f"{self.command} {self.path}"] = self.rfile.read(length)
        fake.seen.append(f"{self.command} {self.path}")
        answer = fake.answers.get(f"{self.command} {self.path}", Answer(404, b"no such thing",
                                                                          "text/plain"))
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("X-Banger-Op-Id", "op-fake-1")
        for key, value in answer.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(answer.body)

    do_GET = do_POST = do_DELETE = do_PATCH = _answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass


@contextmanager
def fake_daemon(socket_path: Path, answers: dict[str, Answer]) -> Iterator[FakeDaemon]:
    """Serve ``answers`` (keyed ``"METHOD /v1/path"``) on ``socket_path`` until the block ends."""
    socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fake = FakeDaemon(socket_path, answers)
    server = _Server(str(socket_path), _Handler)
    server.fake = fake
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        socket_path.unlink(missing_ok=True)
