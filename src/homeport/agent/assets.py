"""What a node needs on its own disk to run an order: image layers, mounted files, the
client package, volume contents and a way to the control plane.

`LocalAssets` serves the embedded single-machine server: everything is already on this
disk. `ClusterAssets` serves a cluster node: layers, blobs and volume contents are
fetched from the object store by their content keys on first use and kept in the node's
own directory, so an image built on one machine runs on any other.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from homeport.agent import rootfs
from homeport.agent.forward import SocketForwarder
from homeport.agent.volume_copy import Contents, store_in
from homeport.images.client_package import ClientPackages
from homeport.objectstore import LocalCopies

BASE_PREFIX = "base:"


class Assets(Protocol):
    @property
    def contents(self) -> Contents:
        """Volume file contents."""
        ...

    def layer_dirs(self, chain: Sequence[str]) -> list[Path]:
        """Overlay lowerdirs for a layer chain (bottom first): topmost first, empty ones left out."""
        ...

    def blob(self, blob_id: str) -> Path: ...

    def client_package(self, python_version: str) -> Path:
        """The /pkg directory for this Python (made now if need be: blocking)."""
        ...

    def at_hand(self, python_version: str | None) -> bool:
        """Whether layers, blobs and the client package (None: not needed) can be had now
        without fetching or making anything: then they are paths and a few stats, cheap
        enough to find on the event loop."""
        ...

    async def control_socket(self, address: str) -> Path | None:
        """The Unix socket containers reach this control plane through."""
        ...

    async def close(self) -> None: ...


def layer_key(ref: str) -> str:
    """A layer's (or base root filesystem's) key in the object store: an archive of its files."""
    if ref.startswith(BASE_PREFIX):
        return f"bases/{ref[len(BASE_PREFIX) :]}.tar"
    return f"layers/{ref}.tar"


def pack(directory: Path, archive: Path) -> None:
    """An archive of a layer's files as overlayfs sees them: owners, modes, device nodes
    (whiteouts) and extended attributes (opaque directories) kept."""
    subprocess.run(
        [
            "tar",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-cf",
            str(archive),
            "-C",
            str(directory),
            ".",
        ],
        check=True,
        capture_output=True,
    )


def unpack(archive: Path, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "tar",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xpf",
            str(archive),
            "-C",
            str(directory),
        ],
        check=True,
        capture_output=True,
    )


class LocalAssets:
    def __init__(
        self,
        lower_dirs: Callable[[list[str]], list[Path]],
        blob_path: Callable[[str], Path],
        client_packages: ClientPackages,
        contents: Contents,
        control_socket: Path,
    ) -> None:
        self._lower_dirs = lower_dirs
        self._blob_path = blob_path
        self._client_packages = client_packages
        self.contents = contents
        self._control_socket = control_socket

    def layer_dirs(self, chain: Sequence[str]) -> list[Path]:
        return self._lower_dirs(list(chain))

    def blob(self, blob_id: str) -> Path:
        return self._blob_path(blob_id)

    def client_package(self, python_version: str) -> Path:
        return self._client_packages.cached(python_version) or self._client_packages.for_python(
            python_version
        )

    def at_hand(self, python_version: str | None) -> bool:
        # Layers and blobs are on this disk already; the package may still have to be made.
        return python_version is None or self._client_packages.cached(python_version) is not None

    async def control_socket(self, address: str) -> Path | None:
        return self._control_socket

    async def close(self) -> None:
        pass


class NodeContents:
    """Volume contents on a cluster node: a local copy of what the object store holds;
    what a container commits is stored there first, then uploaded."""

    def __init__(self, root: Path, copies: LocalCopies) -> None:
        self.root = root
        self.copies = copies

    def _local(self, sha256_hex: str) -> Path:
        return self.root / sha256_hex[:2] / sha256_hex

    def path(self, sha256_hex: str) -> Path:
        local = self._local(sha256_hex)
        if not self.copies.fetch(f"volumes/{sha256_hex}", local):
            raise FileNotFoundError(f"volume content {sha256_hex} is not in the object store")
        return local

    def store(self, chunks: Iterator[bytes]) -> tuple[str, int]:
        sha256_hex, size = store_in(self.root, chunks, self._local)
        self.copies.store.upload(f"volumes/{sha256_hex}", self._local(sha256_hex))
        return sha256_hex, size


class ClusterAssets:
    def __init__(self, root: Path, copies: LocalCopies, client_packages: ClientPackages) -> None:
        self.root = root
        self.copies = copies
        self._client_packages = client_packages
        self.contents = NodeContents(root / "volume-content", copies)
        self._forwarders: dict[str, SocketForwarder] = {}
        self._forwarders_lock = asyncio.Lock()
        self._layer_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _layer_dir(self, ref: str) -> Path:
        if ref.startswith(BASE_PREFIX):
            return self.root / "bases" / ref[len(BASE_PREFIX) :] / "rootfs"
        return self.root / "layers" / ref / "fs"

    def _fetch_layer(self, ref: str) -> Path:
        """A layer's files on this node, unpacked from the object store the first time."""
        target = self._layer_dir(ref)
        if target.exists():
            return target
        with self._guard:
            lock = self._layer_locks.setdefault(ref, threading.Lock())
        with lock:
            if target.exists():
                return target
            staging = target.parent.parent / f".tmp-{target.parent.name}-{os.getpid()}-{time.monotonic_ns()}"
            archive = staging.with_suffix(".tar")
            try:
                if not self.copies.store.download(layer_key(ref), archive):
                    raise FileNotFoundError(
                        f"image layer {ref} is not in the object store; rebuild the image (force_build=True)"
                    )
                unpack(archive, staging / target.name)
                staging.rename(target.parent)
            finally:
                archive.unlink(missing_ok=True)
                shutil.rmtree(staging, ignore_errors=True)
        return target

    def layer_dirs(self, chain: Sequence[str]) -> list[Path]:
        dirs = [self._fetch_layer(ref) for ref in chain]
        return [
            path
            for ref, path in reversed(list(zip(chain, dirs, strict=True)))
            if ref.startswith(BASE_PREFIX) or rootfs.has_entries(path)
        ]

    def blob(self, blob_id: str) -> Path:
        local = self.root / "blobs" / blob_id
        if not self.copies.fetch(f"blobs/{blob_id}", local):
            raise FileNotFoundError(f"blob {blob_id} is not in the object store")
        return local

    def client_package(self, python_version: str) -> Path:
        return self._client_packages.cached(python_version) or self._client_packages.for_python(
            python_version
        )

    def at_hand(self, python_version: str | None) -> bool:
        return False  # a layer or blob may have to come from the object store

    async def control_socket(self, address: str) -> Path | None:
        """One Unix socket per control-plane replica, forwarded to its gRPC address."""
        async with self._forwarders_lock:
            forwarder = self._forwarders.get(address)
            if forwarder is None:
                path = self.root / "control" / f"{address.replace(':', '_')}.sock"
                forwarder = SocketForwarder(path, address)
                await forwarder.start()
                self._forwarders[address] = forwarder
            return forwarder.path

    async def close(self) -> None:
        for forwarder in self._forwarders.values():
            await forwarder.close()
