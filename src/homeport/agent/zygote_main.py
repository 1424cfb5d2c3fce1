"""The zygote: runs *inside* a sandbox, on the image's own Python, and forks containers.

Started by agent/zygote.py as `python /.homeport/zygote.py` in bubblewrap with a user
namespace of its own (root inside, mapped to root, holding capabilities only over the
namespaces it owns), its own PID/IPC/UTS/network namespaces, the image's root filesystem
and a seccomp filter. It imports the client runtime (`modal._container_entrypoint` and
what that pulls in) once, then waits for requests on its control socket. For each
container it forks a child that becomes PID 1 of a fresh PID namespace and enters fresh
mount/UTS/IPC/network namespaces; once the server has put it in its cgroup ("placed"),
the child forks the entrypoint, which drops
every capability, installs the container seccomp filter and starts the client (see
Entrypoint). At "go" the child mounts the container's own overlay root, hands the
entrypoint its output and environment, and drops its own privileges; the entrypoint runs
the client's `__main__` as `python -m modal._container_entrypoint` would.

Never the user's module: that is imported by the entrypoint, in the container, after the
fork. This file uses the standard library only (it runs on whatever Python the image has)
and never imports Homeport.

A child is forked blank: it knows nothing of the container it will be until "go", so the
server may fork one ahead of need (a spare, networked while no call waits for it) and
hand it a container later. `task` below names the child, not the container.

Protocol (SOCK_SEQPACKET, one JSON object per message, fds with SCM_RIGHTS):
  server -> zygote  {"op": "fork", "task": ...}   fork a blank child
  zygote -> server  {"op": "ready", "import_ms": ...} | {"op": "failed", "error": ...}
                    {"op": "forked", "task": ..., "pid": <pid in the zygote's namespace>}
                                  fds: [the child's go socket]
                    {"op": "exited", "task": ..., "code": ...}
  server -> child   (on its go socket, handed over with "forked"; the zygote keeps no end)
                    b"placed"     it is in its cgroup: fork the entrypoint (see Entrypoint)
                    {"task": <task id>, "spec": {...}}  fds: [stdout, stderr, environment]
                                  the server has placed the child in its cgroup and network:
                                  become this container, set it up and run (the environment,
                                  secrets included, is a memory file only the entrypoint
                                  reads); the socket closed unsent: abort
"""

import ctypes
import json
import os
import runpy
import select
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
import types

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
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
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
SYS_PIVOT_ROOT = 155
SYS_CAPSET = 126
LINUX_CAPABILITY_VERSION_3 = 0x20080522
# The device nodes every container gets (as bubblewrap's --dev does).
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
ENTRYPOINT = "modal._container_entrypoint"
PLACED = b"placed"  # server -> child: it is in its cgroup; fork the entrypoint
# A blank child makes the container's /dev here (a mount point agent/zygote.py made),
# ahead of "go", and moves it into the root then.
DEV_AHEAD = "/.homeport/dev"

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.syscall.restype = ctypes.c_long


def check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source, target, fstype, flags, data=None):
    check(
        libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {source or fstype} on {target}",
    )


def bind(source, target, read_only):
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "a").close()
    mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def in_root(root, path):
    """`path` inside the container's root, its symbolic links resolved there (never
    against the zygote's own root, which is still ours while the binds are made)."""
    resolved = root
    pending = [part for part in path.split("/") if part]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in (".", ""):
            continue
        if part == "..":
            if resolved != root:  # never above the container's root
                resolved = os.path.dirname(resolved)
            continue
        candidate = resolved + "/" + part
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(40, f"too many symbolic links under {path}")
            link = os.readlink(candidate)
            if link.startswith("/"):
                resolved = root
            pending = [p for p in link.split("/") if p] + pending
            continue
        resolved = candidate
    return resolved


class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def send(control, message, fds=()):
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(control, [data], list(fds))
    else:
        control.send(data)


def drop_privileges(seccomp):
    """Every capability gone for good (bounding set, ambient, effective/permitted), no
    new privileges, then the container's seccomp filter (stacked on the zygote's). Per
    process: the child and its entrypoint each drop their own, before any thread starts."""
    with open("/proc/sys/kernel/cap_last_cap") as last:
        last_cap = int(last.read())
    for cap in range(last_cap + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "dropping the bounding set")
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient capabilities")
    header = struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0)
    data = bytes(24)  # two {effective, permitted, inheritable} triples, all zero
    check(libc.syscall(SYS_CAPSET, header, data), "capset")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    buffer = ctypes.create_string_buffer(seccomp, len(seccomp))
    program = Fprog(len(seccomp) // 8, ctypes.addressof(buffer))
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(program), 0, 0), "installing seccomp")


class Zygote:
    def __init__(self, control):
        self.control = control
        self.children = {}  # pid -> child's name
        self.own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        with open("/.homeport/seccomp.bpf", "rb") as program:
            self.seccomp = program.read()

    def serve(self):
        """Answer requests until the server goes away; returns a Container in a forked child."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        self.reap()
        while True:
            for key, _ in selector.select():
                if key.fileobj == wake_r:
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self.reap()
                    continue
                data, fds, _, _ = socket.recv_fds(self.control, 1 << 20, 8)
                if not data:
                    sys.exit(0)  # the server is gone: so are we (and, by PDEATHSIG, every container)
                message = json.loads(data)
                if message["op"] == "fork":
                    child = self.fork(message["task"])
                    if child is not None:
                        selector.close()
                        for fd in (wake_r, wake_w):
                            os.close(fd)
                        return child
                for fd in fds:
                    os.close(fd)

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            task = self.children.pop(pid, None)
            if task is not None:
                send(self.control, {"op": "exited", "task": task, "code": os.waitstatus_to_exitcode(status)})

    def fork(self, task):
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        go_ours, go_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        # The next child is PID 1 of a namespace of its own; the zygote's own children
        # after it go back to the zygote's namespace.
        check(libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
        try:
            pid = os.fork()
        except OSError as error:
            check(libc.setns(self.own_pid_namespace, CLONE_NEWPID), "setns back")
            for fd in (ready_r, ready_w):
                os.close(fd)
            go_ours.close()
            go_theirs.close()
            send(self.control, {"op": "exited", "task": task, "code": 255, "error": str(error)})
            return None
        if pid == 0:
            for fd in (ready_r, self.own_pid_namespace):
                os.close(fd)
            for channel in (go_ours, self.control):
                channel.close()
            return Container(ready_w, go_theirs, self.seccomp)
        check(libc.setns(self.own_pid_namespace, CLONE_NEWPID), "setns back")
        os.close(ready_w)
        go_theirs.close()
        ready = os.read(ready_r, 1)  # the child's namespaces exist (or it failed)
        os.close(ready_r)
        self.children[pid] = task
        if ready != b"r":
            go_ours.close()
            return None  # it exits; reap() reports it
        # The server says "go" to the child itself: one process fewer to wake on the way.
        send(self.control, {"op": "forked", "task": task, "pid": pid}, [go_ours.fileno()])
        go_ours.close()
        return None


class Container:
    """The forked child: PID 1 of the container."""

    def __init__(self, ready_w, go, seccomp):
        self.ready_w = ready_w
        self.go = go
        self.seccomp = seccomp

    def run(self):
        """Returns True in the entrypoint process; PID 1 never returns."""
        try:
            if self.setup():
                return True
        except BaseException:
            os.write(2, traceback.format_exc().encode(errors="replace"))
            os._exit(254)
        os._exit(self.supervise())

    def setup(self):
        os.setsid()  # its own session and process group: kill(0, ...) reaches only the container
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_DFL)
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")
        check(libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET), "unshare")
        # The zygote's mounts are slaves already (its namespace was made in a user namespace
        # of its own); made so again here, so that nothing mounted below could ever reach
        # the zygote or a sibling, while what the server stages for this container
        # (zygote_stage.py) still reaches us until "go" (private from then on).
        mount(None, "/", None, MS_REC | MS_SLAVE)
        self.make_dev(DEV_AHEAD)
        os.write(self.ready_w, b"r")
        os.close(self.ready_w)
        # The server has put this child in its cgroup when it says "placed": the entrypoint
        # is forked then, ahead of "go", in these namespaces and that cgroup (what it
        # allocates is charged there), and starts the client while the child waits (see
        # Entrypoint).
        if self.go.recv(64) != PLACED:
            os._exit(253)  # closed: an abort, or the zygote dying
        handoff, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.entrypoint = os.fork()
        if self.entrypoint == 0:
            handoff.close()
            self.go.close()
            self.entrypoint = Entrypoint(theirs, self.seccomp)
            self.entrypoint.start_ahead()
            return True
        theirs.close()
        # "go", unless the entrypoint is gone first: then this child exits, and the server
        # learns that its spare is no good before it hands it a container.
        waiting = select.poll()
        waiting.register(self.go, select.POLLIN)
        waiting.register(handoff, select.POLLIN)
        if any(fd == handoff.fileno() for fd, _ in waiting.poll()):
            os._exit(254)
        data, fds = socket.recv_fds(self.go, 1 << 20, 8)[:2]
        self.become(data, fds)
        os.dup2(self.stderr, 2)  # setup errors reach the container's log
        self.enter_root()
        check(libc.sethostname(self.task.encode(), len(self.task)), "sethostname")
        drop_privileges(self.seccomp)  # before anything of the container's runs
        # Its root is the container's now (pivot_root moved it there with ours): over to it.
        try:
            socket.send_fds(handoff, [json.dumps({"working_dir": self.spec["working_dir"]}).encode()], fds)
        except OSError as error:
            raise RuntimeError(f"the container's entrypoint exited before it was started ({error})") from None
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(self.stdout, 1)
        os.dup2(self.stderr, 2)
        os.closerange(3, 1 << 16)  # nothing of the zygote's stays open
        return False

    def become(self, data, fds):
        """The container this child is to be (its task id, layout and output), or exit:
        an empty message is an abort, or the zygote dying."""
        if not data or len(fds) != 3:
            os._exit(253)
        self.go.close()
        order = json.loads(data)
        self.task, self.spec = order["task"], order["spec"]
        self.stdout, self.stderr, _environment = fds  # the environment is the entrypoint's to read

    def enter_root(self):
        spec = self.spec
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        root = spec["merged"]
        if spec["disk_mib"]:
            mount(
                "tmpfs",
                os.path.dirname(spec["upper"]),
                "tmpfs",
                MS_NOSUID | MS_NODEV,
                f"size={spec['disk_mib']}m,mode=0755",
            )
        for path in (spec["upper"], spec["work"], root):
            os.makedirs(path, exist_ok=True)
        lower = ":".join(spec["lower"])
        mount(
            "overlay",
            root,
            "overlay",
            0,
            f"lowerdir={lower},upperdir={spec['upper']},workdir={spec['work']},userxattr",
        )
        os.makedirs(root + "/dev", exist_ok=True)
        mount(DEV_AHEAD, root + "/dev", None, MS_MOVE)  # with what is mounted in it
        for source, target, read_only in spec["binds"]:
            bind(source, in_root(root, target), read_only)
        os.makedirs(in_root(root, spec["working_dir"]), exist_ok=True)
        self.make_sys(root + "/sys", spec["cgroups"])
        old = root + "/.homeport-old-root"
        os.makedirs(old, exist_ok=True)
        check(libc.syscall(SYS_PIVOT_ROOT, root.encode(), old.encode()), "pivot_root")
        os.chdir("/")
        # A fresh /proc for the new PID namespace, mounted while the zygote's is still
        # visible: the kernel allows one in a user namespace only if as visible a proc is
        # there, and only as restricted. The zygote's is read-only, locked so by the host
        # (agent/zygote.py), so this one must be read-only too: uid 0 here is the host's
        # uid 0, which may write most host sysctls by plain file permissions.
        os.makedirs("/proc", exist_ok=True)
        mount("proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        check(libc.umount2(b"/.homeport-old-root", MNT_DETACH), "detaching the zygote's root")
        os.rmdir("/.homeport-old-root")
        os.chdir(spec["working_dir"])

    def make_sys(self, sys_dir, cgroup_dirs):
        """A read-only sysfs of the container's own network namespace (its interfaces in
        /sys/class/net), with only its own cgroups, read-only, under /sys/fs/cgroup."""
        os.makedirs(sys_dir, exist_ok=True)
        mount("sysfs", sys_dir, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        if not cgroup_dirs:
            return
        hierarchy = sys_dir + "/fs/cgroup"
        mount("tmpfs", hierarchy, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755")
        for controller, source in cgroup_dirs.items():
            bind(source, f"{hierarchy}/{controller}", True)
        mount(None, hierarchy, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)

    def make_dev(self, dev):
        """A private /dev like bubblewrap's --dev: a tmpfs with the harmless device nodes
        bound from the zygote's, its own /dev/shm and pseudo-terminals."""
        mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755")
        for name in DEVICES:
            if os.path.exists("/dev/" + name):
                bind("/dev/" + name, f"{dev}/{name}", False)
        os.mkdir(dev + "/shm")
        mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        os.mkdir(dev + "/pts")
        mount("devpts", dev + "/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
        os.symlink("pts/ptmx", dev + "/ptmx")
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2"), ("core", "/proc/kcore")):  # fmt: skip
            os.symlink(target, f"{dev}/{name}")

    def supervise(self):
        """PID 1: reap every orphan, pass SIGINT/SIGTERM on to the entrypoint, and exit
        with its status (which ends everything else in the namespace)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda number, _frame: os.kill(self.entrypoint, number))
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return 0
            except InterruptedError:
                continue
            if pid == self.entrypoint:
                code = os.waitstatus_to_exitcode(status)
                return code if code >= 0 else 128 - code


class Entrypoint:
    """The container's entrypoint process, forked by the child before "go" and run as
    `python -m modal._container_entrypoint` would be once the child hands it over.

    While the child waits, it drops its own privileges and starts what of the client does
    not depend on which container it is (client 1.6.4): the entrypoint module's code is
    loaded, and `Client.from_env()` opens the client (its event loop thread, its stub of
    every RPC, its connection to the server's socket), about 15 ms of a cold start. The
    client is a per-process singleton, so the entrypoint's own `Client.from_env()` finds
    it. Only the credential differs: the client reads MODAL_OVERRIDE_HEADERS when it
    opens, into the metadata dict its channel adds to every request
    (`_Client._connection_manager._metadata`), so that dict is brought up to date at go.
    Nothing of the user's runs before go, and the child's environment (its secrets)
    reaches this process only then. If anything of this fails, the entrypoint starts the
    client at go instead, as it would otherwise."""

    def __init__(self, channel, seccomp):
        self.channel = channel
        self.seccomp = seccomp
        self.module = None  # (name, spec, code) of the entrypoint module, loaded ahead
        self.ahead_error = None

    def start_ahead(self):
        try:
            os.chdir("/")  # pivot_root moves a cwd at the old root to the new one
            keep = self.channel.fileno()
            os.closerange(3, keep)
            os.closerange(keep + 1, 1 << 16)
            drop_privileges(self.seccomp)
        except BaseException:
            os.write(2, traceback.format_exc().encode(errors="replace"))
            os._exit(254)
        try:
            self.module = runpy._get_module_details(ENTRYPOINT)
            server_url = os.environ.get("MODAL_SERVER_URL", "")
            if server_url.startswith("unix://") and os.path.exists(server_url[len("unix://") :]):
                import modal

                modal.Client.from_env()
        except BaseException:
            self.ahead_error = traceback.format_exc(limit=3)

    def main(self):
        """Waits for the child's go, becomes the container's entrypoint and runs it."""
        data, fds = socket.recv_fds(self.channel, 1 << 16, 4)[:2]
        if not data or len(fds) != 3:
            os._exit(253)  # the child exited: it never became a container
        self.channel.close()
        stdout, stderr, environment_fd = fds
        sys.stdout.flush()
        sys.stderr.flush()
        null = os.open("/dev/null", os.O_RDONLY)
        for fd, target in ((null, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        with os.fdopen(environment_fd, "rb") as environment:
            os.environ.clear()
            os.environ.update(json.loads(environment.read()))
        os.chdir(json.loads(data)["working_dir"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.path[0] = os.getcwd()  # what -m puts first
        sys.argv = ["-m"]
        # A __main__ of its own (not the zygote's module, whose names would show).
        sys.modules["__main__"] = types.ModuleType("__main__")
        self._attune_client()
        if self.ahead_error is not None:
            print(
                f"homeport: the client was not started ahead of this container:\n{self.ahead_error}",
                file=sys.stderr,
            )
        if self.module is None:
            runpy._run_module_as_main(ENTRYPOINT)
            return
        _name, spec, code = self.module
        sys.argv[0] = spec.origin
        runpy._run_code(code, sys.modules["__main__"].__dict__, None, "__main__", spec)

    def _attune_client(self):
        """The client opened ahead, given what it would have read had it opened now: the
        container's credential (MODAL_OVERRIDE_HEADERS) and hostname in its metadata."""
        import platform

        from modal import client as client_module

        if hasattr(platform, "_uname_cache"):
            platform._uname_cache = None  # the hostname is the container's now
        client = client_module._Client._client_from_env
        if client is None:
            return  # not opened ahead: the entrypoint opens it
        metadata = client._connection_manager._metadata  # the very dict its channel reads
        metadata.clear()  # nothing of what it read before "go" stays
        metadata.update(
            client_module._get_metadata(
                client.client_type, client._credentials, client.version, client._oauth_credentials
            )
        )


def main():
    control = socket.socket(fileno=int(os.environ.pop("HOMEPORT_ZYGOTE_FD")))
    started = time.perf_counter()
    try:
        import threading

        import modal
        import modal._container_entrypoint  # noqa: F401

        if threading.active_count() != 1:
            raise RuntimeError(
                f"importing the client started {threading.active_count() - 1} thread(s); forking is unsafe"
            )
        # Its dependencies stay imported; the module itself runs afresh as __main__ in each
        # container (runpy warns about a module already imported).
        del sys.modules[ENTRYPOINT]
        zygote = Zygote(control)
    except BaseException:
        send(control, {"op": "failed", "error": traceback.format_exc()[-2000:]})
        raise
    send(
        control,
        {"op": "ready", "import_ms": round((time.perf_counter() - started) * 1000, 1), "pid": os.getpid()},
    )
    container = zygote.serve()
    del zygote
    if not container.run():
        return
    # The entrypoint: out of the zygote's frames, the client's __main__.
    container.entrypoint.main()


if __name__ == "__main__":
    main()
