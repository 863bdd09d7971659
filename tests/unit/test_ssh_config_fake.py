"""The ``Host *.vm`` file follows the VMs: a block while running, none after stop or delete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.daemon.ssh_config_service import SSHConfigService
from tests.support.fake_vms import FakeVMs, fake_vms


@pytest.fixture
def vms(tmp_path: Path) -> Iterator[FakeVMs]:
    with fake_vms(tmp_path) as made:
        yield made


def test_the_file_follows_start_stop_and_delete(vms: FakeVMs) -> None:
    service = SSHConfigService(vms.service.rt)
    path = vms.settings.paths.vm_ssh_config

    async def scenario() -> list[str]:
        seen = []
        assert (await vms.create("box")).state == "succeeded"
        seen.append(path.read_text())
        assert (await vms.run(vms.service.stop("box"))).state == "succeeded"
        seen.append(path.read_text())
        assert (await vms.run(vms.service.start("box"))).state == "succeeded"
        seen.append(path.read_text())
        assert (await vms.run(vms.service.delete("box"))).state == "succeeded"
        seen.append(path.read_text())
        return seen

    running, stopped, again, deleted = vms.drive(scenario)
    assert "Host box.vm\n    HostName 127.0.0.1\n" in running  # user-mode networking
    assert "Host box.vm" not in stopped and "Host *.vm" in stopped
    assert "Host box.vm" in again
    assert "Host box.vm" not in deleted
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert service.path == path
