"""The process runtime: each container is the client's own entrypoint
(`python -m modal._container_entrypoint`) in a private mount namespace (bubblewrap)
where the app's mounted files appear at their absolute paths (`/root/...`) and the
client package at `/pkg`, as the client expects.

This runtime lays files out but does not isolate: the process sees the host's
filesystem and network. The sandboxed runtime (issue 4) replaces it.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

from homeport.worker import cgroups
from homeport.worker.runtime import CONTROL_SOCKET, ContainerSpec, ContainerStartError, OutputCallback

log = logging.getLogger("homeport.runtime")

ARGUMENTS_FILE = "container_arguments.bin"
READ_CHUNK = 64 * 1024


class ProcessContainer:
    def __init__(
        self,
        task_id: str,
        process: asyncio.subprocess.Process,
        readers: list[asyncio.Task[None]],
        work_dir: Path,
        cgroup: cgroups.Cgroup | None,
    ):
        self.task_id = task_id
        self._process = process
        self._readers = readers
        self._work_dir = work_dir
        self._cgroup = cgroup
        self._oom_killed = False

    async def wait(self) -> int:
        code = await self._process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._cgroup is not None:
            self._oom_killed = self._cgroup.oom_killed()
            self._cgroup.remove()
        shutil.rmtree(self._work_dir, ignore_errors=True)
        return code

    def exit_reason(self) -> str | None:
        if self._oom_killed and self._cgroup is not None:
            return f"the container exceeded its memory limit of {self._cgroup.limits.memory_mib} MiB"
        return None

    def interrupt(self) -> None:
        # To the entrypoint itself: bubblewrap would die of SIGINT and take the whole
        # PID namespace down with SIGKILL before @exit handlers and volume commits ran.
        entrypoints = [pid for pid in _descendants(self._process.pid) if _is_entrypoint(pid)]
        if not entrypoints:
            self._signal(signal.SIGINT)
        for pid in entrypoints:
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self._process.returncode is None:
            try:
                # The container is its own process group (bwrap and the entrypoint).
                os.killpg(self._process.pid, signum)
            except ProcessLookupError:
                pass


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            children = [int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            continue
        found.extend(children)
        pending.extend(children)
    return found


def _is_entrypoint(pid: int) -> bool:
    try:
        return b"modal._container_entrypoint" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _materialize(spec: ContainerSpec, tree: Path) -> list[str]:
    """Lay out mounted files under `tree` (mirroring their absolute paths); returns
    the top-level directories to bind into the container."""
    for mounted in spec.files:
        relative = mounted.container_path.lstrip("/")
        top = relative.split("/")[0]
        if top != "root" and Path("/", top).exists():
            # Without an overlay, a file inside a directory shared with the host
            # (/etc, /usr, ...) would have to be written into the host's own tree.
            raise ContainerStartError(
                f"the process runtime cannot place {mounted.container_path}: /{top} is shared with the host; "
                "mount files under /root or under a new top-level directory (e.g. /data) instead"
            )
        target = tree / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(mounted.host_path, target)  # blobs are immutable: share, don't copy
        except OSError:
            shutil.copyfile(mounted.host_path, target)
        # Hard links share one inode, so a different mode needs a private copy.
        if (target.stat().st_mode & 0o7777) != (mounted.mode & 0o7777):
            if target.stat().st_nlink > 1:
                target.unlink()
                shutil.copyfile(mounted.host_path, target)
            os.chmod(target, mounted.mode & 0o7777)
    (tree / "root").mkdir(parents=True, exist_ok=True)
    return sorted(entry.name for entry in tree.iterdir())


def _root_arguments(own: set[str]) -> list[str]:
    """bwrap arguments for a fresh root (a tmpfs) holding the host's top-level entries,
    except those the container brings itself. New mount points (/pkg, /data, ...) are
    then made in that tmpfs, never in the host's own tree."""
    arguments = ["--tmpfs", "/", "--proc", "/proc"]
    for entry in sorted(os.scandir("/"), key=lambda e: e.name):
        if entry.name in own or entry.name == "proc":
            continue
        path = f"/{entry.name}"
        if entry.is_symlink():
            arguments += ["--symlink", os.readlink(path), path]
        elif entry.is_dir():
            arguments += ["--dev-bind", path, path]
    return arguments


class ProcessRuntime:
    name = "process"

    def __init__(self, python: str) -> None:
        self.python = python
        # The interpreter's own installation must stay visible even when it lives under
        # a directory a mount covers (e.g. pyenv under /root): those paths are bound back.
        output = subprocess.check_output(
            [python, "-c", "import sys, os; print(sys.prefix); print(sys.base_prefix); print(os.path.realpath(sys.executable))"],
            text=True,
        )
        prefix, base_prefix, executable = output.split("\n")[:3]
        self.python_paths = sorted({prefix, base_prefix, str(Path(executable).parent.parent)})
        self.limits_enabled = cgroups.available()
        if not self.limits_enabled:
            log.warning("cgroup v1 (memory, cpu, pids) is not writable here: containers run without resource limits")

    async def start(self, spec: ContainerSpec, on_output: OutputCallback) -> ProcessContainer:
        spec.work_dir.mkdir(parents=True, exist_ok=True)
        arguments_path = spec.work_dir / ARGUMENTS_FILE
        arguments_path.write_bytes(spec.container_arguments)
        tree = spec.work_dir / "fs"
        top_level = await asyncio.to_thread(_materialize, spec, tree)
        for directory in spec.directories:
            top = directory.container_path.lstrip("/").split("/")[0]
            if not top or (top != "root" and top not in top_level and Path("/", top).exists()):
                raise ContainerStartError(
                    f"the process runtime cannot mount a volume at {directory.container_path}: /{top} is shared with "
                    "the host; use a path under /root or a new top-level directory (e.g. /data)"
                )
        own = {*top_level, "pkg", "__homeport", *(d.container_path.lstrip("/").split("/")[0] for d in spec.directories)}
        # Own PID, IPC and UTS namespaces: the container sees only its own processes (and
        # they all end with it), and its hostname is its id. Network and files stay shared
        # with the host until the sandboxed runtime (issue 4).
        # No capabilities (bubblewrap always sets no-new-privileges): mount, module
        # loading, reboot, raw network access and the like are refused inside.
        command = [
            "bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--hostname", spec.task_id, "--cap-drop", "ALL", *_root_arguments(own),
        ]
        if not spec.network:
            command.append("--unshare-net")  # block_network=True: loopback only
        if spec.control_socket is not None:
            command += ["--bind", str(spec.control_socket), CONTROL_SOCKET]
        for name in top_level:
            command += ["--bind", str(tree / name), f"/{name}"]
        for path in self.python_paths:
            if path.lstrip("/").split("/")[0] in top_level:
                command += ["--ro-bind", path, path]
        for directory in spec.directories:
            command += ["--ro-bind" if directory.read_only else "--bind", str(directory.host_path), directory.container_path]
        command += ["--ro-bind", str(spec.client_package_dir), "/pkg", "--chdir", "/root", "--"]
        command += [self.python, "-m", "modal._container_entrypoint"]
        environment = dict(spec.environment)
        environment["MODAL_CONTAINER_ARGUMENTS_PATH"] = str(arguments_path)
        cgroup = None
        if self.limits_enabled:
            cgroup = cgroups.Cgroup(spec.task_id, cgroups.Limits(memory_mib=spec.memory_mib, cpu_cores=spec.cpu_cores))
            cgroup.create()
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
            start_new_session=True,
            preexec_fn=cgroup.join if cgroup is not None else None,
        )
        readers = [
            asyncio.create_task(_pump(process.stdout, 1, on_output)),
            asyncio.create_task(_pump(process.stderr, 2, on_output)),
        ]
        return ProcessContainer(spec.task_id, process, readers, spec.work_dir, cgroup)


async def _pump(stream: asyncio.StreamReader | None, fd: int, on_output: OutputCallback) -> None:
    if stream is None:
        return
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        chunk = await stream.read(READ_CHUNK)
        if not chunk:
            on_output(fd, decoder.decode(b"", final=True))
            return
        on_output(fd, decoder.decode(chunk))
