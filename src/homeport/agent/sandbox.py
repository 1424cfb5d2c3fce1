"""The sandbox runtime: each container is the client's own entrypoint
(`python -m modal._container_entrypoint`, the image's Python) in bubblewrap, on a root
filesystem of its own: the image's layers read-only under an overlayfs, a fresh writable
layer on top that is thrown away when it exits, the app's mounted files in a layer of
their own, the client package at /pkg. The host's files are not visible; its own PID,
IPC and UTS namespaces; no capabilities; a seccomp filter (agent/seccomp.py); cgroup
limits when set.
"""

from __future__ import annotations

import asyncio
import codecs
import dataclasses
import functools
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from homeport.agent import cgroups, gpus, rootfs, seccomp
from homeport.agent.network import NETNS_DIR, Attachment, BridgeNetwork, NetworkError
from homeport.agent.runtime import (
    ARGUMENTS_PATH,
    CONTROL_SOCKET,
    ContainerSpec,
    ContainerStartError,
    Holdings,
    OutputCallback,
)
from homeport.agent.zygote_child import ForkedContainer, ZygoteUnavailable
from homeport.agent.zygote_image import ZygoteImage
from homeport.agent.zygote_pool import ZygotePool

log = logging.getLogger("homeport.runtime")

ARGUMENTS_FILE = "container_arguments.bin"
READ_CHUNK = 64 * 1024


class ProcessContainer:
    kind = "fresh"  # a fresh interpreter (the metrics' container kinds: fresh, forked, gvisor)

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
        self.holdings = Holdings(readers, work_dir, cgroup)

    @property
    def pid(self) -> int:
        """bubblewrap's, as the host numbers it."""
        return self._process.pid

    async def wait(self) -> int:
        code = await self._process.wait()
        await self.holdings.release()
        return code

    def exit_reason(self) -> str | None:
        return self.holdings.exit_reason()

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
            children = [
                int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()
            ]
        except OSError:
            continue
        found.extend(children)
        pending.extend(children)
    return found


def _is_entrypoint(pid: int) -> bool:
    """The client's entrypoint; not bubblewrap, whose arguments name it too."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"modal._container_entrypoint" in arguments and not arguments.split(b"\0", 1)[0].endswith(b"bwrap")


@dataclasses.dataclass(frozen=True)
class Launch:
    """How a container's process is started when not the ordinary way (memory snapshots,
    agent/memory_snapshots.py): never from a zygote, with these differences."""

    command: tuple[str, ...]  # instead of spec.command
    options: tuple[str, ...] = ()  # more bubblewrap options
    top_layer: Path | None = None  # a read-only layer above all the others
    closed_stdin: bool = False  # a pipe nobody writes to instead of the host's /dev/null
    extra_fds: tuple[int, ...] = ()


# Mounted files laid out without leaving the event loop: a function's own module and a
# few more (each a hard link to its blob; a trip to a thread costs a cold start 1-4 ms).
MATERIALIZED_ON_THE_LOOP = 8


def _materialize(spec: ContainerSpec, tree: Path) -> None:
    """Lay out mounted files under `tree` (mirroring their absolute paths): a read-only
    overlay layer, so a container writing to one copies it up and never touches the blob."""
    for mounted in spec.files:
        target = tree / mounted.container_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(mounted.host_path, target)  # blobs are immutable: share, don't copy
        except FileExistsError:
            target.unlink()
            os.link(mounted.host_path, target)
        except OSError:
            shutil.copyfile(mounted.host_path, target)
        # Hard links share one inode, so a different mode needs a private copy.
        if (target.stat().st_mode & 0o7777) != (mounted.mode & 0o7777):
            if target.stat().st_nlink > 1:
                target.unlink()
                shutil.copyfile(mounted.host_path, target)
            os.chmod(target, mounted.mode & 0o7777)


# bubblewrap runs as root on the host before any sandboxing: it gets a fixed environment
# and a fixed path, never the container's (an image's LD_PRELOAD or PATH would otherwise
# run code as root on the host). The container's environment is passed as arguments.
BWRAP = shutil.which("bwrap") or "/usr/bin/bwrap"
SANDBOX_TOOL_ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


# A container's uid 0 is the host's uid 0 without capabilities, and the kernel lets the
# global root write most sysctls by plain file permissions (kernel.core_pattern would run
# a program of the container's choosing as root on the host). bubblewrap running as root
# leaves /proc/sys writable, so these are bound read-only over the container's /proc.
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus")


@functools.cache
def proc_arguments() -> tuple[str, ...]:
    """A private /proc with the host kernel's settings read-only (see PROC_READ_ONLY)."""
    arguments = ["--proc", "/proc"]
    for entry in PROC_READ_ONLY:
        if os.path.exists(f"/proc/{entry}"):
            arguments += ["--ro-bind", f"/proc/{entry}", f"/proc/{entry}"]
    return tuple(arguments)


def environment_arguments(environment: dict[str, str]) -> list[str]:
    arguments = ["--clearenv"]
    for name, value in environment.items():
        arguments += ["--setenv", name, value]
    return arguments


async def spawn_bwrap(
    options: list[str],
    environment: dict[str, str],
    command: list[str],
    enter: Callable[[], None],
    attachment: Attachment | None,
    merge_stderr: bool,
    seccomp_program: bytes | None = None,
    extra_fds: tuple[int, ...] = (),
    prefix: tuple[str, ...] | list[str] = (),
    closed_stdin: bool = False,
) -> asyncio.subprocess.Process:
    """Start `command` under bubblewrap with `options`, the seccomp filter (the container
    filter unless given) and `environment` (as arguments, see BWRAP); behind `prefix` (a
    launcher that ends by executing bubblewrap) when given. Between fork and exec the child moves into the attachment's
    network namespace, then calls `enter` (cgroup, overlay root). Shared by containers and
    image build steps."""
    seccomp_fd = seccomp.program_fd(seccomp_program) if seccomp.supported() else None
    arguments = [*prefix, BWRAP, *options]
    if seccomp_fd is not None:
        arguments += ["--seccomp", str(seccomp_fd)]
    arguments += [*environment_arguments(environment), "--", *command]
    netns_fd = os.open(NETNS_DIR / attachment.namespace, os.O_RDONLY | os.O_CLOEXEC) if attachment else None

    def in_child() -> None:
        if attachment is not None and netns_fd is not None:
            attachment.enter_in_child(netns_fd)
        enter()

    try:
        process = await asyncio.create_subprocess_exec(
            *arguments,
            stdin=asyncio.subprocess.PIPE if closed_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
            env=SANDBOX_TOOL_ENVIRONMENT,
            start_new_session=True,
            preexec_fn=in_child,
            pass_fds=((seccomp_fd,) if seccomp_fd is not None else ()) + extra_fds,
        )
        if process.stdin is not None:
            process.stdin.close()  # its reads see the end at once, as from /dev/null
        return process
    finally:
        for fd in (seccomp_fd, netns_fd):
            if fd is not None:
                os.close(fd)


def _gpu_device_nodes(indices: list[int]) -> list[str]:
    """The device nodes of the assigned GPUs and the driver's shared ones; no others."""
    nodes = [f"/dev/nvidia{index}" for index in indices]
    if indices:
        nodes += ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"]
    return [node for node in nodes if os.path.exists(node)]


@dataclasses.dataclass
class PreparedContainer:
    """What every runtime lays out before it starts a container (see `prepare`)."""

    overlay: rootfs.Overlay
    hosts: Path
    arguments_path: Path
    environment: dict[str, str]
    cgroup: cgroups.Cgroup | None

    def release(self, spec: ContainerSpec) -> None:
        """Undo `prepare` for a container that never started."""
        if self.cgroup is not None:
            self.cgroup.remove()
        shutil.rmtree(spec.work_dir, ignore_errors=True)

    def enter(self) -> None:
        """Between fork and exec: join the cgroup, then the private root filesystem."""
        if self.cgroup is not None:
            self.cgroup.join()
        self.overlay.mount_in_child()

    def enter_with_sys(self) -> None:
        """`enter`, then a read-only /sys of the container's own (see rootfs.mount_sys)."""
        self.enter()
        rootfs.mount_sys(self.overlay.merged, self.cgroup.paths if self.cgroup is not None else {})


async def prepare(
    spec: ContainerSpec, limits_enabled: bool, top_layer: Path | None = None, create_cgroup: bool = True
) -> PreparedContainer:
    """The container's work directory: its arguments, the mounts layer, /etc/hosts, the
    overlay (mounted later, in the child) and its cgroup (made here unless the caller makes
    it: a zygote's spare brings one of its own, which becomes it)."""
    spec.work_dir.mkdir(parents=True, exist_ok=True)
    arguments_path = spec.work_dir / ARGUMENTS_FILE
    arguments_path.write_bytes(spec.container_arguments)
    mounts_layer = spec.work_dir / "mounts"
    if len(spec.files) <= MATERIALIZED_ON_THE_LOOP:
        _materialize(spec, mounts_layer)  # a few hard links: cheaper than a trip to a thread
    else:
        await asyncio.to_thread(_materialize, spec, mounts_layer)
    hosts = spec.work_dir / "hosts"
    hostname = spec.hostname or spec.task_id
    hosts.write_text(f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    lower = ([mounts_layer] if rootfs.has_entries(mounts_layer) else []) + list(spec.image_layers)
    if top_layer is not None:
        lower.insert(0, top_layer)
    upper_root = spec.upper_dir or spec.work_dir / "writable"
    overlay = rootfs.Overlay(
        lower,
        upper_root / "fs",
        upper_root / "work",
        spec.work_dir / "root",
        size_mib=0 if spec.upper_dir else spec.disk_mib,
    )
    try:
        overlay.prepare()
    except rootfs.RootfsError as error:
        raise ContainerStartError(str(error)) from None
    environment = dict(spec.environment)
    environment["MODAL_CONTAINER_ARGUMENTS_PATH"] = ARGUMENTS_PATH
    cgroup = None
    if limits_enabled:
        cgroup = cgroups.Cgroup(
            spec.task_id, cgroups.Limits(memory_mib=spec.memory_mib, cpu_cores=spec.cpu_cores)
        )
        if create_cgroup:
            cgroup.create()
    return PreparedContainer(overlay, hosts, arguments_path, environment, cgroup)


class SandboxRuntime:
    name = "sandbox"
    memory_snapshots = False  # unless wrapped (agent/memory_snapshots.py)

    def __init__(self, network: BridgeNetwork | None = None, zygotes: ZygotePool | None = None) -> None:
        self.limits_enabled = cgroups.available()
        if not self.limits_enabled:
            log.warning(
                "cgroup v1 (memory, cpu, pids) is not writable here: containers run without resource limits"
            )
        self.network = network
        self.zygotes = zygotes

    def prewarm(self, zygote: object) -> None:
        if self.zygotes is not None and isinstance(zygote, ZygoteImage):
            self.zygotes.prewarm(zygote)

    def checkpoint(self, task_id: str) -> None:
        pass  # memory_snapshots is False: never asked

    def sweep(self) -> None:
        if self.zygotes is not None:
            self.zygotes.sweep()

    async def shutdown(self) -> None:
        if self.zygotes is not None:
            await self.zygotes.shutdown()

    async def start(
        self, spec: ContainerSpec, on_output: OutputCallback, launch: Launch | None = None
    ) -> ProcessContainer | ForkedContainer:
        zygote = None
        # Forked containers get a network namespace of their own: with no bridge (containers
        # on the host's network) they start the ordinary way.
        image = spec.zygote if isinstance(spec.zygote, ZygoteImage) else None
        forkable = (
            image is not None and image.accepts(spec) and (not spec.network or self.network is not None)
        )
        if self.zygotes is not None and image is not None and forkable and launch is None:
            zygote = await self.zygotes.get(image)
        # A forked container's cgroup is made by the zygote (agent/zygote.py, _place).
        prepared = await prepare(
            spec, self.limits_enabled, launch.top_layer if launch else None, create_cgroup=zygote is None
        )
        if zygote is not None:
            try:
                return await zygote.fork(spec, prepared, on_output)
            except ZygoteUnavailable as error:
                log.warning("container %s starts the ordinary way: %s", spec.task_id, error)
                try:
                    if prepared.cgroup is not None:
                        prepared.cgroup.create()
                except BaseException:
                    prepared.release(spec)
                    raise
            except BaseException:
                prepared.release(spec)
                raise
        attachment = None
        if spec.network and spec.egress_cidrs is not None and self.network is None:
            prepared.release(spec)
            raise ContainerStartError(
                "this node shares the host's network (no container network), so a cidr_allowlist cannot "
                "be enforced; leave it out or run the server where container networks work"
            )
        if spec.network and self.network is not None:
            try:
                attachment = await self.network.attach_in_thread(spec.task_id)
                if spec.egress_cidrs is not None:
                    await asyncio.to_thread(self.network.restrict_egress, attachment, spec.egress_cidrs)
            except NetworkError as error:
                if attachment is not None:
                    self.network.detach(attachment)
                prepared.release(spec)
                raise ContainerStartError(str(error)) from None
        try:
            container = await self._spawn(spec, prepared, attachment, on_output, launch)
        except BaseException:
            if attachment is not None and self.network is not None:
                self.network.detach(attachment)
            prepared.release(spec)
            raise
        if attachment is not None and self.network is not None:
            network, attached = self.network, attachment
            container.holdings.on_exit.append(lambda: network.detach(attached))
            container.holdings.address = attachment.address
        return container

    async def _spawn(
        self,
        spec: ContainerSpec,
        prepared: PreparedContainer,
        attachment: Attachment | None,
        on_output: OutputCallback,
        launch: Launch | None = None,
    ) -> ProcessContainer:
        # Own PID, IPC and UTS namespaces: the container sees only its own processes (and
        # they all end with it), and its hostname is its id. No capabilities (bubblewrap
        # also sets no-new-privileges): mount, module loading, raw sockets and the like
        # are refused inside.
        command = [
            "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--hostname", spec.hostname or spec.task_id, "--cap-drop", "ALL",
            "--bind", str(prepared.overlay.merged), "/", "--dev", "/dev", *proc_arguments(),
            "--ro-bind", str(prepared.hosts), "/etc/hosts",
            "--ro-bind", str(prepared.arguments_path), ARGUMENTS_PATH,
        ]  # fmt: skip
        if spec.network:
            # Its own network namespace (entered before exec, see below) when the node has a
            # container network; the host's otherwise.
            if Path("/etc/resolv.conf").is_file():
                command += ["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"]
        else:
            command.append("--unshare-net")  # block_network=True: loopback only
        if spec.control_socket is not None:
            # Read-only: connecting needs no write access to the mount, and uid 0 inside
            # owns the host's socket file (a chmod would cut every container off the server).
            command += ["--ro-bind", str(spec.control_socket), CONTROL_SOCKET]
        for node in _gpu_device_nodes(spec.gpu_devices):
            command += ["--dev-bind", node, node]
        if spec.gpu_devices:
            for path in gpus.driver_files():
                command += ["--ro-bind", path, path]
        for directory in spec.directories:
            command += [
                "--ro-bind" if directory.read_only else "--bind",
                str(directory.host_path),
                directory.container_path,
            ]
        if spec.client_package_dir is not None:
            command += ["--ro-bind", str(spec.client_package_dir), "/pkg"]
        command += ["--dir", spec.working_dir, "--chdir", spec.working_dir]
        if launch is not None:
            command += launch.options
        process = await spawn_bwrap(
            command,
            prepared.environment,
            list(launch.command if launch is not None else spec.command),
            prepared.enter_with_sys,
            attachment,
            merge_stderr=False,
            extra_fds=launch.extra_fds if launch is not None else (),
            closed_stdin=launch is not None and launch.closed_stdin,
        )
        readers = [
            asyncio.create_task(pump_output(process.stdout, 1, on_output)),
            asyncio.create_task(pump_output(process.stderr, 2, on_output)),
        ]
        return ProcessContainer(spec.task_id, process, readers, spec.work_dir, prepared.cgroup)


async def pump_output(stream: asyncio.StreamReader | None, fd: int, on_output: OutputCallback) -> None:
    if stream is None:
        return
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        chunk = await stream.read(READ_CHUNK)
        if not chunk:
            on_output(fd, decoder.decode(b"", final=True))
            return
        on_output(fd, decoder.decode(chunk))
