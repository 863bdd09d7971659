"""What banger puts into every image (golden build and OCI import alike).

``guest_files()`` is the single source of truth: a pure list of ``GuestFile``
entries (path, content or link target, mode, owner). ``write_guest_files()``
applies it to a directory tree; the OCI flattener applies the same list to an
ext4 image through a debugfs batch. The files themselves live in
``banger/guest/files/`` (see DESIGN.md section 4 and docs/guest.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path, PurePosixPath

from banger.core.errors import InvalidInput
from banger.host.ssh import HOST_KEY_FILE

LEAN_INIT = "/usr/lib/banger/init"
"""The lean init; the kernel command line selects it with ``banger.init=``."""

IMAGE_HOST_KEY = f"/etc/ssh/{HOST_KEY_FILE}"

WORK_DISK_OPTIONS = "noatime,nofail,x-systemd.device-timeout=30s"

# Units a sandbox never needs under the systemd profile: timers that wake the
# disk, mounts nobody uses here, consoles nobody can log in to (root has no
# password), first-boot and catalog jobs whose output a throwaway VM discards.
MASKED_UNITS: tuple[str, ...] = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
    "systemd-tmpfiles-clean.timer",
    "getty.target",
    "console-getty.service",
    "systemd-networkd-wait-online.service",
    "systemd-udev-settle.service",
    "systemd-timesyncd.service",
    "systemd-pstore.service",
    "systemd-hwdb-update.service",
    "systemd-journal-catalog-update.service",
    "systemd-update-done.service",
    "systemd-firstboot.service",
    "systemd-random-seed.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "systemd-binfmt.service",
    "systemd-modules-load.service",
    "systemd-ask-password-console.path",
    "systemd-ask-password-wall.path",
    "ldconfig.service",
    "keyboard-setup.service",
    "console-setup.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "modprobe@drm.service",
    "modprobe@fuse.service",
    "modprobe@configfs.service",
    "modprobe@efi_pstore.service",
    "modprobe@loop.service",
    "modprobe@dm_mod.service",
    "cryptsetup.target",
)


class Kind(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass(frozen=True)
class GuestFile:
    """One entry banger writes into a root filesystem (``path`` is absolute)."""

    path: str
    kind: Kind
    content: bytes = b""
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class HostKey:
    """An SSH host key pair (OpenSSH private key text and ``.pub`` line)."""

    private: bytes
    public: bytes


def _data(relpath: str) -> bytes:
    return resources.files("banger.guest").joinpath("files", relpath).read_bytes()


def _file(path: str, content: bytes, mode: int = 0o644) -> GuestFile:
    return GuestFile(path, Kind.FILE, content=content, mode=mode)


def _dir(path: str, mode: int = 0o755) -> GuestFile:
    return GuestFile(path, Kind.DIR, mode=mode)


def _link(path: str, target: str) -> GuestFile:
    return GuestFile(path, Kind.SYMLINK, target=target, mode=0o777)


def fstab() -> bytes:
    """/etc/fstab: the root overlay and the work disk (``nofail``: a VM without vdb still boots)."""
    return (
        b"# Written by banger. /dev/vda: the VM's root overlay; /dev/vdb: its work disk.\n"
        b"/dev/vda / ext4 rw,noatime 0 0\n"
        + f"/dev/vdb /root ext4 {WORK_DISK_OPTIONS} 0 0\n".encode()
    )


def lean_fstab() -> bytes:
    """The table the lean init mounts with a single ``mount -a -T`` run."""
    return (
        b"# banger lean init: mounted in order by /usr/lib/banger/init.\n"
        b"proc /proc proc nosuid,nodev,noexec 0 0\n"
        b"sysfs /sys sysfs nosuid,nodev,noexec 0 0\n"
        b"devtmpfs /dev devtmpfs nosuid,mode=0755 0 0\n"
        b"devpts /dev/pts devpts nosuid,noexec,gid=5,mode=0620,ptmxmode=0666,X-mount.mkdir 0 0\n"
        b"tmpfs /dev/shm tmpfs nosuid,nodev,mode=1777,X-mount.mkdir 0 0\n"
        b"tmpfs /run tmpfs nosuid,nodev,mode=0755,size=20% 0 0\n"
        b"/dev/vdb /root ext4 noatime,nofail 0 0\n"
    )


def ssh_service_dropin() -> bytes:
    """Order sshd after the bootstrap and /root; drop Debian's extra ``sshd -t`` run."""
    return (
        b"# banger: sshd reads keys from the work disk and the hostname from the bootstrap.\n"
        b"[Unit]\nAfter=banger-bootstrap.service root.mount\n\n"
        b"[Service]\nExecStartPre=\n"
    )


def _mountpoints() -> list[GuestFile]:
    return [
        _dir("/proc", 0o555),
        _dir("/sys", 0o555),
        _dir("/dev", 0o755),
        _dir("/run", 0o755),
        _dir("/tmp", 0o1777),
        _dir("/root", 0o700),
    ]


def _lean_init_files() -> list[GuestFile]:
    lib = "/usr/lib/banger"
    files = [
        _dir("/usr/lib/banger"),
        _file(f"{lib}/init", _data("usr/lib/banger/init"), 0o755),
        _file(f"{lib}/bootstrap", _data("usr/lib/banger/bootstrap"), 0o755),
        _file(f"{lib}/power", _data("usr/lib/banger/power"), 0o755),
        _file(f"{lib}/agent", _data("usr/lib/banger/agent"), 0o755),
        _file(f"{lib}/fstab", lean_fstab()),
        _dir("/usr/local/sbin"),
        _dir("/etc/banger"),
        _dir("/etc/banger/boot.d"),
    ]
    files += [_link(f"/usr/local/sbin/{n}", f"{lib}/power") for n in ("poweroff", "reboot", "halt")]
    return files


def _systemd_files(masked: Sequence[str]) -> list[GuestFile]:
    unit_dir = "/etc/systemd/system"
    files = [
        _dir("/etc/systemd"),
        _dir(unit_dir),
        _dir(f"{unit_dir}/sysinit.target.wants"),
        _dir(f"{unit_dir}/ssh.service.d"),
        _file(
            f"{unit_dir}/banger-bootstrap.service",
            _data("etc/systemd/system/banger-bootstrap.service"),
        ),
        _link(
            f"{unit_dir}/sysinit.target.wants/banger-bootstrap.service",
            f"{unit_dir}/banger-bootstrap.service",
        ),
        _file(f"{unit_dir}/ssh.service.d/banger.conf", ssh_service_dropin()),
    ]
    files += [_link(f"{unit_dir}/{unit}", "/dev/null") for unit in masked]
    return files


def _ssh_files(host_key: HostKey | None) -> list[GuestFile]:
    files = [
        _dir("/etc/ssh"),
        _dir("/etc/ssh/sshd_config.d"),
        _file("/etc/ssh/sshd_config", _data("etc/ssh/sshd_config")),
    ]
    if host_key is not None:
        files += [
            _file(IMAGE_HOST_KEY, host_key.private, 0o600),
            _file(f"{IMAGE_HOST_KEY}.pub", host_key.public),
        ]
    return files


def _work_seed_files() -> list[GuestFile]:
    # /root is the work disk in a VM; these become the image's work seed.
    return [
        _dir("/root/.ssh", 0o700),
        _dir("/root/.banger", 0o700),
        _file("/root/.hushlogin", b""),
    ]


def guest_files(
    host_key: HostKey | None = None, masked_units: Sequence[str] = MASKED_UNITS
) -> list[GuestFile]:
    """Everything banger puts in an image, parents before children."""
    return (
        _mountpoints()
        + [_file("/etc/fstab", fstab())]
        + _ssh_files(host_key)
        + _lean_init_files()
        + _systemd_files(masked_units)
        + _work_seed_files()
    )


def _inside(rootdir: Path, path: str) -> Path:
    rel = PurePosixPath(path)
    if not rel.is_absolute() or ".." in rel.parts:
        raise InvalidInput(f"guest path {path!r} must be absolute without '..'")
    return rootdir.joinpath(*rel.parts[1:])


def parent_dirs(path: str) -> list[str]:
    """The directories above guest path ``path``, outermost first (``/a/b/c``: ``/a``, ``/a/b``)."""
    parts = PurePosixPath(path).parts[1:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def refuse_symlinked_parents(files: Iterable[GuestFile], is_symlink: Callable[[str], bool]) -> None:
    """Raise InvalidInput when a symlink in the image stands where a guest file's parent goes.

    Writing through it would land elsewhere, outside the image for a link like
    ``/etc/ssh -> /home/user``. ``is_symlink`` answers for one absolute guest
    path (a directory tree or an ext4 image); parents are asked outermost
    first, so it is never asked about a path below a symlink.
    """
    for f in files:
        for parent in parent_dirs(f.path):
            if is_symlink(parent):
                raise InvalidInput(
                    f"image path {parent} is a symlink; banger writes {f.path}",
                    hint="make it a real directory in the image, then import again",
                )


def write_guest_files(rootdir: Path, files: Iterable[GuestFile]) -> None:
    """Write ``files`` into the tree at ``rootdir`` (ownership applied when running as root).

    Never writes through a symlink: a symlinked parent directory is refused
    (``refuse_symlinked_parents``) before anything is written, and a symlink at
    an entry's own path is replaced, not followed.
    """
    entries = list(files)

    def is_symlink(path: str) -> bool:
        return _inside(rootdir, path).is_symlink()

    refuse_symlinked_parents(entries, is_symlink)
    as_root = os.geteuid() == 0
    for entry in entries:
        # Again per entry: an earlier entry may itself have been a symlink.
        refuse_symlinked_parents([entry], is_symlink)
        dest = _inside(rootdir, entry.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if entry.kind is Kind.DIR:
            if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                dest.unlink()
            dest.mkdir(exist_ok=True)
        else:
            if dest.is_symlink() or dest.is_file():
                dest.unlink()
            if entry.kind is Kind.SYMLINK:
                os.symlink(entry.target, dest)
                if as_root:
                    os.lchown(dest, entry.uid, entry.gid)
                continue
            dest.write_bytes(entry.content)
        os.chmod(dest, entry.mode)
        if as_root:
            os.chown(dest, entry.uid, entry.gid)


_INIT_CANDIDATES = (
    "/sbin/init",
    "/usr/sbin/init",
    "/lib/systemd/systemd",
    "/usr/lib/systemd/systemd",
)
_SSHD_CANDIDATES = ("/usr/sbin/sshd", "/sbin/sshd", "/usr/bin/sshd")
_IP_CANDIDATES = ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip")
_SH_CANDIDATES = ("/bin/sh", "/usr/bin/sh")


def _resolve(rootdir: Path, path: str, depth: int = 0) -> Path | None:
    """Resolve ``path`` inside ``rootdir``: absolute links point into the image, not the host."""
    current = rootdir
    parts = [p for p in PurePosixPath(path).parts if p != "/"]
    for i, part in enumerate(parts):
        candidate = current / part
        if candidate.is_symlink():
            if depth > 20:
                return None
            target = os.readlink(candidate)
            rest = "/".join(parts[i + 1 :])
            if target.startswith("/"):
                base = target
            else:
                base = str(PurePosixPath("/", *current.relative_to(rootdir).parts, target))
            return _resolve(rootdir, f"{base}/{rest}" if rest else base, depth + 1)
        if part == "..":
            current = current.parent if current != rootdir else rootdir
            continue
        current = candidate
    return current


def _has_executable(rootdir: Path, candidates: Sequence[str]) -> bool:
    for path in candidates:
        real = _resolve(rootdir, path)
        if real is not None and real.is_file() and os.stat(real).st_mode & 0o111:
            return True
    return False


BOOT_REQUIREMENTS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("an init (/sbin/init)", _INIT_CANDIDATES, "systemd-sysv (Debian/Ubuntu) or an init system"),
    ("sshd", _SSHD_CANDIDATES, "openssh-server (Debian/Ubuntu/Fedora) or openssh (Alpine)"),
    ("a shell (/bin/sh)", _SH_CANDIDATES, "dash or busybox"),
    ("ip (iproute2)", _IP_CANDIDATES, "iproute2"),
)
"""What a banger guest needs: (what, the guest paths to try, the packages that provide it)."""


def check_bootable(rootdir: Path) -> None:
    """Raise InvalidInput naming what a banger guest needs but ``rootdir`` lacks."""
    missing = [
        (what, pkg) for what, cands, pkg in BOOT_REQUIREMENTS if not _has_executable(rootdir, cands)
    ]
    if missing:
        whats = ", ".join(what for what, _ in missing)
        pkgs = "; ".join(pkg for _, pkg in missing)
        raise InvalidInput(
            f"image cannot boot as a banger VM: no {whats}",
            hint=f"install in the image: {pkgs}, then import it again",
        )
