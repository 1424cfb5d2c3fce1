"""The gVisor runtime (opt-in: `homeport serve --runtime gvisor`): the same container as
the sandbox runtime, on the same overlay root filesystem and cgroup, but run by `runsc`,
so the container's system calls are served by gVisor's user-space kernel rather than the
host's. For untrusted code; it costs some start-up time and system-call speed.

The control plane is still reached over the bind-mounted Unix socket (runsc's gofer
connects host sockets with --fsgofer-host-uds); `block_network=True` gets runsc's
`--network=none`, anything else the host's network.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

from homeport.agent import cgroups
from homeport.agent.runtime import CONTROL_SOCKET, ContainerSpec, ContainerStartError, OutputCallback
from homeport.agent.sandbox import (
    ARGUMENTS_PATH,
    SANDBOX_TOOL_ENVIRONMENT,
    ProcessContainer,
    prepare,
    pump_output,
)


class GvisorContainer(ProcessContainer):
    kind = "gvisor"

    def __init__(self, runsc: list[str], *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._runsc = runsc

    async def wait(self) -> int:
        await self._process.wait()
        # runsc keeps state for a container until it is deleted.
        await asyncio.to_thread(
            subprocess.run,
            [*self._runsc, "delete", "--force", self.task_id],
            capture_output=True,
            check=False,
        )
        return await super().wait()

    def interrupt(self) -> None:
        # The entrypoint is PID 1 inside the sandbox, not a host process: ask runsc.
        subprocess.run([*self._runsc, "kill", self.task_id, "SIGINT"], capture_output=True, check=False)

    def kill(self) -> None:
        subprocess.run(
            [*self._runsc, "kill", "--all", self.task_id, "SIGKILL"], capture_output=True, check=False
        )
        super().kill()


class GvisorRuntime:
    name = "gvisor"
    memory_snapshots = False  # its containers are never asked to checkpoint

    def __init__(self) -> None:
        if shutil.which("runsc") is None:
            raise ContainerStartError("the gVisor runtime needs runsc (apt install runsc)")
        self.limits_enabled = cgroups.available()

    # No zygotes under gVisor: each container is its own sandboxed kernel.
    def prewarm(self, zygote: object) -> None:
        pass

    def checkpoint(self, task_id: str) -> None:
        pass  # memory_snapshots is False: never asked

    def sweep(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def start(self, spec: ContainerSpec, on_output: OutputCallback) -> GvisorContainer:
        if spec.egress_cidrs is not None or spec.gpu_devices:
            # runsc here shares the host's network and binds no devices: neither could hold.
            raise ContainerStartError(
                "the gVisor runtime cannot enforce an outbound_cidr_allowlist or give GPUs; "
                "leave them out, or run this server with the default runtime"
            )
        prepared = await prepare(spec, self.limits_enabled)
        # Mount points gVisor needs inside the root; made in the container's own writable layer.
        (prepared.overlay.upper / spec.working_dir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        state = spec.work_dir / "runsc-state"
        bundle = spec.work_dir / "bundle"
        bundle.mkdir(parents=True, exist_ok=True)
        mounts = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            _bind(prepared.hosts, "/etc/hosts", read_only=True),
            _bind(prepared.arguments_path, ARGUMENTS_PATH, read_only=True),
        ]
        if spec.client_package_dir is not None:
            mounts.append(_bind(spec.client_package_dir, "/pkg", read_only=True))
        if spec.network and Path("/etc/resolv.conf").is_file():
            mounts.append(_bind(Path("/etc/resolv.conf"), "/etc/resolv.conf", read_only=True))
        if spec.control_socket is not None:
            # Read-only, as everywhere: connect() needs no write access to the mount, and
            # the container's root owns the socket file (a chmod would cut every container
            # on the node off the server).
            mounts.append(_bind(spec.control_socket, CONTROL_SOCKET, read_only=True))
        for directory in spec.directories:
            mounts.append(_bind(directory.host_path, directory.container_path, read_only=directory.read_only))
        config = {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": 0, "gid": 0},
                "args": list(spec.command),
                "env": [f"{key}={value}" for key, value in prepared.environment.items()],
                "cwd": spec.working_dir,
                "capabilities": {
                    kind: [] for kind in ("bounding", "effective", "inheritable", "permitted", "ambient")
                },
                "noNewPrivileges": True,
            },
            "root": {"path": str(prepared.overlay.merged), "readonly": False},
            "hostname": spec.hostname or spec.task_id,
            "mounts": mounts,
            "linux": {"namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount")]},
        }
        (bundle / "config.json").write_text(json.dumps(config))
        runsc = ["runsc", "--root", str(state), "--ignore-cgroups", "--fsgofer-host-uds"]
        runsc.append("--network=host" if spec.network else "--network=none")
        process = await asyncio.create_subprocess_exec(
            *runsc, "run", "--bundle", str(bundle), spec.task_id,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=SANDBOX_TOOL_ENVIRONMENT,  # the container's environment is in config.json
            start_new_session=True,
            preexec_fn=prepared.enter,
        )  # fmt: skip
        readers = [
            asyncio.create_task(pump_output(process.stdout, 1, on_output)),
            asyncio.create_task(pump_output(process.stderr, 2, on_output)),
        ]
        return GvisorContainer(runsc, spec.task_id, process, readers, spec.work_dir, prepared.cgroup)


def _bind(source: Path, destination: str, read_only: bool) -> dict[str, object]:
    return {
        "destination": destination,
        "type": "bind",
        "source": str(source),
        "options": ["rbind", "ro" if read_only else "rw"],
    }
