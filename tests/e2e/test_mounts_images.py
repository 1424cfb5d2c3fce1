"""Local source and files reach containers; image build steps are refused by name."""

from __future__ import annotations

from tests.conftest import Server, assert_ok, output, run_modal


def test_local_python_source_dir_and_file_are_mounted(server: Server) -> None:
    text = assert_ok(run_modal(server, "run", "mounts_app.py"))
    assert "'shout': 'MOUNTED!'" in text
    assert "'dir': ['config.txt', 'nested/two.txt', 'one.txt']" in text
    assert "'file': 'threshold=42'" in text


def test_image_build_step_fails_naming_the_step(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app_file = tmp_path / "needs_build.py"
    app_file.write_text(
        "import modal\napp = modal.App('needs-build', image=modal.Image.debian_slim().pip_install('requests'))\n"
        "@app.function()\ndef f():\n    return 1\n"
        "@app.local_entrypoint()\ndef main():\n    print(f.remote())\n"
    )
    result = run_modal(server, "run", str(app_file), cwd=tmp_path)
    assert result.returncode != 0
    text = output(result)
    assert "image builds are not supported by this server yet" in text
    assert "pip install requests" in text


def test_plain_debian_slim_is_accepted(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app_file = tmp_path / "slim.py"
    app_file.write_text(
        "import modal\napp = modal.App('slim', image=modal.Image.debian_slim())\n"
        "@app.function()\ndef f():\n    return 'ran'\n"
        "@app.local_entrypoint()\ndef main():\n    print('result', f.remote())\n"
    )
    assert "result ran" in assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path))


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
