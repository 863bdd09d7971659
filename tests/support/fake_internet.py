"""A small "internet" for tests: a second network namespace behind a veth pair.

``FakeInternet`` (run inside the test network namespace, as root there) starts a
child in a fresh network namespace, moves one end of a veth pair into it and
gives both ends addresses from the documentation range 198.51.100.0/24, with the
test namespace's default route pointing at the far end. The child serves DNS
(dnslib, UDP and TCP, port 53) answering the names it is given and NXDOMAIN for
the rest, and HTTP on ``HTTP_ADDRESS`` port 80 (``PAGE`` for every GET), and
records every name asked and every path fetched (``http:/path``). Nothing leaves
the test namespaces: the far end is a namespace with nothing but that veth.

Run as ``python -m tests.support.fake_internet IFNAME ADDRESS/PREFIX NAME=IP...``
(the child's side).
"""

from __future__ import annotations

import errno
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

ROOT = Path(__file__).resolve().parents[2]
NEAR, FAR = "bgfi0", "bgfi1"
NEAR_ADDRESS = "198.51.100.1"
DNS_ADDRESS = "198.51.100.53"
HTTP_ADDRESS = "198.51.100.80"
PAGE = b"hello from the fake internet\n"


class FakeInternet:
    """A DNS server at ``DNS_ADDRESS`` reachable from this namespace (context manager)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.proc: subprocess.Popen[str] | None = None
        self.asked: list[str] = []

    def __enter__(self) -> FakeInternet:
        args = [f"{name}={ip}" for name, ip in self.answers.items()]
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--", sys.executable, "-m", "tests.support.fake_internet",
             FAR, f"{DNS_ADDRESS}/24", *args],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            self._expect("in its namespace")  # moved earlier, the link would stay here
            with IPRoute() as ipr:
                ipr.link("add", ifname=NEAR, kind="veth", peer=FAR)
                near = ipr.link_lookup(ifname=NEAR)[0]
                far = ipr.link_lookup(ifname=FAR)[0]
                ipr.link("set", index=far, net_ns_pid=self.proc.pid)
                ipr.addr("add", index=near, address=NEAR_ADDRESS, prefixlen=24)
                ipr.link("set", index=near, state="up")
                ipr.route("replace", dst="0.0.0.0/0", gateway=DNS_ADDRESS, oif=near)
            self._expect("ready")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _expect(self, word: str) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != word:
            raise RuntimeError(f"the fake internet did not start: {line!r}, not {word!r}")

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.close()
            self.asked = self.proc.stdout.read().split()
            self.proc.wait(timeout=30)
        with IPRoute() as ipr:
            try:
                ipr.link("del", ifname=NEAR)
            except NetlinkError as exc:
                # The far namespace's end goes with its process, and takes this end
                # along: gone already (or going) is what this teardown wants.
                if exc.code != errno.ENODEV:
                    raise


def _serve(ifname: str, cidr: str, answers: dict[str, str]) -> None:
    """The child: wait for the veth end, configure it, answer DNS until stdin closes."""
    from dnslib import QTYPE, RCODE, RR, A
    from dnslib.server import BaseResolver, DNSLogger, DNSServer

    address, prefix = cidr.split("/")
    print("in its namespace", flush=True)  # unshare ran before this process started
    with IPRoute() as ipr:
        deadline = time.monotonic() + 20
        while not ipr.link_lookup(ifname=ifname):
            if time.monotonic() > deadline:
                raise SystemExit(f"{ifname} never arrived")
            time.sleep(0.05)
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.addr("add", index=index, address=address, prefixlen=int(prefix))
        ipr.addr("add", index=index, address=HTTP_ADDRESS, prefixlen=int(prefix))
        ipr.link("set", index=index, state="up")
    asked: list[str] = []
    web = _web_server(asked)

    class Resolver(BaseResolver):  # type: ignore[misc]
        def resolve(self, request, handler):  # type: ignore[no-untyped-def]
            name = str(request.q.qname).rstrip(".").lower()
            asked.append(name)
            reply = request.reply()
            if name not in answers:
                reply.header.rcode = RCODE.NXDOMAIN
            elif request.q.qtype == QTYPE.A:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(answers[name]), ttl=60))
            return reply

    quiet = DNSLogger(logf=lambda _: None)
    servers = [DNSServer(Resolver(), address=address, port=53, tcp=tcp, logger=quiet)
               for tcp in (False, True)]
    for server in servers:
        server.start_thread()
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes it
    for server in servers:
        server.stop()
    web.shutdown()
    print("\n".join(asked), flush=True)


def _web_server(asked: list[str]) -> ThreadingHTTPServer:
    """``PAGE`` on ``HTTP_ADDRESS``:80 for every GET, each path recorded in ``asked``."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            asked.append(f"http:{self.path}")
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer((HTTP_ADDRESS, 80), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], dict(a.split("=", 1) for a in sys.argv[3:]))
