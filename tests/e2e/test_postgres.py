"""The same control plane on a real PostgreSQL server, started by the fixture."""

from __future__ import annotations

import subprocess
import sys

import psycopg2

from tests.conftest import assert_ok, run_modal, run_python, start_server


def test_run_deploy_and_restart_on_postgresql(postgres_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(tmp_path, database_url=postgres_url)
    try:
        assert not (server.data_dir / "homeport.db").exists()  # state went to PostgreSQL
        assert "square is 36" in assert_ok(run_modal(server, "run", "basics.py", "--x", "6"))
        assert_ok(run_modal(server, "deploy", "durable.py"))
        call_id = assert_ok(
            run_python(
                server,
                "import modal\ncall = modal.Function.from_name('durable', 'square').spawn(5)\n"
                "print(call.get(timeout=60))\nprint(call.object_id)",
            )
        ).split()[-1]
        server.stop(hard=True)
        server.start()
        text = assert_ok(
            run_python(
                server,
                f"import modal\nprint('again', modal.FunctionCall.from_id({call_id!r}).get(timeout=60))\n"
                "print('map', list(modal.Function.from_name('durable', 'square').map(range(5))))",
            )
        )
        assert "again 25" in text and "map [0, 1, 4, 9, 16]" in text
    finally:
        server.stop()


def test_a_request_waiting_on_the_database_does_not_hold_up_the_others(postgres_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A Dict write stuck behind a table lock (as behind a slow or busy PostgreSQL) waits
    alone: a Queue round trip from another client is answered meanwhile."""
    server = start_server(tmp_path, database_url=postgres_url)
    try:
        setup = "import modal\nmodal.Dict.from_name('held', create_if_missing=True)['k'] = 1\nprint('ready')"
        assert "ready" in assert_ok(run_python(server, setup))
        locker = psycopg2.connect(postgres_url.replace("postgresql+psycopg2:", "postgresql:"))
        try:
            locker.cursor().execute("LOCK TABLE dict_entries IN ACCESS EXCLUSIVE MODE")
            held = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import modal\nmodal.Dict.from_name('held')['k'] = 2\nprint('written')",
                ],
                env=server.env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            other = run_python(
                server,
                "import modal\nq = modal.Queue.from_name('free', create_if_missing=True)\n"
                "q.put('hello')\nprint('queue says', q.get(timeout=10))",
                timeout=60,
            )
            assert "queue says hello" in assert_ok(other)
            assert held.poll() is None, "the Dict write should still be waiting for the lock"
        finally:
            locker.rollback()  # the lock goes, the waiting write goes through
            locker.close()
        written, _ = held.communicate(timeout=60)
        assert held.returncode == 0 and "written" in written, written
    finally:
        server.stop()
