"""The container runtime interface the control plane starts containers through.

A runtime turns a `ContainerSpec` (what to run, with which files and environment)
into a running `Container`. The scheduler never looks behind this interface, so the
sandboxed runtime and real images slot in without touching the control plane.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from homeport.agent import cgroups

OutputCallback = Callable[[int, str], None]  # (file descriptor 1|2, text)

# Where a container finds the control plane: MODAL_SERVER_URL is unix://<this>.
CONTROL_DIR = "/__homeport"
CONTROL_SOCKET = f"{CONTROL_DIR}/grpc.sock"
ARGUMENTS_PATH = f"{CONTROL_DIR}/container_arguments.bin"


class ContainerStartError(Exception):
    """The container cannot start as specified; the message says why and what to change."""


@dataclasses.dataclass(frozen=True)
class MountedFile:
    container_path: str  # absolute
    host_path: Path  # immutable content (a blob)
    mode: int


@dataclasses.dataclass(frozen=True)
class BoundDirectory:
    host_path: Path
    container_path: str  # absolute
    read_only: bool


@dataclasses.dataclass(frozen=True)
class ContainerSpec:
    task_id: str
    app_id: str
    function_id: str
    container_arguments: bytes  # serialized api_pb2.ContainerArguments
    environment: dict[str, str]
    files: list[MountedFile]
    client_package_dir: Path | None  # appears at /pkg (sandboxes have none)
    work_dir: Path  # scratch space owned by this container, removed when it stops
    image_layers: list[Path]  # the image's root filesystem: overlay lowerdirs, topmost first
    working_dir: str = "/root"
    directories: list[BoundDirectory] = dataclasses.field(default_factory=list)  # e.g. volumes
    control_socket: Path | None = None  # the server's gRPC socket, at CONTROL_SOCKET inside
    network: bool = True  # False (block_network=True): only a loopback interface
    # With a network: the IPv4 ranges it may send to (cidr_allowlist); None: anywhere.
    egress_cidrs: tuple[str, ...] | None = None
    memory_mib: int = 0  # hard memory limit; 0 = none
    cpu_cores: float = 0.0  # CPU quota in cores; 0 = none
    disk_mib: int = 0  # the writable layer's size limit (ephemeral_disk=); 0 = the host disk's
    gpu_devices: list[int] = dataclasses.field(default_factory=list)  # /dev/nvidiaN made visible
    # Keep the writable layer here (upper_dir/fs) instead of throwing it away: an
    # Image.run_function build step, whose writes become an image layer.
    upper_dir: Path | None = None
    command: tuple[str, ...] = ("python", "-m", "modal._container_entrypoint")
    hostname: str = ""  # "": the task id
    # May be forked from this zygote (agent/zygote.py) instead of started afresh.
    zygote: object | None = None  # a zygote.ZygoteImage
    # Its function version's memory snapshot (agent/memory_snapshots.py): taken from this
    # container, or restored into it if this node has one; "": none.
    memory_snapshot: str = ""


class Holdings:
    """What a started container holds until it has exited, released in order by `release`:
    its output readers (drained), what `on_exit` lists (its network, its mounts), its
    cgroup (asked first whether it ran out of memory) and its work directory."""

    def __init__(
        self, readers: list[asyncio.Task[None]], work_dir: Path, cgroup: cgroups.Cgroup | None
    ) -> None:
        self.readers = readers
        self.work_dir = work_dir
        self.cgroup = cgroup
        self.on_exit: list[Callable[[], None]] = []
        self.oom_killed = False
        self.usage: tuple[float, int] = (0.0, 0)  # (CPU seconds, peak memory bytes), read at exit
        self.address: str | None = None  # its address on the node's bridge, if it has one

    async def release(self) -> None:
        await asyncio.gather(*self.readers, return_exceptions=True)
        for release in self.on_exit:
            await asyncio.to_thread(release)
        if self.cgroup is not None:
            self.oom_killed = self.cgroup.oom_killed()
            self.usage = self.cgroup.usage()
            self.cgroup.remove()
        # Off the loop: removing even a few overlay directories takes the kernel ~10 ms.
        await asyncio.to_thread(shutil.rmtree, self.work_dir, True)

    def exit_reason(self) -> str | None:
        if self.oom_killed and self.cgroup is not None:
            return f"the container exceeded its memory limit of {self.cgroup.limits.memory_mib} MiB"
        return None


def shell_exit_code(code: int) -> int:
    """One convention for a container killed by a signal, whichever process reported it:
    the shell's 128 + N (Python's subprocess says -N; a PID 1 in a namespace says 128 + N)."""
    return 128 - code if code < 0 else code


def describe_exit(code: int) -> str:
    """ "exited with code 137 (killed by signal 9)" for a shell-style exit code."""
    if code > 128 and code - 128 < 65:
        return f"exited with code {code} (killed by signal {code - 128})"
    return f"exited with code {code}"


class Container(Protocol):
    task_id: str
    holdings: Holdings

    async def wait(self) -> int:
        """Wait for the container to exit; returns its exit code (negative: killed by that signal)."""

    def exit_reason(self) -> str | None:
        """Why it ended, when the runtime knows better than the exit code (e.g. out of memory)."""

    def interrupt(self) -> None:
        """Ask for a graceful stop (the client runs @exit handlers on SIGINT)."""

    def kill(self) -> None:
        """Stop now."""


class Runtime(Protocol):
    name: str
    # It takes and restores memory snapshots (agent/memory_snapshots.py): only then does the
    # control plane ask a container of it to checkpoint.
    memory_snapshots: bool

    async def start(self, spec: ContainerSpec, on_output: OutputCallback) -> Container: ...

    def checkpoint(self, task_id: str) -> None:
        """ContainerCheckpoint from one of its containers."""

    def prewarm(self, zygote: object) -> None:
        """Get ready to start containers of this kind quickly (a zygote.ZygoteImage)."""

    def sweep(self) -> None:
        """Periodic housekeeping (idle zygotes)."""

    async def shutdown(self) -> None:
        """Stop what the runtime keeps running between containers."""
