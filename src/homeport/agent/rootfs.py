"""Root filesystems from image layers: an overlayfs with the layers read-only below and
one fresh writable directory on top, mounted inside a private mount namespace of the
process about to become the sandbox, so it disappears with that process and never
shows up (or leaks) on the host.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8
# The kernel reads mount options from one page.
MAX_OPTIONS = 4096

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


def mount(
    source: str | Path | None,
    target: str | Path,
    flags: int,
    fstype: str | None = None,
    data: str | None = None,
) -> None:
    """mount(2); OSError naming what failed. Fine between fork and exec (no locks, no logging)."""
    encoded = [None if value is None else str(value).encode() for value in (source, target, fstype, data)]
    if _libc.mount(encoded[0], encoded[1], encoded[2], flags, encoded[3]) != 0:
        _raise_errno(f"mount {source or fstype} on {target}")


def bind(source: str | Path, target: str | Path, read_only: bool = False, flags: int = 0) -> None:
    """A bind mount (flags: MS_REC for the mounts under it too), remounted read-only when
    asked: a bind cannot be made read-only in the same call."""
    mount(source, target, MS_BIND | flags)
    if read_only:
        mount(None, target, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def mount_sys(root: Path, cgroups: dict[str, Path]) -> None:
    """A read-only /sys under `root`, as Docker gives containers: a sysfs mounted from the
    caller's network namespace (so /sys/class/net lists the container's own interfaces),
    and /sys/fs/cgroup showing only the container's own cgroups (controller name ->
    directory), read-only, so libraries can read their CPU and memory limits. Run between
    fork and exec, after entering the container's network namespace and mounting its root."""
    target = root / "sys"
    os.makedirs(target, exist_ok=True)
    mount("sysfs", target, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "sysfs")
    if not cgroups:
        return
    hierarchy = target / "fs" / "cgroup"
    mount("tmpfs", hierarchy, MS_NOSUID | MS_NODEV | MS_NOEXEC, "tmpfs", "size=64k,mode=0755")
    for controller, directory in cgroups.items():
        os.mkdir(hierarchy / controller)
        bind(directory, hierarchy / controller, read_only=True)
    mount(None, hierarchy, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def unmount(target: str | Path) -> None:
    """Detach a mount (and what is under it), never through a symbolic link; nothing there
    is not an error."""
    _libc.umount2(str(target).encode(), MNT_DETACH | UMOUNT_NOFOLLOW)


class RootfsError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Overlay:
    lower: list[Path]  # topmost first
    upper: Path  # receives every write; thrown away with the container (or kept as a build layer)
    work: Path  # overlayfs scratch, same filesystem as upper
    merged: Path  # where the root appears (inside the private namespace only)
    # Bound the writable layer (ephemeral_disk=): upper and work then live on a tmpfs of
    # this size mounted at upper's parent, so a full disk is ENOSPC inside the container.
    size_mib: int = 0
    # Receive mounts the host makes later (a zygote's stage, see agent/zygote.py) while
    # still never propagating ours back; otherwise fully private.
    receive_host_mounts: bool = False

    def options(self) -> str:
        options = f"lowerdir={':'.join(map(str, self.lower))},upperdir={self.upper},workdir={self.work}"
        if len(options) >= MAX_OPTIONS:
            raise RootfsError(
                f"this image has too many layers ({len(self.lower)}) for one overlay mount; "
                "merge build steps (several commands in one run_commands call) to use fewer layers"
            )
        return options

    def prepare(self) -> None:
        """Create the directories; call before forking (mount_in_child only mounts)."""
        for path in (self.upper, self.work, self.merged):
            path.mkdir(parents=True, exist_ok=True)
        if not self.lower:
            raise RootfsError("an overlay needs at least one read-only layer")
        self.options()

    def mount_in_child(self) -> None:
        """Runs between fork and exec (preexec_fn): a private mount namespace, then the overlay.
        Only async-signal-safe-ish calls here: no Python-level locks, no logging."""
        if _libc.unshare(CLONE_NEWNS) != 0:
            _raise_errno("unshare(CLONE_NEWNS)")
        # Keep our mounts from propagating back to the host's namespace.
        mount(None, "/", MS_REC | (MS_SLAVE if self.receive_host_mounts else MS_PRIVATE))
        if self.size_mib:
            mount(
                "tmpfs", self.upper.parent, MS_NOSUID | MS_NODEV, "tmpfs", f"size={self.size_mib}m,mode=0755"
            )
            os.mkdir(self.upper)
            os.mkdir(self.work)
        mount("overlay", self.merged, 0, "overlay", self.options())


def enter_private_mount_namespace() -> bool:
    """Give the calling process (the server, before it starts any thread) a mount
    namespace of its own that still receives the host's mounts: whatever it mounts
    (zygote stages, network namespace names) goes away with it, however it ends, instead
    of staying behind on the host. False where that is not possible (not root)."""
    if os.geteuid() != 0 or _libc.unshare(CLONE_NEWNS) != 0:
        return False
    mount(None, "/", MS_REC | MS_SLAVE)
    return True


def _raise_errno(what: str) -> None:
    errno = ctypes.get_errno()
    raise OSError(errno, f"{what}: {os.strerror(errno)}")


def available() -> str | None:
    """None when overlay root filesystems can be made here; else why not."""
    if os.geteuid() != 0:
        return (
            "Homeport builds images and runs containers on overlayfs, which needs the server to run as root"
        )
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "overlay" not in filesystems:
        return "the kernel has no overlayfs (modprobe overlay)"
    return None


def has_entries(path: Path) -> bool:
    try:
        with os.scandir(path) as entries:
            return any(True for _ in entries)
    except FileNotFoundError:
        return False


def used_bytes(path: Path) -> int:
    """Disk space the files under `path` take (allocated blocks, as du counts them), without
    following symbolic links or crossing into other file systems."""
    try:
        device = path.lstat().st_dev
    except FileNotFoundError:
        return 0
    total, pending = 0, [str(path)]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    status = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if status.st_dev != device:
                    continue
                total += status.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
    return total
