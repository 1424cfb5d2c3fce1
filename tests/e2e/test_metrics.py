"""Prometheus metrics: a scrape after known calls shows matching counts."""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator

import pytest

from tests.conftest import Server, assert_ok, run_python, start_server

METERED_APP = """
import modal
app = modal.App("metered")

@app.function()
def square(x):
    return x * x

@app.function()
def fail():
    raise ValueError("on purpose")
"""


@pytest.fixture(scope="module")
def metered_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("metrics"), server_env={"HOMEPORT_GPUS": "T4:1"}, metrics=True
    )
    yield server
    server.stop()


def value(scrape: str, name: str, **labels: str) -> float:
    """The sample of `name` whose labels include these, or 0."""
    for line in scrape.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(key) == wanted for key, wanted in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_counts_after_known_calls(metered_server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = metered_server
    (tmp_path / "metered.py").write_text(METERED_APP)
    script = (
        "from metered import app, square, fail\n"
        "with app.run():\n"
        "    print('squares', [square.remote(x) for x in range(3)])\n"
        "    try:\n        fail.remote()\n    except Exception as error:\n        print('failed', error)\n"
    )
    assert "squares [0, 1, 4]" in assert_ok(run_python(server, script, cwd=tmp_path))
    connection = http.client.HTTPConnection("127.0.0.1", server.port + 1, timeout=30)
    connection.request("GET", "/", headers={"Host": f"main--nothing-here.localhost:{server.port + 1}"})
    assert connection.getresponse().status == 404

    scrape = server.metrics()
    names = {"workspace": "main", "app": "metered"}
    assert value(scrape, "homeport_inputs_total", **names, function="square", status="success") == 3
    assert value(scrape, "homeport_inputs_total", **names, function="fail", status="failure") == 1
    assert value(scrape, "homeport_input_duration_seconds_count", **names, function="square") == 3
    assert value(scrape, "homeport_input_queue_seconds_count", **names, function="square") == 3
    starts = value(scrape, "homeport_container_starts_total", kind="forked") + value(
        scrape, "homeport_container_starts_total", kind="fresh"
    )
    assert starts >= 2  # at least one container per function
    assert value(scrape, "homeport_http_requests_total", endpoint="(unknown)", status="404") == 1
    assert value(scrape, "homeport_node_gpus", model="T4") == 1
    assert value(scrape, "homeport_node_memory_capacity_bytes") > 0
    assert "homeport_queue_backlog" in scrape and "homeport_image_build_seconds" in scrape
