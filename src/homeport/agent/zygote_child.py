"""The children a zygote forks: each checked before the node acts on it (the zygote runs
image code, so neither the pid it reports nor its namespaces are taken on trust), a
blank one waiting for its container, and the container it becomes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import signal
import socket
from pathlib import Path

from homeport.agent import cgroups
from homeport.agent.network import Attachment
from homeport.agent.runtime import Holdings
from homeport.agent.zygote_stage import release_stage

NS_GET_USERNS = 0xB701
# What containers whose zygote died are reported to have exited with (PDEATHSIG took
# them): no real exit status looks like it.
LOST = -1000


class ZygoteUnavailable(Exception):
    """This zygote cannot fork now; start the container the ordinary way."""


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _namespace_pids(pid: int) -> list[int]:
    """The process's pid in each PID namespace it is in, outermost first."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(part) for part in line.split()[1:]]
    except OSError:
        pass
    return []


def _forked_child(parent: int, pid_seen_by_parent: int) -> int | None:
    """The host pid of the zygote's child that the zygote knows as `pid_seen_by_parent`
    (the child is PID 1 of its own namespace: the zygote's view is one level up)."""
    for child in children(parent):
        pids = _namespace_pids(child)
        if len(pids) >= 2 and pids[-2] == pid_seen_by_parent:
            return child
    return None


class ForkedChild:
    """A container the zygote says it forked, checked before the server acts on it: the
    zygote runs image code, so neither its pid nor its namespaces are taken on trust."""

    def __init__(self, pid: int, pidfd: int, netns: int) -> None:
        self.pid = pid  # host pid of the container's PID 1
        self.pidfd = pidfd  # that very process, even if the number is reused later
        self.netns = netns  # its network namespace (an fd)

    @classmethod
    def verify(cls, zygote_pid: int, inner_pid: int) -> ForkedChild:
        host_pid = _forked_child(zygote_pid, inner_pid)
        if host_pid is None:
            raise ZygoteUnavailable("the container the zygote reported is not among its children")
        pidfd = os.pidfd_open(host_pid)
        netns = -1
        try:
            netns = os.open(f"/proc/{host_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            child = cls(host_pid, pidfd, netns)
            child.check_alive()  # the pid still names the process the pidfd holds
            if _parent(host_pid) != zygote_pid:
                raise ZygoteUnavailable("the reported container is not the zygote's child")
            # Its own new network namespace, made inside the zygote's user namespace: not
            # the host's, not the zygote's, not anybody else's.
            owner = os.fdopen(fcntl.ioctl(netns, NS_GET_USERNS), closefd=True)
            with owner:
                owned_by_zygote = (
                    os.fstat(owner.fileno()).st_ino == os.stat(f"/proc/{zygote_pid}/ns/user").st_ino
                )
            if not owned_by_zygote or os.fstat(netns).st_ino == os.stat(f"/proc/{zygote_pid}/ns/net").st_ino:
                raise ZygoteUnavailable("the reported container has no network namespace of its own")
            return child
        except BaseException:
            os.close(pidfd)
            if netns >= 0:
                os.close(netns)
            raise

    def processes(self) -> list[int]:
        """Its PID 1 and, once it was told "placed", the entrypoint PID 1 forked (see
        agent/zygote_main.py): what joins the container's cgroup if the spare's cgroup
        cannot be taken over."""
        return [self.pid, *children(self.pid)]

    def check_alive(self) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, 0)
        except ProcessLookupError:
            raise ZygoteUnavailable("the forked container exited before it started") from None

    def close_netns(self) -> None:
        if self.netns >= 0:
            os.close(self.netns)
            self.netns = -1

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signum)

    def close(self) -> None:
        self.close_netns()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def _parent(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


@dataclasses.dataclass
class Blank:
    """A child forked and networked before it knows which container it will be (see
    agent/zygote_main.py): PID 1 of fresh namespaces, waiting for "go"."""

    name: str
    child: ForkedChild
    go: socket.socket  # "go" (or, closed unsent, abort) goes to the child itself
    exited: asyncio.Future[int]
    attachment: Attachment | None
    cgroup: cgroups.Cgroup | None  # joined ahead; the container's cgroup takes it over


class ForkedContainer:
    """A container forked from a zygote (the runtime.Container interface)."""

    kind = "forked"

    def __init__(self, task_id: str, child: ForkedChild, exited: asyncio.Future[int], readers: list[asyncio.Task[None]],
                 work_dir: Path, cgroup: cgroups.Cgroup | None, stage: Path) -> None:  # fmt: skip
        self.task_id = task_id
        self._child = child  # PID 1 of its namespace
        self._exited = exited
        self.holdings = Holdings(readers, work_dir, cgroup)
        self.holdings.on_exit += [lambda: release_stage(stage), child.close]

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
