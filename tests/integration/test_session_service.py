"""The session service in-process, on the fake backend: the guest is a test directory.

``FakeGuest.root`` set, the session scripts run here with ``/root/...`` moved below
it; the request checks, the VM state check, the parsing and the error mapping are
the daemon's own code. A second ``SessionService`` (a restarted daemon: it keeps
nothing) sees the same sessions.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.api.models import SessionStartRequest
from banger.core import session_scripts as scripts
from banger.core.errors import Conflict, GuestError, InvalidInput, NotFound
from banger.daemon.session_service import SessionService
from tests.support.fake_vms import FakeVMs, fake_vms

ECHO = ["sh", "-c", 'while read -r l; do printf "%s\\n" "$l"; done']


@pytest.fixture
def vms(tmp_path: Path) -> Iterator[FakeVMs]:
    with fake_vms(tmp_path) as made:
        made.guest.root = tmp_path / "guest"
        (tmp_path / "guest" / "root" / "work").mkdir(parents=True)
        yield made
        top = tmp_path / "guest" / "root" / ".banger" / "sessions"
        for d in top.glob("*"):
            subprocess.run(scripts.script_argv(scripts.STOP, str(top), d.name, "1"), timeout=30)
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert not left.stdout.split(), left.stdout


def start(name: str | None = None, command: list[str] = ECHO, *, pipe: bool = True,
          cwd: str = "/root/work") -> SessionStartRequest:
    return SessionStartRequest(name=name, cwd=cwd, pipe=pipe, command=command)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_pipe_session_through_the_service_and_a_restarted_daemon(vms: FakeVMs) -> None:
    svc = SessionService(vms.service.rt)

    async def scenario() -> None:
        assert (await vms.create("box")).state == "succeeded"
        info = await svc.start("box", start("agent"))
        assert (info.name, info.state, info.cwd, info.command) == ("agent", "running",
                                                                   "/root/work", ECHO)
        for line in (b'{"n":1}\n', b'{"n":2}\n', b'{"n":3}\n'):
            assert (await svc.send("box", "agent", b64(line))).bytes == len(line)
        again = SessionService(vms.service.rt)  # a new daemon: nothing kept but the guest
        out = None
        for _ in range(50):
            out = await again.output("box", "agent", 0, 1 << 20, 1)
            if out.next == 24:
                break
        assert out is not None and base64.b64decode(out.data_b64) == b'{"n":1}\n{"n":2}\n{"n":3}\n'
        assert [s.name for s in (await again.list_all("box")).sessions] == ["agent"]
        with pytest.raises(Conflict, match="already has a session 'agent'"):
            await svc.start("box", start("agent"))
        stopped = await again.stop("box", "agent", 5)
        assert (stopped.state, stopped.reason, stopped.exit_code) == ("ended", "stopped", 143)
        with pytest.raises(Conflict, match="has ended"):
            await svc.send("box", "agent", b64(b"late\n"))
        await svc.delete("box", "agent")
        with pytest.raises(NotFound, match="has no session 'agent'"):
            await svc.show("box", "agent")

    vms.drive(scenario)


def test_refusals_are_one_clear_error_and_leave_no_session(vms: FakeVMs, tmp_path: Path) -> None:
    svc = SessionService(vms.service.rt)

    async def scenario() -> None:
        assert (await vms.create("box")).state == "succeeded"
        with pytest.raises(InvalidInput, match="'/root/nope' does not exist in VM 'box'"):
            await svc.start("box", start("a", cwd="/root/nope"))
        with pytest.raises(InvalidInput, match="'no-such-tool' is not found in VM 'box'"):
            await svc.start("box", start("a", ["no-such-tool"]))
        with pytest.raises(InvalidInput, match="invalid session name"):
            await svc.start("box", start("../x"))
        with pytest.raises(InvalidInput, match="must name a program"):
            await svc.start("box", start("a", ["--help"]))
        assert (await svc.list_all("box")).sessions == []
        await svc.start("box", start("term", ["sleep", "30"], pipe=False))
        with pytest.raises(InvalidInput, match="not started with --pipe"):
            await svc.send("box", "term", b64(b"x"))
        for bad in ("!!", "\udcd1\u00e9=="):  # the fuzzer's non-ASCII one was a 500
            with pytest.raises(InvalidInput, match="not base64"):
                await svc.send("box", "term", bad)
        with pytest.raises(Conflict, match="still running"):
            await svc.delete("box", "term")
        await vms.run(vms.service.stop("box"), "vm.stop")
        with pytest.raises(Conflict, match="VM 'box' is stopped: sessions live in the running"):
            await svc.list_all("box")

    vms.drive(scenario)
    sessions = tmp_path / "guest" / "root" / ".banger" / "sessions"
    assert [p.name for p in sessions.iterdir()] == ["term"]


def test_a_hostile_guest_answer_is_an_error_not_a_crash(vms: FakeVMs, tmp_path: Path) -> None:
    svc = SessionService(vms.service.rt)

    async def scenario() -> None:
        assert (await vms.create("box")).state == "succeeded"
        await svc.start("box", start("agent", ["sleep", "30"]))
        meta = tmp_path / "guest" / "root" / ".banger" / "sessions" / "agent" / "meta"
        meta.write_text('{"command":"\x1b[2J","cwd":1}\n')
        listed = await svc.list_all("box")
        assert (listed.sessions, listed.unparsed) == ([], 1)
        with pytest.raises(GuestError, match="answer about session 'agent' was not understood"):
            await svc.show("box", "agent")

    vms.drive(scenario)
