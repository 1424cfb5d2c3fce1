"""Local source and files reach containers at the paths the client asked for."""

from __future__ import annotations

from tests.conftest import Server, assert_ok, run_modal


def test_local_python_source_dir_and_file_are_mounted(server: Server) -> None:
    text = assert_ok(run_modal(server, "run", "mounts_app.py"))
    assert "'shout': 'MOUNTED!'" in text
    assert "'dir': ['config.txt', 'nested/two.txt', 'one.txt']" in text
    assert "'file': 'threshold=42'" in text


def test_container_has_its_own_hostname_and_process_table(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app_file = tmp_path / "nsinfo.py"
    app_file.write_text(
        "import os, socket, modal\napp = modal.App('nsinfo')\n"
        "@app.function()\ndef info():\n"
        "    pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "    return socket.gethostname(), len(pids), os.environ['MODAL_TASK_ID']\n"
        "@app.local_entrypoint()\ndef main():\n    print('INFO', info.remote())\n"
    )
    text = assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path))
    hostname, process_count, task_id = eval(text.split("INFO ", 1)[1].splitlines()[0])
    assert hostname == task_id and task_id.startswith("ta-")
    assert process_count <= 3  # its own init and entrypoint, not the host's processes
