"""Doctor's NAT row, from the states the NAT table can be in (a fake PATH and /proc)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from banger.config import Settings
from banger.core.states import NetMode
from banger.daemon.doctor import HostView, run_checks
from banger.daemon.vm_nat import NatStatus

MADE = NatStatus(NetMode.TAP, "banger_banger0", made=True, guests=2, error=None)


def _row(tmp_path: Path, status: NatStatus | None, *, nft: bool = True,
         forwarding: str | None = "0\n") -> tuple[str, str, str] | None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    if nft:
        (bin_dir / "nft").write_text("#!/bin/sh\n")
        (bin_dir / "nft").chmod(stat.S_IRWXU)
    proc = tmp_path / "proc"
    (proc / "sys/net/ipv4").mkdir(parents=True, exist_ok=True)
    if forwarding is not None:
        (proc / "sys/net/ipv4/ip_forward").write_text(forwarding)
    settings = Settings(state_dir=tmp_path, cache_dir=tmp_path, runtime_dir=tmp_path)
    found = run_checks(settings, HostView(search_path=str(bin_dir), proc_root=proc), None,
                       status)
    rows = {r.name: (r.status.value, r.detail, r.hint or "") for r in found}
    return rows.get("nat")


def test_without_the_daemons_status_there_is_no_nat_row(tmp_path: Path) -> None:
    assert _row(tmp_path, None) is None


@pytest.mark.parametrize(("forwarding", "says"), [
    ("0\n", "IPv4 forwarding off (banger turns it on when a --nat VM starts)"),
    ("1\n", "IPv4 forwarding on"), (None, "IPv4 forwarding unknown"),
])
def test_a_made_table_passes_and_says_whether_forwarding_is_on(
    tmp_path: Path, forwarding: str | None, says: str
) -> None:
    assert _row(tmp_path, MADE, forwarding=forwarding) == (
        "PASS", f"table ip banger_banger0, 2 NAT guests; {says}", "")


def test_a_table_not_made_yet_passes(tmp_path: Path) -> None:
    status = NatStatus(NetMode.TAP, "banger_banger0", made=False, guests=0, error=None)
    row = _row(tmp_path, status)
    assert row is not None and row[0] == "PASS" and "made with the first TAP VM" in row[1]


def test_user_mode_missing_nft_and_a_failed_change_warn_naming_the_fix(tmp_path: Path) -> None:
    user = NatStatus(NetMode.USER, "banger_banger0", made=False, guests=0, error=None)
    status, detail, hint = _row(tmp_path, user) or ("", "", "")
    assert status == "WARN" and "--nat is refused" in detail and "CAP_NET_ADMIN" in hint
    status, detail, hint = _row(tmp_path / "x", MADE, nft=False) or ("", "", "")
    assert status == "WARN" and "nft is not installed" in detail and "nftables" in hint
    failed = NatStatus(NetMode.TAP, "banger_banger0", made=True, guests=0,
                       error="nft: Operation not permitted")
    status, detail, _ = _row(tmp_path / "y", failed) or ("", "", "")
    assert status == "WARN" and "Operation not permitted" in detail
