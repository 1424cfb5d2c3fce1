"""What the control plane asks a node to run: a `ContainerOrder`.

An order names everything by reference, never by a path on the control plane's machine:
image layers by their refs, mounted files by blob id, the client package by Python
version, volumes by id with their committed entries. The node resolves the references on
its own disk (agent/assets.py), so the same order runs in-process on one machine or on
any node of a cluster. Orders are plain data: they cross to a Ray actor by pickling.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from homeport.agent.volume_copy import Entry


@dataclasses.dataclass(frozen=True)
class FileRef:
    container_path: str  # absolute
    blob_id: str
    mode: int


@dataclasses.dataclass(frozen=True)
class VolumeRef:
    volume_id: str
    mount_path: str
    read_only: bool
    entries: tuple[Entry, ...]  # the committed state the working copy starts from


@dataclasses.dataclass(frozen=True)
class ReadinessProbe:
    """A sandbox's readiness probe (agent/readiness.py): a TCP port or a command."""

    tcp_port: int = 0
    exec_argv: tuple[str, ...] = ()
    interval_ms: int = 100


@dataclasses.dataclass(frozen=True)
class ContainerOrder:
    task_id: str
    app_id: str
    function_id: str
    workspace_id: str  # zygotes are never shared across workspaces
    container_arguments: bytes  # serialized api_pb2.ContainerArguments
    # The interpreter's start-up environment (what a zygote may be made with) and the rest
    # (secrets, the task's credential): the container gets both.
    started_environment: dict[str, str]
    environment: dict[str, str]
    layers: tuple[str, ...]  # the image's layer chain, bottom first
    python_version: str
    files: tuple[FileRef, ...] = ()
    volumes: tuple[VolumeRef, ...] = ()
    working_dir: str = "/root"
    # Which control plane the container talks to: "" for the one in this process, else its
    # gRPC address (host:port); the node forwards the container's socket there.
    control_address: str = ""
    network: bool = True
    egress_cidrs: tuple[str, ...] | None = None  # with a network: where it may send (None: anywhere)
    memory_mib: int = 0
    cpu_cores: float = 0.0
    disk_mib: int = 0
    gpu_devices: tuple[int, ...] = ()
    upper_dir: Path | None = None  # an image build step's writable layer (in-process nodes only)
    disk_limit_mib: int = 0  # watched on the writable layer; 0: bounded otherwise
    # A sandbox (modal.Sandbox): its entrypoint runs under the supervisor (agent/in_sandbox),
    # with no client package and no control socket; its processes are `NodeAgent.sandbox()`.
    sandbox_entrypoint: tuple[str, ...] = ()
    readiness_probe: ReadinessProbe | None = None
    # The entrypoint on a pseudo-terminal (pty=True): its size and TERM, as for an exec.
    sandbox_terminal: dict[str, object] | None = None
    open_ports: tuple[tuple[int, bool], ...] = ()  # a sandbox's (port, unencrypted) tunnels
    inbound_cidrs: tuple[str, ...] = ()  # who may connect through them (empty: anyone)
    # A sandbox's volume changes are committed when it ends (Modal's rule for sandboxes);
    # a function's only when it commits them (Volume.commit()).
    commit_volumes_at_exit: bool = False
    # enable_memory_snapshot=True: its function version's snapshot key (server/orders.py);
    # the node takes the snapshot from this container or restores it into it.
    memory_snapshot: str = ""
