"""The same control plane on a real PostgreSQL server, started by the fixture."""

from __future__ import annotations

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
