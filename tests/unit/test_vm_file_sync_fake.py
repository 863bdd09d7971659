"""``[[file_sync]]`` on the fake backend: a stage before the VMM launches, at every start."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger.core.file_sync import parse_file_sync
from banger.host.ext4 import read_ext4_file
from tests.support.fake_vms import fake_vms


def test_every_start_copies_the_entries_before_the_vmm_opens_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    token = home / ".config" / "token"
    token.write_text("v1\n")
    monkeypatch.setenv("HOME", str(home))
    entries = parse_file_sync(
        [{"host": "~/.config/token", "guest": "/root/.config/token"},
         {"host": "~/gone", "guest": "/root/gone"}], home)
    with fake_vms(tmp_path, file_sync=entries) as vms:
        created = vms.drive(lambda: vms.create("box"))
        assert created.state == "succeeded", created.error
        assert [s.name for s in created.stages] == [
            "reserve", "disks", "file_sync", "network", "boot", "ssh"]
        assert created.stages[2].detail == "1 files copied, 1 skipped (see the daemon log)"
        work = vms.service.rt.files(vms.vm("box")).work
        assert read_ext4_file(work, "/.config/token") == b"v1\n"
        stopped = vms.drive(lambda: vms.run(vms.service.stop("box")))
        assert stopped.state == "succeeded", stopped.error
        token.write_text("v2, changed while stopped\n")
        started = vms.drive(lambda: vms.run(vms.service.start("box")))
        assert started.state == "succeeded", started.error
        assert [s.name for s in started.stages][:2] == ["file_sync", "network"]
        assert read_ext4_file(work, "/.config/token") == b"v2, changed while stopped\n"
