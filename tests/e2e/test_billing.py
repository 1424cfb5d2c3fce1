"""`modal billing report|summary|rates`: per-second usage of every container, priced from
the rates file the administrator gives."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.conftest import Server, assert_ok, output, run_modal, run_python, start_server

RATES = """
currency = "USD"
[rates]
cpu = "3.6"
memory = "0.36"
[rates.gpu]
T4 = "36"
"""


@pytest.fixture(scope="module")
def billed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("billing")
    (tmp / "rates.toml").write_text(RATES)
    server = start_server(
        tmp, server_env={"HOMEPORT_GPUS": "T4:1"}, serve_args=["--rates", str(tmp / "rates.toml")]
    )
    yield server
    server.stop()


def test_rates_come_from_the_administrators_file(billed_server: Server) -> None:
    rates = json.loads(assert_ok(run_modal(billed_server, "billing", "rates", "--json")))
    assert rates == {"cpu": "3.6", "memory": "0.36", "gpu-t4": "36"}


def test_report_prices_what_containers_used_by_hour(billed_server: Server) -> None:
    script = "from limits_app import app, burn\nwith app.run():\n    print('cores', burn.remote(2.0))\n"
    assert "cores" in assert_ok(run_python(billed_server, script))
    deadline = time.monotonic() + 30
    while True:  # a container's usage is recorded when it has stopped, just after the app
        report = json.loads(
            assert_ok(run_modal(billed_server, "billing", "report", "--for", "today", "-r", "h", "--json"))
        )
        mine = [item for item in report if item["description"] == "limits"]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert mine, report
    cost = sum(Decimal(item["cost"]) for item in mine)
    # cpu=0.25 reserved for ~2-4 s at 3.6 per core-hour (0.001 per core-second), 128 MiB at
    # 0.36 per GiB-hour: about a thousandth of a dollar, and never nothing
    assert Decimal("0.0003") < cost < Decimal("0.01"), cost
    by_resource = assert_ok(
        run_modal(billed_server, "billing", "report", "--for", "today", "--show-resources", "--json")
    )
    resources = {item["resource"] for item in json.loads(by_resource) if item["description"] == "limits"}
    assert resources == {"cpu", "memory"}
    summary = json.loads(assert_ok(run_modal(billed_server, "billing", "summary", "--json")))
    assert (
        Decimal(summary["billed_cost"]) >= cost
        and Decimal(summary["metered_cost_breakdown"]["ephemeral"]) >= cost
    )


def test_a_reversed_time_range_is_a_clear_error(billed_server: Server) -> None:
    result = run_modal(billed_server, "billing", "report", "--start", "now", "--end", "yesterday")
    assert result.returncode != 0
    assert "is not before its end" in output(result)


def test_report_items_carry_the_apps_tags(billed_server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "tagged.py").write_text(
        "import modal\napp = modal.App('tagged', tags={'team': 'ml', 'cost-center': '42'})\n"
        "@app.function()\ndef work():\n    return 1\n"
    )
    script = "from tagged import app, work\nwith app.run():\n    work.remote()\n"
    assert_ok(run_python(billed_server, script, cwd=tmp_path))
    deadline = time.monotonic() + 30
    while True:
        report = json.loads(
            assert_ok(run_modal(billed_server, "billing", "report", "--for", "today", "-t", "team", "--json"))
        )
        mine = [item for item in report if item["description"] == "tagged"]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert mine and json.loads(mine[0]["tags"]) == {"team": "ml"}, report  # the CLI prints tags as JSON
