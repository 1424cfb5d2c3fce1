"""Resource limits: memory= kills only the container that exceeds it; cpu= is a quota."""

from __future__ import annotations

from tests.conftest import Server, assert_ok, run_python


def test_exceeding_memory_fails_the_input_and_the_function_keeps_serving(server: Server) -> None:
    script = """
from limits_app import app, allocate
with app.run():
    print("small", allocate.remote(50))
    try:
        allocate.remote(600)
    except Exception as error:
        print("big:", error)
    print("after", allocate.remote(50))
"""
    text = assert_ok(run_python(server, script))
    assert "small 50" in text
    assert "big: the container exceeded its memory limit of 200 MiB" in text
    assert "after 50" in text  # a fresh container took over


def test_cpu_quota_limits_a_busy_loop(server: Server) -> None:
    text = assert_ok(run_python(server, "from limits_app import app, burn\nwith app.run():\n    print('cores', burn.remote(2.0))"))
    cores = float(text.split("cores ")[1].split()[0])
    assert cores < 0.35, cores  # cpu=0.25; unlimited it would be close to 1.0
