"""The guest's answer to the stats command, parsed as hostile; the script itself under dash.

A section that does not fit its grammar (or comes twice) is dropped whole and counted,
never half-read; numbers are ASCII digits within bounds; the process section is last,
so nothing a process prints can forge an earlier section.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from banger.core.guest_stats import (
    HEALTH_ARGV,
    OUTPUT_LIMIT,
    PROCS_MAX,
    STATS_ARGV,
    DiskUse,
    count_ssh_sessions,
    parse_guest_view,
)

BOOT_ID = "c372eded-75e3-41ce-85a4-3f1fba960c6e"
DF = ("Filesystem     1024-blocks   Used Available Capacity Mounted on\n"
      "/dev/vda           1000000 400000    550000      43% /\n"
      "/dev/vdb           2000000 100000   1800000       6% /root\n")
PROCS = "@procs 500 499\n1 0 -\n300 1 s\n310 300 s\n311 310 -\n312 311 -\n499 310 -\n500 499 -\n"


def answer(load: str = "0.50 0.25 0.10 1/80 312\n",
           mem: str = "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 600 kB\n",
           uptime: str = "123.45 200.00\n", boot: str = BOOT_ID + "\n", df: str = DF,
           procs: str = PROCS) -> bytes:
    return (f"@load\n{load}@mem\n{mem}@uptime\n{uptime}@boot\n{boot}@df\n{df}{procs}").encode()


def test_a_well_formed_answer_gives_every_figure() -> None:
    view = parse_guest_view(answer())
    assert view.load == (0.5, 0.25, 0.1)
    assert (view.mem_total_bytes, view.mem_available_bytes) == (1000 * 1024, 600 * 1024)
    assert view.mem_used_bytes == 400 * 1024
    assert view.uptime_seconds == 123.45 and view.boot_id == BOOT_ID
    assert view.disks == {"/": DiskUse(1000000 << 10, 400000 << 10, 550000 << 10),
                          "/root": DiskUse(2000000 << 10, 100000 << 10, 1800000 << 10)}
    # 311 is a shell of an SSH connection (sshd 300 -> 310); 312 its child; 499/500 are us.
    assert view.ssh_sessions == 1 and view.unparsed == 0


@pytest.mark.parametrize(("section", "hostile"), [
    ("load", "nan nan nan 1/1 1\n"),
    ("load", "0.50 0.25 0.10 1/80 312\n0.1 0.1 0.1 1/1 1\n"),
    ("load", "\u0661.00 0.25 0.10 1/80 312\n"),  # an Arabic-Indic digit
    ("load", "1e308 0.25 0.10 1/80 312\n"),
    ("mem", "MemTotal: 1000 kB\nMemAvailable: 2000 kB\n"),  # more available than there is
    ("mem", "MemTotal: 1000 kB\nMemAvailable: 600 kB\nMemTotal: 99999 kB\n"),
    ("mem", "MemTotal: -1000 kB\nMemAvailable: 600 kB\n"),
    ("mem", "MemTotal: 9999999999999999 kB\nMemAvailable: 600 kB\n"),
    ("uptime", "inf 1.00\n"),
    ("uptime", "-5.00 1.00\n"),
    ("boot", "../../etc/passwd\n"),
    ("boot", BOOT_ID.upper() + "\n"),
    ("df", "/dev/vda 1000 2000 0 200% /\n"),  # no header
    ("df", DF + "evil 1 1 1 1% /etc\n"),  # a mount point nobody asked for
    ("df", DF.replace("400000", "4000000")),  # used beyond the total
    ("df", DF.replace("43%", "\x1b[31m")),
])
def test_a_hostile_section_is_dropped_whole_and_counted(section: str, hostile: str) -> None:
    view = parse_guest_view(answer(**{section: hostile}))
    field = {"load": view.load, "mem": view.mem_total_bytes, "uptime": view.uptime_seconds,
             "boot": view.boot_id, "df": view.disks or None}[section]
    assert field is None and view.unparsed == 1
    assert view.ssh_sessions == 1  # the other sections still count


def test_a_section_sent_twice_is_not_believed() -> None:
    again = b"@boot\n" + BOOT_ID.encode() + b"\n@procs"
    view = parse_guest_view(answer().replace(b"@procs", again))
    assert view.boot_id is None and view.unparsed == 1


def test_nothing_after_the_process_header_can_forge_a_section() -> None:
    forged = PROCS + "@boot\n00000000-0000-0000-0000-000000000000\n@load\n9.00 9.00 9.00 1/1 1\n"
    view = parse_guest_view(answer(procs=forged))
    assert view.boot_id == BOOT_ID and view.load == (0.5, 0.25, 0.1)
    assert view.unparsed == 4 and view.ssh_sessions == 1


def test_a_filesystem_name_with_spaces_is_read_from_the_right() -> None:
    df = DF.replace("/dev/vdb", "my disk  (with) spaces 1 2 3")
    assert parse_guest_view(answer(df=df)).disks["/root"].used_bytes == 100000 << 10


def test_garbage_and_silence_give_an_empty_view_not_an_error() -> None:
    for junk in (b"", b"\xff\xfe\x00" * 1000, b"@load\n", b"@procs x y\n1 1 s\n"):
        view = parse_guest_view(junk)
        assert view.load is None and view.ssh_sessions is None and view.disks == {}


def test_process_lines_that_do_not_fit_are_counted_and_too_many_are_not_trusted() -> None:
    assert count_ssh_sessions(["9"], ["1 0 s", "2 1 -", "3 1 x", "4 1 - extra", ""]) == (1, 3)
    assert count_ssh_sessions([], ["1 0 -"] * (PROCS_MAX + 1)) == (None, PROCS_MAX + 1)


def real_ssh_sessions() -> int:
    """Sessions of this host's own sshd, if it runs one (none in the test sandbox)."""
    sshd = {p for p in os.listdir("/proc") if p.isdigit()
            and _comm(p) in ("sshd", "sshd-session")}
    return sum(1 for p in os.listdir("/proc") if p.isdigit() and p not in sshd
               and _ppid(p) in sshd)


def _comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _ppid(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return ""


def test_the_script_counts_ssh_sessions_under_dash(tmp_path: Path) -> None:
    """A fake sshd (dash under that name) with one command running and the script as
    another of its children: one session, the script itself left out."""
    if not Path("/bin/dash").exists():
        pytest.skip("dash is not installed (the guest image's /bin/sh)")
    sshd = tmp_path / "sshd"
    sshd.symlink_to("/bin/dash")
    session = subprocess.Popen([str(sshd), "-c", "sleep 30 & sleep 30; :"])
    try:
        time.sleep(0.3)  # the fake sshd forks its two sleeps
        # As sshd runs a command: the script is a child of an sshd process.
        out = subprocess.run([str(sshd), "-c", '"$@"; :', "sshd", *STATS_ARGV],
                             capture_output=True, check=True).stdout
    finally:
        session.kill()
        session.wait()
    assert len(out) < OUTPUT_LIMIT
    view = parse_guest_view(out)
    assert view.unparsed == 0 and view.boot_id is not None and "/" in view.disks
    assert view.mem_total_bytes and view.load is not None
    assert view.ssh_sessions == 2 + real_ssh_sessions()  # the two sleeps, not the script


def test_the_health_command_gives_uptime_and_boot_id() -> None:
    view = parse_guest_view(subprocess.run(list(HEALTH_ARGV), capture_output=True,
                                           check=True).stdout)
    assert view.uptime_seconds and view.boot_id and view.unparsed == 0
