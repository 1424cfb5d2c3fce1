"""The autoscaler: fan-out across containers, input concurrency, dynamic batching, crash
retries, min_containers and update_autoscaler. Functional, not timed."""

from __future__ import annotations

import ast
import json
import secrets
import time

from tests.conftest import Server, assert_ok, run_modal, run_python


def value(text: str, label: str):  # type: ignore[no-untyped-def]
    return ast.literal_eval(text.split(label + " ", 1)[1].splitlines()[0])


def test_map_fans_out_over_several_containers(server: Server) -> None:
    text = assert_ok(
        run_python(
            server,
            "from scaling_app import app, slow\nwith app.run():\n    print('HOSTS', list(slow.map(range(8))))\n",
        )
    )
    assert len(set(value(text, "HOSTS"))) > 1


def test_concurrent_inputs_share_one_container(server: Server) -> None:
    text = assert_ok(
        run_python(
            server,
            "from scaling_app import app, shared\nwith app.run():\n    print('HOSTS', list(shared.map(range(8))))\n",
        )
    )
    assert len(set(value(text, "HOSTS"))) == 1


def test_batched_function_receives_batches_of_at_most_four(server: Server) -> None:
    text = assert_ok(
        run_python(
            server,
            "from scaling_app import app, batch_sizes\nwith app.run():\n    print('SIZES', list(batch_sizes.map(range(8))))\n",
        )
    )
    sizes = value(text, "SIZES")
    assert len(sizes) == 8 and max(sizes) == 4 and all(1 <= size <= 4 for size in sizes)


def test_input_of_a_killed_container_is_retried(server: Server) -> None:
    marker = f"crash-{secrets.token_hex(4)}"
    text = assert_ok(
        run_python(
            server,
            f"from scaling_app import app, dies_once\nwith app.run():\n    print('RESULT', repr(dies_once.remote({marker!r})))\n",
        )
    )
    assert value(text, "RESULT") == "survived"


def test_min_containers_keep_a_container_and_update_autoscaler_changes_it_live(server: Server) -> None:
    assert_ok(run_modal(server, "deploy", "scaling_app.py"))
    script = """
import time, modal
warm = modal.Function.from_name("scaling", "warm")
cold = modal.Function.from_name("scaling", "cold")
first_warm, first_cold = warm.remote(), cold.remote()
time.sleep(6)  # well past scaledown_window=2
print("WARM", [first_warm, warm.remote()])
print("COLD", [first_cold, cold.remote()])
cold.update_autoscaler(min_containers=1)
kept = cold.remote()
time.sleep(6)
print("UPDATED", [kept, cold.remote()])
"""
    text = assert_ok(run_python(server, script))
    first, second = value(text, "WARM")
    assert first == second  # min_containers=1 kept it through the idle time
    first, second = value(text, "COLD")
    assert first != second  # without it, the idle container was stopped
    first, second = value(text, "UPDATED")
    assert first == second  # update_autoscaler(min_containers=1) took effect at once
    assert_ok(run_modal(server, "app", "stop", "scaling", "--yes"))


MEMORY_APP = """
import time, modal
app = modal.App("memory-bound")

@app.function(memory=600, max_containers=4)
def hold(i):
    started = time.time()
    time.sleep(2)
    return started, time.time()

@app.function(memory=5000)
def huge():
    return "never"

@app.local_entrypoint()
def main():
    print("SPANS", list(hold.map(range(3))))
    try:
        huge.remote()
    except Exception as error:
        print("HUGE", repr(str(error)))
"""


def test_memory_is_never_oversubscribed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import start_server

    small = start_server(tmp_path, server_env={"HOMEPORT_NODE_MEMORY_MIB": "1000"})
    try:
        (tmp_path / "memory_app.py").write_text(MEMORY_APP)
        text = assert_ok(run_modal(small, "run", "memory_app.py", cwd=tmp_path, timeout=300))
        spans = sorted(value(text, "SPANS"))
        # 600 MiB each on a node with 1000 MiB for containers: one after the other, never two at once.
        assert all(later[0] >= earlier[1] - 0.05 for earlier, later in zip(spans, spans[1:])), spans
        assert "memory=5000 MiB cannot be satisfied" in value(text, "HUGE")
    finally:
        small.stop()


def _containers_of(server: Server, app_id: str) -> list[str]:
    listed = json.loads(assert_ok(run_modal(server, "container", "list", "--json")))
    return [row["container_id"] for row in listed if row["app_id"] == app_id]


def test_container_list_logs_and_stop(server: Server) -> None:
    deployed = assert_ok(run_modal(server, "deploy", "container_cli_app.py"))
    app_id = "ap-" + deployed.split("/apps/ap-", 1)[1].split()[0].strip("/")
    deadline = time.monotonic() + 60
    while not (containers := _containers_of(server, app_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(containers) == 1, containers  # min_containers=1, with no call made
    first = containers[0]
    deadline = time.monotonic() + 30
    logs = ""
    while f"container-cli imported in {first}" not in logs and time.monotonic() < deadline:
        logs = assert_ok(run_modal(server, "container", "logs", first))
        time.sleep(0.5)
    assert f"container-cli imported in {first}" in logs  # its own output, from its own container
    assert_ok(run_modal(server, "container", "stop", first, "--yes"))
    deadline = time.monotonic() + 60
    while (containers := _containers_of(server, app_id)) in ([], [first]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert first not in containers and len(containers) == 1, containers  # min_containers brought up another
    assert f"container {first} stopped: stopped on request" in server.log_path.read_text()
    stopped = run_modal(server, "container", "stop", first, "--yes")
    assert stopped.returncode != 0 and "already stopped" in stopped.stdout + stopped.stderr
    assert_ok(run_modal(server, "app", "stop", "container-cli", "--yes"))
