"""A real guest sees the owner's git identity and ``[[file_sync]]`` files, refreshed per start."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.vm.conftest import VMFactory

NAME = 'Ada "the Countess" Lovelace'


def test_synced_files_and_git_identity_reach_the_guest_and_follow_the_host(
    vms: VMFactory, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / ".config" / "tool").mkdir(parents=True)
    token = home / ".config" / "tool" / "token"
    token.write_text("token-v1\n")
    for key, value in (("user.name", NAME), ("user.email", "ada@example.org")):
        subprocess.run(["git", "config", "--file", str(home / ".gitconfig"), key, value],
                       check=True)
    vms.env.extra_env["HOME"] = str(home)  # the daemon's Path.home(), the owner's home
    vms.env.config_file.write_text(
        '[[file_sync]]\nhost = "~/.config/tool/token"\n'
        'guest = "/root/.config/tool/token"\nmode = "0600"\n'
    )
    vms.create("synced")
    assert vms.ssh("synced", "cat", "/root/.config/tool/token").stdout == "token-v1\n"
    assert vms.ssh("synced", "stat", "-c", "%a.%u.%g",
                   "/root/.config/tool/token").stdout == "600.0.0\n"
    assert vms.ssh("synced", "git", "config", "--global", "user.name").stdout == NAME + "\n"
    assert vms.ssh("synced", "git", "config", "--global",
                   "user.email").stdout == "ada@example.org\n"

    vms.ok("vm", "stop", "synced")
    token.write_text("token-v2, changed while stopped\n")
    vms.ok("vm", "start", "synced")
    got = vms.ssh("synced", "cat", "/root/.config/tool/token").stdout
    assert got == "token-v2, changed while stopped\n"
