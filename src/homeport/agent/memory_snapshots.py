"""Memory snapshots (enable_memory_snapshot=True): a function's container is dumped to disk
with CRIU once its imports and @enter(snap=True) hooks have run, and later containers of
the same function version are restored from that dump instead of starting Python again.

How client 1.6.4 takes part (modal/_runtime/task_lifecycle_manager.py): with
MODAL_ENABLE_SNAP_RESTORE=1, `is_checkpointing_function` and a `checkpoint_id` in its
arguments, a container imports the user's module, runs the snap=True hooks, stops its
heartbeats, calls ContainerCheckpoint, and only after that returns closes its connections
and polls /__modal/restore-state.json every 10 ms. From that file it takes its task id and
function id and environment updates (each key becomes MODAL_<KEY> if it names a client
setting, else KEY.upper()), then dials the server again (MODAL_SERVER_URL, with
MODAL_OVERRIDE_HEADERS: its credential).

On this node:
- The first container of a function version (no snapshot here yet) is *taken*: started
  from bubblewrap as usual but never from a zygote, with /__modal bound read-only from its
  work directory, and its entrypoint a session leader with no parent-death signal (both
  would stop CRIU from restoring it elsewhere; its PID namespace still ends with
  bubblewrap's PID 1, which still dies with the node). On ContainerCheckpoint, once its connections are
  closed, it is dumped (it goes on running) and its writable layer copied; then its own
  restore state tells it to go on.
- Later containers are *restored*: the same layout with the copied writable layer as the
  topmost read-only layer, a small waiter as PID 1 (it reaps the restored tree and exits
  with its status), then CRIU restores the tree into it, the container's output pipes in
  place of the dumped ones, and the restore state gives it its own identity.
- A snapshot that cannot be taken or restored is dropped, and the container starts (or
  goes on) the ordinary way; the log says why. No call fails because of a snapshot.

Snapshots are kept on the node's disk by key (one function version, see server/orders.py;
agent/snapshot_store.py), so they outlive the server; in cluster mode they are shared
through the object store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

from homeport.agent import criu, layer_copy
from homeport.agent.runtime import Container, ContainerSpec, OutputCallback
from homeport.agent.sandbox import Launch, ProcessContainer, SandboxRuntime, _descendants, _is_entrypoint
from homeport.agent.snapshot_store import Snapshot, SnapshotError, SnapshotStore, size_of

log = logging.getLogger("homeport.snapshots")

STATE_INSIDE = "/__modal"
STATE_FILE = "restore-state.json"
# The entrypoint, as `python -m modal._container_entrypoint` would run it, without the
# parent-death signal bubblewrap gives it (restored, it would fire as CRIU exits) and in a
# session of its own (CRIU restores only a tree that holds its session's leader).
TAKE_COMMAND = (
    "import ctypes, os, runpy; ctypes.CDLL(None).prctl(1, 0, 0, 0, 0); os.setsid(); "
    "runpy.run_module('modal._container_entrypoint', run_name='__main__', alter_sys=True)"
)
# PID 1 of a restored container: says it is up on the descriptor it is given, then reaps;
# when the restored tree's root ends, exits as it did. SIGINT and SIGTERM go on to the root.
WAITER = """
import os, signal, sys, time
root, up = int(sys.argv[1]), int(sys.argv[2])
def forward(signum, frame):
    try:
        os.kill(root, signum)
    except ProcessLookupError:
        pass
signal.signal(signal.SIGINT, forward)
signal.signal(signal.SIGTERM, forward)
os.write(up, b"up")
os.close(up)
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        time.sleep(0.005)
        continue
    if pid == root:
        code = os.waitstatus_to_exitcode(status)
        os._exit(128 - code if code < 0 else code)
"""
# After ContainerCheckpoint is answered the container closes its connections; until then
# CRIU refuses (a socket to the outside): try again this often, this long.
DUMP_RETRY_S = 0.025
DUMP_PATIENCE_S = 5.0
UP_TIMEOUT_S = 10.0
CONNECTION_HINT = (
    " (it holds a connection to outside its container, made before the snapshot: open "
    "connections in a @modal.enter(snap=False) hook, which runs in every container after it)"
)
PID_MARGIN = 64  # PIDs left free above the restored tree's highest
MAX_RESTORE_FAILURES = 3


def _nspid(pid: int) -> int:
    """`pid` as numbered in its own (innermost) PID namespace."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise SnapshotError(f"process {pid} has no NSpid")


def _tree_last_pid(root: int) -> int:
    highest = 0
    for pid in [root, *_descendants(root)]:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                highest = max(highest, _nspid(int(task)))
    return highest


@dataclasses.dataclass
class _Taking:
    key: str
    state_dir: Path
    spec: ContainerSpec
    on_output: OutputCallback
    container: ProcessContainer
    done: bool = False


class MemorySnapshotRuntime:
    """The sandbox runtime with memory snapshots: containers whose spec names a snapshot key
    are taken or restored (see the module's docstring); all others start as before."""

    def __init__(self, inner: SandboxRuntime, store: SnapshotStore) -> None:
        self.inner = inner
        self.name = inner.name
        self.store = store
        self.memory_snapshots = criu.installed() is not None and os.geteuid() == 0
        self._kdat = criu.make_kdat_cache() if self.memory_snapshots else None
        self._taking: dict[str, _Taking] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Restores that failed, by key: past MAX_RESTORE_FAILURES this node stops taking
        # snapshots of that version (each would cost a dump and fail again).
        self._failures: collections.Counter[str] = collections.Counter()
        if not self.memory_snapshots:
            log.warning(
                "CRIU is not installed in %s (scripts/install-criu): functions with enable_memory_snapshot=True "
                "start the ordinary way", criu.directory(),
            )  # fmt: skip

    def prewarm(self, zygote: object) -> None:
        self.inner.prewarm(zygote)

    def _kdat_options(self) -> tuple[str, ...]:
        return ("--ro-bind", str(self._kdat), criu.KDAT_INSIDE) if self._kdat is not None else ()

    def sweep(self) -> None:
        self.inner.sweep()

    async def shutdown(self) -> None:
        await self.inner.shutdown()

    async def start(self, spec: ContainerSpec, on_output: OutputCallback) -> Container:
        key = spec.memory_snapshot
        if not key or not self.memory_snapshots:
            return await self.inner.start(spec, on_output)
        snapshot = await self.store.fetch(key)
        if snapshot is not None:
            try:
                return await self._restore(spec, snapshot, on_output)
            except SnapshotError as error:
                log.warning("container %s not restored from snapshot %s: %s", spec.task_id, key, error)
                on_output(
                    2,
                    f"[homeport] not restored from the memory snapshot ({error}); starting the ordinary way\n",
                )
                self._failures[key] += 1
                self.store.discard(key)
        return await self._take(spec, key, on_output)

    # --- taking -----------------------------------------------------------------------------

    async def _take(self, spec: ContainerSpec, key: str, on_output: OutputCallback) -> Container:
        state_dir = spec.work_dir / "restore-state"
        state_dir.mkdir(parents=True, exist_ok=True)
        launch = Launch(
            command=(spec.command[0], "-c", TAKE_COMMAND),
            options=("--ro-bind", str(state_dir), STATE_INSIDE, *self._kdat_options()),
            closed_stdin=True,
        )
        container = await self.inner.start(spec, on_output, launch)
        assert isinstance(container, ProcessContainer)  # a Launch never forks from a zygote
        self._taking[spec.task_id] = _Taking(key, state_dir, spec, on_output, container)
        container.holdings.on_exit.append(lambda: self._forget(spec.task_id))
        return container

    def _forget(self, task_id: str) -> None:
        self._taking.pop(task_id, None)

    def checkpoint(self, task_id: str) -> None:
        """ContainerCheckpoint from a container: dump it once it has closed its connections
        (after this call is answered), then tell it to go on, snapshot or not. Never raises."""
        taking = self._taking.get(task_id)
        if taking is None or taking.done:
            # Not a container started to be snapshotted, or the client's retry of a call
            # whose dump is under way (that one tells the container to go on when done:
            # telling it now would let it reconnect in the middle of its dump).
            return
        taking.done = True
        task = asyncio.get_running_loop().create_task(self._checkpoint(taking))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _checkpoint(self, taking: _Taking) -> None:
        began = time.monotonic()
        snapshot = None
        try:
            if self._failures[taking.key] >= MAX_RESTORE_FAILURES:
                raise SnapshotError(
                    f"restores of this function's snapshots failed {MAX_RESTORE_FAILURES} times here"
                )
            snapshot = await self._dump(taking, began)
            taking.on_output(
                2,
                f"[homeport] memory snapshot taken in {snapshot.took_ms:.0f} ms "
                f"({snapshot.size_bytes / 2**20:.0f} MiB); later containers of this function start from it\n",
            )
            log.info(
                "memory snapshot taken of %s: %s (%.0f ms, %.0f MiB)",
                taking.spec.task_id, taking.key, snapshot.took_ms, snapshot.size_bytes / 2**20,
            )  # fmt: skip
        except Exception as error:  # the container goes on without a snapshot
            log.warning("memory snapshot of %s not taken: %s", taking.spec.task_id, error)
            taking.on_output(2, f"[homeport] memory snapshot not taken: {error}\n")
        finally:
            try:
                _write_state(taking.state_dir, _own_state(taking.spec))
            except OSError:  # it has ended meanwhile (its work directory is gone)
                pass
        if snapshot is not None:
            try:
                await self.store.share(snapshot)
            except Exception as error:  # this node still has it
                log.warning("memory snapshot %s not shared through the object store: %s", snapshot.key, error)

    async def _dump(self, taking: _Taking, began: float) -> Snapshot:
        container = taking.container
        if taking.spec.disk_mib:
            # Its writable layer is a tmpfs only its own mount namespace sees.
            raise SnapshotError("containers with ephemeral_disk= are not snapshotted yet")
        entrypoints = [pid for pid in _descendants(container.pid) if _is_entrypoint(pid)]
        if len(entrypoints) != 1:
            raise SnapshotError("its entrypoint process was not found")
        root = entrypoints[0]
        root_inside = _nspid(root)
        pipes: dict[str, int] = {}
        for fd in (2, 1):
            resource = os.readlink(f"/proc/{root}/fd/{fd}")
            if not resource.startswith("pipe:"):
                raise SnapshotError(f"its fd {fd} is {resource}, not the node's pipe")
            pipes[resource] = fd
        staging = self.store.staging(taking.spec.task_id)
        try:
            deadline = time.monotonic() + DUMP_PATIENCE_S
            while True:
                await asyncio.sleep(DUMP_RETRY_S)
                last_pid = _tree_last_pid(root)
                try:
                    await criu.dump(root, root_inside, staging / "images", staging / "dump.log")
                    break
                except BaseException as error:
                    _continue(root)  # a failed dump may have left it stopped
                    if not isinstance(error, criu.CriuError):
                        raise
                    # Only a connection not yet closed is worth waiting for.
                    connection = "sock" in str(error).lower()
                    if time.monotonic() > deadline or not connection:
                        hint = CONNECTION_HINT if connection else ""
                        raise SnapshotError(f"{error}{hint}") from None
            try:
                # While the dumped tree is stopped: the files it holds stay as dumped.
                upper = container.holdings.work_dir / "writable" / "fs"
                await asyncio.to_thread(layer_copy.copy_tree, upper, staging / "fs")
            except OSError as error:
                raise SnapshotError(f"copying its writable layer failed: {error}") from None
            finally:
                _continue(root)
            took_ms = (time.monotonic() - began) * 1000
            meta = {
                "root_pid": root_inside,
                "last_pid": last_pid,
                "pipes": pipes,
                "size_bytes": size_of(staging),
                "took_ms": took_ms,
                "task_id": taking.spec.task_id,
                "created_at": time.time(),
            }
            return self.store.publish(staging, taking.key, meta)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # --- restoring --------------------------------------------------------------------------

    async def _restore(self, spec: ContainerSpec, snapshot: Snapshot, on_output: OutputCallback) -> Container:
        began = time.monotonic()
        # The attempt lays out its files in a directory of its own: if it fails, only that
        # goes, and the container starts the ordinary way from the task's work directory
        # as the node prepared it (its volumes' working copies are there).
        attempt = dataclasses.replace(spec, work_dir=spec.work_dir / "restore")
        state_dir = attempt.work_dir / "restore-state"
        state_dir.mkdir(parents=True, exist_ok=True)
        # There before the restored process looks (it polls every 10 ms): its own identity.
        _write_state(state_dir, _own_state(spec))
        up_read, up_write = os.pipe2(os.O_CLOEXEC)
        self.store.acquire(snapshot.key)  # its layer is this container's lower layer
        container = None
        try:
            launch = Launch(
                command=(spec.command[0], "-I", "-S", "-c", WAITER, str(snapshot.root_pid), str(up_write)),
                options=("--as-pid-1", "--ro-bind", str(state_dir), STATE_INSIDE, *self._kdat_options()),
                top_layer=snapshot.layer,
                extra_fds=(up_write,),
            )
            try:
                container = await self.inner.start(attempt, on_output, launch)
            finally:
                os.close(up_write)
            phases = {"container": time.monotonic()}
            assert isinstance(container, ProcessContainer)  # a Launch never forks from a zygote
            await _wait_readable(up_read, UP_TIMEOUT_S)
            phases["waiter"] = time.monotonic()
            waiter = _only_child(container.pid)
            await criu.set_last_pid(waiter, snapshot.last_pid + PID_MARGIN)
            phases["pid"] = time.monotonic()
            outputs = {fd: os.open(f"/proc/{waiter}/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC) for fd in (1, 2)}
            try:
                pipes = {resource: outputs[fd] for resource, fd in snapshot.pipes.items()}
                cgroup = container.holdings.cgroup
                procs = tuple(path / "cgroup.procs" for path in cgroup.paths.values()) if cgroup else ()
                await criu.restore(
                    waiter, snapshot.images, attempt.work_dir / "criu-restore.log", pipes, procs
                )
            finally:
                for fd in outputs.values():
                    os.close(fd)
            phases["criu"] = time.monotonic()
        except BaseException as error:
            self.store.release(snapshot.key)
            if container is not None:
                container.kill()
                await asyncio.shield(container.wait())
            if isinstance(error, (TimeoutError, SnapshotError, criu.CriuError, OSError)):
                raise SnapshotError(str(error) or type(error).__name__) from None
            raise
        finally:
            os.close(up_read)
        holdings = container.holdings
        holdings.work_dir = spec.work_dir  # all of the task's directory goes when it ends
        holdings.on_exit.append(lambda: self.store.release(snapshot.key))
        container.kind = "restored"
        took_ms = (phases["criu"] - began) * 1000
        spent, last = [], began
        for phase, at in phases.items():
            spent.append(f"{phase} {(at - last) * 1000:.0f}")
            last = at
        log.info(
            "container %s restored from memory snapshot %s (%.0f ms: %s)",
            spec.task_id, snapshot.key, took_ms, ", ".join(spent),
        )  # fmt: skip
        on_output(2, f"[homeport] restored from a memory snapshot in {took_ms:.0f} ms\n")
        return container


def _continue(root: int) -> None:
    """SIGCONT to a tree CRIU left stopped."""
    for pid in [root, *_descendants(root)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def _wait_readable(fd: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(fd)
    if not os.read(fd, 16):
        raise SnapshotError("the restored container's first process ended before it was up")


def _only_child(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) != 1:
        raise SnapshotError(f"bubblewrap has {len(children)} children, not its waiter")
    return int(children[0])


def _own_state(spec: ContainerSpec) -> dict[str, str]:
    """What a container learns as it goes on after a snapshot: its own task id, function
    and environment (its credential and secrets among it). Client 1.6.4 sets each key as
    MODAL_<KEY> when it names a client setting (task_id, function_id aside) and as
    KEY.upper() otherwise, and requires string values."""
    state = {name: value for name, value in spec.environment.items() if name == name.upper()}
    state["task_id"] = spec.task_id
    state["function_id"] = spec.function_id
    return state


def _write_state(directory: Path, state: dict[str, str]) -> None:
    temporary = directory / f".{STATE_FILE}"
    temporary.write_text(json.dumps(state))
    temporary.rename(directory / STATE_FILE)
