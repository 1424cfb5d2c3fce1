"""Server settings and the on-disk layout of a data directory: one place for both."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path


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

    def volume_file(self, sha256_hex: str) -> Path:
        return self.volume_content / sha256_hex[:2] / sha256_hex

    def volume_block(self, sha256_hex: str) -> Path:
        return self.volume_blocks / sha256_hex[:2] / sha256_hex

    def blob(self, blob_id: str) -> Path:
        return self.blobs / blob_id[-2:] / blob_id

    def task_dir(self, task_id: str) -> Path:
        return self.tasks / task_id

    def ensure(self) -> None:
        for path in (self.root, self.blobs, self.uploads, self.tasks, self.volume_content, self.volume_blocks):
            path.mkdir(parents=True, exist_ok=True)


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: Path
    port: int = 7480
    blob_port: int = 0  # 0: port + 1
    host: str = "127.0.0.1"
    database_url: str | None = None  # None: SQLite under the data dir
    runtime: str = "process"
    max_containers: int = 32  # containers this node runs at once
    web_domain: str = "localhost"  # *.localhost resolves to loopback with no DNS setup
    web_scheme: str = "http"
    web_port: int = -1  # port in web URLs: -1 = the HTTP listener's, 0 = none
    container_python: str = sys.executable
    # How long finished call results are kept (the issue asks for at least 24 h).
    result_retention_s: float = 7 * 24 * 3600

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

    def web_url(self, host_label: str) -> str:
        port = self.effective_blob_port if self.web_port == -1 else self.web_port
        return f"{self.web_scheme}://{host_label}.{self.web_domain}" + (f":{port}" if port else "")

    @property
    def blob_base_url(self) -> str:
        return f"http://{self.host}:{self.effective_blob_port}"
