"""Shared fixtures: a real Homeport server process, and helpers to run the real
`modal` CLI and Python scripts against it."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# A test run started in the background by a non-interactive shell (as CI may be) inherits
# SIGINT as ignored, Python keeps an inherited SIG_IGN, and so would every process the tests
# start: Ctrl-C (SIGINT) would then never stop a `modal run`. Handle it as Python does by default.
signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MODAL = str(VENV_BIN / "modal")
APPS = Path(__file__).resolve().parent / "e2e" / "apps"
# Image layers shared by every test server on this machine and kept between runs (outside
# the clone), so debian_slim()'s apt and pip steps are built once, not once per server.
# Tests that prune layers give their server a layer dir of its own.
TEST_LAYER_DIR = os.environ.get("HOMEPORT_TEST_LAYER_DIR", "/var/cache/homeport/test-layers")


def free_port_pair() -> int:
    """A port N such that N and N+1 are both free (gRPC and blob HTTP)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


@dataclasses.dataclass
class Server:
    data_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None
    log_path: Path
    database_url: str | None = None
    server_env: dict[str, str] = dataclasses.field(default_factory=dict)  # extra environment for the server
    metrics_port: int = 0  # Prometheus metrics served on this port (0: none)
    serve_args: list[str] = dataclasses.field(default_factory=list)  # more `homeport serve` options

    def metrics(self) -> str:
        """One scrape of the server's /metrics."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30) as page:
            return str(page.read().decode())

    @property
    def client_env(self) -> dict[str, str]:
        values = {}
        for line in (self.data_dir / "client.env").read_text().splitlines():
            key, value = line.split("=", 1)
            values[key] = value
        return values

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
        env.update(self.client_env)
        env["MODAL_CONFIG_PATH"] = str(self.data_dir / "no-modal.toml")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(overrides)
        return env

    def start(self) -> None:
        (self.data_dir / "client.env").unlink(missing_ok=True)
        command = [
            str(VENV_BIN / "homeport"),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
        ]
        if self.database_url:
            command += ["--database-url", self.database_url]
        if self.metrics_port:
            command += ["--metrics-port", str(self.metrics_port)]
        command += self.serve_args
        log = open(self.log_path, "ab")
        environment = {**os.environ, "HOMEPORT_LAYER_DIR": TEST_LAYER_DIR, **self.server_env}
        self.process = subprocess.Popen(
            command, stdout=log, stderr=log, start_new_session=True, env=environment
        )
        deadline = time.monotonic() + 60
        while not (self.data_dir / "client.env").exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start within 60 s")
            time.sleep(0.05)

    def stop(self, hard: bool = False) -> None:
        if self.process is None:
            return
        if hard:
            os.killpg(self.process.pid, 9)
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        self.process = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def homeport(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(VENV_BIN / "homeport"), *args, "--data-dir", str(self.data_dir)]
        if self.database_url:
            command += ["--database-url", self.database_url]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)


def start_server(
    tmp: Path,
    database_url: str | None = None,
    server_env: dict[str, str] | None = None,
    metrics: bool = False,
    serve_args: list[str] | None = None,
) -> Server:
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port_pair()
    metrics_port = 0
    while metrics and metrics_port in (0, port, port + 1):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            metrics_port = probe.getsockname()[1]
    server = Server(
        data_dir,
        port,
        None,
        tmp / "server.log",
        database_url,
        server_env or {},
        metrics_port,
        serve_args or [],
    )
    server.start()
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("server"))
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own, for tests that restart or kill it."""
    server = start_server(tmp_path)
    yield server
    server.stop()


def _start_postgres(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway PostgreSQL cluster listening only on a Unix socket in `directory`."""
    from homeport.localcluster import start_postgres

    return start_postgres(directory)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    import shutil
    import tempfile

    # Outside pytest's private (0700) temp dir: the postgres user must reach it.
    directory = Path(tempfile.mkdtemp(prefix="homeport-pg-"))
    process, url = _start_postgres(directory)
    yield url
    process.terminate()
    process.wait(timeout=30)
    shutil.rmtree(directory, ignore_errors=True)


def run_modal(
    server: Server, *args: str, cwd: Path = APPS, timeout: float = 180, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MODAL, *args], cwd=cwd, env=server.env(**env), capture_output=True, text=True, timeout=timeout
    )


def run_python(
    server: Server, script: str, cwd: Path = APPS, timeout: float = 180, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=server.env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def assert_ok(result: subprocess.CompletedProcess[str]) -> str:
    text = output(result)
    assert result.returncode == 0, text[-5000:]
    return text
