"""A whole Homeport cluster on this one machine, for tests and for trying cluster mode.

    scripts/cluster-local up DIR [--nodes N] [--replicas R] [--gpus "node-2=A10G:2"]
    scripts/cluster-local kill-node DIR I      # power loss of node I (0 is the head)
    scripts/cluster-local down DIR

`up` starts a PostgreSQL server, a SeaweedFS S3 server, a Ray head and N-1 further Ray
nodes (separate raylets, each with its own node agent, data directory and container
bridge, as separate machines would have) and R Homeport control-plane replicas in cluster
mode. It writes DIR/client.env (the first replica's, as `homeport serve` writes it;
DIR/client-R.env for replica R) and prints the node ids. Everything listens on loopback
only. What it started is recorded in DIR/cluster.json, which `down` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
# Ray marks a node dead after this many missed 1 s health checks: a dead node's inputs run
# elsewhere about 3-5 s after its death.
RAY_ENVIRONMENT = {
    # Ray 2.60 turns token authentication on for a `ray start --head` (and a driver) that
    # finds ~/.ray/auth_token, which any local `ray.init()` on this machine leaves behind,
    # but not for the nodes joining it: they are then refused. Every process of this
    # one-machine cluster (nodes, control-plane replicas) says the same thing explicitly.
    "RAY_AUTH_MODE": "disabled",
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
S3_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "homeport",
    "AWS_SECRET_ACCESS_KEY": "homeport",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def say(message: str) -> None:
    print(f"cluster-local: {message}", flush=True)


def wait_for(
    what: str, check, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None
) -> None:  # type: ignore[no-untyped-def,type-arg]
    deadline = time.monotonic() + timeout
    while not check():
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            if process is not None:
                _stop(process.pid, 10)
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise SystemExit(f"cluster-local: {what} did not start\n{tail}")
        time.sleep(0.2)


def start_postgres(directory: Path, initialize: bool = True) -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway PostgreSQL server listening only on a Unix socket in `directory`."""
    import glob

    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not binaries:
        raise SystemExit("cluster-local: PostgreSQL is not installed; run scripts/install")
    bin_dir = Path(binaries[-1])
    directory.mkdir(parents=True, exist_ok=True)
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(directory, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    if initialize:
        subprocess.run(
            [
                *as_user,
                str(bin_dir / "initdb"),
                "-D",
                str(directory / "data"),
                "-U",
                "postgres",
                "-A",
                "trust",
            ],
            check=True,
            capture_output=True,
        )
    log = directory / "postgres.log"
    process = subprocess.Popen(
        [*as_user, str(bin_dir / "postgres"), "-D", str(directory / "data"), "-k", str(directory),
         "-c", "listen_addresses=", "-c", "max_connections=200"],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    wait_for("PostgreSQL", lambda: (directory / ".s.PGSQL.5432").exists(), 60, process, log)
    time.sleep(0.5)
    return process, f"postgresql+psycopg2://postgres@/postgres?host={directory}"


def start_s3(directory: Path) -> tuple[int, str]:
    directory.mkdir(parents=True)
    port = free_port()
    log = directory / "seaweedfs.log"
    process = subprocess.Popen(
        [str(VENV_BIN / "weed"), "server", "-s3", f"-dir={directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         # Every port chosen here: by default the gRPC ports are the HTTP ports + 10000.
         f"-master.port={free_port()}", f"-master.port.grpc={free_port()}",
         f"-volume.port={free_port()}", f"-volume.port.grpc={free_port()}",
         f"-filer.port={free_port()}", f"-filer.port.grpc={free_port()}",
         f"-s3.port={port}", f"-s3.port.grpc={free_port()}", f"-s3.port.iceberg={free_port()}",
         f"-s3.port.lance={free_port()}", "-master.volumeSizeLimitMB=256",
         "-master.telemetry=false"],  # nothing leaves this machine
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_for("the S3 server (SeaweedFS)", ready, 60, process, log)
    return process.pid, endpoint


def node_environment(
    directory: Path, index: int, gpus: dict[int, str], memory: dict[int, str]
) -> dict[str, str]:
    return {
        "HOMEPORT_NODE_ID": f"node-{index}",
        "HOMEPORT_NODE_DIR": str(directory / f"node-{index}"),
        "HOMEPORT_BRIDGE": f"hpnode{index}",
        "HOMEPORT_CONTAINER_SUBNET": f"10.{91 + index}.0.0/24",
        "HOMEPORT_GPUS": gpus.get(index, ""),
        "HOMEPORT_NODE_MEMORY_MIB": memory.get(index, os.environ.get("HOMEPORT_NODE_MEMORY_MIB", "4096")),
    }


def ray_start(arguments: list[str], environment: dict[str, str], log: Path) -> None:
    # In a mount namespace of its own (a slave of the host's): what the node's agent mounts
    # (overlay roots, network namespace names) stays private to it and goes away with it.
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "slave",
         str(VENV_BIN / "ray"), "start", *arguments, "--node-ip-address=127.0.0.1", "--disable-usage-stats",
         "--num-cpus=2", "--object-store-memory=80000000"],
        env={**os.environ, **RAY_ENVIRONMENT, **environment}, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
        timeout=120,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"cluster-local: ray start failed\n{log.read_text()[-3000:]}")


def raylet_pid(node_id: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")[0]
            if not command.endswith(b"/raylet"):
                continue
            if f"HOMEPORT_NODE_ID={node_id}\0".encode() in (entry / "environ").read_bytes():
                return int(entry.name)
        except OSError:
            continue
    return None


def start_replica(directory: Path, index: int, state: dict) -> dict:  # type: ignore[type-arg]
    data = directory / f"control-{index}"
    port = free_port()
    blob_port = free_port()
    log = directory / f"control-{index}.log"
    environment = {**os.environ, **S3_ENVIRONMENT, "AWS_ENDPOINT_URL": state["s3"], **RAY_ENVIRONMENT,
                   "HOMEPORT_CONTAINER_SUBNET": f"10.{120 + index}.0.0/24", "HOMEPORT_BRIDGE": f"hpctl{index}",
                   "RAY_ADDRESS": ""}  # fmt: skip
    process = subprocess.Popen(
        [str(VENV_BIN / "homeport"), "serve", "--data-dir", str(data), "--port", str(port),
         "--blob-port", str(blob_port), "--database-url", state["database_url"],
         "--ray-address", state["ray_address"], "--blob-url", "s3://homeport/cluster"],
        env=environment, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    wait_for(f"control-plane replica {index}", (data / "client.env").exists, 180, process, log)
    return {"pid": process.pid, "port": port, "data": str(data), "log": str(log)}


def up(directory: Path, nodes: int, replicas: int, gpus: dict[int, str], memory: dict[int, str]) -> None:
    if (directory / "cluster.json").exists():
        raise SystemExit(f"cluster-local: {directory} holds a cluster already; `down` it first")
    directory.mkdir(parents=True, exist_ok=True)
    directory = directory.resolve()
    state: dict = {"nodes": [], "replicas": []}  # type: ignore[type-arg]

    def save() -> None:
        (directory / "cluster.json").write_text(json.dumps(state, indent=2))

    say("starting PostgreSQL")
    # Its own directory, outside DIR: the postgres user must reach it whatever DIR's modes.
    state["postgres_dir"] = tempfile.mkdtemp(prefix="homeport-cluster-pg-")
    save()
    postgres, state["database_url"] = start_postgres(Path(state["postgres_dir"]))
    state["postgres_pid"] = postgres.pid
    save()
    say("starting the S3 server (SeaweedFS)")
    state["s3_pid"], state["s3"] = start_s3(directory / "s3")
    save()
    ray_port = free_port()
    state["ray_address"] = f"127.0.0.1:{ray_port}"
    for index in range(nodes):
        environment = node_environment(directory, index, gpus, memory)
        say(f"starting Ray node {index} ({environment['HOMEPORT_NODE_ID']})")
        head = (
            ["--head", f"--port={ray_port}", "--include-dashboard=false"]
            if index == 0
            else [f"--address={state['ray_address']}"]
        )
        ray_start(head, environment, directory / f"ray-node-{index}.log")
        state["nodes"].append(
            {"node_id": environment["HOMEPORT_NODE_ID"], "bridge": environment["HOMEPORT_BRIDGE"]}
        )
        save()
    for index in range(replicas):
        say(f"starting control-plane replica {index}")
        state["replicas"].append(start_replica(directory, index, state))
        save()
        shutil.copy(Path(state["replicas"][index]["data"]) / "client.env", directory / f"client-{index}.env")
    shutil.copy(directory / "client-0.env", directory / "client.env")
    say(
        f"cluster up: nodes {' '.join(n['node_id'] for n in state['nodes'])}; client settings in {directory / 'client.env'}"
    )
    for node in state["nodes"]:
        print(node["node_id"])


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def kill_node(directory: Path, index: int) -> None:
    """SIGKILL to the node's raylet and everything under it (its agent, zygotes and
    containers) at once, as a power loss would end them."""
    state = json.loads((directory / "cluster.json").read_text())
    node_id = state["nodes"][index]["node_id"]
    raylet = raylet_pid(node_id)
    if raylet is None:
        raise SystemExit(f"cluster-local: node {index} ({node_id}) is not running")
    victims = descendants(raylet)
    for pid in victims:  # stop first, so nothing reacts to the others' deaths
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    say(f"killed node {index} ({node_id}): {len(victims)} process(es)")


def restart_postgres(directory: Path, pause_s: float) -> None:
    """Stop PostgreSQL (fast shutdown: every connection is cut), wait, start it again: the
    servers must reconnect and in-flight calls finish."""
    path = directory / "cluster.json"
    state = json.loads(path.read_text())
    _stop(state["postgres_pid"], 60, signal.SIGINT)  # fast shutdown: every connection is cut
    time.sleep(pause_s)
    postgres, _ = start_postgres(Path(state["postgres_dir"]), initialize=False)
    state["postgres_pid"] = postgres.pid
    path.write_text(json.dumps(state, indent=2))
    say(f"PostgreSQL restarted after {pause_s:.0f} s down")


def down(directory: Path) -> None:
    path = directory / "cluster.json"
    if not path.exists():
        say(f"no cluster in {directory}")
        return
    state = json.loads(path.read_text())
    for replica in state.get("replicas", []):
        _stop(replica["pid"], 30)
    subprocess.run([str(VENV_BIN / "ray"), "stop", "--force"], capture_output=True, timeout=120)
    for node in state.get("nodes", []):
        leftover = raylet_pid(node["node_id"])
        if leftover is not None:
            for pid in descendants(leftover):
                _kill(pid)
        subprocess.run(["ip", "link", "del", node["bridge"]], capture_output=True)
        _unmount_under(directory / node["node_id"])
    _remove_unused_network_namespaces()
    if "s3_pid" in state:
        _stop(state["s3_pid"], 30)
    if "postgres_pid" in state:
        _stop(state["postgres_pid"], 30, signal.SIGINT)  # fast shutdown: no waiting for clients
    if "postgres_dir" in state:
        shutil.rmtree(state["postgres_dir"], ignore_errors=True)
    path.unlink()
    say("cluster down")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stop(pid: int, timeout: float, signum: int = signal.SIGTERM) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _remove_unused_network_namespaces() -> None:
    """Container network namespaces of agents that are gone: they ran in the host's mount
    namespace, so the names their containers had stay mounted on /run/netns."""
    from homeport.agent.network import CLAIMS_DIR, NETNS_DIR, _alive, _read_claim

    for claim in CLAIMS_DIR.glob("*") if CLAIMS_DIR.exists() else []:
        try:
            holder, owner = _read_claim(claim)
        except (FileNotFoundError, ValueError):
            continue
        if owner is not None and not _alive(owner):
            if (NETNS_DIR / holder).exists():
                subprocess.run(["ip", "netns", "del", holder], capture_output=True)
            claim.unlink(missing_ok=True)


def _unmount_under(directory: Path) -> None:
    """Mounts a killed agent left (overlay roots of its containers): without a mount
    namespace of its own, a Ray worker's mounts outlive it."""
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(str(directory.resolve()))), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="cluster-local", description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up")
    start.add_argument("dir", type=Path)
    start.add_argument("--nodes", type=int, default=3)
    start.add_argument("--replicas", type=int, default=1)
    start.add_argument("--gpus", action="append", default=[], help="I=MODEL:COUNT: fake GPUs for node I")
    start.add_argument(
        "--node-memory", action="append", default=[], help="I=MIB: node I's memory for containers"
    )
    kill = commands.add_parser("kill-node")
    kill.add_argument("dir", type=Path)
    kill.add_argument("index", type=int)
    restart = commands.add_parser("restart-postgres")
    restart.add_argument("dir", type=Path)
    restart.add_argument("--down-for", type=float, default=3.0)
    stop = commands.add_parser("down")
    stop.add_argument("dir", type=Path)
    arguments = parser.parse_args()
    if arguments.command == "up":
        gpus = {int(k): v for k, _, v in (g.partition("=") for g in arguments.gpus)}
        memory = {int(k): v for k, _, v in (g.partition("=") for g in arguments.node_memory)}
        try:
            up(arguments.dir, arguments.nodes, arguments.replicas, gpus, memory)
        except BaseException:
            down(arguments.dir.resolve())
            raise
    elif arguments.command == "restart-postgres":
        restart_postgres(arguments.dir.resolve(), arguments.down_for)
    elif arguments.command == "kill-node":
        kill_node(arguments.dir.resolve(), arguments.index)
    else:
        down(arguments.dir.resolve())


if __name__ == "__main__":
    main()
