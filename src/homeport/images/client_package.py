"""The client package a container sees at /pkg: the pinned `modal` and exactly the
distributions it needs, copied from this server's own installation.

Client 1.6.4 at image builder 2025.06 installs nothing of its own into images ("client
dependencies are mounted at runtime"), so its container entrypoint imports modal,
grpclib, protobuf, aiohttp... from /pkg. Only those: the server's other packages
(fastapi, pytest, ...) must not shadow what the user installs in the image. The copies
are built for this interpreter's ABI (CPython 3.11 here); an image on another Python gets
a package of its own, installed by pip for that version (binary wheels only, from the
package index the server uses) the first time it is needed.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT_DISTRIBUTION = "modal"


def python_tag() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def distributions() -> list[metadata.Distribution]:
    """`modal` and its runtime dependencies (markers evaluated for this interpreter, no extras)."""
    found: dict[str, metadata.Distribution] = {}
    pending = [ROOT_DISTRIBUTION]
    while pending:
        name = _normalize(pending.pop())
        if name in found:
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency this server does not have
        found[name] = distribution
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return sorted(found.values(), key=lambda d: _normalize(d.metadata["Name"]))


def ensure(cache_root: Path) -> Path:
    """The /pkg directory for this server's client, made once per machine and version set."""
    chosen = distributions()
    fingerprint = hashlib.sha256(
        "\n".join(f"{d.metadata['Name']}=={d.version}" for d in chosen).encode() + python_tag().encode()
    ).hexdigest()[:16]
    modal_version = metadata.version(ROOT_DISTRIBUTION)
    target = cache_root / f"modal-{modal_version}-py{python_tag()}-{fingerprint}"
    if (target / ".complete").exists():
        return target
    staging = cache_root / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for distribution in chosen:
            for file in distribution.files or []:
                source = Path(str(distribution.locate_file(file))).resolve()
                relative = Path(str(file))
                if relative.is_absolute() or ".." in relative.parts or not source.is_file():
                    continue  # scripts installed outside site-packages
                # Bytecode caches come along: /pkg is read-only, and without them every
                # container would compile the client on each start.
                destination = staging / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)
        (staging / ".complete").write_text(
            "\n".join(f"{d.metadata['Name']}=={d.version}" for d in chosen) + "\n"
        )
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class ClientPackageUnavailable(Exception):
    """No client package can be made for this Python; the message says why."""


def install_for(cache_root: Path, python_version: str) -> Path:
    """/pkg for another Python ("3.13"): the pinned client and its dependencies as pip
    resolves them for that version, made once per machine."""
    modal_version = metadata.version(ROOT_DISTRIBUTION)
    target = cache_root / f"modal-{modal_version}-py{python_version}-pip"
    if (target / ".complete").exists():
        return target
    staging = cache_root / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    machine = platform.machine()
    platforms = [f"manylinux_2_{glibc}_{machine}" for glibc in (17, 28, 34)] + [f"manylinux2014_{machine}"]
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
        "--target", str(staging), "--python-version", python_version, "--implementation", "cp",
        "--only-binary=:all:", *(f"--platform={name}" for name in platforms), f"{ROOT_DISTRIBUTION}=={modal_version}",
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise ClientPackageUnavailable(
                f"pip could not install modal=={modal_version} for Python {python_version}: "
                f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'exit status ' + str(result.returncode)}"
            )
        shutil.rmtree(staging / "bin", ignore_errors=True)
        (staging / ".complete").write_text(f"modal=={modal_version} for Python {python_version}\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class ClientPackages:
    """The /pkg directory for each Python an image has: this server's own copied for its
    version, pip-installed for the others, each made once."""

    def __init__(self, cache_root: Path) -> None:
        self.cache_root = cache_root
        self._made: dict[str, Path] = {python_tag(): ensure(cache_root)}
        self._lock = threading.Lock()

    def cached(self, python_version: str) -> Path | None:
        """The package for an image's Python ("3.13.5" or "3.13"), if it is made already."""
        return self._made.get(_major_minor(python_version))

    def for_python(self, python_version: str) -> Path:
        """The package for an image's Python, made now if need be (blocking: run it in a thread)."""
        wanted = _major_minor(python_version)
        with self._lock:
            if wanted not in self._made:
                self._made[wanted] = install_for(self.cache_root, wanted)
            return self._made[wanted]


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2]) if version else python_tag()
