"""Class variants: every option `with_options` (and `with_concurrency`) carries takes effect
on that variant's containers, and a slow start-up is not mistaken for idleness."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Server, assert_ok, output, run_modal, run_python, start_server

PRELUDE = "import modal, json, time\nfrom variants_app import app, Worker, SlowStart, volume\n"


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("variants"), server_env={"HOMEPORT_GPUS": "T4:1"})
    yield server
    server.stop()


def run_in_app(server: Server, body: str, timeout: float = 300) -> str:
    script = PRELUDE + "with app.run():\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())
    return output(run_python(server, script, timeout=timeout))


def test_gpu_option_gets_the_device_and_an_impossible_one_fails_at_once(gpu_server: Server) -> None:
    text = run_in_app(
        gpu_server,
        """
print("plain", json.dumps(Worker().probe.remote()["cuda"]))
print("t4", json.dumps(Worker.with_options(gpu="T4")().probe.remote()["cuda"]))
started = time.monotonic()
try:
    Worker.with_options(gpu="A100")().probe.remote()
except Exception as error:
    print("a100 failed after", round(time.monotonic() - started), "s:", error)
""",
    )
    assert "plain null" in text and 't4 "0"' in text, text
    assert "gpu='A100' cannot be satisfied on this cluster, which has 1 x T4" in text, text
    assert "a100 failed after 0 s" in text or "a100 failed after 1 s" in text, text


def test_cpu_option_sets_the_quota(gpu_server: Server) -> None:
    text = run_in_app(gpu_server, 'print("cores", Worker.with_options(cpu=0.25)().spin.remote(2.0))')
    cores = float(text.split("cores ")[1].split()[0])
    assert cores < 0.35, cores


def test_secrets_and_volumes_options_reach_the_variant(gpu_server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "marker.txt"
    marker.write_text("in the volume")
    assert_ok(run_modal(gpu_server, "volume", "create", "variants-volume"))
    assert_ok(run_modal(gpu_server, "volume", "put", "variants-volume", str(marker), "/marker.txt"))
    text = run_in_app(
        gpu_server,
        """
variant = Worker.with_options(secrets=[modal.Secret.from_dict({"VARIANT_TOKEN": "v1"})], volumes={"/variant-data": volume})
print("variant", json.dumps(variant().probe.remote()))
print("plain", json.dumps(Worker().probe.remote()))
""",
    )
    variant = json.loads(text.split("variant ", 1)[1].splitlines()[0])
    plain = json.loads(text.split("plain ", 1)[1].splitlines()[0])
    assert variant["secret"] == "v1" and variant["volume"] == ["marker.txt"]
    assert plain["secret"] is None and plain["volume"] is None


def test_retries_and_timeout_options(gpu_server: Server) -> None:
    text = run_in_app(
        gpu_server,
        """
print("retried", Worker.with_options(retries=2)().fail_once.remote("with-retries"))
try:
    Worker().fail_once.remote("without-retries")
except Exception as error:
    print("no retries:", error)
try:
    Worker.with_options(timeout=2)().nap.remote(20)
except Exception as error:
    print("timeout:", error)
""",
    )
    assert "retried attempt 2" in text
    assert "no retries: first attempt fails" in text
    assert "timeout: Function timed out after 2 seconds" in text


def test_max_containers_and_concurrency_options(gpu_server: Server) -> None:
    text = run_in_app(
        gpu_server,
        """
serial = Worker.with_options(max_containers=1)()
started = time.monotonic()
hosts = list(serial.nap.map([1.0] * 3))
print("serial", len(set(hosts)), round(time.monotonic() - started, 1))
packed = Worker.with_options(max_containers=1).with_concurrency(max_inputs=4)()
packed.nap.remote(0)  # started and warm
started = time.monotonic()
hosts = list(packed.nap.map([1.5] * 4))
print("packed", len(set(hosts)), round(time.monotonic() - started, 1))
""",
    )
    serial_hosts, serial_s = text.split("serial ")[1].split()[:2]
    packed_hosts, packed_s = text.split("packed ")[1].split()[:2]
    assert serial_hosts == "1" and float(serial_s) >= 3.0, text
    assert packed_hosts == "1" and float(packed_s) < 4.0, text


def test_scaledown_window_and_buffer_containers_options(gpu_server: Server) -> None:
    text = run_in_app(
        gpu_server,
        """
quick = Worker.with_options(scaledown_window=2)()
first = quick.nap.remote(0)
time.sleep(6)
print("replaced", first != quick.nap.remote(0))
buffered = Worker.with_options(buffer_containers=1)()
busy = buffered.nap.spawn(8)
time.sleep(4)
import subprocess, sys
listing = subprocess.run([sys.executable, "-m", "modal", "container", "list", "--app-id", app.app_id, "--json"],
                         capture_output=True, text=True, check=True).stdout
print("containers", len(json.loads(listing)))
""",
    )
    assert "replaced True" in text, text
    # the first variant's container has scaled down; the busy buffered variant keeps one more warm
    assert int(text.split("containers ")[1].split()[0]) >= 2, text


def test_a_start_up_longer_than_the_scaledown_window_still_serves_its_call(gpu_server: Server) -> None:
    """@enter takes 3 s, scaledown_window=2: the idle clock starts once the container is ready."""
    started = time.monotonic()
    text = run_in_app(gpu_server, 'print("answer", SlowStart().ping.remote())', timeout=120)
    assert "answer pong" in text, text
    assert time.monotonic() - started < 60
    starts = gpu_server.log_text().count("for SlowStart.*")
    assert starts == 1, f"{starts} containers started for one call"
