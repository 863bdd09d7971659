"""The shell a running guest runs for ``[[file_sync]]``: pure text, its one value in ``$1``.

A stopped VM's synced files are written into its work disk with debugfs
(``host/work_files.py``); a running guest (a claimed warm pool member) gets the
same plan as one tar on stdin, which this script puts in place. It runs as
``sh -c SCRIPT banger-sync HOME``; every name it handles comes from the tar's
lists, is read with ``read -r`` and only ever expanded in quotes, after ``./``.
"""

from __future__ import annotations

from banger.core.guest_sh import PRELUDE, REQUIRE_TAR, sh_argv

# stdin: the tar ``work_files.write_sync_payload`` makes: ``dirs`` (the plan's
# directories, parents first, one a line, relative to $1), ``files`` (its files, likewise)
# and ``tree/`` holding them, root-owned, each file with its final mode. It is unpacked in
# a private directory beside the files, then moved into place as debugfs would write it:
# a missing directory is made 0755, an existing one keeps its mode; a symlink or a file
# where a directory goes leaves out all below it, a directory where a file goes leaves
# that file out (each said on stdout: ``dir PATH`` / ``file PATH``); a symlink where a
# file goes is replaced, never followed.
SYNC = PRELUDE + r"""home=$1
""" + REQUIRE_TAR + r"""cd "$home"
new=$(mktemp -d "./.banger-sync.XXXXXX")
trap 'rm -rf "$new"' EXIT
tar -x -p -f - -C "$new"
while IFS= read -r d; do
    [ -d "$new/tree/$d" ] || continue
    if [ -L "./$d" ] || { [ -e "./$d" ] && [ ! -d "./$d" ]; }; then
        printf 'dir %s\n' "$d"
        rm -rf "$new/tree/$d"
    elif [ ! -d "./$d" ]; then
        mkdir -m 755 "./$d"
    fi
done < "$new/dirs"
while IFS= read -r f; do
    [ -f "$new/tree/$f" ] || continue
    if [ -L "./$f" ]; then
        rm -f "./$f"
    elif [ -d "./$f" ]; then
        printf 'file %s\n' "$f"
        continue
    fi
    mv -f "$new/tree/$f" "./$f"
done < "$new/files"
"""


def sync_argv(home: str) -> list[str]:
    """The guest argv that runs :data:`SYNC` into ``home`` (the guest's ``/root/``)."""
    return sh_argv(SYNC, "banger-sync", home)
