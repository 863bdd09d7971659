"""``bangerd-root``'s socket: one request per connection, from root or the owner only.

Every connection's SO_PEERCRED uid is checked before its request is parsed; a request is
parsed into its typed model (``host.helper_protocol``), then run through
``guard.helper_ops`` (shape checks, owner checks, the in-process operation). One
log line per call: op, op_id, peer, outcome, duration.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import socketserver
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from banger.core.errors import BangerError, Forbidden, InternalError, InvalidInput
from banger.core.signals import parse_vmm_signal
from banger.helper.guard import Owner
from banger.host import helper_protocol as wire
from banger.host.privileged import HostOps
from banger.host.sockets import listen_private, socket_peer
from banger.version import version_info

log = logging.getLogger("bangerd-root")


def _hello(owner: Owner) -> dict[str, Any]:
    info = version_info()
    return wire.HelloReply(version=info.version, commit=info.commit, owner=owner.name,
                           owner_uid=owner.uid, pid=os.getpid()).model_dump()


def dispatch(ops: HostOps, owner: Owner, req: Any) -> Any:
    """Run one typed request; its result as JSON-able data."""
    simple: dict[str, Callable[[], Any]] = {
        "hello": lambda: _hello(owner),
        "can_manage_network": ops.can_manage_network,
        "claim_bridge": lambda: ops.claim_bridge(req.name, req.cidr, req.owner, create=req.create),
        "create_tap": lambda: ops.create_tap(req.name, req.bridge, req.owner_uid),
        "delete_tap": lambda: ops.delete_tap(req.name),
        "taps_on_our_bridge": lambda: ops.taps_on_our_bridge(req.bridge, req.owner),
        "signal_vmm": lambda: ops.signal_vmm(req.pid, req.start_time, tuple(req.markers),
                                             parse_vmm_signal(req.signal)),
        "route_vm_domain": lambda: ops.route_vm_domain(req.bridge, req.resolver),
        "revert_resolver": lambda: ops.revert_resolver(req.bridge),
        "nat_sync": lambda: ops.nat_sync(req.bridge, tuple(req.guests)),
        "nat_add": lambda: ops.nat_add(req.bridge, req.guest),
        "nat_remove": lambda: ops.nat_remove(req.bridge, req.guest),
        "enable_ip_forward": ops.enable_ip_forward,
        "attach_loop": lambda: ops.attach_loop(req.backing, req.read_only),
        "detach_loop": lambda: ops.detach_loop(req.device),
        "create_snapshot": lambda: ops.create_snapshot(req.name, req.origin, req.cow),
        "remove_snapshot": lambda: ops.remove_snapshot(req.name),
        "launch_jailed": lambda: asdict(ops.launch_jailed(req.jail_id, req.uid, req.gid)),
        "remove_jail": lambda: ops.remove_jail(req.jail_id, req.uid),
    }
    return simple[req.op]()


TEST_HOLD_ENV = "BANGER_HELPER_TEST_HOLD"


def test_hold_op() -> str | None:
    """Test hook, read once at start: with ``BANGER_HELPER_TEST_HOLD=<op>`` in the helper's
    own environment (set only by whoever starts it as root), every ``op`` call is held
    after it ran and before its reply, so a test can kill the helper in the middle of a
    call that changed the host (tests/vm/test_privilege_split.py). Never under systemd
    (``INVOCATION_ID`` set): a unit's helper ignores it, saying so."""
    op = os.environ.get(TEST_HOLD_ENV)
    if not op:
        return None
    if os.environ.get("INVOCATION_ID"):
        log.error("ignoring %s=%s: a test hook, and this helper runs under systemd",
                  TEST_HOLD_ENV, op[:40])
        return None
    log.warning("TEST HOOK ON: %s=%s holds every reply of that op forever; never run a "
                "real install like this", TEST_HOLD_ENV, op[:40])
    return op


def _hold_forever(op: str) -> None:
    log.warning("holding the reply of op=%s (test hook %s)", op, TEST_HOLD_ENV)
    while True:
        time.sleep(3600)


def _read_request(sock: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > wire.MAX_REQUEST:
            raise InvalidInput("helper request too long", hint="one request of at most 1 MiB")
    return data.split(b"\n", 1)[0]


class _Handler(socketserver.BaseRequestHandler):
    server: HelperServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        started = time.monotonic()
        pid, uid, _ = socket_peer(sock)
        op, op_id = "?", "-"
        try:
            line = _read_request(sock)  # read even when refused: the reply must not be reset
            if uid not in (0, self.server.owner.uid):
                raise Forbidden(f"uid {uid} may not use bangerd-root",
                                hint=f"only root and {self.server.owner.name} may")
            req = wire.parse_request(line)
            op, op_id = req.op, req.op_id  # type: ignore[attr-defined]
            reply = {"ok": True, "result": dispatch(self.server.ops, self.server.owner, req)}
            if op == self.server.hold_op:
                _hold_forever(op)
        except BangerError as exc:
            reply = wire.error_reply(exc)
        except Exception as exc:  # a bug or a host failure: one line to the caller, all here
            log.exception("op %s failed", op)
            reply = wire.error_reply(InternalError(f"bangerd-root: {type(exc).__name__}: {exc}"))
        outcome = "ok" if reply["ok"] else reply["error"]["code"]
        log.info("op=%s op_id=%s peer_uid=%d peer_pid=%d outcome=%s ms=%.1f", op, op_id, uid,
                 pid, outcome, (time.monotonic() - started) * 1000)
        with contextlib.suppress(OSError):
            sock.sendall(json.dumps(reply).encode() + b"\n")


class HelperServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket, owner: Owner, ops: HostOps) -> None:
        super().__init__(str(sock.getsockname()), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.owner = owner
        self.ops = ops
        self.hold_op = test_hold_op()


def bind_helper_socket(path: Path, owner: Owner) -> socket.socket:
    """Listen at ``path`` (its dir made 0755 root when missing), 0600 and owned by the owner.

    A stale socket is replaced; anything else at the path (a symlink, a file) is refused.
    """
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise Forbidden(f"{path} exists and is not a socket", hint=f"remove it: rm {path}")
        path.unlink()
    sock = listen_private(path, 64)
    os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
    return sock


@contextlib.contextmanager
def _stop_on_term() -> Iterator[None]:
    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(path: Path, owner: Owner, ops: HostOps) -> None:
    """Serve until SIGTERM or SIGINT; the socket is removed on the way out."""
    sock = bind_helper_socket(path, owner)
    server = HelperServer(sock, owner, ops)
    log.info("bangerd-root %s serving %s (uid %d) on %s", version_info().version, owner.name,
             owner.uid, path)
    try:
        with _stop_on_term(), contextlib.suppress(KeyboardInterrupt):
            server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
