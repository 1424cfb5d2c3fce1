"""`kill -9` of the server in the middle of real work: a map, a batch of spawned calls, a
deploy, a volume commit. Nothing acknowledged is lost and no input fails because of it."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import APPS, Server, assert_ok, output, run_modal, run_python


def _restart_hard(server: Server) -> None:
    server.stop(hard=True)
    server.start()


def _background_python(server: Server, script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=APPS,
        env=server.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_line(process: subprocess.Popen[str], marker: str, timeout_s: float = 120) -> list[str]:
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"never saw {marker!r}; output so far:\n{''.join(seen)[-3000:]}")


def test_a_map_survives_kill_9_of_the_server_in_its_middle(own_server: Server) -> None:
    server = own_server
    assert_ok(run_modal(server, "deploy", "durable.py"))
    client = _background_python(
        server,
        "import modal\n"
        "results = []\n"
        "for value in modal.Function.from_name('durable', 'slow_square').map(range(40)):\n"
        "    results.append(value)\n"
        "    print('got', len(results), flush=True)\n"
        "print('all', results == [x * x for x in range(40)], flush=True)\n",
    )
    _wait_for_line(client, "got 5")
    _restart_hard(server)
    rest, _ = client.communicate(timeout=300)
    assert client.returncode == 0, rest[-3000:]
    assert "all True" in rest


def test_spawned_calls_running_during_kill_9_all_finish(own_server: Server) -> None:
    server = own_server
    assert_ok(run_modal(server, "deploy", "durable.py"))
    call_ids = assert_ok(
        run_python(
            server,
            "import modal\nf = modal.Function.from_name('durable', 'slow_square')\n"
            "print(' '.join(f.spawn(x).object_id for x in range(30)))\n",
        )
    ).split()[-30:]
    time.sleep(1.0)  # some have run, some are running, some are queued
    _restart_hard(server)
    text = assert_ok(
        run_python(
            server,
            "import modal\n"
            f"ids = {call_ids!r}\n"
            "print('results', [modal.FunctionCall.from_id(i).get(timeout=120) for i in ids])\n",
            timeout=300,
        )
    )
    assert f"results {[x * x for x in range(30)]}" in text


def test_a_deploy_cut_short_by_kill_9_deploys_again_and_runs(own_server: Server) -> None:
    server = own_server
    deploy = subprocess.Popen(
        [sys.executable, "-m", "modal", "deploy", "durable.py"],
        cwd=APPS,
        env=server.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.5)
    _restart_hard(server)
    deploy.wait(timeout=120)
    assert_ok(run_modal(server, "deploy", "durable.py"))
    text = assert_ok(
        run_python(
            server, "import modal\nprint('got', modal.Function.from_name('durable', 'square').remote(9))"
        )
    )
    assert "got 81" in text


def test_a_volume_commit_acknowledged_before_kill_9_is_kept(own_server: Server) -> None:
    server = own_server
    assert_ok(run_modal(server, "deploy", "durable.py"))
    text = assert_ok(
        run_python(
            server,
            "import modal\nprint(modal.Function.from_name('durable', 'write_and_commit').remote('kept.txt', 'before the crash'))",
        )
    )
    assert "committed" in text
    _restart_hard(server)
    read = run_python(
        server,
        "import modal\nprint(b''.join(modal.Volume.from_name('durable-commits').read_file('kept.txt')))",
    )
    assert "before the crash" in output(read), output(read)
