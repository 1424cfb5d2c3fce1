"""Zygotes: containers forked from a pre-started, pre-imported Python instead of started
from a fresh interpreter (15-50 ms to a running entrypoint, network included, instead of
300-450 ms of a core importing the client).

One zygote per (workspace, image, client package): `python /.homeport/zygote.py`
(agent/zygote_main.py) on the image's own Python, in bubblewrap with a user namespace of
its own (root inside, mapped to root; capabilities only over namespaces it owns), its own
PID/IPC/UTS/network namespaces, the image's root filesystem (with a throwaway writable
layer) and a seccomp filter that still refuses everything a container may not do except
making namespaces and mounts. It imports the client runtime once, never user code.

Per container, the zygote forks a child that becomes PID 1 of a new PID namespace and
enters new mount/UTS/IPC/network namespaces. The server then puts it in its cgroup and
on the bridge network and says "go": the child mounts the container's overlay root (its
mounts layer and a fresh writable layer over the zygote's root), a fresh /dev and /proc,
the same binds a bubblewrap container gets, pivots into it, drops every capability for
good, installs the container seccomp filter and forks the entrypoint. What a forked
container shares with its zygote, and why that is safe, is in the README ("Cold starts").

The container's work directory reaches the zygote through its stage: a directory bound
into the zygote read-only with slave propagation, into which the server mounts each
container's work directory (read-only but for its writable layer and writable volumes;
the zygote never sees other tasks' files).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from homeport.agent import cgroups, rootfs, seccomp
from homeport.agent.network import Attachment, BridgeNetwork, NetworkError, bring_up_loopback
from homeport.agent.runtime import (
    ARGUMENTS_PATH,
    CONTROL_SOCKET,
    ContainerSpec,
    ContainerStartError,
    Holdings,
    OutputCallback,
)
from homeport.agent.zygote_child import ForkedChild, ZygoteUnavailable, children

log = logging.getLogger("homeport.zygote")

ZYGOTE_SCRIPT = Path(__file__).with_name("zygote_main.py")
INSIDE = "/.homeport"  # where the zygote finds its script, filter, stage and sockets
STAGE_INSIDE = f"{INSIDE}/t"
# The image's root filesystem again, as a mount with nothing mounted under it: overlayfs
# refuses a lower layer with locked mounts inside (the zygote's own root has several).
IMAGE_INSIDE = f"{INSIDE}/image"
# How long a zygote may take to import the client, and a container to be forked.
READY_TIMEOUT_S = 60.0
FORK_TIMEOUT_S = 10.0
# A zygote no container has used for this long is stopped (it holds ~40 MiB).
IDLE_S = 600.0
MAX_ZYGOTES = 16
# What containers whose zygote died are reported to have exited with (PDEATHSIG took
# them): no real exit status looks like it.
LOST = -1000
SYSFS_FLAGS = rootfs.MS_RDONLY | rootfs.MS_NOSUID | rootfs.MS_NODEV | rootfs.MS_NOEXEC
ZYGOTE_LIMITS = cgroups.Limits(memory_mib=2048, pids=cgroups.DEFAULT_PIDS)
RETRY_S = 60.0  # after a zygote failed or died, before another is tried for that image


@dataclasses.dataclass(frozen=True)
class ZygoteImage:
    """What a zygote is for: containers of one workspace (never shared across workspaces),
    on one image, with one client package and start-up environment."""

    domain: str
    layers: tuple[Path, ...]
    environment: tuple[tuple[str, str], ...]
    client_package_dir: Path
    control_socket: Path | None

    def accepts(self, spec: ContainerSpec) -> bool:
        """Containers whose interpreter would start differently (a PYTHON* variable from a
        secret), need devices, keep their writable layer or bind paths outside their work
        directory start the ordinary way."""
        started = dict(self.environment)
        read_at_start = {k for k in (*started, *spec.environment) if _read_at_start(k)}
        return (
            not spec.gpu_devices
            and spec.egress_cidrs is None
            and spec.upper_dir is None
            and spec.command == ContainerSpec.command
            and all(started.get(k) == spec.environment.get(k) for k in read_at_start)
            and all(d.host_path.is_relative_to(spec.work_dir) for d in spec.directories)
        )


# A container's own variables, which nothing reads before its entrypoint runs.
PER_CONTAINER = {"MODAL_TASK_ID", "MODAL_OVERRIDE_HEADERS", "MODAL_CONTAINER_ARGUMENTS_PATH"}


def _read_at_start(name: str) -> bool:
    """Variables the interpreter or the client's modules read when they start or are
    imported (PYTHON*, MODAL_LOGLEVEL, MODAL_CONFIG_PATH, locale, time zone, ...): in a
    forked container they would keep the zygote's values, so a container whose values
    differ (set by a secret) starts the ordinary way."""
    if name in PER_CONTAINER:
        return False
    return name.startswith(("PYTHON", "MODAL_", "LC_")) or name in ("TZ", "LANG", "LANGUAGE", "HOME", "PATH")


def _release_stage(stage: Path) -> None:
    rootfs.unmount(stage)
    with contextlib.suppress(OSError):
        stage.rmdir()


def _remove(directory: Path) -> None:
    """A zygote's directory, its stage and prep mounts detached first (they hold other
    paths' contents: never delete through them)."""
    for point in (directory / "stage", directory / "prep"):
        for entry in point.iterdir() if point.is_dir() and not point.is_symlink() else []:
            rootfs.unmount(entry)
        rootfs.unmount(point)
    shutil.rmtree(directory, ignore_errors=True)


def _zygote_pid(launcher: int) -> int | None:
    """The host pid of the zygote's Python under its launcher (unshare, bubblewrap)."""
    pending = [launcher]
    while pending:
        pid = pending.pop()
        try:
            # Its launchers carry the same words among their arguments; only it starts with them.
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [
                b"python",
                f"{INSIDE}/zygote.py".encode(),
            ]:
                return pid
        except OSError:
            continue
        pending.extend(children(pid))
    return None


class ForkedContainer:
    """A container forked from a zygote (the runtime.Container interface)."""

    kind = "forked"

    def __init__(self, task_id: str, child: ForkedChild, exited: asyncio.Future[int], readers: list[asyncio.Task[None]],
                 work_dir: Path, cgroup: cgroups.Cgroup | None, stage: Path) -> None:  # fmt: skip
        self.task_id = task_id
        self._child = child  # PID 1 of its namespace
        self._exited = exited
        self.holdings = Holdings(readers, work_dir, cgroup)
        self.holdings.on_exit += [lambda: _release_stage(stage), child.close]

    async def wait(self) -> int:
        code = await self._exited
        await self.holdings.release()
        return code

    def exit_reason(self) -> str | None:
        if self.lost:
            return "its zygote exited (the container went with it)"
        return self.holdings.exit_reason()

    @property
    def lost(self) -> bool:
        """Ended by the platform, not by itself: its inputs are not its fault."""
        return self._exited.done() and self._exited.result() == LOST

    def interrupt(self) -> None:
        # PID 1 passes it on to the entrypoint: @exit handlers run and volumes commit.
        if not self._exited.done():
            self._child.signal(signal.SIGINT)

    def kill(self) -> None:
        # PID 1 of the namespace: the kernel takes every other process in it along.
        if not self._exited.done():
            self._child.signal(signal.SIGKILL)


class Zygote:
    def __init__(self, image: ZygoteImage, directory: Path) -> None:
        self.image = image
        self.directory = directory
        self.stage = directory / "stage"
        self.process: asyncio.subprocess.Process | None = None
        self.host_pid = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_used = time.monotonic()
        self._control: socket.socket | None = None
        self._forked: dict[str, asyncio.Future[int]] = {}
        self._exited: dict[str, asyncio.Future[int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.import_ms = 0.0
        self.dead = False
        self.cgroup: cgroups.Cgroup | None = None

    @property
    def alive(self) -> bool:
        return (
            not self.dead
            and self.process is not None
            and self.process.returncode is None
            and not (self.ready.done() and self.ready.exception() is not None)
        )

    @property
    def containers(self) -> int:
        return len(self._exited)

    async def start(self) -> None:
        for name in ("upper", "work", "root", "stage", "prep"):
            (self.directory / name).mkdir(parents=True, exist_ok=True)
        # The stage is a shared mount point of its own (made private first, so it leaves
        # the peer group of the filesystem it is on): what the server mounts under it
        # later shows up inside the zygote, whose copy is a slave of it (and read-only).
        # Container trees are put together under "prep", a private mount point.
        for point, propagation in (
            (self.stage, rootfs.MS_SHARED),
            (self.directory / "prep", rootfs.MS_PRIVATE),
        ):
            rootfs.bind(point, point)
            rootfs.mount(None, point, rootfs.MS_PRIVATE)
            rootfs.mount(None, point, propagation)
        container_filter = self.directory / "seccomp.bpf"
        container_filter.write_bytes(seccomp.program() if seccomp.supported() else b"")
        overlay = rootfs.Overlay(
            list(self.image.layers), self.directory / "upper", self.directory / "work", self.directory / "root",
            receive_host_mounts=True,
        )  # fmt: skip
        overlay.prepare()
        binds = [  # (host path, path inside, read-only)
            (self.image.client_package_dir, "/pkg", True),
            (ZYGOTE_SCRIPT, f"{INSIDE}/zygote.py", True),
            (container_filter, f"{INSIDE}/seccomp.bpf", True),
            (self.stage, STAGE_INSIDE, True),
        ]
        if self.image.control_socket is not None:
            binds.append((self.image.control_socket, f"{INSIDE}/grpc.sock", False))
        if Path("/etc/resolv.conf").is_file():
            binds.append((Path("/etc/resolv.conf"), f"{INSIDE}/resolv.conf", True))
        # Mount points, made in the zygote's own writable layer before it is mounted.
        upper = self.directory / "upper"
        (upper / "proc").mkdir(exist_ok=True)
        (upper / "sys").mkdir(exist_ok=True)
        (upper / IMAGE_INSIDE.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for source, inside, _ in binds:
            point = upper / inside.lstrip("/")
            point.parent.mkdir(parents=True, exist_ok=True)
            if Path(source).is_dir():
                point.mkdir(exist_ok=True)
            else:
                point.touch()
        merged = overlay.merged
        # A cgroup of its own: image code runs in it from the start (and forked containers
        # until the server moves them into theirs).
        self.cgroup = (
            cgroups.Cgroup(f"zygote-{self.directory.name}", ZYGOTE_LIMITS) if cgroups.available() else None
        )
        if self.cgroup is not None:
            self.cgroup.create()
        cgroup = self.cgroup

        def furnish() -> None:
            """Between fork and exec, still as the host's root: the overlay root and every
            bind, read-only ones remounted so. Made before the zygote's user namespace
            exists, so inside it they are locked: its capabilities cannot make them
            writable (or reveal what is under them)."""
            if cgroup is not None:
                cgroup.join()
            overlay.mount_in_child()
            # A read-only sysfs (of the host's network namespace: the zygote's own does not
            # exist yet), locked so like /proc: the kernel lets a container mount its own
            # sysfs inside only where one is visible, and only as restricted.
            rootfs.mount("sysfs", merged / "sys", SYSFS_FLAGS, "sysfs")
            # The image again, before the binds below: none of them inside it.
            rootfs.bind(merged, merged / IMAGE_INSIDE.lstrip("/"), read_only=True)
            for source, inside, read_only in binds:
                rootfs.bind(source, merged / inside.lstrip("/"), read_only)

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        # The zygote's /proc: read-only, of a PID namespace of its own, mounted (by the
        # host's mount, as the host's root) before bubblewrap makes the user namespace, so
        # every proc mounted inside later must be read-only too (agent/zygote_main.py).
        # uid 0 inside is the host's uid 0, and a writable /proc/sys would let it write
        # host sysctls such as kernel.core_pattern.
        prefix = [
            "unshare", "--pid", "--fork", "--kill-child", "/bin/sh", "-c",
            'mount -t proc -o ro,nosuid,nodev,noexec proc "$0" && exec "$@"', str(merged / "proc"),
        ]  # fmt: skip
        options = [
            # What making the containers' namespaces and overlay mounts takes (overlayfs
            # copies up with the mounter's file capabilities), but no CAP_NET_ADMIN or
            # CAP_NET_RAW: the zygote has no say over its containers' networks.
            "--die-with-parent", "--unshare-user", "--uid", "0", "--gid", "0",
            "--cap-drop", "CAP_NET_ADMIN", "--cap-drop", "CAP_NET_RAW", "--cap-drop", "CAP_SYS_PTRACE",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
            "--bind", str(merged), "/", "--dev", "/dev",
        ]  # fmt: skip
        environment = {**dict(self.image.environment), "HOMEPORT_ZYGOTE_FD": str(theirs.fileno())}
        from homeport.agent.sandbox import spawn_bwrap  # sandbox imports this module

        zygote_filter = seccomp.program(for_zygote=True) if seccomp.supported() else None
        try:
            self.process = await spawn_bwrap(
                options, environment, ["python", f"{INSIDE}/zygote.py"], furnish, None, merge_stderr=True,
                seccomp_program=zygote_filter, extra_fds=(theirs.fileno(),), prefix=prefix,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._control = ours
        self._tasks = [
            asyncio.create_task(self._read_control()),
            asyncio.create_task(self._read_log()),
        ]
        await asyncio.wait_for(asyncio.shield(self.ready), READY_TIMEOUT_S)

    async def _read_log(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            log.info("zygote %s: %s", self.directory.name, line.decode(errors="replace").rstrip())

    async def _read_control(self) -> None:
        assert self._control is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(self._control, 1 << 16)
                if not data:
                    break
                self._on_message(json.loads(data))
        except OSError as error:
            log.warning("zygote %s: control channel failed: %s", self.directory.name, error)
        except (ValueError, KeyError, TypeError) as error:  # it runs image code: its words are checked
            log.warning("zygote %s sent a malformed message (%r); stopping it", self.directory.name, error)
            if self.process is not None and self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
        finally:
            self._gone("its zygote exited")

    def _on_message(self, message: dict) -> None:  # type: ignore[type-arg]
        op, task = str(message["op"]), str(message.get("task", ""))
        if op == "ready":
            self.import_ms = message["import_ms"]
            self.host_pid = (self.process and _zygote_pid(self.process.pid)) or 0
            log.info(
                "zygote %s ready: the client runtime imported in %.0f ms", self.directory.name, self.import_ms
            )
            if not self.ready.done():
                self.ready.set_result(None)
        elif op == "failed":
            log.warning(
                "zygote %s could not start (containers start the ordinary way): %s",
                self.directory.name,
                message["error"],
            )
            if not self.ready.done():
                self.ready.set_exception(ZygoteUnavailable(message["error"]))
        elif op == "forked":
            future = self._forked.pop(task, None)
            if future is not None and not future.done():
                future.set_result(int(message["pid"]))
        elif op == "exited":
            forked = self._forked.pop(task, None)
            if forked is not None and not forked.done():
                forked.set_exception(
                    ZygoteUnavailable(message.get("error", "the container exited while being forked"))
                )
            exited = self._exited.pop(task, None)
            if exited is not None and not exited.done():
                exited.set_result(int(message["code"]))

    def _gone(self, reason: str) -> None:
        if not self.dead and self.ready.done() and self.ready.exception() is None:
            log.warning("zygote %s is gone (%s); its containers with it", self.directory.name, reason)
        self.dead = True
        self.last_used = time.monotonic()  # the next one is tried RETRY_S from now
        if not self.ready.done():
            self.ready.set_exception(ZygoteUnavailable(reason))
        for future in [*self._forked.values()]:
            if not future.done():
                future.set_exception(ZygoteUnavailable(reason))
        for future in self._exited.values():
            if not future.done():
                future.set_result(LOST)  # PDEATHSIG took them
        self._forked.clear()
        self._exited.clear()

    def _send(self, message: dict, fds: tuple[int, ...] = ()) -> None:  # type: ignore[type-arg]
        if self._control is None:
            raise ZygoteUnavailable("the zygote is not running")
        data = json.dumps(message).encode()
        try:
            if fds:
                socket.send_fds(self._control, [data], list(fds))
            else:
                self._control.send(data)
        except OSError as error:
            raise ZygoteUnavailable(f"the zygote does not answer: {error}") from None

    def _stage_task(self, spec: ContainerSpec, writable: list[Path], cgroups: dict[str, Path]) -> Path:
        """Show the zygote this container's work directory (and nothing else): read-only,
        with only the writable layer and writable volumes read-write on top, and the
        container's own cgroups (read-only, for its /sys/fs/cgroup) under `cgroup/`. Made on
        the host, so inside the zygote these mounts are locked: it can neither remount them
        writable (the mounts layer holds hard links to blobs other workspaces share) nor
        take them away."""
        # Built in a private place, then moved under the (shared) stage in one piece: a
        # remount after the fact would not reach the zygote's copy.
        tree = self.directory / "prep" / spec.task_id
        tree.mkdir()
        for controller in cgroups:
            (spec.work_dir / "cgroup" / controller).mkdir(parents=True, exist_ok=True)
        try:
            rootfs.bind(spec.work_dir, tree, read_only=True, flags=rootfs.MS_REC)
            for path in writable:
                path.mkdir(parents=True, exist_ok=True)
                rootfs.bind(path, tree / path.relative_to(spec.work_dir))
            for controller, directory in cgroups.items():
                rootfs.bind(directory, tree / "cgroup" / controller, read_only=True)
            stage = self.stage / spec.task_id
            stage.mkdir()
            rootfs.mount(tree, stage, rootfs.MS_MOVE)
        except OSError:
            _release_stage(tree)
            raise
        tree.rmdir()
        return stage

    async def fork(
        self, spec: ContainerSpec, prepared, network: BridgeNetwork | None, on_output: OutputCallback
    ) -> ForkedContainer:  # type: ignore[no-untyped-def]
        """Fork a container for `spec` (already laid out by sandbox.prepare)."""
        from homeport.agent.sandbox import pump_output

        self.last_used = began = time.monotonic()
        overlay = prepared.overlay
        writable = [overlay.upper.parent] + [d.host_path for d in spec.directories if not d.read_only]
        cgroup_dirs = prepared.cgroup.paths if prepared.cgroup is not None else {}
        stage = self._stage_task(spec, writable, cgroup_dirs)
        inside = f"{STAGE_INSIDE}/{spec.task_id}"

        def translate(path: Path) -> str:
            return f"{inside}/{path.relative_to(spec.work_dir)}"

        lower = [translate(layer) for layer in overlay.lower if layer.is_relative_to(spec.work_dir)] + [
            IMAGE_INSIDE
        ]
        binds = [
            [translate(prepared.hosts), "/etc/hosts", True],
            [translate(prepared.arguments_path), ARGUMENTS_PATH, True],
            ["/pkg", "/pkg", True],
        ]
        if spec.network and Path("/etc/resolv.conf").is_file():
            binds.append([f"{INSIDE}/resolv.conf", "/etc/resolv.conf", True])
        if spec.control_socket is not None:
            binds.append([f"{INSIDE}/grpc.sock", CONTROL_SOCKET, False])
        binds += [[translate(d.host_path), d.container_path, d.read_only] for d in spec.directories]
        request = {
            "lower": lower,
            "upper": translate(overlay.upper),
            "work": translate(overlay.work),
            "merged": translate(overlay.merged),
            "disk_mib": overlay.size_mib,
            "binds": binds,
            "cgroups": {controller: f"{inside}/cgroup/{controller}" for controller in cgroup_dirs},
            "working_dir": spec.working_dir,
        }
        # The environment (secrets, the container's credential) travels in a memory file
        # the zygote hands to the child unread: nothing of it stays in the zygote's memory,
        # which every later container is forked from.
        environment = os.memfd_create("homeport-environment", os.MFD_CLOEXEC)
        os.write(environment, json.dumps(prepared.environment).encode())
        os.lseek(environment, 0, os.SEEK_SET)
        loop = asyncio.get_running_loop()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        forked: asyncio.Future[int] = loop.create_future()
        exited: asyncio.Future[int] = loop.create_future()
        self._forked[spec.task_id] = forked
        self._exited[spec.task_id] = exited
        attachment: Attachment | None = None
        readers: list[asyncio.Task[None]] = []
        child: ForkedChild | None = None
        try:
            try:
                self._send(
                    {"op": "fork", "task": spec.task_id, "spec": request}, (stdout_w, stderr_w, environment)
                )
            finally:
                for fd in (stdout_w, stderr_w, environment):
                    os.close(fd)
            readers = [
                asyncio.create_task(pump_output(await _reader(stdout_r), 1, on_output)),
                asyncio.create_task(pump_output(await _reader(stderr_r), 2, on_output)),
            ]
            stdout_r = stderr_r = -1
            try:
                inner_pid = await asyncio.wait_for(forked, FORK_TIMEOUT_S)
            except TimeoutError:
                self._gone("it did not fork a container in time")
                raise ZygoteUnavailable(
                    f"the zygote did not fork {spec.task_id} within {FORK_TIMEOUT_S:.0f} s"
                ) from None
            child = ForkedChild.verify(self.host_pid, inner_pid)
            if prepared.cgroup is not None:
                prepared.cgroup.add(child.pid)
            if network is not None and spec.network:
                try:
                    attachment = await network.attach_in_thread(spec.task_id, child.netns)
                except NetworkError as error:
                    raise ContainerStartError(str(error)) from None
            else:
                await asyncio.to_thread(bring_up_loopback, child.netns)
            child.check_alive()
            self._send({"op": "go", "task": spec.task_id})
        except BaseException:
            self._forked.pop(spec.task_id, None)
            self._exited.pop(spec.task_id, None)
            with contextlib.suppress(ZygoteUnavailable):
                self._send({"op": "abort", "task": spec.task_id})
            for fd in (stdout_r, stderr_r):
                if fd >= 0:
                    os.close(fd)
            for reader in readers:
                reader.cancel()
            if attachment is not None and network is not None:
                network.detach(attachment)
            _release_stage(stage)
            raise
        finally:
            if child is not None:
                child.close_netns()
        container = ForkedContainer(
            spec.task_id, child, exited, readers, spec.work_dir, prepared.cgroup, stage
        )
        log.info(
            "container %s forked from zygote %s in %.1f ms",
            spec.task_id,
            self.directory.name,
            (time.monotonic() - began) * 1000,
        )
        if attachment is not None and network is not None:
            network_, attached = network, attachment
            container.holdings.on_exit.insert(0, lambda: network_.detach(attached))
            container.holdings.address = attachment.address
        return container

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        for task in self._tasks:
            task.cancel()
        if self._control is not None:
            self._control.close()
            self._control = None
        self._gone("its zygote was stopped")
        _remove(self.directory)
        if self.cgroup is not None:
            self.cgroup.remove()


async def _reader(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    return reader


class ZygotePool:
    """The zygotes of this node: started ahead of need (prewarm) or on first use (the
    container waits for it), stopped when idle. A container whose image's zygote failed
    lately starts the ordinary way."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.zygotes: dict[ZygoteImage, Zygote] = {}
        self._starting: dict[ZygoteImage, asyncio.Task[None]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._counter = 0
        self._sweep_leftovers()
        os.chmod(self.root, 0o700)  # zygote roots hold image files (setuid binaries included)

    def _sweep_leftovers(self) -> None:
        """Directories (and, from a server that ran without a mount namespace of its own,
        mounts) of zygotes from a previous run of this server."""
        self.root.mkdir(parents=True, exist_ok=True)
        for directory in self.root.iterdir():
            _remove(directory)

    async def get(self, image: ZygoteImage) -> Zygote | None:
        """The zygote for this image, started (and waited for) if need be; None when one
        failed lately (containers then start the ordinary way for RETRY_S)."""
        zygote = self.zygotes.get(image)
        if zygote is not None and image not in self._starting and not zygote.alive:
            if time.monotonic() - zygote.last_used < RETRY_S:
                return None
            self._forget(image)
            zygote = None
        if zygote is None:
            self.prewarm(image)
            zygote = self.zygotes.get(image)
            if zygote is None:
                return None  # no room for another zygote
        try:
            await asyncio.shield(zygote.ready)
        except Exception:
            return None
        return zygote if zygote.alive else None

    def prewarm(self, image: ZygoteImage) -> None:
        if image in self.zygotes or image in self._starting:
            return
        running = sum(1 for known, z in self.zygotes.items() if z.alive or known in self._starting)
        if running >= MAX_ZYGOTES and not self._evict_one():
            return
        self._counter += 1
        zygote = Zygote(image, self.root / f"z{os.getpid()}-{self._counter}")
        self.zygotes[image] = zygote
        self._starting[image] = asyncio.create_task(self._start(image, zygote))

    async def _start(self, image: ZygoteImage, zygote: Zygote) -> None:
        try:
            await zygote.start()
        except Exception as error:
            log.warning("zygote for %s not started: %s", image.layers[:1], error or type(error).__name__)
            await zygote.stop()  # kept, not alive: the image is not tried again for RETRY_S
        finally:
            self._starting.pop(image, None)

    def _forget(self, image: ZygoteImage) -> None:
        zygote = self.zygotes.pop(image, None)
        if zygote is not None:
            stopping = asyncio.get_running_loop().create_task(zygote.stop())
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)

    def _evict_one(self) -> bool:
        # Dead ones are not evicted: their entry keeps their back-off (see get).
        idle = [
            (z.last_used, image)
            for image, z in self.zygotes.items()
            if z.alive and z.containers == 0 and image not in self._starting
        ]
        if not idle:
            return False
        self._forget(min(idle)[1])
        return True

    def sweep(self) -> None:
        """Stop zygotes nobody used for IDLE_S."""
        now = time.monotonic()
        for image, zygote in list(self.zygotes.items()):
            if image not in self._starting and zygote.containers == 0 and now - zygote.last_used > IDLE_S:
                self._forget(image)

    async def shutdown(self) -> None:
        for task in list(self._starting.values()):
            task.cancel()
        await asyncio.gather(*(z.stop() for z in self.zygotes.values()), return_exceptions=True)
        self.zygotes.clear()
