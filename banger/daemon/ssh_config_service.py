"""``ssh NAME.vm``: the ``Host *.vm`` file kept in step with the running VMs, and its Include.

The file (``state_dir/ssh/config``) has a ``HostName`` per running VM, so it
works without DNS; it is rewritten atomically whenever a VM starts or stops
running. ``banger ssh-config --install`` adds one ``Include`` of it to the
owner's ``~/.ssh/config``; ``--uninstall`` removes exactly that.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from banger.api.models import SSHConfigResult
from banger.core.sshcmd import vm_ssh_config
from banger.core.states import VMState
from banger.daemon.vm_runtime import VMRuntime
from banger.host import ssh_config
from banger.host.files import atomic_write_text

log = structlog.get_logger("banger.daemon.ssh_config")


class SSHConfigService:
    def __init__(self, rt: VMRuntime) -> None:
        self.rt = rt
        self.path = rt.paths.vm_ssh_config
        rt.on_running_change(self.refresh)

    def refresh(self) -> None:
        """Rewrite the file from the running VMs."""
        hosts = []
        for vm in self.rt.store.vms.list(VMState.RUNNING):
            target = self.rt.guest_target(vm)
            hosts.append((vm.name, target.host, target.port, target.known_hosts,
                          target.control_path))
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_text(self.path, vm_ssh_config(self.rt.paths.ssh_key, hosts))

    def apply(self, install: bool) -> SSHConfigResult:
        user_config = Path.home() / ".ssh" / "config"
        self.refresh()
        if install:
            changed = ssh_config.install(user_config, self.path)
        else:
            changed = ssh_config.uninstall(user_config)
        log.info("ssh config", install=install, changed=changed, user_config=str(user_config))
        return SSHConfigResult(user_config=user_config, managed=self.path, installed=install,
                               changed=changed)
