"""Deployed apps run their schedules on time."""

from __future__ import annotations

import time

from tests.conftest import Server, assert_ok, run_modal


def test_period_schedule_runs_repeatedly_until_the_app_stops(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ticks = tmp_path / "ticks.txt"
    app_file = tmp_path / "ticker.py"
    app_file.write_text(
        "import time, modal\napp = modal.App('ticker')\n"
        "@app.function(schedule=modal.Period(seconds=2))\n"
        f"def tick():\n    open({str(ticks)!r}, 'a').write(f'{{time.time()}}\\n')\n"
    )
    assert_ok(run_modal(server, "deploy", str(app_file), cwd=tmp_path))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not ticks.exists() or len(ticks.read_text().split()) < 3):
        time.sleep(0.2)
    stamps = [float(line) for line in ticks.read_text().split()]
    assert len(stamps) >= 3
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(1.0 < gap < 4.0 for gap in gaps[:2]), gaps
    assert_ok(run_modal(server, "app", "stop", "ticker", "--yes"))
    time.sleep(1)
    count = len(ticks.read_text().split())
    time.sleep(4)
    assert len(ticks.read_text().split()) == count  # no more runs once stopped
