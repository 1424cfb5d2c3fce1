"""Memory snapshots (enable_memory_snapshot=True) through the real client: the first
container runs the slow snap=True hook and is snapshotted with CRIU; later containers are
restored from it, run their own snap=False hook with their own identity, and the
snapshot outlives a server restart. Functional, not timed (see bench/)."""

from __future__ import annotations

import json
import time

from tests.conftest import Server, assert_ok, output, run_modal, run_python

CALL = """
import json, concurrent.futures, modal
Model = modal.Cls.from_name("snapshot-app", "Model")
count = COUNT
with concurrent.futures.ThreadPoolExecutor(count) as pool:
    results = list(pool.map(lambda _: Model().info.remote(HOLD), range(count)))
print("INFO", json.dumps(results))
"""


def _infos(server: Server, count: int = 1) -> list[dict[str, object]]:
    text = assert_ok(
        run_python(server, CALL.replace("COUNT", str(count)).replace("HOLD", "2.0" if count > 1 else "0.0"))
    )
    return list(json.loads(text.split("INFO ", 1)[1].splitlines()[0]))


def _imported(server: Server) -> list[str]:
    script = (
        "import modal\nprint('IMPORTED', modal.Function.from_name('snapshot-app', 'imported').remote())\n"
    )
    return assert_ok(run_python(server, script)).split("IMPORTED ", 1)[1].split()[:2]


def _wait_for_log(server: Server, needle: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while needle not in server.log_text():
        assert time.monotonic() < deadline, f"{needle!r} not in the server log:\n{server.log_text()[-3000:]}"
        time.sleep(0.2)


def _wait_until_no_containers(server: Server, timeout: float = 60) -> None:
    """The function's containers scale down (scaledown_window=2): the next call starts one."""
    deadline = time.monotonic() + timeout
    while True:
        listed = json.loads(assert_ok(run_modal(server, "container", "list", "--json")).strip() or "[]")
        if not [c for c in listed if "snapshot-app" in json.dumps(c)]:
            return
        assert time.monotonic() < deadline, listed
        time.sleep(0.5)


def test_restored_containers_skip_the_snapshotted_hook_and_outlive_a_restart(own_server: Server) -> None:
    server = own_server
    assert_ok(run_modal(server, "deploy", "snapshot_app.py"))

    [first] = _infos(server)
    function_first = _imported(server)
    assert first["setup_task"] == first["task"] == first["hostname"]
    assert first["file"] == first["loaded"]
    _wait_for_log(server, f"memory snapshot taken of {first['task']}")
    _wait_until_no_containers(server)

    # Two at once: both restored, each with its own identity, hook run and writable layer.
    restored = _infos(server, count=2)
    assert len({str(r["task"]) for r in restored}) == 2, restored
    for info in restored:
        assert info["task"] != first["task"]
        # Import-time state and the snap=True hook's work come from the snapshot, not rerun...
        assert info["import"] == first["import"]
        assert info["loaded"] == first["loaded"]
        assert info["file"] == first["loaded"]  # the writable layer as it was at the snapshot
        # ...the snap=False hook ran in the restored container, as that container.
        assert info["mine"] != first["mine"]
        assert info["setup_task"] == info["task"] == info["hostname"]
        assert info["seen"] == [f"seen-{info['mine']}"]  # nothing of its sibling's
        _wait_for_log(server, f"container {info['task']} restored from memory snapshot")
    assert restored[0]["mine"] != restored[1]["mine"]

    server.stop()
    server.start()
    [after_restart] = _infos(server)
    function_restored = _imported(server)  # a plain function: its module's state restored
    assert function_restored[0] == function_first[0] and function_restored[1] != function_first[1]
    _wait_for_log(server, f"container {function_restored[1]} restored from memory snapshot")
    assert after_restart["loaded"] == first["loaded"]
    assert after_restart["task"] not in {first["task"], *(r["task"] for r in restored)}
    assert after_restart["setup_task"] == after_restart["task"]
    _wait_for_log(server, f"container {after_restart['task']} restored from memory snapshot")

    # Deployed again unchanged: the same version, so the same snapshot.
    taken = server.log_text().count("memory snapshot taken of")
    assert taken == 2  # Model's and imported's
    assert_ok(run_modal(server, "deploy", "snapshot_app.py"))
    _wait_until_no_containers(server)
    [redeployed] = _infos(server)
    assert redeployed["loaded"] == first["loaded"]
    _wait_for_log(server, f"container {redeployed['task']} restored from memory snapshot")
    assert server.log_text().count("memory snapshot taken of") == taken

    # A snapshot that cannot be restored is dropped; the container starts the ordinary way
    # (the hook runs again) and is snapshotted afresh.
    for snapshot in (server.data_dir / "memory-snapshots").iterdir():
        for pages in (snapshot / "images").glob("pages-*.img"):
            pages.write_bytes(b"")
    _wait_until_no_containers(server)
    [fresh] = _infos(server)
    assert fresh["loaded"] != first["loaded"]
    assert fresh["setup_task"] == fresh["task"]
    _wait_for_log(server, f"container {fresh['task']} not restored from snapshot")
    _wait_for_log(server, f"memory snapshot taken of {fresh['task']}")


def test_a_function_that_cannot_be_snapshotted_runs_the_ordinary_way(server: Server) -> None:
    script = (
        "import modal\nfrom snapshot_fail_app import app, ran\n"
        "with modal.enable_output():\n    with app.run():\n        print('RESULT', ran.remote())\n"
    )
    result = run_python(server, script)
    text = output(result)
    assert result.returncode == 0, text[-3000:]
    task = text.split("RESULT ran in ", 1)[1].split()[0]
    # The user sees why in the app's logs; the call never fails because of it.
    assert "[homeport] memory snapshot not taken" in text, text[-3000:]
    assert "open connections in a @modal.enter(snap=False) hook" in text, text[-3000:]
    _wait_for_log(server, f"memory snapshot of {task} not taken")
