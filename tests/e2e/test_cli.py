"""The homeport command: up/down with a modal profile, environments."""

from __future__ import annotations

import os
import subprocess

import toml

from tests.conftest import (
    APPS,
    MODAL,
    VENV_BIN,
    Server,
    assert_ok,
    free_port_pair,
    output,
    run_modal,
    run_python,
)


def test_up_adds_a_profile_without_clobbering_others_and_down_stops(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config_path = tmp_path / "modal.toml"
    config_path.write_text(toml.dumps({"work": {"token_id": "ak-mine", "token_secret": "as-mine"}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(MODAL_CONFIG_PATH=str(config_path), HOME=str(tmp_path))
    data_dir = tmp_path / "data"
    port = free_port_pair()
    homeport = [str(VENV_BIN / "homeport")]
    up = subprocess.run(
        [*homeport, "up", "--data-dir", str(data_dir), "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        config = toml.load(config_path)
        assert config["work"] == {"token_id": "ak-mine", "token_secret": "as-mine"}
        assert config["homeport"]["server_url"] == f"http://127.0.0.1:{port}"
        assert config["homeport"]["active"] is True
        # A plain `modal run`, with no MODAL_* variables, now reaches the server.
        result = subprocess.run(
            [MODAL, "run", "hello.py"], cwd=APPS, env=env, capture_output=True, text=True, timeout=120
        )
        assert "Hello, Homeport!" in output(result), output(result)
    finally:
        down = subprocess.run(
            [*homeport, "down", "--data-dir", str(data_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not (data_dir / "server.pid").exists()


def test_environments_keep_names_apart(server: Server) -> None:
    assert_ok(run_modal(server, "deploy", "-e", "staging", "hello.py", "--name", "env-only"))
    found = run_python(
        server,
        "import modal\nprint(modal.Function.from_name('env-only', 'greet', environment_name='staging').remote('env'))",
    )
    assert "Hello, env!" in assert_ok(found)
    missing = run_python(server, "import modal\nmodal.Function.from_name('env-only', 'greet').remote('x')")
    assert missing.returncode != 0 and "NotFoundError" in output(missing)


def test_modal_run_leaves_no_error_in_the_server_log(own_server: Server) -> None:
    """The client resets its long-polls when it exits; that is not a server error."""
    assert_ok(run_modal(own_server, "run", "hello.py"))
    log = own_server.log_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_homeport_nodes_lists_this_machine_and_its_containers_know_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import run_python, start_server

    server = start_server(tmp_path, server_env={"HOMEPORT_NODE_ID": "node-a", "HOMEPORT_GPUS": "T4:2"})
    try:
        app_file = tmp_path / "where.py"
        app_file.write_text(
            "import os, modal\napp = modal.App('where')\n"
            "@app.function()\ndef node():\n    return os.environ['HOMEPORT_NODE_ID']\n"
        )
        script = (
            "import modal\nfrom where import app, node\nwith app.run():\n    print('ON', node.remote())\n"
        )
        assert "ON node-a" in assert_ok(run_python(server, script, cwd=tmp_path))
        listing = server.homeport("nodes")
        assert listing.returncode == 0, listing.stderr
        row = next(line for line in listing.stdout.splitlines() if line.strip().startswith("node-a"))
        assert "up" in row and "2 x T4 (0)" in row and "MiB" in row
    finally:
        server.stop()
