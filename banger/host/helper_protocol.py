"""The wire format of ``bangerd-root``: one JSON line in, one JSON line out, per connection.

A request is one typed operation, exactly one ``HostOps`` method (plus ``hello``,
which says who the helper serves), with an ``op_id`` that both sides log. The
models are strict: no coercion of ``"0"`` to ``0`` or of ``1`` to ``True``, and
no unknown fields; what the models accept then passes ``CheckedHostOps`` and the
helper's own guard. Nothing takes a command line, a shell string or an
arbitrary path: the only paths are a VMM's markers and a loop device's backing
file, checked against the owner's dirs (a jail's chroot base is the helper's own,
never named by a request).

A reply is ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"code":
..., "message": ..., "hint": ...}}`` with a code of ``core.errors.ERROR_CLASSES``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from banger.core.errors import ERROR_CLASSES, BangerError, InternalError, InvalidInput

DEFAULT_SOCKET = "/run/banger/bangerd-root.sock"
MAX_REQUEST = 1 << 20  # a NAT list of a /16 fits; anything longer is refused unread
OP_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    op_id: Annotated[str, Field(pattern=OP_ID_PATTERN)]


class Hello(_Op):
    op: Literal["hello"]


class CanManageNetwork(_Op):
    op: Literal["can_manage_network"]


class ClaimBridge(_Op):
    op: Literal["claim_bridge"]
    name: StrictStr
    cidr: StrictStr
    owner: StrictStr
    create: StrictBool = True


class CreateTap(_Op):
    op: Literal["create_tap"]
    name: StrictStr
    bridge: StrictStr
    owner_uid: StrictInt | None = None


class DeleteTap(_Op):
    op: Literal["delete_tap"]
    name: StrictStr


class TapsOnOurBridge(_Op):
    op: Literal["taps_on_our_bridge"]
    bridge: StrictStr
    owner: StrictStr


class SignalVmm(_Op):
    op: Literal["signal_vmm"]
    pid: StrictInt
    start_time: StrictInt
    markers: Annotated[list[StrictStr], Field(max_length=16)]
    signal: StrictStr  # a name (TERM, KILL, ...): never a number


class RouteVmDomain(_Op):
    op: Literal["route_vm_domain"]
    bridge: StrictStr
    resolver: StrictStr


class RevertResolver(_Op):
    op: Literal["revert_resolver"]
    bridge: StrictStr


class NatSync(_Op):
    op: Literal["nat_sync"]
    bridge: StrictStr
    guests: list[StrictStr]


class NatAdd(_Op):
    op: Literal["nat_add"]
    bridge: StrictStr
    guest: StrictStr


class NatRemove(_Op):
    op: Literal["nat_remove"]
    bridge: StrictStr
    guest: StrictStr


class EnableIpForward(_Op):
    op: Literal["enable_ip_forward"]


class AttachLoop(_Op):
    op: Literal["attach_loop"]
    backing: StrictStr
    read_only: StrictBool


class DetachLoop(_Op):
    op: Literal["detach_loop"]
    device: StrictStr


class CreateSnapshot(_Op):
    op: Literal["create_snapshot"]
    name: StrictStr
    origin: StrictStr
    cow: StrictStr


class RemoveSnapshot(_Op):
    op: Literal["remove_snapshot"]
    name: StrictStr


class LaunchJailed(_Op):
    """No binary, argv or exec file: the helper's own install-time paths are used."""

    op: Literal["launch_jailed"]
    jail_id: StrictStr
    uid: StrictInt
    gid: StrictInt


class RemoveJail(_Op):
    op: Literal["remove_jail"]
    jail_id: StrictStr
    uid: StrictInt


Request = Annotated[
    Hello | CanManageNetwork | ClaimBridge | CreateTap | DeleteTap | TapsOnOurBridge
    | SignalVmm | RouteVmDomain | RevertResolver | NatSync | NatAdd | NatRemove
    | EnableIpForward | AttachLoop | DetachLoop | CreateSnapshot | RemoveSnapshot
    | LaunchJailed | RemoveJail,
    Field(discriminator="op"),
]


class _Envelope(BaseModel):
    request: Request


def parse_request(line: bytes) -> _Op:
    """The typed request in ``line``, or ``InvalidInput`` saying what is wrong with it."""
    try:
        return _Envelope.model_validate_json(b'{"request":' + line + b"}").request
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "request"
        raise InvalidInput(
            f"bad helper request: {where}: {first['msg']}"[:200],
            hint="send one JSON object naming an operation of docs/privileges.md",
        ) from None


class HelloReply(BaseModel):
    """Who the helper is and whom it serves (``doctor`` and the daemon's transport pick)."""

    version: str
    commit: str
    owner: str
    owner_uid: int
    pid: int


def error_reply(exc: BangerError) -> dict[str, Any]:
    return {"ok": False, "error": {"code": exc.code, "message": exc.message, "hint": exc.hint}}


def raise_for_reply(reply: object) -> Any:
    """The result of a reply, or its error raised as the same banger error class."""
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise InternalError(f"bangerd-root sent a malformed reply: {str(reply)[:80]}")
    if reply["ok"]:
        return reply.get("result")
    err = reply.get("error") if isinstance(reply.get("error"), dict) else {}
    assert isinstance(err, dict)
    cls = ERROR_CLASSES.get(str(err.get("code")), BangerError)
    hint = err.get("hint")
    raise cls(str(err.get("message", "bangerd-root refused"))[:300],
              hint=str(hint)[:300] if hint else None)
