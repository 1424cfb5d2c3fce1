"""What a zygote is for (agent/zygote.py): the containers it may fork, and the start-up
settings a forked container inherits from it rather than reads afresh."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from homeport.agent.runtime import ContainerSpec


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


# A container's own variables, which nothing reads before "go" but the client opened ahead,
# whose credential (MODAL_OVERRIDE_HEADERS) is brought up to date then (zygote_main.py).
PER_CONTAINER = {"MODAL_TASK_ID", "MODAL_OVERRIDE_HEADERS", "MODAL_CONTAINER_ARGUMENTS_PATH"}


def _read_at_start(name: str) -> bool:
    """Variables the interpreter or the client's modules read when they start or are
    imported (PYTHON*, MODAL_LOGLEVEL, MODAL_CONFIG_PATH, locale, time zone, ...): in a
    forked container they would keep the zygote's values, so a container whose values
    differ (set by a secret) starts the ordinary way."""
    if name in PER_CONTAINER:
        return False
    return name.startswith(("PYTHON", "MODAL_", "LC_")) or name in ("TZ", "LANG", "LANGUAGE", "HOME", "PATH")
