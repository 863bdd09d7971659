"""``HelperHostOps``: the ``HostOps`` transport that asks ``bangerd-root`` over its socket.

One connection per call: one JSON line out (``host.helper_protocol``), one back.
Each call carries the daemon's current ``op_id`` (or a fresh one) and is logged
once here, as the helper logs it once on its side. A helper that does not
answer is ``Unavailable`` naming how to start it; a refusal comes back as the
same banger error class the helper raised. The one exception is ``signal_vmm``
when the helper is unreachable: the daemon's own VMMs run as the daemon's user,
so the in-process proof-and-signal still works for them (and for nothing else).
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Any

import structlog

from banger.core.errors import InternalError, Unavailable
from banger.host.helper_protocol import MAX_REQUEST, HelloReply, raise_for_reply
from banger.host.jailer import JailedVmm
from banger.host.privileged import InProcessHostOps

log = structlog.get_logger("banger.host.helper_client")

CALL_TIMEOUT = 60.0


def current_op_id() -> str:
    """The op_id bound to this request's logs, or a fresh one for calls outside a request."""
    bound = structlog.contextvars.get_contextvars().get("op_id")
    return str(bound) if bound else f"h-{secrets.token_hex(6)}"


def _exchange(path: Path, payload: bytes, timeout: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        size = 0
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REQUEST:
                raise InternalError("bangerd-root sent an oversized reply")
        return b"".join(chunks)


class HelperHostOps:
    """``HostOps`` over ``bangerd-root``'s socket at ``path``."""

    def __init__(self, path: Path, *, timeout: float = CALL_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> Any:
        op_id = current_op_id()
        payload = json.dumps({"op": op, "op_id": op_id, **args}).encode() + b"\n"
        started = time.monotonic()
        outcome = "ok"
        try:
            try:
                raw = _exchange(self.path, payload, self.timeout)
            except OSError as exc:
                outcome = "unreachable"
                raise Unavailable(
                    f"bangerd-root at {self.path} is not reachable: {exc.strerror or exc}",
                    hint="start it (systemctl start bangerd-root, or bangerd-root --owner "
                         "USER) and see banger system status",
                ) from None
            try:
                reply = json.loads(raw)
            except ValueError:
                outcome = "malformed"
                raise InternalError("bangerd-root sent no valid reply (did it stop mid-call?)",
                                    hint="see its log: journalctl -u bangerd-root") from None
            try:
                return raise_for_reply(reply)
            except Exception as exc:
                outcome = type(exc).__name__
                raise
        finally:
            log.info("helper call", op=op, op_id=op_id, outcome=outcome,
                     ms=round((time.monotonic() - started) * 1000, 1))

    def hello(self) -> HelloReply:
        return HelloReply.model_validate(self.call("hello"))

    def can_manage_network(self) -> bool:
        return bool(self.call("can_manage_network"))

    def claim_bridge(self, name: str, cidr: str, owner: str, *, create: bool = True) -> bool:
        return bool(self.call("claim_bridge", name=name, cidr=cidr, owner=owner, create=create))

    def create_tap(self, name: str, bridge: str, owner_uid: int | None = None) -> None:
        self.call("create_tap", name=name, bridge=bridge, owner_uid=owner_uid)

    def delete_tap(self, name: str) -> bool:
        return bool(self.call("delete_tap", name=name))

    def taps_on_our_bridge(self, bridge: str, owner: str) -> list[str]:
        found = self.call("taps_on_our_bridge", bridge=bridge, owner=owner)
        if not isinstance(found, list) or not all(isinstance(t, str) for t in found):
            raise InternalError("bangerd-root answered taps_on_our_bridge with a non-list")
        return found

    def signal_vmm(self, pid: int, start_time: int, markers: tuple[str, ...],
                   sig: signal.Signals) -> bool:
        try:
            return bool(self.call("signal_vmm", pid=pid, start_time=start_time,
                                  markers=list(markers), signal=sig.name.removeprefix("SIG")))
        except Unavailable:
            log.warning("helper unreachable: signalling our own VMM in-process", pid=pid)
            return InProcessHostOps().signal_vmm(pid, start_time, markers, sig)

    def route_vm_domain(self, bridge: str, resolver: str) -> None:
        self.call("route_vm_domain", bridge=bridge, resolver=resolver)

    def revert_resolver(self, bridge: str) -> None:
        self.call("revert_resolver", bridge=bridge)

    def nat_sync(self, bridge: str, guests: tuple[str, ...]) -> None:
        self.call("nat_sync", bridge=bridge, guests=list(guests))

    def nat_add(self, bridge: str, guest: str) -> None:
        self.call("nat_add", bridge=bridge, guest=guest)

    def nat_remove(self, bridge: str, guest: str) -> None:
        self.call("nat_remove", bridge=bridge, guest=guest)

    def enable_ip_forward(self) -> None:
        self.call("enable_ip_forward")

    def attach_loop(self, backing: str, read_only: bool) -> str:
        return str(self.call("attach_loop", backing=backing, read_only=read_only))

    def detach_loop(self, device: str) -> bool:
        return bool(self.call("detach_loop", device=device))

    def create_snapshot(self, name: str, origin: str, cow: str) -> str:
        return str(self.call("create_snapshot", name=name, origin=origin, cow=cow))

    def remove_snapshot(self, name: str) -> bool:
        return bool(self.call("remove_snapshot", name=name))

    def launch_jailed(self, jail_id: str, uid: int, gid: int) -> JailedVmm:
        got = self.call("launch_jailed", jail_id=jail_id, uid=uid, gid=gid)
        try:
            return JailedVmm(int(got["pid"]), str(got["api_socket"]), str(got["chroot"]))
        except (TypeError, KeyError, ValueError):
            raise InternalError("bangerd-root answered launch_jailed without a pid") from None

    def remove_jail(self, jail_id: str, uid: int) -> bool:
        return bool(self.call("remove_jail", jail_id=jail_id, uid=uid))
