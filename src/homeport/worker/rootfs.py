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
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_NOSUID = 2
MS_NODEV = 4
# The kernel reads mount options from one page.
MAX_OPTIONS = 4096

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


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
    # Receive mounts the host makes later (a zygote's stage, see worker/zygote.py) while
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
        propagation = MS_SLAVE if self.receive_host_mounts else MS_PRIVATE
        if _libc.mount(b"none", b"/", None, MS_REC | propagation, None) != 0:
            _raise_errno("making / private")
        if self.size_mib:
            options = f"size={self.size_mib}m,mode=0755".encode()
            if _libc.mount(b"tmpfs", str(self.upper.parent).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
                _raise_errno("mounting the size-limited writable layer")
            os.mkdir(self.upper)
            os.mkdir(self.work)
        if _libc.mount(b"overlay", str(self.merged).encode(), b"overlay", 0, self.options().encode()) != 0:
            _raise_errno("mounting the overlay")


def enter_private_mount_namespace() -> bool:
    """Give the calling process (the server, before it starts any thread) a mount
    namespace of its own that still receives the host's mounts: whatever it mounts
    (zygote stages, network namespace names) goes away with it, however it ends, instead
    of staying behind on the host. False where that is not possible (not root)."""
    if os.geteuid() != 0 or _libc.unshare(CLONE_NEWNS) != 0:
        return False
    if _libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None) != 0:
        _raise_errno("making / a slave mount")
    return True


def _raise_errno(what: str) -> None:
    errno = ctypes.get_errno()
    raise OSError(errno, f"{what}: {os.strerror(errno)}")


def available() -> str | None:
    """None when overlay root filesystems can be made here; else why not."""
    if os.geteuid() != 0:
        return "Homeport builds images and runs containers on overlayfs, which needs the server to run as root"
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
