"""``ssh NAME.vm`` after ``banger ssh-config --install``, with the test's own home."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.vm.conftest import VMFactory


def test_ssh_name_dot_vm_after_install(vms: VMFactory, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    user_config = home / ".ssh" / "config"
    user_config.write_bytes(b"Host elsewhere\n    User someone")  # ends inside a Host block
    vms.env.extra_env["HOME"] = str(home)  # the daemon's Path.home()
    vms.create("sshbox")
    vms.ok("ssh-config", "--install")
    vms.ok("ssh-config", "--install")  # twice changes nothing
    text = user_config.read_bytes()
    assert text.count(b"Include ") == 1 and text.endswith(b"Host elsewhere\n    User someone")
    # ssh reads the passwd home's ~/.ssh/config, not $HOME's: name the file instead.
    ssh = ["ssh", "-F", str(user_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]
    done = subprocess.run([*ssh, "sshbox.vm", "hostname"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "sshbox"
    vms.ok("vm", "stop", "sshbox")
    gone = subprocess.run([*ssh, "sshbox.vm", "true"], capture_output=True, text=True,
                          timeout=60)
    assert gone.returncode != 0  # no HostName once it stopped (and no DNS for .vm here)
    vms.ok("ssh-config", "--uninstall")
    assert user_config.read_bytes() == b"Host elsewhere\n    User someone"
