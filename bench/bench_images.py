"""Image benchmark (issue 3), run on demand: `.venv/bin/python bench/bench_images.py [--cold-base]`.

Starts its own server with an empty layer directory and measures, through the real client:
- cold build of `debian_slim()` and of `debian_slim().pip_install("numpy")` (the server's
  recorded build time; with --cold-base the base is made from scratch too, by mmdebstrap),
  against `pip install numpy` into a fresh venv on the host in the same run;
- a cached image lookup (ImageGetOrCreate of a built image) p50, against a bare gRPC round
  trip to the same server;
- assembling a container root filesystem from cached layers (fork, private mount namespace,
  overlay mount, exec) p50, against the same fork + exec without the mount;
- disk used per layer.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import VENV_BIN, assert_ok, run_modal, start_server

APP = """
import modal
app = modal.App("bench-images")
IMAGE = {image}
@app.function(image=IMAGE)
def noop():
    return 1
@app.local_entrypoint()
def main():
    print("ran", noop.remote())
"""

LOOKUP = r"""
import asyncio, json, os, statistics, time
import modal
from grpclib.client import Channel
from modal_proto import api_grpc, api_pb2

async def measure(definition: bytes, n=200):
    host, port = os.environ["MODAL_SERVER_URL"].removeprefix("http://").split(":")
    channel = Channel(host, int(port)); stub = api_grpc.ModalClientStub(channel)
    md = {"x-modal-client-version": modal.__version__, "x-modal-token-id": os.environ["MODAL_TOKEN_ID"],
          "x-modal-token-secret": os.environ["MODAL_TOKEN_SECRET"]}
    request = api_pb2.ImageGetOrCreateRequest(image=api_pb2.Image.FromString(definition), builder_version="2025.06")
    bare, lookup = [], []
    for _ in range(n):
        t = time.perf_counter(); await stub.EnvironmentGetOrCreate(api_pb2.EnvironmentGetOrCreateRequest(), metadata=md)
        bare.append(time.perf_counter() - t)
        t = time.perf_counter(); response = await stub.ImageGetOrCreate(request, metadata=md)
        lookup.append(time.perf_counter() - t)
        assert response.result.status == api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
    channel.close()
    return statistics.median(bare), statistics.median(lookup)

print("LOOKUP", json.dumps(asyncio.run(measure(bytes.fromhex(os.environ["BENCH_DEFINITION"])))))
"""


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def built_images(data_dir: Path) -> list[dict[str, object]]:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{data_dir / 'homeport.db'}")
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT id, definition, layers, build_seconds FROM images ORDER BY created_at")
        ).all()
    engine.dispose()
    return [
        {
            "id": r.id,
            "definition": r.definition,
            "layers": json.loads(r.layers or "[]"),
            "seconds": r.build_seconds or 0.0,
        }
        for r in rows
    ]


def run_app(server, directory: Path, image: str) -> float:  # type: ignore[no-untyped-def]
    app_file = directory / "bench_images_app.py"
    app_file.write_text(APP.format(image=image))
    started = time.perf_counter()
    assert_ok(run_modal(server, "run", str(app_file), cwd=directory, timeout=1800))
    return time.perf_counter() - started


def host_pip_install(directory: Path) -> float:
    venv = directory / "baseline-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    started = time.perf_counter()
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-cache-dir", "numpy"], check=True)
    return time.perf_counter() - started


def assembly(lower: list[Path], directory: Path, n: int = 50) -> tuple[float, float]:
    from homeport.agent.rootfs import Overlay

    plain, mounted = [], []
    for index in range(n):
        started = time.perf_counter()
        subprocess.run(["/bin/true"], check=True)
        plain.append(time.perf_counter() - started)
        overlay = Overlay(lower, directory / f"u{index}", directory / f"w{index}", directory / f"m{index}")
        started = time.perf_counter()
        overlay.prepare()
        subprocess.run(["/bin/true"], check=True, preexec_fn=overlay.mount_in_child)
        mounted.append(time.perf_counter() - started)
    return p50(plain), p50(mounted)


def main() -> None:
    cold_base = "--cold-base" in sys.argv
    with tempfile.TemporaryDirectory(prefix="homeport-bench-images-") as temporary:
        tmp = Path(temporary)
        env = {"HOMEPORT_LAYER_DIR": str(tmp / "layers")}
        if cold_base:
            env["HOMEPORT_CACHE_DIR"] = str(tmp / "cache")
        server = start_server(tmp, server_env=env)
        try:
            slim_wall = run_app(server, tmp, "modal.Image.debian_slim()")
            slim_images = built_images(server.data_dir)
            numpy_wall = run_app(server, tmp, 'modal.Image.debian_slim().pip_install("numpy")')
            all_images = built_images(server.data_dir)
            numpy_image = all_images[-1]
            rerun_wall = run_app(server, tmp, 'modal.Image.debian_slim().pip_install("numpy")')
            result = subprocess.run(
                [str(VENV_BIN / "python"), "-c", LOOKUP],
                env=server.env(BENCH_DEFINITION=slim_images[-1]["definition"].hex()),  # type: ignore[union-attr]
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            bare_rpc, lookup_s = json.loads(result.stdout.split("LOOKUP ", 1)[1])
            from homeport.images.bases import BaseCache
            from homeport.images.layers import LayerStore

            cache_dir = Path(env.get("HOMEPORT_CACHE_DIR", "/var/cache/homeport"))
            store = LayerStore(tmp / "layers", BaseCache(cache_dir / "bases"))
            chain = numpy_image["layers"]  # type: ignore[assignment]
            plain_s, mounted_s = assembly(store.lower_dirs(chain), tmp / "assembly")  # type: ignore[arg-type]
            pip_s = host_pip_install(tmp)
        finally:
            server.stop()

        slim_build = sum(float(i["seconds"]) for i in slim_images)  # type: ignore[arg-type]
        numpy_build = float(numpy_image["seconds"])  # type: ignore[arg-type]
        ms = 1000
        rows = [
            ("figure", "value", "baseline", "ratio"),
            (
                f"cold build debian_slim() (base {'built too' if cold_base else 'cached'})",
                f"{slim_build:.1f} s",
                "",
                "",
            ),
            ("  modal run wall, incl. that build", f"{slim_wall:.1f} s", "", ""),
            (
                "cold build of the pip_install('numpy') layer",
                f"{numpy_build:.1f} s",
                f"{pip_s:.1f} s (host pip, fresh venv)",
                f"{numpy_build / pip_s:.2f}",
            ),
            ("  modal run wall, incl. that build", f"{numpy_wall:.1f} s", "", ""),
            ("modal run wall, everything cached", f"{rerun_wall:.2f} s", "", ""),
            (
                "cached image lookup p50 (ImageGetOrCreate)",
                f"{lookup_s * ms:.2f} ms",
                f"{bare_rpc * ms:.2f} ms (bare RPC)",
                f"{lookup_s / bare_rpc:.1f}",
            ),
            (
                "rootfs assembly p50 (fork+ns+overlay+exec)",
                f"{mounted_s * ms:.2f} ms",
                f"{plain_s * ms:.2f} ms (fork+exec)",
                f"{mounted_s / plain_s:.1f}",
            ),
            ("  of which the overlay mount", f"{(mounted_s - plain_s) * ms:.2f} ms", "", ""),
        ]
        for ref in chain:  # type: ignore[union-attr]
            if not str(ref).startswith("base:"):
                meta = json.loads((tmp / "layers" / str(ref) / "layer.json").read_text())
                rows.append((f"  layer {meta['step'][:60]}", f"{meta['size'] / 2**20:.1f} MiB", "", ""))
            else:
                rows.append((f"  base {str(ref)[5:]}", f"{store.size(str(ref)) / 2**20:.1f} MiB", "", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main()
