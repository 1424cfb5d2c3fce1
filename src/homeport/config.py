"""Server settings and the on-disk layout of a data directory: one place for both."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from homeport import ids

# Base root filesystems and the client package for containers: slow to make, the same for
# every server on a machine, so kept outside any data directory (and any clone).
DEFAULT_CACHE_DIR = Path(os.environ.get("HOMEPORT_CACHE_DIR", "/var/cache/homeport"))


@dataclasses.dataclass(frozen=True)
class DataLayout:
    """Every path under a server's data directory is derived here, nowhere else."""

    root: Path

    @property
    def client_env(self) -> Path:
        return self.root / "client.env"

    @property
    def database(self) -> Path:
        return self.root / "homeport.db"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def tasks(self) -> Path:
        return self.root / "tasks"

    @property
    def control_socket(self) -> Path:
        """gRPC on a Unix socket: how containers reach the control plane without a network."""
        return self.root / "grpc.sock"

    @property
    def secret_key(self) -> Path:
        return self.root / "secrets.key"

    @property
    def server_log(self) -> Path:
        return self.root / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "server.pid"

    @property
    def volume_content(self) -> Path:
        return self.root / "volume-content"

    @property
    def volume_blocks(self) -> Path:
        return self.root / "volume-blocks"

    @property
    def image_contexts(self) -> Path:
        """Build contexts (the files COPY reads), one directory per running build."""
        return self.root / "image-contexts"

    def volume_file(self, sha256_hex: str) -> Path:
        return self.volume_content / sha256_hex[:2] / sha256_hex

    def volume_block(self, sha256_hex: str) -> Path:
        return self.volume_blocks / sha256_hex[:2] / sha256_hex

    def blob(self, blob_id: str) -> Path:
        if not ids.is_id("blob", blob_id):  # the id becomes a path: nothing else may
            raise ValueError(f"{blob_id!r} is not a blob id")
        return self.blobs / blob_id[-2:] / blob_id

    @property
    def zygotes(self) -> Path:
        return self.root / "zygotes"

    @property
    def memory_snapshots(self) -> Path:
        return self.root / "memory-snapshots"

    def task_dir(self, task_id: str) -> Path:
        return self.tasks / task_id

    def ensure(self) -> None:
        for path in (
            self.root,
            self.blobs,
            self.uploads,
            self.tasks,
            self.volume_content,
            self.volume_blocks,
            self.image_contexts,
        ):
            path.mkdir(parents=True, exist_ok=True)
        # Image layers and container roots hold files from images (setuid binaries included):
        # only root may walk into them.
        os.chmod(self.root, 0o700)


@dataclasses.dataclass(frozen=True)
class CacheLayout:
    """Paths under the machine-wide cache directory."""

    root: Path

    @property
    def bases(self) -> Path:
        return self.root / "bases"

    @property
    def client_packages(self) -> Path:
        return self.root / "client"


def _number_from_environment(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not a number") from None


@dataclasses.dataclass(frozen=True)
class Limits:
    """How long the server keeps what it no longer needs, and how much it accepts. Each may
    be set in the environment (the name in the comment)."""

    # Finished calls' results and data chunks (HOMEPORT_RESULT_RETENTION_S); Modal keeps 7 days.
    result_s: float = dataclasses.field(
        default_factory=lambda: _number_from_environment("HOMEPORT_RESULT_RETENTION_S", 7 * 86400)
    )
    # Container and app logs (HOMEPORT_LOG_RETENTION_S).
    log_s: float = dataclasses.field(
        default_factory=lambda: _number_from_environment("HOMEPORT_LOG_RETENTION_S", 7 * 86400)
    )
    # A blob nothing refers to yet is kept this long after its upload (HOMEPORT_BLOB_GRACE_S).
    blob_grace_s: float = dataclasses.field(
        default_factory=lambda: _number_from_environment("HOMEPORT_BLOB_GRACE_S", 3600)
    )
    # The largest blob a client may declare (HOMEPORT_BLOB_MAX_BYTES); also never more than
    # the disk holds.
    blob_max_bytes: int = dataclasses.field(
        default_factory=lambda: int(_number_from_environment("HOMEPORT_BLOB_MAX_BYTES", 64 * 2**30))
    )
    # Seconds between retention passes (HOMEPORT_RETENTION_INTERVAL_S).
    interval_s: float = dataclasses.field(
        default_factory=lambda: _number_from_environment("HOMEPORT_RETENTION_INTERVAL_S", 30)
    )
    # What a container may write to its disk (its writable layer) when it does not ask for
    # ephemeral_disk= (HOMEPORT_CONTAINER_DISK_MIB).
    container_disk_mib: int = dataclasses.field(
        default_factory=lambda: int(_number_from_environment("HOMEPORT_CONTAINER_DISK_MIB", 10 * 1024))
    )
    # What one container may write to its logs (HOMEPORT_CONTAINER_LOG_BYTES); the rest is dropped.
    container_log_bytes: int = dataclasses.field(
        default_factory=lambda: int(_number_from_environment("HOMEPORT_CONTAINER_LOG_BYTES", 64 * 2**20))
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: Path
    port: int = 7480
    blob_port: int = 0  # 0: port + 1
    host: str = "127.0.0.1"
    database_url: str | None = None  # None: SQLite under the data dir
    max_containers: int = 128  # containers this node runs at once (its memory budget usually binds first)
    runtime: str = "sandbox"  # "sandbox" (bubblewrap) or "gvisor" (runsc, for untrusted code)
    # Fork sandbox containers from a pre-imported zygote per image (HOMEPORT_ZYGOTES=0: never).
    zygotes: bool = dataclasses.field(default_factory=lambda: os.environ.get("HOMEPORT_ZYGOTES", "1") != "0")
    # Each container on its own network namespace behind the node's bridge (HOMEPORT_CONTAINER_SUBNET);
    # "" shares the host's network instead.
    container_subnet: str = dataclasses.field(
        default_factory=lambda: os.environ.get("HOMEPORT_CONTAINER_SUBNET", "10.89.0.0/16")
    )
    web_domain: str = "localhost"  # *.localhost resolves to loopback with no DNS setup
    web_scheme: str = "http"
    web_port: int = -1  # port in web URLs: -1 = the HTTP listener's, 0 = none
    rates_file: Path | None = None  # prices per hour (None: src/homeport/rates.default.toml, placeholders)
    metrics_port: int = 0  # serve Prometheus metrics at http://HOST:PORT/metrics; 0: not served
    limits: Limits = dataclasses.field(default_factory=Limits)
    # Cluster mode: containers run on the nodes of this Ray cluster (its head's host:port),
    # with blobs, layers and volume contents in this object store (s3://bucket/prefix).
    ray_address: str | None = None
    blob_url: str | None = None
    cache_dir: Path = DEFAULT_CACHE_DIR
    # Image layers: under the data dir unless set (HOMEPORT_LAYER_DIR). A layer dir belongs
    # to one server: `homeport images prune` removes what that server's images do not use.
    layer_dir: Path | None = dataclasses.field(
        default_factory=lambda: _optional_path(os.environ.get("HOMEPORT_LAYER_DIR"))
    )
    # A local OCI layout consulted for `FROM <tag>` before any registry (HOMEPORT_OCI_MIRROR).
    oci_mirror: Path | None = dataclasses.field(
        default_factory=lambda: _optional_path(os.environ.get("HOMEPORT_OCI_MIRROR"))
    )

    @property
    def cache(self) -> CacheLayout:
        return CacheLayout(Path(self.cache_dir).resolve())

    @property
    def layers(self) -> Path:
        return Path(self.layer_dir).resolve() if self.layer_dir else self.layout.root / "layers"

    @property
    def layout(self) -> DataLayout:
        return DataLayout(Path(self.data_dir).resolve())

    @property
    def effective_blob_port(self) -> int:
        return self.blob_port or self.port + 1

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.layout.database}"

    @property
    def server_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def server_address(self) -> str:
        """host:port of the gRPC listener (where nodes forward their containers' calls)."""
        return f"{self.host}:{self.port}"

    def web_url(self, host_label: str) -> str:
        port = self.effective_blob_port if self.web_port == -1 else self.web_port
        return f"{self.web_scheme}://{host_label}.{self.web_domain}" + (f":{port}" if port else "")

    @property
    def blob_base_url(self) -> str:
        return f"http://{self.host}:{self.effective_blob_port}"


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None
