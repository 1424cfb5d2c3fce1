"""CRIU, run by the node (as the host's root) in a container's namespaces: dump a process
tree to disk, restore one into another container.

CRIU is not Debian 12's (3.17 fails on recent kernels) but Debian 13's, unpacked with its
own glibc by scripts/install-criu into HOMEPORT_CRIU_DIR (default /var/cache/homeport/criu)
and run through that directory's loader.

How it is run, and why:
- In the container's PID, mount, network, UTS and IPC namespaces (nsenter), so that CRIU
  dumps a plain process tree: no namespaces and no mounts of its own, files by their paths
  in the container's root. The restore runs the same way in a new container laid out alike
  (the same layers at the same paths), so those paths open the same files there.
- Not in the container's user namespace: reading a seccomp filter (which the container
  has) takes CAP_SYS_ADMIN in the initial one. Containers that are snapshotted or restored
  therefore start from bubblewrap as root without a user namespace of their own (as every
  container that is not forked from a zygote does), without capabilities.
- CRIU, its libraries and the images directory are reached through descriptors opened on
  the host (/proc/self/fd/N inside), so none of them is ever mounted where a container
  could write to it: a container never touches an image another container restores from.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

DEFAULT_DIRECTORY = Path("/var/cache/homeport/criu")
LOADER = "usr/lib64/ld-linux-x86-64.so.2"
LIBRARIES = "usr/lib/x86_64-linux-gnu"
BINARY = "usr/sbin/criu"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
DUMP_TIMEOUT_S = 120.0
# A restore reads its pages from disk: a few seconds, plus time for a large snapshot.
RESTORE_TIMEOUT_S = 5.0
RESTORE_BYTES_PER_S = 100 * 2**20


class CriuError(Exception):
    """A dump or restore failed; the message ends with CRIU's own last error lines."""


def directory() -> Path:
    return Path(os.environ.get("HOMEPORT_CRIU_DIR") or DEFAULT_DIRECTORY)


def installed() -> Path | None:
    """Where CRIU is unpacked (by this version of scripts/install-criu: its loader patched
    to read no files of the container's, an empty plugin directory), or None: then no
    container is snapshotted (the README says how to install it)."""
    root = directory()
    parts = (LOADER, LIBRARIES, BINARY, "empty")
    return root if all((root / part).exists() for part in parts) else None


# sh -c: join the cgroups named before "--" (their cgroup.procs files), then exec the rest.
JOIN_THEN_EXEC = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
KDAT_INSIDE = "/run/criu.kdat"  # where CRIU looks for its cache of the kernel's features


def make_kdat_cache() -> Path | None:
    """CRIU's cache of what this kernel supports: CRIU keeps it only on a tmpfs, and probing
    the kernel without it costs about 70 ms of every dump and restore. Made at start by
    `criu check` in a mount namespace of its own with a tmpfs at /run, then copied into a
    directory of this process's own under /dev/shm; the containers CRIU works in get it
    read-only at /run/criu.kdat (what the kernel supports is no secret, and they cannot
    change it). None if it could not be made (CRIU then probes every time)."""
    root = installed()
    if root is None:
        return None
    directory = Path(tempfile.mkdtemp(prefix="homeport-criu-", dir="/dev/shm"))
    atexit.register(shutil.rmtree, directory, True)
    cache = directory / "criu.kdat"
    criu = " ".join([str(root / LOADER), "--library-path", str(root / LIBRARIES), str(root / BINARY)])
    script = f"mount -t tmpfs tmpfs /run && {criu} check >/dev/null 2>&1 && cp {KDAT_INSIDE} {cache}"
    made = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True
    )
    return cache if made.returncode == 0 and cache.is_file() else None


def _command(root_fd: int, arguments: list[str]) -> list[str]:
    root = f"/proc/self/fd/{root_fd}"
    return [f"{root}/{LOADER}", "--library-path", f"{root}/{LIBRARIES}", f"{root}/{BINARY}", *arguments]


def _last_errors(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [
        line.strip() for line in lines if "Error" in line and "tun.c" not in line and "rlimit" not in line
    ]
    return "; ".join(errors[-3:]) or (lines[-1].strip() if lines else "(empty log)")


async def _run(
    anchor_pid: int,
    images: Path,
    arguments: list[str],
    log: Path,
    timeout_s: float,
    cgroup_procs: tuple[Path, ...] = (),
    inherited: tuple[int, ...] = (),
    namespaces: tuple[str, ...] = ("-p", "-m", "-n", "-u", "-i"),
) -> None:
    """CRIU in the container `anchor_pid`'s namespaces and, first, the cgroups whose
    `cgroup.procs` files are given; its log (and nsenter's errors) in `log`, on the host.
    Past `timeout_s` it is killed with everything it started."""
    root = installed()
    if root is None:
        raise CriuError(f"CRIU is not installed in {directory()}; run scripts/install-criu")
    opened: list[int] = []
    try:
        images_fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
        opened.append(images_fd)
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        opened.append(root_fd)
        log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        opened.append(log_fd)
        work_fd = os.open(log.parent, os.O_RDONLY | os.O_DIRECTORY)
        opened.append(work_fd)
        host = f"/proc/self/fd/{root_fd}"
        # Nothing of the container's is read as configuration: no configuration files, no
        # plugins, no network locking tools; its statistics go with the log, never into
        # the images (which restores only read).
        arguments = [
            *arguments, "--no-default-config", "-L", f"{host}/empty", "--network-lock", "skip",
            "-D", f"/proc/self/fd/{images_fd}", "-W", f"/proc/self/fd/{work_fd}", "-o", f"/proc/self/fd/{log_fd}",
        ]  # fmt: skip
        # CRIU sees these descriptors at the same numbers (pass_fds), through nsenter's exec.
        # The cgroups are joined by a shell, not in a preexec_fn: that would make Python
        # fork() the whole server (tens of ms) where it otherwise uses vfork().
        process = await asyncio.create_subprocess_exec(
            "sh", "-c", JOIN_THEN_EXEC, "sh", *map(str, cgroup_procs), "--",
            NSENTER, "-t", str(anchor_pid), *namespaces, "--",
            *_command(root_fd, arguments),
            stdin=asyncio.subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, env=ENVIRONMENT,
            pass_fds=(images_fd, root_fd, log_fd, work_fd, *inherited), start_new_session=True,
        )  # fmt: skip
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except BaseException as error:
            # nsenter forked CRIU, which forks helpers: the whole session goes.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            if isinstance(error, TimeoutError):
                raise CriuError(f"criu {arguments[0]} did not finish within {timeout_s:.0f} s") from None
            raise
        if process.returncode != 0:
            raise CriuError(f"criu {arguments[0]} failed: {_last_errors(log)}")
    finally:
        for fd in opened:
            os.close(fd)


async def dump(anchor_pid: int, pid_inside: int, images: Path, log: Path) -> None:
    """Dump the process tree rooted at `pid_inside` (its PID in its own namespace) of the
    container `anchor_pid` (any process of it, as the host numbers it) into `images`. The
    tree is left stopped (SIGCONT goes on), so that what it has on disk can be copied as
    it was."""
    arguments = ["dump", "-t", str(pid_inside), "--leave-stopped"]
    await _run(anchor_pid, images, arguments, log, DUMP_TIMEOUT_S)


async def set_last_pid(anchor_pid: int, last_pid: int) -> None:
    """The next PID the container's PID namespace hands out is last_pid + 1: so that CRIU,
    which is numbered in it, never takes a PID the restored tree needs. The sysctl applies to
    the writer's own PID namespace, hence a child of nsenter -p; the host's /proc/sys, since
    the container's is read-only."""
    process = await asyncio.create_subprocess_exec(
        NSENTER, "-t", str(anchor_pid), "-p", "--", "sh", "-c",
        f"echo {int(last_pid)} > /proc/sys/kernel/ns_last_pid",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, error = await process.communicate()
    if process.returncode != 0:
        raise CriuError(f"could not set the container's next PID: {error.decode(errors='replace').strip()}")


async def restore(
    anchor_pid: int, images: Path, log: Path, pipes: dict[str, int], cgroup_procs: tuple[Path, ...]
) -> None:
    """Restore the tree dumped in `images` into the container `anchor_pid`, detached (its
    root is then the child of the container's PID 1). `pipes` maps the dumped tree's pipes
    ("pipe:[inode]") to this container's descriptors, which take their place; CRIU first
    joins the container's cgroups (their `cgroup.procs` files), where the restored tree
    then stays."""
    arguments = ["restore", "--restore-detached", "--manage-cgroups=ignore"]
    for resource, fd in sorted(pipes.items()):
        arguments += ["--inherit-fd", f"fd[{fd}]:{resource}"]
    size = sum(f.stat().st_size for f in images.iterdir() if f.is_file())
    timeout_s = RESTORE_TIMEOUT_S + size / RESTORE_BYTES_PER_S
    await _run(anchor_pid, images, arguments, log, timeout_s, cgroup_procs, tuple(pipes.values()))
