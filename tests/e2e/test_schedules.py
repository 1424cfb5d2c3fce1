"""Deployed apps run their schedules on time."""

from __future__ import annotations

import time

from tests.conftest import Server, assert_ok, run_modal, run_python


def test_period_schedule_runs_repeatedly_until_the_app_stops(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app_file = tmp_path / "ticker.py"
    app_file.write_text(
        "import time, modal\napp = modal.App('ticker')\n"
        "@app.function(schedule=modal.Period(seconds=2))\n"
        "def tick():\n    modal.Queue.from_name('ticker-ticks', create_if_missing=True).put(time.time())\n"
    )
    assert_ok(run_modal(server, "deploy", str(app_file), cwd=tmp_path))
    text = assert_ok(
        run_python(
            server,
            "import modal\nq = modal.Queue.from_name('ticker-ticks', create_if_missing=True)\n"
            "print('STAMPS', [q.get(timeout=30) for _ in range(3)])\n",
        )
    )
    stamps = eval(text.split("STAMPS ", 1)[1].splitlines()[0])
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(1.0 < gap < 4.0 for gap in gaps), gaps
    assert_ok(run_modal(server, "app", "stop", "ticker", "--yes"))
    time.sleep(1)
    drained = "import modal\nq = modal.Queue.from_name('ticker-ticks')\nq.clear()\nprint('LEFT', q.len())\n"
    assert_ok(run_python(server, drained))
    time.sleep(4)
    left = assert_ok(
        run_python(server, "import modal\nprint('LEFT', modal.Queue.from_name('ticker-ticks').len())\n")
    )
    assert "LEFT 0" in left  # no more runs once stopped


def test_a_schedule_fires_while_an_ephemeral_app_runs_and_stops_with_it(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app_file = tmp_path / "ephemeral_ticker.py"
    app_file.write_text(
        "import time, modal\napp = modal.App('ephemeral-ticker')\n"
        "@app.function(schedule=modal.Period(seconds=2))\n"
        "def tick():\n    modal.Queue.from_name('ephemeral-ticks', create_if_missing=True).put(time.time())\n"
    )
    script = (
        "import modal, time\nfrom ephemeral_ticker import app\n"
        "q = modal.Queue.from_name('ephemeral-ticks', create_if_missing=True)\n"
        "with app.run():\n"
        "    print('STAMPS', [q.get(timeout=30) for _ in range(2)])\n"
    )
    text = assert_ok(run_python(server, script, cwd=tmp_path))
    assert text.count(".") >= 2 and "STAMPS [" in text
    time.sleep(1)
    assert_ok(run_python(server, "import modal\nmodal.Queue.from_name('ephemeral-ticks').clear()\n"))
    time.sleep(5)
    left = assert_ok(
        run_python(server, "import modal\nprint('LEFT', modal.Queue.from_name('ephemeral-ticks').len())\n")
    )
    assert "LEFT 0" in left  # no more runs once the app has stopped
