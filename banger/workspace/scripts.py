"""The shell the daemon runs in a guest for a workspace: pure text, arguments always in ``$@``.

Each script is run as ``sh -c SCRIPT banger-ws ARG...``: values travel as
positional arguments, never spliced into the script. Failures the host must
tell apart exit with the codes below and one line on stderr.
"""

from __future__ import annotations

from banger.core import guest_sh
from banger.core.guest_sh import PRELUDE, REQUIRE_TAR, sh_argv

NO_TAR = guest_sh.NO_TAR
NO_GIT = 91
NO_ROOM = 92
NO_WORKSPACE = 93
NO_REPOSITORY = 94
NO_COMMIT = 95
NO_BASE = 96
NO_INODES = 97

_COMMON = PRELUDE + r"""dest=$1
"""

# stdin: the payload tar (tree/ and, for full_copy, base.git/). $2 its bytes, $3 where
# the baseline repository goes (disk.base_dir_of), $4 its entries (one inode each).
# Unpacks into a fresh directory next to the old workspace, then swaps: the old tree
# stays whole until the new one is complete, and is removed in the background. The
# directories are unique (mktemp), so a removal still running from the prepare before
# races nothing; what interrupted prepares left is removed before the room check; a
# failed unpack removes its part.
PREPARE = _COMMON + r"""need=$2 base_dir=$3 entries=$4
""" + REQUIRE_TAR + r"""command -v git >/dev/null 2>&1 || die 91 git
parent=${dest%/*}
name=${dest##*/}
mkdir -p "$parent"
for left in "$parent/.$name.banger-new."* "$parent/.$name.banger-old."*; do
    if [ -e "$left" ] || [ -L "$left" ]; then rm -rf "$left" 2>/dev/null || :; fi
done
df_free() { df -P "$1" "$parent" | awk 'NR == 2 { print $4 }'; }
avail=$(df_free -k) inodes=$(df_free -i)
for n in "$avail" "$inodes"; do
    case $n in ''|*[!0-9]*) die 1 "cannot read the free space of $parent (df)" ;; esac
done
[ $(( need / 1024 + 1 )) -le "$avail" ] || die 92 "$need $(( avail * 1024 ))"
[ "$entries" -le "$inodes" ] || die 97 "$entries $inodes"
new=$(mktemp -d "$parent/.$name.banger-new.XXXXXX")
trap 'rm -rf "$new"' EXIT
tar -x -f - -C "$new"
[ -d "$new/tree" ] || die 1 "the payload holds no tree"
old=$(mktemp -d "$parent/.$name.banger-old.XXXXXX")
if [ -e "$dest" ] || [ -L "$dest" ]; then mv "$dest" "$old/tree"; fi
if [ -e "$base_dir" ]; then mv "$base_dir" "$old/base.git"; fi
mv "$new/tree" "$dest"
if [ -d "$new/base.git" ]; then mv "$new/base.git" "$base_dir"; fi
rm -rf "$new"
( setsid rm -rf "$old" </dev/null >/dev/null 2>&1 & )
if command -v mise >/dev/null 2>&1; then
    mise trust --quiet --all "$dest" >/dev/null 2>&1 || true
fi
"""

# stdout: the length of the NUL-separated name-status list, a newline, the list,
# then the binary patch. $2 mode, $3 the prepared tree, $4 a base commit or "",
# $5 the baseline repository of a full_copy workspace (disk.base_dir_of).
EXPORT = _COMMON + r"""mode=$2 base=$3 commit=$4 base_dir=$5
command -v git >/dev/null 2>&1 || die 91 git
cd "$dest" 2>/dev/null || die 93 "$dest"
gitdir=$dest/.git
if [ "$mode" = full_copy ]; then gitdir=$base_dir; fi
[ -d "$gitdir" ] || die 94 "$gitdir"
export GIT_DIR="$gitdir" GIT_WORK_TREE="$dest"
if [ -n "$commit" ]; then
    base=$(git rev-parse --verify -q --end-of-options "$commit^{commit}") || die 95 "$commit"
fi
git cat-file -e "$base^{tree}" 2>/dev/null || die 96 "$base"
export GIT_INDEX_FILE="$gitdir/banger-export.index"
names=$gitdir/banger-export.names
trap 'rm -f "$GIT_INDEX_FILE" "$GIT_INDEX_FILE.lock" "$names"' EXIT
cp "$gitdir/index" "$GIT_INDEX_FILE" 2>/dev/null || rm -f "$GIT_INDEX_FILE"
git -c core.fsmonitor=false add --all -- . >/dev/null
tree=$(git write-tree)
git diff-tree -r -M --name-status -z "$base" "$tree" > "$names"
wc -c < "$names"
cat "$names"
git diff-tree -r -M --binary --full-index -p "$base" "$tree"
"""


def script_argv(script: str, *args: str) -> list[str]:
    """The guest argv that runs ``script`` with ``args`` as ``$1 $2 ...``."""
    return sh_argv(script, "banger-ws", *args)
