"""A fake Firecracker for contract tests: its API socket, checked against the OpenAPI spec.

For the contract only (docs/backends.md): it runs no guest. It serves HTTP on
a Unix socket like Firecracker, answers 400 with a ``fault_message`` to any
request the spec does not allow (``SpecValidator``) or that Firecracker's
order forbids (``/snapshot/load`` after configuration, ``InstanceStart``
without a boot source, a snapshot of a running guest), records every request
as a JSON line, and ends on ``SendCtrlAltDel`` as Firecracker does when its
guest reboots. Injected faults: ``{"PUT /snapshot/load": [400, "message"]}``,
and ``"ignore SendCtrlAltDel"`` (a guest that does not stop).

Its hybrid vsock (``FakeHybridVsock``) listens on the ``uds_path`` of ``PUT
/vsock`` (relative to its working directory, as Firecracker's) and, after a
``/snapshot/load``, on the one the saved state names: ``CONNECT 52`` is answered
``OK <port>`` only while the guest runs, then a scripted agent answers (no
agent runs); a clone's process has none of the template's connections.

Run as a program it stands in for the ``firecracker`` binary
(``write_fake_binary``): ``--api-sock``, ``--id`` and ``--version`` as the real
one, plus ``--record`` and ``--faults`` files given by the wrapper script.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.support.firecracker_spec import SpecValidator, load_spec

VERSION_LINE = "Firecracker v1.16.1"
_PRE_BOOT_ONLY = ("/machine-config", "/boot-source", "/drives/", "/network-interfaces/",
                  "/vsock", "/serial")


class FakeFirecrackerApi:
    """The fake's behaviour, independent of HTTP: ``handle`` returns (status, body)."""

    def __init__(self, validator: SpecValidator, *, record: Path | None = None,
                 faults: dict[str, Any] | None = None) -> None:
        self.validator = validator
        self.record = record
        self.faults = faults or {}
        self.requests: list[tuple[str, str, Any]] = []
        self.configured = self.started = self.paused = False
        self.boot_source = False
        self.mem_mib = 0
        self.stop = threading.Event()
        self.running = threading.Event()  # the guest runs: its vsock answers
        self.vsock: FakeHybridVsock | None = None

    def note(self, method: str, path: str, body: Any) -> None:
        self.requests.append((method, path, body))
        if self.record is not None:
            with self.record.open("a") as f:
                f.write(json.dumps({"method": method, "path": path, "body": body}) + "\n")

    def handle(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any] | None]:
        self.note(method, path, body)
        if (fault := self.faults.get(f"{method} {path}")) is not None:
            return fault[0], {"fault_message": fault[1]}
        if errors := self.validator.errors(method, path, body):
            return 400, {"fault_message": "; ".join(errors)}
        refusal = self._order(method, path, body)
        if refusal is not None:
            return 400, {"fault_message": refusal}
        return (200, {"firecracker_version": VERSION_LINE.split()[-1][1:]}) \
            if path == "/version" else (204, None)

    def _order(self, method: str, path: str, body: Any) -> str | None:
        """What real Firecracker refuses at this point of a VM's life, else None."""
        if method == "PUT" and path.startswith(_PRE_BOOT_ONLY):
            if self.started:
                return f"{path} can only be configured before boot"
            self.configured = True
            self.boot_source |= path == "/boot-source"
            if path == "/machine-config":
                self.mem_mib = body["mem_size_mib"]
            if path == "/vsock":
                self._listen(body["uds_path"])
            return None
        if path == "/snapshot/load":
            if self.configured or self.started:
                return "Loading a microVM snapshot not allowed after configuring boot resources."
            self.started, self.paused = True, not body.get("resume_vm", False)
            refused = self._check_files(body["snapshot_path"], body["mem_backend"]["backend_path"])
            if refused is None:
                uds = json.loads(Path(body["snapshot_path"]).read_text()).get("vsock")
                self._listen(uds)  # a new process: the saved connections are gone
                if not self.paused:
                    self.running.set()
            return refused
        if path == "/actions":
            return self._action(body["action_type"])
        if path == "/vm":
            self.paused = body["state"] == "Paused"
            (self.running.clear if self.paused else self.running.set)()
        if path == "/snapshot/create":
            return self._create(body)
        return None

    def _action(self, kind: str) -> str | None:
        if kind == "InstanceStart":
            if not self.boot_source:
                return "Cannot start microvm without kernel configuration."
            self.started = True
            self.running.set()
        elif kind == "SendCtrlAltDel" and "ignore SendCtrlAltDel" not in self.faults:
            self.stop.set()
        return None

    def _create(self, body: dict[str, Any]) -> str | None:
        if not self.paused:
            return "Cannot create a snapshot of a running microVM: pause it first."
        uds = self.vsock.path.name if self.vsock is not None else None
        Path(body["snapshot_path"]).write_text(json.dumps({"vsock": uds}))
        with open(body["mem_file_path"], "wb") as mem:  # the guest's RAM, sparse
            mem.truncate(self.mem_mib << 20)
        return None

    def _listen(self, uds_path: str | None) -> None:
        if uds_path is not None:
            self.vsock = FakeHybridVsock(Path(uds_path), running=self.running, api=self)

    @staticmethod
    def _check_files(*paths: str) -> str | None:
        missing = [p for p in paths if not os.path.isfile(p)]
        return f"cannot open {missing[0]}" if missing else None


def scripted_agent(request: str) -> str:
    """The agent's replies (docs/snapshots.md), without a guest."""
    verb = request.split(" ", 1)[0]
    if verb == "identity":
        return "ok machine-id=0123" + (" held" if request.endswith(" banger.hold=1") else "")
    return {"ping": "pong", "quiesce": "quiesced", "name": "ok"}.get(
        verb, "error unknown request")


class FakeHybridVsock:
    """Firecracker's host end of a vsock device: a Unix socket at ``path`` where a
    connection sends ``CONNECT <port>`` and gets ``OK <host port>`` once the guest
    (``running``) accepts, then talks to the agent (``scripted_agent``).

    Hostile or early answers for tests: ``answer`` replaces the ``OK`` line (raw
    bytes, sent as they are, then the connection closes); the first ``refusals``
    connections are closed unanswered (nothing listens in the guest yet), the first
    ``resets`` of those with the ``CONNECT`` line unread (the host sees a reset).
    """

    def __init__(self, path: Path, *, port: int = 52, running: threading.Event | None = None,
                 answer: bytes | None = None, refusals: int = 0, resets: int = 0,
                 api: FakeFirecrackerApi | None = None) -> None:
        self.path, self.port, self.answer, self.refusals = path, port, answer, refusals
        self.resets = resets
        self.running = running if running is not None else threading.Event()
        if running is None:
            self.running.set()
        self.api = api
        self.connects = 0
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(os.fspath(path))
        self._listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        if self.connects < self.resets:
            self.connects += 1
            time.sleep(0.05)  # the CONNECT line has arrived, unread: closing resets
            conn.close()
            return
        with conn, conn.makefile("rwb", buffering=0) as f:
            hello = f.readline(64)
            self.connects += 1
            if self.connects <= self.refusals or hello != f"CONNECT {self.port}\n".encode():
                return
            if self.answer is not None:
                f.write(self.answer)
                return
            self.running.wait()
            if self.api is not None:
                self.api.note("VSOCK", hello.decode().strip(), None)
            f.write(b"OK 1073741824\n")
            while line := f.readline(1024):
                self.running.wait()  # a paused guest answers nothing
                f.write(scripted_agent(line.decode().strip()).encode() + b"\n")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _UnixHTTPServer

    def address_string(self) -> str:
        return "uds"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        reply: dict[str, Any] | None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            status, reply = 400, {"fault_message": "body is not JSON"}
        else:
            status, reply = self.server.api.handle(self.command, self.path, body)
        data = json.dumps(reply).encode() if reply is not None else b""
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        if data:
            self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)
        if self.server.api.stop.is_set():
            threading.Thread(target=self.server.shutdown, daemon=True).start()

    do_GET = do_PUT = do_PATCH = _serve


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, api: FakeFirecrackerApi) -> None:
        self.api = api
        super().__init__(os.fspath(path), _Handler)


def serve_in_thread(path: Path, api: FakeFirecrackerApi) -> _UnixHTTPServer:
    """Serve ``api`` on the Unix socket ``path`` from a thread; ``shutdown()`` when done."""
    server = _UnixHTTPServer(path, api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def write_fake_binary(directory: Path, *, record: Path, faults: dict[str, Any]) -> Path:
    """An executable ``firecracker`` in ``directory`` that runs this fake."""
    faults_file = directory / "faults.json"
    faults_file.write_text(json.dumps(faults))
    repo = Path(__file__).resolve().parents[2]
    exe = directory / "firecracker"
    exe.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH='{repo}' exec '{sys.executable}' -m tests.support.fake_firecracker "
        f"--record '{record}' --faults '{faults_file}' \"$@\"\n"
    )
    exe.chmod(0o755)
    return exe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-sock", type=Path)
    parser.add_argument("--id")
    parser.add_argument("--version", action="store_true")
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--faults", type=Path, required=True)
    args = parser.parse_args()
    if args.version:
        print(f"{VERSION_LINE}\n\nFirecracker exiting successfully. exit_code=0")
        return
    faults = json.loads(args.faults.read_text())
    api = FakeFirecrackerApi(SpecValidator(load_spec()), record=args.record, faults=faults)
    with _UnixHTTPServer(args.api_sock, api) as server:
        print(f"fake firecracker {args.id} listening", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
