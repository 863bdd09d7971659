"""ACPI powerdown (vm stop's fallback when SSH does not answer) powers a lean guest off."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from qemu.qmp import QMPClient

from banger.kernels.importer import import_kernel
from tests.support.image import boot_guest, ensure_test_image
from tests.support.kernel import ensure_kernel_deb

pytestmark = pytest.mark.vm


async def _powerdown(qmp_socket: Path) -> None:
    client = QMPClient("test")
    await client.connect(str(qmp_socket))
    try:
        await client.execute("system_powerdown")
    finally:
        await client.disconnect()


def test_system_powerdown_makes_the_lean_init_power_off_cleanly(tmp_path: Path) -> None:
    kernel = import_kernel("acpi", ensure_kernel_deb(), tmp_path / "kernels")
    assert {"button", "evdev"} <= set(kernel.modules)
    workdir = tmp_path / "vm"
    with boot_guest(kernel.path, ensure_test_image(), workdir) as guest:
        guest.wait_ssh(120)
        asyncio.run(_powerdown(workdir / "run" / "qmp.sock"))
        assert guest.proc.wait(timeout=30) == 0
        console = guest.console.read_text(errors="replace")
    assert "banger-init" in console and "poweroff" in console
