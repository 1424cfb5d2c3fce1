"""How a zygote sees a container's files: the stage (the container's work directory
mounted where the zygote can reach it, and nothing else) and the layout its child is
handed at "go" (overlay layers, binds and cgroups as paths inside the zygote)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from homeport.agent import rootfs
from homeport.agent.runtime import ARGUMENTS_PATH, CONTROL_SOCKET, ContainerSpec

INSIDE = "/.homeport"  # where the zygote finds its script, filter, stage and sockets
STAGE_INSIDE = f"{INSIDE}/t"
# The image's root filesystem again, as a mount with nothing mounted under it: overlayfs
# refuses a lower layer with locked mounts inside (the zygote's own root has several).
IMAGE_INSIDE = f"{INSIDE}/image"


def stage_task(zygote_dir: Path, spec: ContainerSpec, writable: list[Path], cgroups: dict[str, Path]) -> Path:
    """Show the zygote this container's work directory (and nothing else): read-only,
    with only the writable layer and writable volumes read-write on top, and the
    container's own cgroups (read-only, for its /sys/fs/cgroup) under `cgroup/`. Made on
    the host, so inside the zygote these mounts are locked: it can neither remount them
    writable (the mounts layer holds hard links to blobs other workspaces share) nor
    take them away."""
    # Built in a private place, then moved under the (shared) stage in one piece: a
    # remount after the fact would not reach the zygote's copy.
    tree = zygote_dir / "prep" / spec.task_id
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
        stage = zygote_dir / "stage" / spec.task_id
        stage.mkdir()
        rootfs.mount(tree, stage, rootfs.MS_MOVE)
    except OSError:
        release_stage(tree)
        raise
    tree.rmdir()
    return stage


def release_stage(stage: Path) -> None:
    rootfs.unmount(stage)
    with contextlib.suppress(OSError):
        stage.rmdir()


def container_layout(spec: ContainerSpec, prepared: Any) -> dict[str, Any]:
    """The container's root, binds and cgroups as the zygote sees them (under its stage),
    for the child to mount (agent/zygote_main.py, Container.enter_root)."""
    overlay = prepared.overlay
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
        binds.append([f"{INSIDE}/grpc.sock", CONTROL_SOCKET, True])  # read-only: see zygote.py
    binds += [[translate(d.host_path), d.container_path, d.read_only] for d in spec.directories]
    cgroup_dirs = prepared.cgroup.paths if prepared.cgroup is not None else {}
    return {
        "lower": lower,
        "upper": translate(overlay.upper),
        "work": translate(overlay.work),
        "merged": translate(overlay.merged),
        "disk_mib": overlay.size_mib,
        "binds": binds,
        "cgroups": {controller: f"{inside}/cgroup/{controller}" for controller in cgroup_dirs},
        "working_dir": spec.working_dir,
    }
