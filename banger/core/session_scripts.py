"""The shell a guest runs for sessions: pure text, values only as ``$1 $2 ...``.

Each script runs as ``sh -c SCRIPT banger-session TOP NAME ARG...`` (TOP: the
guest's sessions directory). A session is a directory ``TOP/NAME`` in the guest,
the truth about it (docs/sessions.md):

- ``mode`` (pipe|pty), ``meta`` (one JSON line the daemon wrote: command, cwd, start);
- ``pid``: ``PID STARTTIME BOOT_ID`` of the supervisor, ``prog``: the program's pid
  (the leader of its own process group);
- ``exit``: blank while it runs (room reserved at start, so a full disk cannot keep
  the record out), then ``CODE END HOW`` (HOW: exited, stopped, vm-stopped);
- ``log.BASE``: the output from absolute offset BASE; two segments are kept, the
  older removed once a third begins, so offsets only grow;
- ``lost``: some output could not be written (the disk was full);
- ``stdin``: a FIFO the supervisor holds open read-write, so its reader never sees EOF;
- ``attach.lock``/``attach.who``: the one interactive attach (flock) and who holds it.

Failures the host tells apart exit with the codes below (and one line on stderr).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from banger.core.guest_sh import PRELUDE, sh_argv

SESSIONS_DIR = "/root/.banger/sessions"
SEGMENT_BYTES = 8 << 20  # two segments kept: at most 16 MiB of output per session
RECORD_MAGIC = "banger-session"

NO_SESSION = 80
TAKEN = 81
NO_CWD = 82
NO_COMMAND = 83
NO_TOOL = 84
ENDED = 85
NOT_PIPE = 86
ATTACHED = 87
NOT_READ = 88
RUNNING = 89

# Functions every script shares. ``status`` is the one place a session's state is decided.
_COMMON = PRELUDE + r"""top=$1
read -r boot < /proc/sys/kernel/random/boot_id
starttime() {
    s=; read -r s 2>/dev/null < "/proc/$1/stat" || return 0
    rest=${s##*) }
    set -f; set -- $rest; set +f; printf '%s' "${20:-}"
}
status() {
    rec=; read -r rec 2>/dev/null < "$d/exit" || :
    if [ -n "$rec" ]; then printf 'ended %s' "$rec"; return 0; fi
    p= pst= pboot=; read -r p pst pboot 2>/dev/null < "$d/pid" || :
    case $p in ''|*[!0-9]*) printf 'ended - - lost'; return 0 ;; esac
    if [ "$pboot" != "$boot" ]; then printf 'ended - - vm-stopped'; return 0; fi
    if [ "$(starttime "$p")" != "$pst" ]; then printf 'ended - - lost'; return 0; fi
    printf running
}
record() {
    d=$1
    mode=; read -r mode 2>/dev/null < "$d/mode" || :
    meta=; read -r meta 2>/dev/null < "$d/meta" || :
    pid=; read -r pid rest 2>/dev/null < "$d/pid" || :
    segs=
    for f in "$d"/log.*; do
        b=${f##*/log.}
        case $b in ''|*[!0-9]*) continue ;; esac
        s=$(stat -c %s "$f" 2>/dev/null) || continue
        segs="$segs $b $s"
    done
    lost=0; [ ! -e "$d/lost" ] || lost=1
    who=
    if [ -e "$d/attach.lock" ] && ! flock -n "$d/attach.lock" true 2>/dev/null; then
        read -r who 2>/dev/null < "$d/attach.who" || :
    fi
    printf 'banger-session\0%s\0%s\0%s\0%s\0%s\0%s\0%s\0%s\0' \
        "${d##*/}" "$mode" "$(status)" "$meta" "$pid" "$segs" "$lost" "$who"
}
locate() {
    best= next= oldest=
    for f in "$d"/log.*; do
        b=${f##*/log.}
        case $b in ''|*[!0-9]*) continue ;; esac
        if [ -z "$oldest" ] || [ "$b" -lt "$oldest" ]; then oldest=$b; fi
        if [ "$b" -le "$since" ]; then
            if [ -z "$best" ] || [ "$b" -gt "$best" ]; then best=$b; fi
        elif [ -z "$next" ] || [ "$b" -lt "$next" ]; then
            next=$b
        fi
    done
    if [ -z "$best" ] && [ -n "$oldest" ]; then since=$oldest; locate; fi
}
advance() {
    while :; do
        locate
        size=0
        if [ -n "$best" ]; then size=$(stat -c %s "$d/log.$best" 2>/dev/null) || size=0; fi
        avail=$(( ${best:-0} + size - since ))
        if [ "$avail" -le 0 ] && [ -n "$next" ]; then since=$next; continue; fi
        return 0
    done
}
emit() { tail -c "+$((since - best + 1))" "$d/log.$best" | head -c "$1"; }
"""

# The supervisor: its own session (setsid), holds the stdin FIFO open, runs the program
# in a process group of its own with its output into a FIFO the logger drains into
# segments (when a write fails, a full disk, it drops output for a second and tries
# again), then writes the exit record once the output has ended. The program's
# redirections live in a subshell that execs it: dash reports a child killed by a
# signal ("Terminated") on its own stderr, which must not land in the output.
# $1 session dir, $2 mode, $3 segment bytes, $4 the pty command line, $5... argv.
SUPERVISOR = r"""d=$1 mode=$2 segment=$3 inner=$4; shift 4
starttime() {
    s=; read -r s 2>/dev/null < "/proc/$1/stat" || return 0
    rest=${s##*) }
    set -f; set -- $rest; set +f; printf '%s' "${20:-}"
}
log_output() {
    base=0 prev=
    while :; do
        f=$d/log.$base
        have=$(stat -c %s "$f" 2>/dev/null) || have=0
        if stdbuf -o0 head -c "$((segment - have))" >> "$f" 2>/dev/null; then
            now=$(stat -c %s "$f" 2>/dev/null) || now=0
            [ "$now" -ge "$segment" ] || return 0
            if [ -n "$prev" ]; then rm -f "$d/log.$prev"; fi
            prev=$base base=$((base + now))
        else
            : > "$d/lost" 2>/dev/null || :
            timeout 1 cat > /dev/null
            [ "$?" -eq 124 ] || return 0
        fi
    done
}
read -r boot < /proc/sys/kernel/random/boot_id
printf '%s %s %s\n' "$$" "$(starttime $$)" "$boot" > "$d/pid.new"
mv "$d/pid.new" "$d/pid"
exec 3<>"$d/stdin"
how=exited
trap 'how=vm-stopped' TERM HUP
trap : INT
mkfifo -m 600 "$d/out"
log_output < "$d/out" 3<&- &
logger=$!
user_shell=${SHELL:-/bin/sh}
if [ "$mode" = pipe ]; then
    (exec setsid sh -c 'echo $$ > "$0/prog"; exec "$@"' "$d" "$@" <&3 3<&- > "$d/out" 2>&1)
else
    (BANGER_SESSION=$d BANGER_SHELL=$user_shell SHELL=/bin/sh TERM=xterm-256color \
        exec setsid sh -c 'echo $$ > "$0/prog"; exec script -qfec "$1" /dev/null' "$d" "$inner" \
        <&3 3<&- > "$d/out" 2>&1)
fi
rc=$?
while kill -0 "$logger" 2>/dev/null; do wait "$logger" || :; done
rm -f "$d/out"
[ ! -e "$d/stopping" ] || how=stopped
printf '%s %s %s' "$rc" "$(date +%s)" "$how" 1<> "$d/exit"
"""

# What runs on a session's terminal before the program: an initial size, the terminal's
# name for the attach's resizes, the user's SHELL back. The argv follows, quoted.
PTY_PRELUDE = (
    'stty rows 24 cols 80 2>/dev/null; tty > "$BANGER_SESSION/tty" 2>/dev/null; '
    'SHELL=$BANGER_SHELL; export SHELL; unset BANGER_SESSION BANGER_SHELL; exec '
)

# $2 name, $3 cwd, $4 mode, $5 meta line, $6 segment bytes, $7 the argv quoted for
# ``script -c`` (pty), $8... the argv. Preflight (tools,
# cwd, command), then the directory (taken: a conflict), then the supervisor; any failure
# after the mkdir removes the directory: no session is left behind.
START = _COMMON + "supervisor=" + shlex.quote(SUPERVISOR) + "\nprelude=" + shlex.quote(
    PTY_PRELUDE) + r"""
name=$2 cwd=$3 mode=$4 meta=$5 segment=$6 quoted=$7; shift 7
d=$top/$name
for tool in setsid mkfifo head tail stat flock stdbuf timeout dd; do
    command -v "$tool" >/dev/null 2>&1 || die 84 "$tool"
done
if [ "$mode" = pty ]; then command -v script >/dev/null 2>&1 || die 84 script; fi
cd "$cwd" 2>/dev/null || die 82 "$cwd"
found=
case $1 in
    */*) found=$1 ;;
    *) set -f; IFS=:
       for dir in $PATH; do
           if [ -f "$dir/$1" ] && [ -x "$dir/$1" ]; then found=$dir/$1; break; fi
       done
       unset IFS; set +f ;;
esac
[ -n "$found" ] && [ -f "$found" ] && [ -x "$found" ] || die 83 "$1"
mkdir -p "$top"
mkdir "$d" 2>/dev/null || { [ ! -e "$d" ] || die 81 "$name"; die 1 "cannot create $d"; }
trap 'rm -rf "$d"' EXIT
printf '%s\n' "$mode" > "$d/mode"
printf '%s\n' "$meta" > "$d/meta"
printf '%64s\n' '' > "$d/exit"
: > "$d/log.0"
mkfifo -m 600 "$d/stdin"
setsid sh -c "$supervisor" banger-session "$d" "$mode" "$segment" "$prelude$quoted" "$@" \
    < /dev/null > /dev/null 2>&1 &
i=0
until [ -s "$d/pid" ]; do
    i=$((i + 1))
    [ "$i" -le 200 ] || die 1 "the session's supervisor did not start"
    sleep 0.05
done
trap - EXIT
"""

# $2 a name, or "" for every session: their records (see ``core.sessions.parse_records``).
LIST = _COMMON + r"""name=$2
if [ -n "$name" ]; then
    [ -d "$top/$name" ] || die 80 "$name"
    record "$top/$name"
    exit 0
fi
[ -d "$top" ] || exit 0
for d in "$top"/*; do
    if [ -d "$d" ]; then record "$d"; fi
done
"""

# $2 name, $3 since, $4 limit, $5 wait (in 0.2 s ticks). The record, then "FROM COUNT\n"
# and COUNT bytes of output from FROM (past SINCE when that was rotated away).
READ = _COMMON + r"""name=$2 since=$3 limit=$4 ticks=$5
d=$top/$name
[ -d "$d" ] || die 80 "$name"
record "$d"
waited=0
while :; do
    st=$(status)
    advance
    [ "$avail" -le 0 ] || break
    [ "$st" = running ] && [ "$waited" -lt "$ticks" ] || break
    sleep 0.2
    waited=$((waited + 1))
done
n=$avail
[ "$n" -gt 0 ] || n=0
[ "$n" -le "$limit" ] || n=$limit
printf '%s %s\n' "$since" "$n"
[ "$n" -eq 0 ] || emit "$n"
"""

# $2 name; stdin: the data. One write per MiB into the FIFO, banger's senders one at a time.
SEND = _COMMON + r"""name=$2
d=$top/$name
[ -d "$d" ] || die 80 "$name"
mode=; read -r mode 2>/dev/null < "$d/mode" || :
[ "$mode" = pipe ] || die 86 "$name"
[ "$(status)" = running ] || die 85 "$name"
flock -w 10 "$d/send.lock" timeout 10 \
    dd of="$d/stdin" bs=1048576 iflag=fullblock conv=notrunc status=none || die 88 "$?"
"""

# $2 name, $3 seconds between TERM and KILL to the program's process group.
STOP = _COMMON + r"""name=$2 grace=$3
d=$top/$name
[ -d "$d" ] || die 80 "$name"
[ "$(status)" = running ] || exit 0
prog=; read -r prog 2>/dev/null < "$d/prog" || :
case $prog in ''|*[!0-9]*) die 1 "session $name has no program id" ;; esac
: > "$d/stopping" 2>/dev/null || :
kill -s TERM -- "-$prog" 2>/dev/null || kill -s TERM "$prog" 2>/dev/null || :
ticks=0
while [ "$(status)" = running ]; do
    ticks=$((ticks + 1))
    if [ "$ticks" -eq $((grace * 10)) ]; then
        kill -s KILL -- "-$prog" 2>/dev/null || kill -s KILL "$prog" 2>/dev/null || :
    fi
    [ "$ticks" -le $((grace * 10 + 100)) ] || die 1 "session $name did not end"
    sleep 0.1
done
"""

# $2 name: an ended session's directory removed.
DELETE = _COMMON + r"""name=$2
d=$top/$name
[ -d "$d" ] || die 80 "$name"
[ "$(status)" != running ] || die 89 "$name"
rm -rf "$d"
"""

# $2 name, $3 since, $4 who is attaching. Runs on the terminal ssh -t made: raw, with
# Ctrl-] as the one signal key (SIGINT here: detach), the terminal's size copied to the
# session's on start and on SIGWINCH, output followed from the log, keys into the FIFO.
# Refusals exit silently with their code: the CLI explains them.
ATTACH = _COMMON + r"""name=$2 since=$3 label=$4
d=$top/$name
die() { exit "$1"; }
[ -d "$d" ] || die 80
mode=; read -r mode 2>/dev/null < "$d/mode" || :
[ "$mode" = pty ] || die 86
[ "$(status)" = running ] || die 85
exec 9>> "$d/attach.lock"
flock -n 9 || die 87
printf '%s since %s\n' "$label" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$d/attach.who"
pts=; read -r pts 2>/dev/null < "$d/tty" || :
saved=$(stty -g)
resize() {
    size=$(stty size 2>/dev/null) || return 0
    [ -z "$pts" ] || stty -F "$pts" rows "${size% *}" cols "${size#* }" 2>/dev/null || :
}
follow() {
    while :; do
        st=$(status)
        advance
        if [ "$avail" -gt 0 ]; then
            emit "$avail"
            since=$((since + avail))
        elif [ "$st" = running ]; then
            sleep 0.1
        else
            return 0
        fi
    done
}
stty raw -echo -iexten isig intr '^]' quit undef susp undef
resize
exec 4<&0
follow 9>&- &
out=$!
cat <&4 4<&- 9>&- > "$d/stdin" &
in=$!
exec 4<&-
detached=
trap 'detached=1' INT TERM HUP
trap resize WINCH
while [ -z "$detached" ] && kill -0 "$out" 2>/dev/null; do wait "$out" || :; done
kill "$out" "$in" 2>/dev/null || :
stty "$saved" 2>/dev/null || :
"""


def script_argv(script: str, *args: str) -> list[str]:
    """The guest argv that runs ``script`` with ``args`` as ``$1 $2 ...``."""
    return sh_argv(script, "banger-session", *args)


def start_argv(top: str, name: str, cwd: str, mode: str, meta: str,
               command: Sequence[str], segment: int = SEGMENT_BYTES) -> list[str]:
    """The guest argv of a session's start.

    ``command`` stays argv for a pipe session; a pty session's goes through
    ``script -c``, a shell command line, so it is also passed quoted (``shlex.join``).
    """
    return script_argv(START, top, name, cwd, mode, meta, str(segment), shlex.join(command),
                       *command)
