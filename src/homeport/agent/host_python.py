"""The node's own Python, run inside a sandbox whatever its image holds.

A sandbox's supervisor and its filesystem tool are Python programs, and a sandbox's image
may have no Python at all, or a different C library (Alpine's musl). So the node's
interpreter, its libraries and its dynamic loader are bound read-only under `/__modal`,
and the interpreter is started through that loader with that library path: it then needs
nothing from the image. None of it is writable from inside, and none of it is secret.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path

from homeport.agent.runtime import BoundDirectory

ROOT = "/__modal"
PYTHON = f"{ROOT}/python"  # the interpreter's prefix (sys.base_prefix)
HOST_LIB = f"{ROOT}/host/lib"  # the node's C library and friends
LOADER = f"{ROOT}/host/ld.so"
TOOLS = f"{ROOT}/.bin"  # supervisor.py and the filesystem tool
RUN = f"{ROOT}/run"  # the supervisor's socket, bound from the sandbox's work directory
SUPERVISOR = f"{TOOLS}/supervisor.py"
SOCKET_NAME = "supervisor.sock"
SUPERVISOR_SOCKET = f"{RUN}/{SOCKET_NAME}"
# Tells the supervisor how to start the node's interpreter (a JSON list), for the tools.
SANDBOX_PYTHON_VARIABLE = "HOMEPORT_SANDBOX_PYTHON"
FS_TOOLS = f"{TOOLS}/modal-sandbox-fs-tools"  # the path client 1.6.4 execs for sb.filesystem

LOADERS = ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1")


@dataclasses.dataclass(frozen=True)
class HostPython:
    prefix: Path
    library_dir: Path
    loader: Path
    version: str  # "3.11"

    def interpreter(self) -> list[str]:
        """The node's interpreter as seen inside the sandbox, isolated from the sandbox's
        PYTHON* variables and site-packages."""
        return [
            LOADER, "--library-path", f"{PYTHON}/lib:{HOST_LIB}", f"{PYTHON}/bin/python{self.version}", "-I", "-S",
        ]  # fmt: skip

    def command(self, script: str, *arguments: str) -> list[str]:
        """Run `script` (a path inside the sandbox) with the node's interpreter."""
        return [*self.interpreter(), script, *arguments]

    def directories(self, run_dir: Path) -> list[BoundDirectory]:
        """What a sandbox binds: the interpreter, its libraries and loader, the tools, and
        `run_dir` (on the host; `RUN` inside), where the supervisor's socket appears."""
        return [
            BoundDirectory(self.prefix, PYTHON, read_only=True),
            BoundDirectory(self.library_dir, HOST_LIB, read_only=True),
            BoundDirectory(self.loader, LOADER, read_only=True),
            BoundDirectory(Path(__file__).parent / "in_sandbox", TOOLS, read_only=True),
            BoundDirectory(run_dir, RUN, read_only=False),
        ]


@functools.cache
def host_python() -> HostPython:
    loader = next((Path(os.path.realpath(path)) for path in LOADERS if os.path.exists(path)), None)
    if loader is None:
        raise RuntimeError(
            f"no dynamic loader at any of {', '.join(LOADERS)}: sandboxes need one on the node"
        )
    return HostPython(
        prefix=Path(sys.base_prefix),
        library_dir=loader.parent,
        loader=loader,
        version=f"{sys.version_info.major}.{sys.version_info.minor}",
    )
