"""This node's GPUs and who holds them. Whole devices are assigned exclusively.

The inventory comes from `nvidia-smi`; `HOMEPORT_GPUS` ("T4,T4" or "H100:8") overrides
it, for tests of the placement logic on machines without GPUs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess

ANY = "ANY"
# nvidia-smi names -> the names `gpu=` uses, most specific first.
MODEL_PATTERNS = [
    (r"H200", "H200"),
    (r"H100", "H100"),
    (r"A100.*80\s*GB", "A100-80GB"),
    (r"A100", "A100"),
    (r"A10G", "A10G"),
    (r"L40S", "L40S"),
    (r"\bL4\b", "L4"),
    (r"\bT4\b", "T4"),
]


def model_name(nvidia_smi_name: str) -> str:
    for pattern, name in MODEL_PATTERNS:
        if re.search(pattern, nvidia_smi_name, re.IGNORECASE):
            return name
    return nvidia_smi_name.strip()


# The user-space half of the NVIDIA driver a container needs next to the device nodes: it
# must match the host's kernel module, so it comes from the host, never from the image.
DRIVER_LIBRARY = re.compile(r"^\s*(lib(?:cuda|nvidia-[\w-]+|nvcuvid|nvoptix)\.so[\d.]*) .*=> (\S+)$")
DRIVER_BINARIES = ("nvidia-smi", "nvidia-debugdump")


def driver_files_from(ldconfig_output: str) -> list[str]:
    """Paths of the driver's libraries as `ldconfig -p` lists them (x86-64 ones)."""
    paths = []
    for line in ldconfig_output.splitlines():
        match = DRIVER_LIBRARY.match(line)
        if match and "x86-64" in line:
            paths.append(match.group(2))
    return sorted(set(paths))


@functools.cache
def driver_files() -> list[str]:
    """The host's NVIDIA driver libraries and tools, bound read-only into GPU containers."""
    try:
        output = subprocess.run(
            ["ldconfig", "-p"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        output = ""
    binaries = [path for name in DRIVER_BINARIES if (path := shutil.which(name))]
    return driver_files_from(output) + binaries


def detect() -> list[str]:
    """The model of each GPU, by device index."""
    override = os.environ.get("HOMEPORT_GPUS")
    if override is not None:
        models: list[str] = []
        for part in filter(None, (p.strip() for p in override.split(","))):
            name, _, count = part.partition(":")
            models += [name.upper()] * int(count or 1)
        return models
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        output = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [model_name(line) for line in output.splitlines() if line.strip()]


@dataclasses.dataclass(frozen=True)
class GpuRequest:
    model: str  # "H100", "A100-80GB", ..., or "ANY"
    count: int

    def __str__(self) -> str:
        return f"{self.model}:{self.count}" if self.count > 1 else self.model


class GpuPool:
    def __init__(self, models: list[str]) -> None:
        self.models = models
        self.holders: dict[int, str] = {}  # device index -> task id

    def describe(self) -> str:
        if not self.models:
            return "no GPUs"
        counts: dict[str, int] = {}
        for model in self.models:
            counts[model] = counts.get(model, 0) + 1
        return ", ".join(f"{count} x {model}" for model, count in counts.items())

    def _matching(self, request: GpuRequest) -> list[int]:
        return [i for i, model in enumerate(self.models) if request.model in (ANY, model)]

    def can_ever_satisfy(self, request: GpuRequest) -> bool:
        return len(self._matching(request)) >= request.count

    def acquire(self, task_id: str, request: GpuRequest) -> list[int] | None:
        free = [i for i in self._matching(request) if i not in self.holders]
        if len(free) < request.count:
            return None
        chosen = free[: request.count]
        for index in chosen:
            self.holders[index] = task_id
        return chosen

    def release(self, task_id: str) -> None:
        for index in [i for i, holder in self.holders.items() if holder == task_id]:
            del self.holders[index]
