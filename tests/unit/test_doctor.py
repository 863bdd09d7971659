"""Each doctor check turns a fake host (sys/dev roots, PATH of stubs) into PASS/WARN/FAIL."""

from __future__ import annotations

import json
import sqlite3
import struct
from pathlib import Path

import pytest

from banger.api.models import CheckStatus, DoctorCheck
from banger.config import Settings
from banger.daemon import doctor
from banger.daemon.doctor import CheckResult, HostView, run_checks

ALL_TOOLS = (
    "mkfs.ext4", "debugfs", "e2fsck", "resize2fs", "mmdebstrap", "skopeo", "ssh",
    "ssh-keygen",
)  # fmt: skip


def elf(interp: bool) -> bytes:
    """A minimal 64-bit ELF executable with one PT_LOAD, plus PT_INTERP when dynamic."""
    ptypes = (3, 1) if interp else (1,)
    header = b"\x7fELF\x02\x01\x01" + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, len(ptypes), 64, 0, 0)
    return header + b"".join(struct.pack("<I", t) + bytes(52) for t in ptypes)


class FakeHost:
    """A healthy host by default; tests break one thing at a time."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.sys_root = tmp_path / "sys"
        self.dev_root = tmp_path / "dev"
        self.bin = tmp_path / "bin"
        self.busybox = tmp_path / "busybox"
        self.state = tmp_path / "state"
        for d in (self.sys_root / "module" / "kvm_intel", self.dev_root, self.bin, self.state):
            d.mkdir(parents=True)
        (self.dev_root / "kvm").write_bytes(b"")
        for tool in ALL_TOOLS:
            self.tool(tool, "exit 0")
        self.tool("qemu-system-x86_64", "echo 'QEMU emulator version 7.2.22 (Debian 1:7.2)'")
        self.firecracker("Firecracker v1.7.0")
        self.busybox.write_bytes(elf(interp=False))
        self.busybox.chmod(0o755)
        self.python = (3, 11, 7)
        self.backend = "auto"

    def tool(self, name: str, script: str) -> None:
        path = self.bin / name
        path.write_text("#!/bin/sh\n" + script + "\n")
        path.chmod(0o755)

    def firecracker(self, output: str) -> None:
        self.tool("firecracker", f"printf '%s\\n\\n%s\\n' '{output}' 'Firecracker exiting'")

    def remove(self, *names: str) -> None:
        for name in names:
            (self.bin / name).unlink()

    def pvm(self) -> None:
        (self.sys_root / "module" / "kvm_intel").rmdir()
        (self.sys_root / "module" / "kvm_pvm").mkdir()

    @property
    def settings(self) -> Settings:
        return Settings(
            state_dir=self.state,
            cache_dir=self.root / "cache",
            runtime_dir=self.root / "run",
            backend=self.backend,  # type: ignore[arg-type]
        )

    def results(self) -> dict[str, CheckResult]:
        host = HostView(
            sys_root=self.sys_root,
            dev_root=self.dev_root,
            search_path=str(self.bin),
            busybox_candidates=(self.busybox,),
            python_version=self.python,
        )
        rows = run_checks(self.settings, host)
        for row in rows:
            assert row.status is CheckStatus.PASS or row.hint, row
            assert "\n" not in row.detail
        return {row.name: row for row in rows}

    def check(self, name: str) -> CheckResult:
        return self.results()[name]


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


# ---------------------------------------------------------------- the report as a whole


def test_healthy_host_passes_every_check(host: FakeHost) -> None:
    results = host.results()
    assert {name: r.status for name, r in results.items()} == dict.fromkeys(
        results, CheckStatus.PASS
    )
    assert list(results) == [
        "python", "store", "kvm", "qemu", "firecracker", "backend", "e2fsprogs", "mmdebstrap",
        "skopeo", "busybox-static", "ssh client",
    ]  # fmt: skip


def test_one_row_per_registered_check(host: FakeHost) -> None:
    assert len(host.results()) == len(doctor.CHECKS)


def test_results_serialise_to_json(host: FakeHost) -> None:
    host.remove("skopeo")
    rows = [  # as GET /doctor sends them
        DoctorCheck(name=r.name, status=r.status, detail=r.detail, hint=r.hint)
        for r in host.results().values()
    ]
    decoded = json.loads(json.dumps([r.model_dump(mode="json") for r in rows]))
    skopeo = next(r for r in decoded if r["name"] == "skopeo")
    assert skopeo == {
        "name": "skopeo",
        "status": "WARN",
        "detail": "missing skopeo (needed to pull OCI images)",
        "hint": "install it: sudo apt-get install skopeo",
    }


def test_non_pass_result_without_hint_is_a_bug() -> None:
    with pytest.raises(ValueError, match="needs a hint"):
        CheckResult("x", CheckStatus.WARN, "detail")
    assert CheckResult("x", "PASS", "ok").status is CheckStatus.PASS  # type: ignore[arg-type]
    assert CheckResult("x", "FAIL", "bad", hint="fix").status is CheckStatus.FAIL  # type: ignore[arg-type]


def test_a_crashing_check_becomes_a_fail_row(host: FakeHost) -> None:
    def check_boom(ctx: doctor.DoctorContext) -> CheckResult:
        raise RuntimeError("kaput")

    ctx = doctor.DoctorContext(host.settings, HostView())
    row = doctor._run_one(check_boom, ctx)
    assert (row.name, row.status) == ("boom", CheckStatus.FAIL)
    assert "kaput" in row.detail and row.hint


def test_real_host_report_is_well_formed(tmp_path: Path) -> None:
    rows = run_checks(Settings(state_dir=tmp_path, cache_dir=tmp_path, runtime_dir=tmp_path))
    assert [r.name for r in rows][:2] == ["python", "store"]
    assert rows[0].status is CheckStatus.PASS
    assert all(r.status is CheckStatus.PASS or r.hint for r in rows)


# ---------------------------------------------------------------- python


def test_python_older_than_3_11_fails(host: FakeHost) -> None:
    host.python = (3, 10, 12)
    row = host.check("python")
    assert row.status is CheckStatus.FAIL
    assert "3.10.12" in row.detail and "3.11" in (row.hint or "")


# ---------------------------------------------------------------- store


def test_absent_store_passes_and_is_not_created(host: FakeHost) -> None:
    row = host.check("store")
    assert row.status is CheckStatus.PASS and "created on first start" in row.detail
    assert not (host.state / "state.db").exists()


def test_valid_store_passes_and_is_left_untouched(host: FakeHost) -> None:
    db = host.state / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE vms (name TEXT)")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    assert host.check("store").status is CheckStatus.PASS
    assert db.read_bytes() == before


def test_store_that_is_not_sqlite_fails(host: FakeHost) -> None:
    (host.state / "state.db").write_bytes(b"this is not a database" * 100)
    row = host.check("store")
    assert row.status is CheckStatus.FAIL
    assert "unreadable" in row.detail and "not a database" in row.detail
    assert "move it aside" in (row.hint or "")


def test_store_that_cannot_be_opened_fails(host: FakeHost) -> None:
    (host.state / "state.db").mkdir()
    row = host.check("store")
    assert row.status is CheckStatus.FAIL and "unreadable" in row.detail


def test_store_with_a_corrupt_page_fails(host: FakeHost) -> None:
    db = host.state / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.execute("CREATE INDEX t_x ON t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(f"row{i:05}" * 8,) for i in range(3000)])
    conn.commit()
    conn.close()
    data = bytearray(db.read_bytes())
    page = 4096
    data[3 * page : 3 * page + 200] = b"\xff" * 200  # smash the header of a b-tree page
    db.write_bytes(bytes(data))
    row = host.check("store")
    assert row.status is CheckStatus.FAIL
    assert "corrupt" in row.detail or "malformed" in row.detail


# ---------------------------------------------------------------- KVM


def test_usable_kvm_passes(host: FakeHost) -> None:
    assert host.check("kvm").status is CheckStatus.PASS


def test_pvm_host_warns_that_tcg_will_be_used(host: FakeHost) -> None:
    host.pvm()
    row = host.check("kvm")
    assert row.status is CheckStatus.WARN and "TCG will be used (slow)" in row.detail
    assert "PVM" in row.detail


def test_kvm_without_access_warns_about_the_kvm_group(host: FakeHost) -> None:
    (host.dev_root / "kvm").unlink()
    (host.dev_root / "kvm").mkdir()  # exists, but cannot be opened read-write
    row = host.check("kvm")
    assert row.status is CheckStatus.WARN and "TCG will be used" in row.detail
    assert "kvm group" in (row.hint or "")


def test_absent_kvm_warns(host: FakeHost) -> None:
    (host.dev_root / "kvm").unlink()
    row = host.check("kvm")
    assert row.status is CheckStatus.WARN and "not found" in row.detail
    assert "modprobe" in (row.hint or "")


# ---------------------------------------------------------------- qemu


def test_qemu_passes_with_its_version(host: FakeHost) -> None:
    row = host.check("qemu")
    assert row.status is CheckStatus.PASS and "v7.2.22" in row.detail


def test_missing_qemu_fails_when_firecracker_is_unusable(host: FakeHost) -> None:
    host.remove("qemu-system-x86_64", "firecracker")
    row = host.check("qemu")
    assert row.status is CheckStatus.FAIL
    assert row.hint == "install it: sudo apt-get install qemu-system-x86"


def test_missing_qemu_fails_on_a_pvm_host_even_with_firecracker(host: FakeHost) -> None:
    host.remove("qemu-system-x86_64")
    host.pvm()
    assert host.check("qemu").status is CheckStatus.FAIL


def test_missing_qemu_fails_even_when_firecracker_is_usable(host: FakeHost) -> None:
    host.remove("qemu-system-x86_64")
    row = host.check("qemu")
    assert row.status is CheckStatus.FAIL and "qemu-system-x86" in (row.hint or "")


def test_qemu_with_unreadable_version_warns(host: FakeHost) -> None:
    host.tool("qemu-system-x86_64", "echo garbage")
    assert host.check("qemu").status is CheckStatus.WARN


def test_old_qemu_warns(host: FakeHost) -> None:
    host.tool("qemu-system-x86_64", "echo 'QEMU emulator version 4.2.1 (Debian 1:4.2-3ubuntu6)'")
    row = host.check("qemu")
    assert row.status is CheckStatus.WARN and "v4.2.1" in row.detail


# ---------------------------------------------------------------- firecracker


@pytest.mark.parametrize(
    "version, status",
    [
        ("0.25.2", CheckStatus.FAIL),
        ("1.4.1", CheckStatus.FAIL),
        ("1.5.0", CheckStatus.PASS),
        ("1.7.0", CheckStatus.PASS),
        ("1.16.1", CheckStatus.PASS),
        ("1.16.2", CheckStatus.WARN),
        ("1.17.0", CheckStatus.WARN),
        ("2.0.0", CheckStatus.WARN),
    ],
)
def test_firecracker_version_gate(host: FakeHost, version: str, status: CheckStatus) -> None:
    host.firecracker(f"Firecracker v{version}")
    row = host.check("firecracker")
    assert row.status is status
    assert f"v{version}" in row.detail and str(host.bin / "firecracker") in row.detail
    if status is CheckStatus.WARN:
        assert "newer than tested" in row.detail
    if status is CheckStatus.FAIL:
        assert "too old" in row.detail and "v1.5.0" in (row.hint or "")


def test_too_old_firecracker_fails_even_when_qemu_is_usable(host: FakeHost) -> None:
    host.firecracker("Firecracker v1.4.1")
    assert host.check("qemu").status is CheckStatus.PASS
    assert host.check("firecracker").status is CheckStatus.FAIL


def test_missing_firecracker_warns_when_qemu_is_usable(host: FakeHost) -> None:
    host.remove("firecracker")
    row = host.check("firecracker")
    assert row.status is CheckStatus.WARN and "QEMU is used instead" in row.detail
    assert "firecracker-microvm/firecracker/releases" in (row.hint or "")


def test_missing_firecracker_fails_without_qemu(host: FakeHost) -> None:
    host.remove("firecracker", "qemu-system-x86_64")
    assert host.check("firecracker").status is CheckStatus.FAIL


def test_firecracker_with_unparseable_version(host: FakeHost) -> None:
    host.tool("firecracker", "echo 'something odd'")
    assert host.check("firecracker").status is CheckStatus.WARN
    host.remove("qemu-system-x86_64")
    assert host.check("firecracker").status is CheckStatus.FAIL


def test_firecracker_on_a_pvm_host_passes_but_says_it_is_unused(host: FakeHost) -> None:
    host.pvm()
    row = host.check("firecracker")
    assert row.status is CheckStatus.PASS and "unused here" in row.detail


# ---------------------------------------------------------------- backend


def test_auto_backend_is_firecracker_where_kvm_and_firecracker_are(host: FakeHost) -> None:
    row = host.check("backend")
    assert row.status is CheckStatus.PASS and row.detail.startswith("auto: firecracker with KVM")


def test_backend_is_qemu_with_kvm_where_firecracker_is_missing(host: FakeHost) -> None:
    host.remove("firecracker")
    row = host.check("backend")
    assert row.status is CheckStatus.PASS and row.detail == "auto: qemu with KVM"


@pytest.mark.parametrize(("broken", "named"), [
    ("pvm", "no usable KVM"), ("no-binary", "no firecracker binary on PATH")])
def test_a_configured_firecracker_backend_fails_naming_what_is_missing(
    host: FakeHost, broken: str, named: str
) -> None:
    host.backend = "firecracker"
    host.pvm() if broken == "pvm" else host.remove("firecracker")
    row = host.check("backend")
    assert row.status is CheckStatus.FAIL and named in row.detail and "qemu" in (row.hint or "")


def test_backend_falls_back_to_tcg_on_a_pvm_host(host: FakeHost) -> None:
    host.pvm()
    row = host.check("backend")
    assert row.status is CheckStatus.PASS and row.detail == "auto: qemu with TCG (slow)"


def test_configured_qemu_backend_fails_without_qemu(host: FakeHost) -> None:
    host.backend = "qemu"
    host.remove("qemu-system-x86_64")
    row = host.check("backend")
    assert row.status is CheckStatus.FAIL and "qemu-system-x86" in (row.hint or "")


def test_no_vmm_at_all_fails_the_backend(host: FakeHost) -> None:
    host.remove("qemu-system-x86_64", "firecracker")
    assert host.check("backend").status is CheckStatus.FAIL


# ---------------------------------------------------------------- host tools


@pytest.mark.parametrize("tool", ["mkfs.ext4", "debugfs", "e2fsck", "resize2fs"])
def test_any_missing_e2fsprogs_tool_fails(host: FakeHost, tool: str) -> None:
    host.remove(tool)
    row = host.check("e2fsprogs")
    assert row.status is CheckStatus.FAIL and tool in row.detail
    assert row.hint == "install it: sudo apt-get install e2fsprogs"


def test_one_missing_image_tool_warns(host: FakeHost) -> None:
    host.remove("mmdebstrap")
    rows = host.results()
    assert rows["mmdebstrap"].status is CheckStatus.WARN
    assert rows["mmdebstrap"].hint == "install it: sudo apt-get install mmdebstrap"
    assert rows["skopeo"].status is CheckStatus.PASS


def test_missing_skopeo_warns_when_mmdebstrap_is_there(host: FakeHost) -> None:
    host.remove("skopeo")
    row = host.check("skopeo")
    assert row.status is CheckStatus.WARN and "OCI" in row.detail
    assert row.hint == "install it: sudo apt-get install skopeo"


def test_no_image_tool_at_all_fails_both(host: FakeHost) -> None:
    host.remove("mmdebstrap", "skopeo")
    rows = host.results()
    assert rows["mmdebstrap"].status is CheckStatus.FAIL
    assert rows["skopeo"].status is CheckStatus.FAIL


def test_dynamic_busybox_fails(host: FakeHost) -> None:
    host.busybox.write_bytes(elf(interp=True))
    row = host.check("busybox-static")
    assert row.status is CheckStatus.FAIL and "not a statically linked busybox" in row.detail
    assert row.hint == "install it: sudo apt-get install busybox-static"


def test_missing_busybox_fails(host: FakeHost) -> None:
    host.busybox.unlink()
    row = host.check("busybox-static")
    assert row.status is CheckStatus.FAIL and "no busybox" in row.detail


def test_no_check_for_nat_before_nat_exists(host: FakeHost) -> None:
    assert not any("--nat" in r.detail or r.name == "nftables" for r in host.results().values())


@pytest.mark.parametrize("tool", ["ssh", "ssh-keygen"])
def test_missing_ssh_client_tool_fails(host: FakeHost, tool: str) -> None:
    host.remove(tool)
    row = host.check("ssh client")
    assert row.status is CheckStatus.FAIL and f"missing {tool}" in row.detail
    assert row.hint == "install it: sudo apt-get install openssh-client"
