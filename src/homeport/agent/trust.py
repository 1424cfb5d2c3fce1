"""Homeport's CA inside function containers, so the modal client there can use sandboxes.

Client 1.6.4 in a container reaches the control plane at `unix://...` (the socket bound
in), which it does not count as localhost, so it dials a sandbox's task command router
only over TLS, verified with `ssl.create_default_context()` (modal/sandbox/
_task_command_router_client.py). The node therefore binds its CA bundle (the system's CAs
plus Homeport's, as users are told to trust) into each function container, read-only, and
points SSL_CERT_FILE at it, unless the image or the function sets SSL_CERT_FILE itself.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from homeport.agent.runtime import CONTROL_DIR, BoundDirectory
from homeport.tls import system_bundle

TRUST_DIR = f"{CONTROL_DIR}/tls"
BUNDLE_NAME = "ca-bundle.pem"


def trust_binding(
    bundle: Path | None, work_dir: Path, environment: dict[str, str]
) -> tuple[list[BoundDirectory], dict[str, str]]:
    """The directory to bind into a container and the variables to add (none without a
    bundle, or when the container chooses its own trust store)."""
    if bundle is None or "SSL_CERT_FILE" in environment or not bundle.is_file():
        return [], {}
    directory = work_dir / "tls"
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / BUNDLE_NAME
    try:
        os.link(bundle, target)  # the same file system, usually: no copy
    except OSError:
        shutil.copyfile(bundle, target)
    return [BoundDirectory(directory, TRUST_DIR, read_only=True)], {
        "SSL_CERT_FILE": f"{TRUST_DIR}/{BUNDLE_NAME}"
    }


def write_bundle(ca_pem: bytes, path: Path) -> Path | None:
    """A cluster node's bundle: its system CAs plus Homeport's. None on a node with no
    system bundle: a bundle of Homeport's CA alone would break containers' other HTTPS."""
    system = system_bundle()
    if system is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(system.read_bytes() + b"\n" + ca_pem)
    os.replace(temporary, path)
    return path
