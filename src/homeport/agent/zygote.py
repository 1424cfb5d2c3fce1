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
enters new mount/UTS/IPC/network namespaces. The server puts it in its cgroup and says
"placed" (to the child itself, on a socket the zygote hands over when it forks it); the
child forks the entrypoint, which drops every capability for good, installs the
container seccomp filter and starts the client (not the user's module) while it waits.
The server puts the child on the bridge network and says "go": the child mounts the
container's overlay root (its mounts layer and a fresh writable layer over the zygote's
root), a fresh /dev and /proc, the same binds a bubblewrap container gets, pivots into it
(the entrypoint with it), hands the entrypoint its output and environment and drops its
own privileges. What a forked container shares with its zygote, and why that is safe, is
in the README ("Cold starts").

The child is forked blank: it learns which container it is only at "go". So each zygote
keeps one spare child forked, in a cgroup of its own and on the bridge ahead of need, and
a cold start that takes it skips the fork, the network and the move between cgroups (the
container's cgroup takes over the spare's by renaming it): about 30 ms of a 90 ms cold
start on this project's 2-core machine (docs/benchmarks.md).

The container's work directory reaches the zygote through its stage: a directory bound
into the zygote read-only with slave propagation, into which the server mounts each
container's work directory (read-only but for its writable layer and writable volumes;
the zygote never sees other tasks' files).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import time
from pathlib import Path

from homeport.agent import cgroups, rootfs, seccomp
from homeport.agent.network import Attachment, BridgeNetwork, NetworkError, bring_up_loopback
from homeport.agent.runtime import (
    CONTROL_SOCKET,
    ContainerSpec,
    ContainerStartError,
    OutputCallback,
)
from homeport.agent.zygote_child import LOST, Blank, ForkedChild, ForkedContainer, ZygoteUnavailable, children
from homeport.agent.zygote_image import ZygoteImage
from homeport.agent.zygote_stage import (
    IMAGE_INSIDE,
    INSIDE,
    STAGE_INSIDE,
    container_layout,
    release_stage,
    stage_task,
)

log = logging.getLogger("homeport.zygote")

ZYGOTE_SCRIPT = Path(__file__).with_name("zygote_main.py")
PLACED = b"placed"  # to a child: it is in its cgroup (zygote_main.py's PLACED)
# How long a zygote may take to import the client, and a container to be forked.
READY_TIMEOUT_S = 60.0
FORK_TIMEOUT_S = 10.0
# After a container takes the spare, the next one is made this much later.
SPARE_AFTER_S = 0.3
SYSFS_FLAGS = rootfs.MS_RDONLY | rootfs.MS_NOSUID | rootfs.MS_NODEV | rootfs.MS_NOEXEC
ZYGOTE_LIMITS = cgroups.Limits(memory_mib=2048, pids=cgroups.DEFAULT_PIDS)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _go_socket(fds: list[int]) -> socket.socket:
    """The child's go socket, as the zygote hands it over with "forked": it runs image
    code, so what it hands over is checked (one Unix SEQPACKET socket; ValueError else).
    A zygote could hand over a socket of its own; it relays the child's output and
    environment anyway, and sees only its own workspace's containers."""
    if len(fds) != 1:
        raise ValueError(f"forked with {len(fds)} descriptors, not its child's go socket")
    try:
        go = socket.socket(fileno=fds[0])
    except OSError:
        raise ValueError("forked with a descriptor that is not a socket") from None
    fds[0] = -1
    if go.family != socket.AF_UNIX or go.type != socket.SOCK_SEQPACKET:
        go.close()
        raise ValueError("forked with a descriptor that is not a Unix SEQPACKET socket")
    go.setblocking(False)  # small messages into an empty buffer: never waits
    go.set_inheritable(False)  # recv_fds does not set close-on-exec
    return go


def remove_zygote_directory(directory: Path) -> None:
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


class Zygote:
    def __init__(self, image: ZygoteImage, directory: Path, network: BridgeNetwork | None = None) -> None:
        self.image = image
        self.directory = directory
        self.network = network
        self.stage = directory / "stage"
        self.process: asyncio.subprocess.Process | None = None
        self.host_pid = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_used = time.monotonic()
        self._control: socket.socket | None = None
        self._forked: dict[str, asyncio.Future[tuple[int, socket.socket]]] = {}
        self._exited: dict[str, asyncio.Future[int]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        # One child forked and networked ahead, for the next container that wants a
        # network: its start then skips the fork and the network (most of a cold start's
        # own time). Made when the zygote is ready and again each time one is used.
        self._spare: asyncio.Task[Blank] | None = None
        self._next_spare: asyncio.TimerHandle | None = None
        self._unclaimed: set[str] = set()  # blanks not yet told which container to be
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
        return len(self._exited) - len(self._unclaimed)

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
            # Read-only (connecting needs no write access to the mount): uid 0 inside owns
            # the host's socket file, and a chmod of it would cut the node off the server.
            binds.append((self.image.control_socket, f"{INSIDE}/grpc.sock", True))
            # Where the client finds it, for entrypoints that open it before "go" (the
            # container's own root has it at the same place).
            binds.append((self.image.control_socket, CONTROL_SOCKET, True))
        if Path("/etc/resolv.conf").is_file():
            binds.append((Path("/etc/resolv.conf"), f"{INSIDE}/resolv.conf", True))
        # Mount points, made in the zygote's own writable layer before it is mounted.
        upper = self.directory / "upper"
        (upper / "proc").mkdir(exist_ok=True)
        (upper / "sys").mkdir(exist_ok=True)
        (upper / IMAGE_INSIDE.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (upper / INSIDE.lstrip("/") / "dev").mkdir(exist_ok=True)  # zygote_main.py's DEV_AHEAD
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
        self._replenish()

    async def _read_log(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            log.info("zygote %s: %s", self.directory.name, line.decode(errors="replace").rstrip())

    async def _read_control(self) -> None:
        assert self._control is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                data, fds = await self._receive(loop)
                if not data:
                    break
                try:
                    self._on_message(json.loads(data), fds)
                finally:
                    for fd in fds:  # what a message carries is closed unless taken
                        if fd >= 0:
                            os.close(fd)
        except OSError as error:
            log.warning("zygote %s: control channel failed: %s", self.directory.name, error)
        except (ValueError, KeyError, TypeError) as error:  # it runs image code: its words are checked
            log.warning("zygote %s sent a malformed message (%r); stopping it", self.directory.name, error)
            if self.process is not None and self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
        finally:
            self._gone("its zygote exited")

    async def _receive(self, loop: asyncio.AbstractEventLoop) -> tuple[bytes, list[int]]:
        """The zygote's next message and the descriptors it carries (at most one: the
        kernel closes any more); loop.sock_recv cannot take descriptors."""
        assert self._control is not None
        while True:
            try:
                data, fds, _flags, _address = socket.recv_fds(self._control, 1 << 16, 1)
                return data, fds
            except BlockingIOError:
                readable = loop.create_future()
                fileno = self._control.fileno()
                loop.add_reader(fileno, _settle, readable)
                try:
                    await readable
                finally:
                    loop.remove_reader(fileno)

    def _on_message(self, message: dict, fds: list[int]) -> None:  # type: ignore[type-arg]
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
            pid = int(message["pid"])
            go = _go_socket(fds)  # taken: no longer the caller's to close
            future = self._forked.pop(task, None)
            if future is not None and not future.done():
                future.set_result((pid, go))
            else:
                go.close()
        elif op == "exited":
            forked = self._forked.pop(task, None)
            if forked is not None and not forked.done():
                forked.set_exception(
                    ZygoteUnavailable(message.get("error", "the container exited while being forked"))
                )
            self._unclaimed.discard(task)
            exited = self._exited.pop(task, None)
            if exited is not None and not exited.done():
                exited.set_result(int(message["code"]))

    def _gone(self, reason: str) -> None:
        if not self.dead and self.ready.done() and self.ready.exception() is None:
            log.warning("zygote %s is gone (%s); its containers with it", self.directory.name, reason)
        self.dead = True
        self.last_used = time.monotonic()  # the next one is tried a while from now (zygote_pool.RETRY_S)
        if not self.ready.done():
            self.ready.set_exception(ZygoteUnavailable(reason))
        for forked in [*self._forked.values()]:
            if not forked.done():
                forked.set_exception(ZygoteUnavailable(reason))
        for exited in self._exited.values():
            if not exited.done():
                exited.set_result(LOST)  # PDEATHSIG took them
        self._forked.clear()
        self._exited.clear()
        self._unclaimed.clear()

    def _send(self, message: dict) -> None:  # type: ignore[type-arg]
        if self._control is None:
            raise ZygoteUnavailable("the zygote is not running")
        try:
            self._control.send(json.dumps(message).encode())
        except OSError as error:
            raise ZygoteUnavailable(f"the zygote does not answer: {error}") from None

    async def fork(self, spec: ContainerSpec, prepared, on_output: OutputCallback) -> ForkedContainer:  # type: ignore[no-untyped-def]
        """A container for `spec` (already laid out by sandbox.prepare): the spare when it
        suits, else a child forked now."""
        self.last_used = began = time.monotonic()
        networked = spec.network and self.network is not None
        blank = await self._take_spare() if networked else None
        if blank is None:
            blank = await self._fork_blank(networked)
        # Not at once: forking and networking the next spare would take CPU from this
        # container's own start (two cores here).
        self._next_spare = asyncio.get_running_loop().call_later(SPARE_AFTER_S, self._replenish)
        container = await self._claim(blank, spec, prepared, on_output)
        log.info(
            "container %s forked from zygote %s in %.1f ms",
            spec.task_id,
            self.directory.name,
            (time.monotonic() - began) * 1000,
        )
        return container

    async def _fork_blank(self, networked: bool) -> Blank:
        """A child of no container yet, in its namespaces, on the bridge (or with only
        loopback), checked: its pid and namespaces are not taken on the zygote's word."""
        name = "b" + secrets.token_hex(6)
        loop = asyncio.get_running_loop()
        forked: asyncio.Future[tuple[int, socket.socket]] = loop.create_future()
        exited: asyncio.Future[int] = loop.create_future()
        self._forked[name], self._exited[name] = forked, exited
        self._unclaimed.add(name)
        child: ForkedChild | None = None
        go: socket.socket | None = None
        attachment: Attachment | None = None
        cgroup = cgroups.Cgroup(name, cgroups.Limits()) if self.cgroup is not None else None
        if cgroup is not None:
            # Gone with the child (renamed away first if it became a container).
            exited.add_done_callback(lambda _: cgroup.remove())
        try:
            self._send({"op": "fork", "task": name})
            try:
                inner_pid, go = await asyncio.wait_for(forked, FORK_TIMEOUT_S)
            except TimeoutError:
                self._gone("it did not fork a container in time")
                raise ZygoteUnavailable(f"the zygote did not fork within {FORK_TIMEOUT_S:.0f} s") from None
            child = ForkedChild.verify(self.host_pid, inner_pid)
            assert go is not None
            if cgroup is not None:
                cgroup.create()
                await asyncio.to_thread(cgroup.add, child.pid)  # its entrypoint comes after "placed"
            try:  # it forks its entrypoint now, into that cgroup (agent/zygote_main.py)
                go.send(PLACED)
            except OSError as error:
                raise ZygoteUnavailable(f"the forked container does not answer: {error}") from None
            if networked:
                assert self.network is not None
                try:
                    attachment = await self.network.attach_in_thread(name, child.netns)
                except NetworkError as error:
                    raise ContainerStartError(str(error)) from None
            else:
                await asyncio.to_thread(bring_up_loopback, child.netns)
            child.close_netns()
            child.check_alive()
        except BaseException:
            self._discard(name, child, attachment, go)
            raise
        return Blank(name, child, go, exited, attachment, cgroup)

    def _replenish(self) -> None:
        """Fork the next spare in the background, if there is none and a network to put
        it on (a container without one gets a fresh child: it is rare). Whoever ends the
        spare's task takes its result: the next fork, or stop()."""
        if self._spare is None and self.network is not None and self.alive:
            self._spare = asyncio.create_task(self._fork_blank(True))

    async def _take_spare(self) -> Blank | None:
        """The spare (waited for if it is still being made: that is no slower than a fresh
        fork), or None if there is none or it failed or died meanwhile."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        try:
            blank = await spare
        except Exception as error:
            log.info("zygote %s: no spare (%s); forking afresh", self.directory.name, error)
            return None
        if blank.exited.done():
            self._discard(blank.name, blank.child, blank.attachment, blank.go)
            return None
        return blank

    def _discard(
        self, name: str, child: ForkedChild | None, attachment: Attachment | None, go: socket.socket | None
    ) -> None:
        """A blank that will never be a container: told to exit (its go socket closed
        unsent, and killed), its network released (its cgroup goes once the zygote reports
        it exited)."""
        self._forked.pop(name, None)
        if go is not None:
            go.close()
        if child is not None:
            child.signal(signal.SIGKILL)
            child.close()
        if attachment is not None and self.network is not None:
            self.network.detach(attachment)

    async def _claim(
        self, blank: Blank, spec: ContainerSpec, prepared, on_output: OutputCallback
    ) -> ForkedContainer:  # type: ignore[no-untyped-def]
        """Make `blank` the container for `spec`: show the zygote its work directory, put
        it in its cgroup, hand it its layout, output and environment, and say go."""
        from homeport.agent.sandbox import pump_output

        overlay = prepared.overlay
        writable = [overlay.upper.parent] + [d.host_path for d in spec.directories if not d.read_only]
        cgroup_dirs = prepared.cgroup.paths if prepared.cgroup is not None else {}
        stage: Path | None = None
        readers: list[asyncio.Task[None]] = []
        stdout_r = stderr_r = -1
        try:
            blank.child.check_alive()
            if prepared.cgroup is not None:  # first: the stage shows its directories
                self._place(blank, prepared.cgroup)
            stage = stage_task(self.directory, spec, writable, cgroup_dirs)
            # The environment (secrets, the container's credential) travels in a memory file
            # the zygote hands to the child unread: nothing of it stays in the zygote's
            # memory, which every later container is forked from.
            environment = os.memfd_create("homeport-environment", os.MFD_CLOEXEC)
            os.write(environment, json.dumps(prepared.environment).encode())
            os.lseek(environment, 0, os.SEEK_SET)
            stdout_r, stdout_w = os.pipe()
            stderr_r, stderr_w = os.pipe()
            try:
                order = {"task": spec.task_id, "spec": container_layout(spec, prepared)}
                socket.send_fds(blank.go, [json.dumps(order).encode()], [stdout_w, stderr_w, environment])
            except OSError as error:
                raise ZygoteUnavailable(f"the forked container does not answer: {error}") from None
            finally:
                for fd in (stdout_w, stderr_w, environment):
                    os.close(fd)
            blank.go.close()
            self._unclaimed.discard(blank.name)
            readers = [
                asyncio.create_task(pump_output(await _reader(stdout_r), 1, on_output)),
                asyncio.create_task(pump_output(await _reader(stderr_r), 2, on_output)),
            ]
            stdout_r = stderr_r = -1
        except BaseException:
            for fd in (stdout_r, stderr_r):
                if fd >= 0:
                    os.close(fd)
            for reader in readers:
                reader.cancel()
            self._discard(blank.name, blank.child, blank.attachment, blank.go)
            if stage is not None:
                release_stage(stage)
            raise
        container = ForkedContainer(
            spec.task_id, blank.child, blank.exited, readers, spec.work_dir, prepared.cgroup, stage
        )
        if blank.attachment is not None and self.network is not None:
            network_, attached = self.network, blank.attachment
            container.holdings.on_exit.insert(0, lambda: network_.detach(attached))
            container.holdings.address = attached.address
        return container

    def _place(self, blank: Blank, cgroup: cgroups.Cgroup) -> None:
        """Put the child in the container's cgroup (not made yet: sandbox.prepare leaves it
        to us): by taking over the one it joined ahead, or (none, or that failed) by making
        it and moving the child."""
        if blank.cgroup is not None:
            try:
                cgroup.take_over(blank.cgroup)
                return
            except OSError as error:
                log.warning(
                    "zygote %s: cgroup not taken over (%s); moving the child", self.directory.name, error
                )
        cgroup.create()
        cgroup.add(*blank.child.processes())

    async def stop(self) -> None:
        if self._next_spare is not None:
            self._next_spare.cancel()
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.cancel()
            await asyncio.wait([spare])
            if not spare.cancelled() and spare.exception() is None:
                blank = spare.result()
                self._discard(blank.name, blank.child, blank.attachment, blank.go)
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
        remove_zygote_directory(self.directory)
        if self.cgroup is not None:
            self.cgroup.remove()


async def _reader(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    return reader
