"""The system ``ssh`` command line for a VM: a pure builder the CLI and the daemon share.

The CLI builds ``vm ssh``'s argv itself from the data the daemon returns (address,
port, key and known_hosts paths), so it never executes an argv a daemon sent it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

CONNECT_TIMEOUT = 10
CONTROL_PERSIST = "60s"


def ssh_argv(
    target: str,
    port: int,
    key: Path,
    known_hosts: Path,
    user: str = "root",
    command: Sequence[str] | None = None,
    *,
    host_key_recorded: bool = True,
    batch: bool = True,
    tty: bool = False,
    connect_timeout: int = CONNECT_TIMEOUT,
    ssh_binary: str = "ssh",
    control_path: Path | None = None,
    start_master: bool = True,
    authenticate_only: bool = False,
    held: bool = False,
) -> list[str]:
    """The system ``ssh`` argv for a VM (pure). ``command`` is quoted for the remote shell.

    With ``control_path``, ssh shares one connection per VM (ControlMaster): the
    first ssh becomes the master and lingers ``CONTROL_PERSIST`` after its last
    session, so the next ``vm ssh``/``vm run`` skips the key exchange. With
    ``start_master=False`` it uses a master that is up and never starts one
    (a daemon-side command whose output is read through pipes).
    ``authenticate_only`` (``-N``; a master to start, no ``command``) opens no
    session: ssh returns once sshd accepted the key and leaves the master up.
    ``held`` (with it: a warm pool member's master, its guest paused next) sends no
    keepalive, which a paused guest cannot answer, and stays until it is closed.
    """
    if authenticate_only and (command or control_path is None or not start_master):
        raise ValueError("authenticate_only starts a master and runs no command")
    if held and not authenticate_only:
        raise ValueError("only an authenticate_only master is held")
    argv = [ssh_binary, "-F", "/dev/null"]  # the user's ~/.ssh/config must not change this
    options = {
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "UserKnownHostsFile": os.fspath(known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes" if host_key_recorded else "accept-new",
        "BatchMode": "yes" if batch else "no",
        "LogLevel": "ERROR",
        "ConnectTimeout": str(connect_timeout),
    }
    if control_path is not None:
        options.update(ControlMaster="auto" if start_master else "no",
                       ControlPath=os.fspath(control_path))
        if held:
            options.update(ControlPersist="yes", ServerAliveInterval="0", TCPKeepAlive="no")
        elif start_master:
            options.update(ControlPersist=CONTROL_PERSIST, ServerAliveInterval="5",
                           ServerAliveCountMax="3")
    argv += ["-i", os.fspath(key), "-p", str(port)]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    if tty:
        argv.append("-t")
    if authenticate_only:
        argv.append("-N")
    argv += ["--", f"{user}@{target}"]
    if command:
        # ssh joins its arguments with spaces for the remote shell; one quoted
        # string keeps `sh -c 'exit 42'` three words on the other side too.
        argv.append(shlex.join(command))
    return argv


def vm_ssh_config(key: Path, hosts: Sequence[tuple[str, str, int, Path, Path | None]]) -> str:
    """The ``Host *.vm`` file ``banger ssh-config`` includes (pure).

    ``hosts``: (VM name, address, port, known_hosts, control socket) per
    running VM, so ``ssh NAME.vm`` works without DNS; a VM not listed falls
    to ``Host *.vm`` and resolves ``NAME.vm`` by DNS, if the host can.
    """
    lines = ["# Written by bangerd for `ssh NAME.vm`; rewritten as VMs start and stop.",
             "# Do not edit: `banger ssh-config --uninstall` stops using it.", ""]
    for name, address, port, known_hosts, control in hosts:
        lines += [f"Host {name}.vm", f"    HostName {address}", f"    Port {port}",
                  f"    UserKnownHostsFile {_quote(known_hosts)}"]
        if control is not None:
            lines.append(f"    ControlPath {_quote(control)}")
        lines.append("")
    lines += [
        "Host *.vm",
        "    User root",
        f"    IdentityFile {_quote(key)}",
        "    IdentitiesOnly yes",
        "    IdentityAgent none",
        "    GlobalKnownHostsFile /dev/null",
        "    StrictHostKeyChecking yes",
        "    ControlMaster no",
        "    LogLevel ERROR",
        "",
    ]
    return "\n".join(lines)


def _quote(path: Path) -> str:
    text = os.fspath(path)
    if any(c in text for c in '"\n\r\t\0'):
        raise ValueError(f"path {text!r} cannot be written into an ssh config")
    return f'"{text}"' if " " in text else text
