"""Base root filesystems for `FROM <tag>`, cached by tag in a directory shared by every
server on the machine (and by CI runs), so a base is made once.

Two sources, in this order:
- an OCI image: from the local OCI layout named by HOMEPORT_OCI_MIRROR when it holds the
  tag, else from its registry with skopeo (this network reaches none; the attempt fails
  fast), unpacked with umoci;
- a local recipe built from Debian packages with mmdebstrap, for the bases client 1.6.4
  asks for by default: `python:3.11.*-slim-bookworm` (Debian's Python 3.11 made to look
  like the official image: `python`/`pip` in /usr/local/bin, pip allowed to install into
  the system) and `debian:bookworm-slim`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from homeport.images.config import ImageConfig

Log = Callable[[str], None]

DEBIAN_MIRROR = os.environ.get("HOMEPORT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Debian releases whose own python3 stands in for `python:X.Y-slim-<release>`.
DEBIAN_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
DEBIAN_VERSIONS = {"12": "bookworm", "13": "trixie"}
PYTHON_PACKAGES = "python3,python3-pip,python3-venv,python3-dev,ca-certificates"
REGISTRY_TIMEOUT_S = 60

_UV_TAG = re.compile(r"^ghcr\.io/astral-sh/uv:(latest|\d+\.\d+\.\d+)$")
_PYTHON_TAG = re.compile(r"^(?:docker\.io/)?(?:library/)?python:(\d+)\.(\d+)(?:\.\d+)?-slim(?:-(\w+))?$")
_DEBIAN_TAG = re.compile(r"^(?:docker\.io/)?(?:library/)?debian:(\w+?)(?:-slim)?$")


class BaseUnavailable(Exception):
    """The base cannot be had from a registry or a local recipe; the message says why."""


@dataclasses.dataclass(frozen=True)
class Base:
    tag: str
    rootfs: Path
    config: ImageConfig
    source: str  # "mmdebstrap ..." or "oci ..."


@dataclasses.dataclass(frozen=True)
class Recipe:
    release: str
    packages: str
    python: str | None  # set for python:X.Y images

    def describe(self) -> str:
        return f"mmdebstrap {self.release} ({self.packages or 'minbase'})"


def recipe_for(tag: str) -> Recipe | None:
    match = _PYTHON_TAG.match(tag)
    if match:
        version = f"{match.group(1)}.{match.group(2)}"
        release = match.group(3) or "bookworm"
        if DEBIAN_PYTHON.get(release) != version:
            # debian_slim(python_version="3.13") asks for python:3.13.x-slim-bookworm at
            # builder 2025.06; bookworm ships only 3.11, so the release that has the
            # version stands in (the official image builds that Python from source).
            release = next((name for name, shipped in DEBIAN_PYTHON.items() if shipped == version), "")
            if not release:
                return None
        return Recipe(release, PYTHON_PACKAGES, version)
    match = _DEBIAN_TAG.match(tag)
    if match:
        release = DEBIAN_VERSIONS.get(match.group(1), match.group(1))
        if release in DEBIAN_PYTHON:
            return Recipe(release, "ca-certificates", None)
    return None


def uv_version_for(tag: str) -> str | None:
    """`ghcr.io/astral-sh/uv:X` (what uv_pip_install copies uv from): "latest" or a version."""
    match = _UV_TAG.match(tag)
    return match.group(1) if match else None


def slug(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)


def cache_name(tag: str, oci_mirror: Path | None) -> str:
    """Tags one recipe serves (python:3.11.12-slim-bookworm, python:3.11-slim-bookworm)
    share one cached base."""
    recipe = recipe_for(tag)
    if recipe is None or (oci_mirror is not None and _oci_has(oci_mirror, tag)):
        return slug(tag) + ("-" + time.strftime("%Y%m%d") if tag.endswith(":latest") else "")
    return f"debian-{recipe.release}" + (f"-python{recipe.python}" if recipe.python else "")


class BaseCache:
    def __init__(self, root: Path, oci_mirror: Path | None = None) -> None:
        self.root = root
        self.oci_mirror = oci_mirror

    def cached(self, tag: str) -> Base | None:
        directory = self.root / cache_name(tag, self.oci_mirror)
        try:
            meta = json.loads((directory / "base.json").read_text())
        except (OSError, ValueError):
            return None
        return Base(tag, directory / "rootfs", ImageConfig.from_json(meta["config"]), meta["source"])

    def ensure(self, tag: str, log: Log) -> Base:
        """The base for `tag`, made now if it is not cached. Safe against other servers
        making it at the same time (a file lock), and a half-made base is never used:
        it is built aside and renamed into place."""
        base = self.cached(tag)
        if base is not None:
            return base
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{cache_name(tag, self.oci_mirror)}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            base = self.cached(tag)
            if base is not None:
                return base
            return self._make(tag, log)

    def _make(self, tag: str, log: Log) -> Base:
        name = cache_name(tag, self.oci_mirror)
        staging = self.root / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        started = time.monotonic()
        try:
            reasons = []
            made = None
            for attempt in (
                self._from_oci_mirror,
                self._from_registry,
                self._from_pypi_uv,
                self._from_recipe,
            ):
                try:
                    made = attempt(tag, staging / "rootfs", log)
                except BaseUnavailable as reason:
                    reasons.append(str(reason))
                    shutil.rmtree(staging / "rootfs", ignore_errors=True)
                    continue
                if made is not None:
                    break
            if made is None:
                raise BaseUnavailable(f"cannot get the base image {tag}: " + "; ".join(reasons))
            config, source = made
            (staging / "base.json").write_text(
                json.dumps({"tag": tag, "source": source, "config": config.to_json()})
            )
            target = self.root / name
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log(f"base {tag} ready ({source}) in {time.monotonic() - started:.1f}s\n")
        base = self.cached(tag)
        assert base is not None
        return base

    # -- sources -----------------------------------------------------------------------

    def _from_oci_mirror(self, tag: str, rootfs: Path, log: Log) -> tuple[ImageConfig, str] | None:
        if self.oci_mirror is None:
            return None
        reference = f"{self.oci_mirror}:{tag}"
        if not _oci_has(self.oci_mirror, tag):
            return None
        log(f"unpacking {tag} from the local OCI layout {self.oci_mirror}\n")
        return _unpack_oci(reference, rootfs, log), f"oci {reference}"

    def _from_registry(self, tag: str, rootfs: Path, log: Log) -> tuple[ImageConfig, str] | None:
        has_local_source = recipe_for(tag) is not None or uv_version_for(tag) is not None
        if has_local_source and os.environ.get("HOMEPORT_REGISTRY_FIRST") != "1":
            return None  # a local recipe exists: do not wait on a registry this network may not reach
        if shutil.which("skopeo") is None or shutil.which("umoci") is None:
            raise BaseUnavailable("skopeo and umoci are not installed (scripts/install installs them)")
        layout = rootfs.parent / "oci"
        log(f"pulling {tag} with skopeo\n")
        reference = (
            tag if "/" in tag.split(":")[0] or "." in tag.split("/")[0] else f"docker.io/library/{tag}"
        )
        result = subprocess.run(
            ["skopeo", "copy", "--retry-times", "0", f"docker://{reference}", f"oci:{layout}:image"],
            capture_output=True,
            text=True,
            timeout=REGISTRY_TIMEOUT_S * 10,
            check=False,
        )
        if result.returncode != 0:
            detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise BaseUnavailable(f"its registry could not be reached ({detail[-300:]})")
        try:
            return _unpack_oci(f"{layout}:image", rootfs, log), f"oci docker://{reference}"
        finally:
            shutil.rmtree(layout, ignore_errors=True)

    def _from_pypi_uv(self, tag: str, rootfs: Path, log: Log) -> tuple[ImageConfig, str] | None:
        """uv's image holds just the `uv` and `uvx` binaries; PyPI's uv wheel holds the same."""
        version = uv_version_for(tag)
        if version is None:
            return None
        requirement = "uv" if version == "latest" else f"uv=={version}"
        download = rootfs.parent / "download"
        log(f"fetching {requirement} from PyPI for {tag}\n")
        code = _stream(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--dest",
                str(download),
                requirement,
            ],
            log,
        )
        wheels = sorted(download.glob("uv-*.whl"))
        if code != 0 or not wheels:
            raise BaseUnavailable(f"PyPI did not provide {requirement} (pip exit status {code})")
        rootfs.mkdir(parents=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in wheel.namelist():
                if "/scripts/" in name and Path(name).name in ("uv", "uvx"):
                    target = rootfs / Path(name).name
                    target.write_bytes(wheel.read(name))
                    target.chmod(0o755)
        shutil.rmtree(download, ignore_errors=True)
        if not (rootfs / "uv").exists():
            raise BaseUnavailable(f"the {wheels[0].name} wheel holds no uv binary")
        return ImageConfig(env={"PATH": DEFAULT_PATH}), f"pypi {wheels[0].name}"

    def _from_recipe(self, tag: str, rootfs: Path, log: Log) -> tuple[ImageConfig, str] | None:
        recipe = recipe_for(tag)
        if uv_version_for(tag) is not None:
            return None
        if recipe is None:
            raise BaseUnavailable(
                "Homeport has no local recipe for it (it builds Python 3.11 from Debian bookworm and 3.13 from Debian "
                "trixie, for python:3.11-* and python:3.13-* tags, and debian:bookworm-slim / debian:trixie-slim); "
                "use one of those Python versions, or make the image reachable in a registry or in the local OCI "
                "layout named by HOMEPORT_OCI_MIRROR"
            )
        if shutil.which("mmdebstrap") is None:
            raise BaseUnavailable("mmdebstrap is not installed (scripts/install installs it)")
        log(f"building {tag} locally: {recipe.describe()} from {DEBIAN_MIRROR}\n")
        command = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory"]
        if recipe.packages:
            command.append(f"--include={recipe.packages}")
        command += [recipe.release, str(rootfs), DEBIAN_MIRROR]
        code = _stream(command, log)
        if code != 0:
            raise BaseUnavailable(f"mmdebstrap failed with exit status {code} (see the log above)")
        environment = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
        cmd: list[str] = ["bash"]
        if recipe.python:
            _python_like_official_image(rootfs, recipe.python)
            cmd = ["python3"]
            environment["PYTHON_VERSION"] = recipe.python
        _clean_apt_state(rootfs)
        hosts = rootfs / "etc/hosts"
        if not hosts.exists():
            hosts.write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        return ImageConfig(env=environment, cmd=cmd, workdir="/"), recipe.describe()


def _python_like_official_image(rootfs: Path, version: str) -> None:
    """What code written for the official python image relies on: `python`, `pip` on PATH
    in /usr/local/bin, and pip installing into the system interpreter."""
    local_bin = rootfs / "usr/local/bin"
    local_bin.mkdir(parents=True, exist_ok=True)
    for name, target in (
        ("python", "/usr/bin/python3"),
        ("python3", "/usr/bin/python3"),
        ("pip", "/usr/bin/pip3"),
        ("pip3", "/usr/bin/pip3"),
    ):
        link = local_bin / name
        if not link.is_symlink() and not link.exists():
            link.symlink_to(target)
    (rootfs / f"usr/lib/python{version}/EXTERNALLY-MANAGED").unlink(missing_ok=True)


def _clean_apt_state(rootfs: Path) -> None:
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        directory = rootfs / cache
        if directory.is_dir():
            for entry in directory.iterdir():
                if entry.is_file() and entry.name != "lock":
                    entry.unlink()


def _oci_has(layout: Path, tag: str) -> bool:
    try:
        index = json.loads((layout / "index.json").read_text())
    except (OSError, ValueError):
        return False
    return any(
        manifest.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
        for manifest in index.get("manifests", [])
    )


def _unpack_oci(reference: str, rootfs: Path, log: Log) -> ImageConfig:
    inspected = subprocess.run(
        ["skopeo", "inspect", "--config", f"oci:{reference}"], capture_output=True, text=True, check=False
    )
    if inspected.returncode != 0:
        raise BaseUnavailable(f"skopeo cannot read {reference}: {inspected.stderr.strip()[-300:]}")
    config = json.loads(inspected.stdout).get("config", {})
    code = _stream(["umoci", "raw", "unpack", "--image", reference, str(rootfs)], log)
    if code != 0:
        raise BaseUnavailable(f"umoci could not unpack {reference} (exit status {code})")
    environment = dict(item.partition("=")[::2] for item in config.get("Env") or [])
    environment.setdefault("PATH", DEFAULT_PATH)
    return ImageConfig(
        env=environment,
        workdir=config.get("WorkingDir") or "/",
        user=config.get("User") or "",
        entrypoint=config.get("Entrypoint") or [],
        cmd=config.get("Cmd") or [],
    )


def _stream(command: list[str], log: Log) -> int:
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    assert process.stdout is not None
    for line in process.stdout:
        log(line.decode(errors="replace"))
    return process.wait()
