"""The layer store: one directory per build step's result, named by the step's cache
key, holding the files that step changed (an overlayfs upper directory, whiteouts
included) and the image config after it.

A layer appears under its final name only once complete (built aside, then renamed),
so an interrupted build never leaves a layer a later build would reuse. Layers are
stacked by reference: `base:<slug>` names a cached base root filesystem, anything
else a directory here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from homeport.agent import rootfs
from homeport.images.bases import BaseCache
from homeport.images.config import ImageConfig

BASE_PREFIX = "base:"
STALE_STAGING_S = 3600


@dataclasses.dataclass(frozen=True)
class Layer:
    ref: str
    step: str
    config: ImageConfig
    size: int
    created_at: float


def layer_ref(key: str) -> str:
    # Short names keep the overlay's lowerdir option (one page) from overflowing.
    return key[:32]


class LayerStore:
    def __init__(self, root: Path, bases: BaseCache) -> None:
        self.root = root
        self.bases = bases
        root.mkdir(parents=True, exist_ok=True)

    def path(self, ref: str) -> Path:
        if ref.startswith(BASE_PREFIX):
            return self.bases.root / ref[len(BASE_PREFIX) :] / "rootfs"
        return self.root / ref / "fs"

    def lower_dirs(self, chain: list[str]) -> list[Path]:
        """Overlay lowerdirs for a chain (bottom first): topmost first, empty layers left out."""
        return [
            self.path(ref)
            for ref in reversed(chain)
            if ref.startswith(BASE_PREFIX) or rootfs.has_entries(self.path(ref))
        ]

    def get(self, key: str) -> Layer | None:
        ref = layer_ref(key)
        try:
            meta = json.loads((self.root / ref / "layer.json").read_text())
        except (OSError, ValueError):
            return None
        if meta.get("key") != key:
            return None
        return Layer(
            ref, meta["step"], ImageConfig.from_json(meta["config"]), meta["size"], meta["created_at"]
        )

    def staging(self, key: str) -> Path:
        directory = self.root / f".tmp-{layer_ref(key)}-{os.getpid()}-{time.monotonic_ns()}"
        (directory / "fs").mkdir(parents=True)
        return directory

    def commit(self, key: str, staging: Path, step: str, config: ImageConfig, replace: bool = False) -> Layer:
        """Publish a staged layer under its key. A layer already there (another build made
        the same step meanwhile) wins, unless `replace` (force_build)."""
        size = _disk_usage(staging / "fs")
        meta = {"key": key, "step": step, "config": config.to_json(), "size": size, "created_at": time.time()}
        (staging / "layer.json").write_text(json.dumps(meta))
        shutil.rmtree(staging / "work", ignore_errors=True)
        shutil.rmtree(staging / "merged", ignore_errors=True)
        target = self.root / layer_ref(key)
        if target.exists() and not replace and self.get(key) is not None:
            shutil.rmtree(staging, ignore_errors=True)
            layer = self.get(key)
            assert layer is not None
            return layer
        if target.exists():
            retired = self.root / f".tmp-retired-{layer_ref(key)}-{time.monotonic_ns()}"
            target.rename(retired)
            shutil.rmtree(retired, ignore_errors=True)
        staging.rename(target)
        layer = self.get(key)
        assert layer is not None
        return layer

    def all_refs(self) -> list[str]:
        return sorted(
            entry.name for entry in self.root.iterdir() if not entry.name.startswith(".") and entry.is_dir()
        )

    def size(self, ref: str) -> int:
        if ref.startswith(BASE_PREFIX):
            return _disk_usage(self.path(ref))
        try:
            return int(json.loads((self.root / ref / "layer.json").read_text())["size"])
        except (OSError, ValueError, KeyError):
            return 0

    def age(self, ref: str) -> float:
        try:
            return time.time() - float(json.loads((self.root / ref / "layer.json").read_text())["created_at"])
        except (OSError, ValueError, KeyError):
            return 0.0

    def remove(self, ref: str) -> None:
        retired = self.root / f".tmp-retired-{ref}-{time.monotonic_ns()}"
        (self.root / ref).rename(retired)
        shutil.rmtree(retired, ignore_errors=True)

    def clean_staging(self) -> None:
        """Drop what interrupted builds left behind (old enough not to be another server's live build)."""
        now = time.time()
        for entry in self.root.iterdir():
            if entry.name.startswith(".tmp-"):
                try:
                    if now - entry.stat().st_mtime > STALE_STAGING_S:
                        shutil.rmtree(entry, ignore_errors=True)
                except FileNotFoundError:
                    pass


def _disk_usage(path: Path) -> int:
    total = 0
    for directory, subdirectories, files in os.walk(path):
        for name in files + subdirectories:
            try:
                stat = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            total += stat.st_blocks * 512
    return total
