"""The client package a container sees at /pkg: the pinned `modal` and exactly the
distributions it needs, copied from this server's own installation.

Client 1.6.4 at image builder 2025.06 installs nothing of its own into images ("client
dependencies are mounted at runtime"), so its container entrypoint imports modal,
grpclib, protobuf, aiohttp... from /pkg. Only those: the server's other packages
(fastapi, pytest, ...) must not shadow what the user installs in the image. The copies
are built for this interpreter's ABI (CPython 3.11 here); images on another Python get a
clear failure from the image check, not an import error in the container.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
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
