"""Fixed shell scripts run in guests: values travel only as ``$1 $2 ...``, failures as exit codes.

Workspaces (``workspace/scripts.py``), sessions (``core/session_scripts.py``) and ``vm exec``
(``core/workspace.py``) share the argv shape and the ``die`` helper; workspaces and a running
guest's file_sync (``core/file_sync_script.py``) the check that the guest has tar.
"""

from __future__ import annotations

from banger.core.errors import GuestError

PRELUDE = r"""set -eu
die() { code=$1; shift; printf '%s\n' "$*" >&2; exit "$code"; }
"""

NO_TAR = 90  # the exit code of a script run in a guest without tar
REQUIRE_TAR = f"command -v tar >/dev/null 2>&1 || die {NO_TAR} tar\n"


def sh_argv(script: str, name: str, *args: str) -> list[str]:
    """The guest argv that runs ``script`` as ``$0`` = ``name`` with ``args`` as ``$1 $2 ...``."""
    return ["sh", "-c", script, name, *args]


def lacks_tar(vm: str, packages: str = "tar") -> GuestError:
    """The error for a guest script that exited ``NO_TAR`` (a workspace, file_sync into a
    running guest, the warm pool's check): one message, the image to build named."""
    return GuestError(f"VM '{vm}': the guest has no tar",
                      hint=f"build an image that has it: banger image build NAME "
                           f"--packages {packages}")
