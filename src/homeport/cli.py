"""The `homeport` admin command: run the server, manage tokens and workspaces."""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import toml
import typer

from homeport.config import Settings

app = typer.Typer(help="Homeport: run unmodified Modal programs on your own machines.", no_args_is_help=True)
token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
workspace_app = typer.Typer(help="Manage workspaces.", no_args_is_help=True)
app.add_typer(token_app, name="token")
images_app = typer.Typer(help="Inspect and prune built images.", no_args_is_help=True)
app.add_typer(workspace_app, name="workspace")
app.add_typer(images_app, name="images")

DEFAULT_DATA_DIR = Path(os.environ.get("HOMEPORT_DATA_DIR", Path.home() / ".homeport"))
DataDir = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="Where the server keeps its state.")
DatabaseUrl = typer.Option(None, "--database-url", help="SQLAlchemy URL; default: SQLite under the data dir.")
PROFILE = "homeport"


def _settings(data_dir: Path, database_url: str | None, **kwargs: object) -> Settings:
    return Settings(data_dir=data_dir, database_url=database_url, **kwargs)  # type: ignore[arg-type]


def _auth(data_dir: Path, database_url: str | None):  # type: ignore[no-untyped-def]
    from homeport.server.auth import AuthService
    from homeport.server.state import open_engine

    engine = open_engine(_settings(data_dir, database_url))
    auth = AuthService(engine)
    auth.ensure_default_workspace()
    return auth


@app.command()
def serve(
    data_dir: Path = DataDir,
    port: int = typer.Option(7480, "--port", help="gRPC port the modal client connects to."),
    blob_port: int = typer.Option(0, "--blob-port", help="HTTP port for blob URLs (default: port + 1)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    database_url: str | None = DatabaseUrl,
    max_containers: int = typer.Option(
        128,
        "--max-containers",
        help="Containers this node runs at once (memory reservations usually bind first).",
    ),
    runtime: str = typer.Option(
        os.environ.get("HOMEPORT_RUNTIME", "sandbox"),
        "--runtime",
        help="Container runtime: sandbox (bubblewrap, default) or gvisor (runsc: a user-space kernel for untrusted code).",
    ),
    web_domain: str = typer.Option(
        "localhost", "--web-domain", help="Web endpoints answer at <label>.<domain>."
    ),
    web_scheme: str = typer.Option(
        "http", "--web-scheme", help="Scheme in web endpoint URLs (https behind a TLS proxy)."
    ),
    web_port: int = typer.Option(
        -1,
        "--web-port",
        help="Port in web endpoint URLs: -1 = the HTTP listener's, 0 = none (behind a proxy on 80/443).",
    ),
    metrics_port: int = typer.Option(
        0, "--metrics-port", help="Serve Prometheus metrics at http://HOST:PORT/metrics (docs/metrics.md)."
    ),
    rates: Path | None = typer.Option(
        None,
        "--rates",
        help="Prices per hour for billing (default: placeholders in src/homeport/rates.default.toml).",
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="Cluster mode: run containers on the nodes of this Ray cluster (host:port of its head).",
    ),
    blob_url: str | None = typer.Option(
        None,
        "--blob-url",
        help="Cluster mode: keep blobs, image layers and volume contents in this S3 bucket (s3://bucket/prefix; "
        "endpoint and credentials from AWS_ENDPOINT_URL and AWS_* as usual).",
    ),
) -> None:
    """Run the server in the foreground; writes DATA_DIR/client.env once ready."""
    from homeport.server.main import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(
        data_dir,
        database_url,
        port=port,
        blob_port=blob_port,
        host=host,
        max_containers=max_containers,
        web_domain=web_domain,
        web_scheme=web_scheme,
        web_port=web_port,
        runtime=runtime,
        metrics_port=metrics_port,
        rates_file=rates,
        ray_address=ray_address,
        blob_url=blob_url,
    )
    if ray_address and not (blob_url and database_url and database_url.startswith("postgresql")):
        typer.echo(
            "Error: cluster mode (--ray-address) needs --blob-url s3://... (shared blobs and layers) and "
            "--database-url postgresql://... (shared state): every node and replica must see them",
            err=True,
        )
        raise typer.Exit(2)
    if runtime not in ("sandbox", "gvisor"):
        typer.echo(f"Error: unknown runtime {runtime!r}; use --runtime sandbox or --runtime gvisor", err=True)
        raise typer.Exit(2)
    from homeport.agent.rootfs import enter_private_mount_namespace

    enter_private_mount_namespace()  # before any thread: unshare refuses threaded processes
    from homeport.server.store import hosting

    hosting.run(run_server(settings))  # every task greenlet-hosted: see store/hosting.py


def _modal_config_path() -> Path:
    return Path(os.environ.get("MODAL_CONFIG_PATH", Path.home() / ".modal.toml"))


def _write_profile(client_env: dict[str, str]) -> None:
    """Add (or refresh) the `homeport` profile, leaving every other profile as it was."""
    path = _modal_config_path()
    config = toml.load(path) if path.exists() else {}
    others_active = any(isinstance(v, dict) and v.get("active") for k, v in config.items() if k != PROFILE)
    profile = config.get(PROFILE, {})
    profile.update(
        token_id=client_env["MODAL_TOKEN_ID"],
        token_secret=client_env["MODAL_TOKEN_SECRET"],
        server_url=client_env["MODAL_SERVER_URL"],
    )
    if not others_active:
        profile["active"] = True
    config[PROFILE] = profile
    path.write_text(toml.dumps(config))
    if others_active:
        typer.echo(
            f"Another modal profile is active; use `MODAL_PROFILE={PROFILE} modal run ...` or `modal profile activate {PROFILE}`."
        )


@app.command()
def up(
    data_dir: Path = DataDir,
    port: int = typer.Option(7480, "--port"),
    database_url: str | None = DatabaseUrl,
) -> None:
    """Start the server in the background and add a `homeport` profile to ~/.modal.toml."""
    from homeport.server.main import read_client_env

    settings = _settings(data_dir, database_url, port=port)
    layout = settings.layout
    layout.ensure()
    if layout.pid_file.exists():
        pid = int(layout.pid_file.read_text())
        try:
            os.kill(pid, 0)
            typer.echo(f"Homeport is already running (pid {pid}); stop it with `homeport down`.")
            raise typer.Exit(0)
        except ProcessLookupError:
            layout.pid_file.unlink()
    layout.client_env.unlink(missing_ok=True)
    command = [sys.executable, "-m", "homeport", "serve", "--data-dir", str(layout.root), "--port", str(port)]
    if database_url:
        command += ["--database-url", database_url]
    with open(layout.server_log, "ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=log_file, start_new_session=True)
    layout.pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + 60
    while not layout.client_env.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            typer.echo(f"Homeport failed to start; see {layout.server_log}", err=True)
            raise typer.Exit(1)
        time.sleep(0.1)
    _write_profile(read_client_env(layout.client_env))
    typer.echo(f"Homeport is running at {settings.server_url} (pid {process.pid}, log {layout.server_log}).")
    typer.echo("`modal run app.py` now runs against it.")


@app.command()
def down(data_dir: Path = DataDir) -> None:
    """Stop the background server started by `homeport up`."""
    layout = Settings(data_dir=data_dir).layout
    if not layout.pid_file.exists():
        typer.echo("Homeport is not running.")
        return
    pid = int(layout.pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
    except ProcessLookupError:
        pass
    layout.pid_file.unlink(missing_ok=True)
    typer.echo("Homeport stopped.")


@token_app.command("create")
def token_create(
    workspace: str = typer.Option("main", "--workspace", "-w"),
    label: str = typer.Option("", "--label"),
    proxy_auth: bool = typer.Option(
        False,
        "--proxy-auth",
        help="A token only for web endpoints with requires_proxy_auth=True (Modal-Key/Modal-Secret).",
    ),
    data_dir: Path = DataDir,
    database_url: str | None = DatabaseUrl,
) -> None:
    """Create a token for a workspace and print it (the secret is shown only once)."""
    try:
        token_id, secret = _auth(data_dir, database_url).create_token(
            workspace, label, scope="proxy" if proxy_auth else "api"
        )
    except ValueError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1)
    if proxy_auth:
        typer.echo(f"Modal-Key: {token_id}\nModal-Secret: {secret}")
    else:
        typer.echo(f"MODAL_TOKEN_ID={token_id}\nMODAL_TOKEN_SECRET={secret}")


@token_app.command("list")
def token_list(data_dir: Path = DataDir, database_url: str | None = DatabaseUrl) -> None:
    """List tokens (never their secrets)."""
    for info in _auth(data_dir, database_url).list_tokens():
        state = "revoked" if info.revoked else "active"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created_at))
        typer.echo(
            f"{info.token_id}  {info.workspace_name:<16} {info.scope:<6} {state:<8} {created}  {info.label}"
        )


@token_app.command("revoke")
def token_revoke(token_id: str, data_dir: Path = DataDir, database_url: str | None = DatabaseUrl) -> None:
    """Revoke a token: every call made with it is refused from now on."""
    try:
        _auth(data_dir, database_url).revoke_token(token_id)
    except ValueError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1)
    typer.echo(f"Revoked {token_id}.")


@workspace_app.command("create")
def workspace_create(name: str, data_dir: Path = DataDir, database_url: str | None = DatabaseUrl) -> None:
    """Create a workspace; then `homeport token create -w NAME` gives it a token."""
    try:
        workspace_id = _auth(data_dir, database_url).create_workspace(name)
    except ValueError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1)
    typer.echo(f"Created workspace {name} ({workspace_id}).")


@workspace_app.command("list")
def workspace_list(data_dir: Path = DataDir, database_url: str | None = DatabaseUrl) -> None:
    """List workspaces."""
    for workspace_id, name in _auth(data_dir, database_url).list_workspaces():
        typer.echo(f"{workspace_id}  {name}")


def _layer_store(data_dir: Path, database_url: str | None):  # type: ignore[no-untyped-def]
    from homeport.images.bases import BaseCache
    from homeport.images.layers import LayerStore
    from homeport.server.services.image_inventory import recorded_layer_dir
    from homeport.server.state import open_engine

    settings = _settings(data_dir, database_url)
    engine = open_engine(settings)
    layer_dir = recorded_layer_dir(engine) or settings.layers
    return engine, LayerStore(layer_dir, BaseCache(settings.cache.bases, settings.oci_mirror))


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


@app.command()
def nodes(data_dir: Path = DataDir, database_url: str | None = DatabaseUrl) -> None:
    """The machines that run containers: capacity, what is reserved, containers, health."""
    from rich.console import Console
    from rich.table import Table

    from homeport.server.services.nodes import NodeRegistry
    from homeport.server.state import open_engine

    records = NodeRegistry(open_engine(_settings(data_dir, database_url))).list()
    if not records:
        typer.echo("no node has reported yet; is `homeport serve` running against this data dir?")
        raise typer.Exit(1)
    table = Table(
        "Node", "Health", "CPUs (busy)", "Memory reserved", "GPUs (busy)", "Containers", "Last seen", box=None
    )
    for record in records:
        node = record.inventory
        models = collections.Counter(node.gpus)
        gpus = ", ".join(f"{count} x {model}" for model, count in models.items()) + f" ({node.gpus_busy})"
        table.add_row(
            node.node_id,
            "up" if record.up else "gone",
            f"{node.cpu_count} ({node.cpu_busy:.0%})",
            f"{node.memory_reserved_mib} / {node.memory_budget_mib} MiB",
            gpus,
            str(node.containers),
            time.strftime("%H:%M:%S", time.localtime(record.last_seen)),
        )
    Console().print(table)


@images_app.command("list")
def images_list(data_dir: Path = DataDir, database_url: str | None = DatabaseUrl) -> None:
    """Images this server knows, with their status, layer count and size above their base."""
    from rich.console import Console
    from rich.table import Table

    from homeport.server.services.image_inventory import list_images

    engine, layers = _layer_store(data_dir, database_url)
    table = Table("Image", "Status", "Layers", "Size", "Base", "Built", "Last step", box=None)
    for image in list_images(engine, layers):
        built = (
            time.strftime("%Y-%m-%d %H:%M", time.localtime(float(str(image["built_at"]))))
            if image["built_at"]
            else "-"
        )
        step = str(image["last_step"])
        table.add_row(
            str(image["id"]), str(image["status"]), str(image["layers"]), _size(image["size"]),  # type: ignore[arg-type]
            str(image["base"]).removeprefix("base:"), built, step if len(step) < 60 else step[:57] + "...",
        )  # fmt: skip
    Console(width=200).print(table)


@images_app.command("prune")
def images_prune(data_dir: Path = DataDir, database_url: str | None = DatabaseUrl) -> None:
    """Remove layers that no built or building image uses (left by force_build, failed
    builds and changed steps). Cached bases are kept."""
    from homeport.server.services.image_inventory import prune_layers

    engine, layers = _layer_store(data_dir, database_url)
    removed, freed = prune_layers(engine, layers)
    typer.echo(f"Removed {len(removed)} layer(s), freed {_size(freed)}.")


def main() -> None:
    app()
