"""What a new container runs: its `ContainerOrder`, made from the function's definition,
image, mounts, secrets, volumes and the container's own credential.

Everything is named by reference (layer refs, blob ids, volume entries), so the order
runs on whichever node placement chose (agent/order.py).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import modal
from grpclib import GRPCError
from modal_proto import api_pb2

from homeport.agent.order import ContainerOrder, FileRef, VolumeRef
from homeport.agent.runtime import CONTROL_SOCKET
from homeport.server.running import FIXED_ENVIRONMENT
from homeport.server.services import functions as catalog
from homeport.server.services.mounts import CLIENT_MOUNT_NAME
from homeport.server.services.volumes import volume_metadata

# Bumped when what a restored container finds around it changes (paths, binds, client
# package): snapshots of an older layout are then never restored.
SNAPSHOT_LAYOUT = "1"


class StartRefused(Exception):
    """The container cannot start as its function asks; the message says why and what to do."""


def image_environment(image_config) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """What every process of a container starts with: a usual PATH and locale, the image's
    own ENV, HOME. Functions and sandboxes alike."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        **image_config.env,
        "HOME": "/root",
    }


def gpu_environment(devices: list[int]) -> dict[str, str]:
    """The GPUs a container was given, named for CUDA (functions and sandboxes alike)."""
    if not devices:
        return {}
    visible = ",".join(map(str, devices))
    return {"CUDA_VISIBLE_DEVICES": visible, "NVIDIA_VISIBLE_DEVICES": visible}


def interpreter_environment(image_config, environment_name: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A container's environment without its secrets and task credential: what its
    interpreter (or its zygote's) starts with."""
    return {
        **image_environment(image_config),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": "/root:/pkg",
        "MODAL_IS_REMOTE": "1",
        # Over a Unix socket bound into the container, so block_network=True works too.
        "MODAL_SERVER_URL": f"unix://{CONTROL_SOCKET}",
        "MODAL_DISABLE_API_PROXY": "1",
        "MODAL_ENVIRONMENT": environment_name,
    }


class OrderBuilder:
    def __init__(self, apps, storage, mounts, images, secrets, volumes, control_address: str) -> None:  # type: ignore[no-untyped-def]
        self.apps = apps
        self.storage = storage
        self.mounts = mounts
        self.images = images
        self.secrets = secrets
        self.volumes = volumes
        self.control_address = control_address

    async def build(
        self,
        function,  # type: ignore[no-untyped-def]
        definition: api_pb2.Function,
        params: bytes,
        environment_name: str,
        workspace_id: str,
        task_id: str,
        secret: str,
        gpu_indices: list[int],
        upper_dir: Path | None,
        disk_limit_mib: int,
        memory_snapshots: bool = False,
    ) -> tuple[ContainerOrder, dict[str, str]]:
        """The order and the secret values it carries (for redacting its output); raises
        StartRefused with a message for the function's caller. `memory_snapshots`: the node
        can take and restore them (enable_memory_snapshot=True is honoured there)."""
        dependencies = [d.object_id for d in definition.object_dependencies]
        layout = catalog.app_layout(self.apps, function.app_id, dependencies)
        for obj in layout.objects:
            if obj.object_id.startswith("vo-") and not obj.HasField("volume_metadata"):
                obj.volume_metadata.CopyFrom(
                    volume_metadata(self.storage.get("volume", workspace_id, obj.object_id))
                )
        arguments = api_pb2.ContainerArguments(
            task_id=task_id,
            function_id=function.id,
            app_id=function.app_id,
            function_def=definition,
            serialized_params=params,
            environment_name=environment_name,
            app_layout=layout,
        )
        files: list[FileRef] = []
        for mount_id in definition.mount_ids:
            name, mount_files = self.mounts.files(mount_id)
            if name == CLIENT_MOUNT_NAME:
                continue  # served from the client package at /pkg
            files.extend(FileRef(str(f["path"]), str(f["blob_id"]), int(f["mode"])) for f in mount_files)  # type: ignore[call-overload]
        try:
            chain, image_config = self.images.runtime_chain(definition.image_id)
        except LookupError as error:
            raise StartRefused(str(error)) from None
        secret_values: dict[str, str] = {}
        try:
            for secret_id in definition.secret_ids:
                secret_values.update(self.secrets.values(workspace_id, secret_id))
        except GRPCError as error:
            raise StartRefused(f"{error.message}; was it deleted? Create it again and redeploy") from None
        started_with = interpreter_environment(image_config, environment_name)
        environment = {
            **secret_values,
            **{k: started_with[k] for k in FIXED_ENVIRONMENT},  # secrets cannot override these
            "MODAL_TASK_ID": task_id,
            **gpu_environment(gpu_indices),
            # The container's own credential: client 1.6.4 adds these headers to every RPC
            # a container makes. Never the user's token.
            "MODAL_OVERRIDE_HEADERS": f"x-homeport-task-id:{task_id},x-homeport-task-secret:{secret}",
        }
        snapshot = ""
        # Not with GPUs (no hardware checkpoint path here) nor ephemeral_disk= (its writable
        # layer is a tmpfs the node cannot copy): those start the ordinary way.
        if (
            memory_snapshots
            and definition.checkpointing_enabled
            and not gpu_indices
            and not definition.resources.ephemeral_disk_mb
        ):
            snapshot = snapshot_key(
                workspace_id, function, definition, params, environment_name, chain, files, secret_values
            )
            # Client 1.6.4 snapshots only with all three: the variable, the flag (which the
            # client never sets itself) and a checkpoint id (task_lifecycle_manager.py).
            arguments.function_def.is_checkpointing_function = True
            arguments.checkpoint_id = snapshot
            environment["MODAL_ENABLE_SNAP_RESTORE"] = "1"
        volumes = []
        try:
            for mount in definition.volume_mounts:
                self.storage.get("volume", workspace_id, mount.volume_id)
                if mount.sub_path:
                    raise StartRefused(
                        f"Volume mounts with sub_path ({mount.sub_path!r}) are not supported by this server yet; "
                        "mount the whole volume"
                    )
                entries = self.volumes.entries(mount.volume_id)
                volumes.append(
                    VolumeRef(mount.volume_id, mount.mount_path, mount.read_only, tuple(entries.values()))
                )
        except StartRefused:
            raise
        except Exception as error:
            raise StartRefused(f"could not mount a volume: {error}") from None
        order = ContainerOrder(
            task_id=task_id,
            app_id=function.app_id,
            function_id=function.id,
            workspace_id=workspace_id,
            container_arguments=arguments.SerializeToString(),
            started_environment=started_with,
            environment=environment,
            layers=tuple(chain),
            python_version=image_config.python_version,
            files=tuple(files),
            volumes=tuple(volumes),
            working_dir=image_config.workdir if image_config.workdir not in ("", "/") else "/root",
            control_address=self.control_address,
            network=not definition.block_network,
            memory_mib=definition.resources.memory_mb_max or definition.resources.memory_mb,
            cpu_cores=(definition.resources.milli_cpu_max or definition.resources.milli_cpu) / 1000,
            disk_mib=definition.resources.ephemeral_disk_mb,
            gpu_devices=tuple(gpu_indices),
            upper_dir=upper_dir,
            disk_limit_mib=disk_limit_mib,
            memory_snapshot=snapshot,
        )
        return order, secret_values


def snapshot_key(  # type: ignore[no-untyped-def]
    workspace_id: str,
    function,
    definition: api_pb2.Function,
    params: bytes,
    environment_name: str,
    chain: list[str],
    files: list[FileRef],
    secret_values: dict[str, str],
) -> str:
    """One function version's memory snapshot: everything a snapshotted process has in its
    memory from its start. Its code (the definition, its mounted files by content rather
    than mount id, its image's layers), its class parameters, its app, function and
    workspace (the ids a restored container keeps: client 1.6.4 refreshes only the task
    and function ids), and its secrets (a changed secret makes a new snapshot, never one
    holding the old value)."""
    digest = hashlib.sha256()
    code = api_pb2.Function()
    code.CopyFrom(definition)
    code.ClearField("mount_ids")
    # The client's version and the layout of a restored container too: a snapshot outlives
    # the server, and its process holds the client's modules as they were.
    versions = (modal.__version__, SNAPSHOT_LAYOUT)
    for part in (*versions, workspace_id, function.app_id, function.id, environment_name, *chain):
        digest.update(part.encode() + b"\0")
    digest.update(code.SerializeToString(deterministic=True) + b"\0" + params + b"\0")
    for ref in sorted(files, key=lambda f: f.container_path):
        digest.update(f"{ref.container_path}:{ref.blob_id}:{ref.mode}\0".encode())
    for name, value in sorted(secret_values.items()):
        digest.update(hashlib.sha256(f"{name}={value}".encode()).digest())
    return digest.hexdigest()[:40]
