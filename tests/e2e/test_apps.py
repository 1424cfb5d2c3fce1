"""App lifecycle through the modal CLI: run, deploy, list, stop, logs, classes, lookups."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import APPS, MODAL, Server, assert_ok, output, run_modal, run_python


def test_class_lifecycle_methods_and_parameters(server: Server) -> None:
    text = assert_ok(run_modal(server, "run", "classes.py"))
    page_url = text.split("View run at")[1].split()[0]
    # The link leads to the app's dashboard page, which asks a stranger to sign in.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(page_url, timeout=10)
    assert refused.value.code == 401 and "modal dashboard" in refused.value.read().decode()
    assert "/dashboard/apps/ap-" in refused.value.url
    assert "enter with start=10" in text
    assert "first 11" in text and "second 16" in text
    assert "default 1" in text


def test_deployed_function_and_class_are_found_by_name(server: Server) -> None:
    assert "App deployed" in assert_ok(run_modal(server, "deploy", "classes.py"))
    assert_ok(run_modal(server, "deploy", "basics.py"))
    script = """
import modal
print("function", modal.Function.from_name("basics", "square").remote(9))
Counter = modal.Cls.from_name("classes", "Counter")
counter = Counter(start=100)
print("class", counter.increment.remote(1), counter.increment.remote(1))
print("with_options", Counter.with_options(timeout=30)(start=1).increment.remote(2))
"""
    text = assert_ok(run_python(server, script))
    assert "function 81" in text
    assert "class 101 102" in text  # one container keeps the instance's state
    assert "with_options 3" in text


def test_lookup_of_unknown_app_names_it(server: Server) -> None:
    result = run_python(server, "import modal\nmodal.Function.from_name('no-such-app', 'f').remote()")
    assert result.returncode != 0
    assert "NotFoundError" in output(result) and "no-such-app" in output(result)


def test_app_list_stop_and_logs(server: Server) -> None:
    assert_ok(run_modal(server, "deploy", "hello.py"))
    assert_ok(
        run_python(server, "import modal\nprint(modal.Function.from_name('hello', 'greet').remote('logs'))")
    )
    listing = assert_ok(run_modal(server, "app", "list"))
    assert "hello" in listing and "deployed" in listing
    logs = assert_ok(run_modal(server, "app", "logs", "hello"))
    assert "container says hi to logs" in logs
    assert_ok(run_modal(server, "app", "stop", "hello", "--yes"))
    after = run_python(server, "import modal\nmodal.Function.from_name('hello', 'greet').remote('x')")
    assert after.returncode != 0 and "NotFoundError" in output(after)


def test_redeploy_replaces_the_previous_version(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = (APPS / "hello.py").read_text()
    app_file = tmp_path / "versioned.py"
    app_file.write_text(source.replace('"hello"', '"versioned"'))
    assert_ok(run_modal(server, "deploy", str(app_file)))
    app_file.write_text(source.replace('"hello"', '"versioned"').replace("Hello, ", "Howdy, "))
    assert_ok(run_modal(server, "deploy", str(app_file)))
    text = assert_ok(
        run_python(server, "import modal\nprint(modal.Function.from_name('versioned', 'greet').remote('v2'))")
    )
    assert "Howdy, v2!" in text


def test_container_output_streams_live_to_modal_run(server: Server) -> None:
    process = subprocess.Popen(
        [MODAL, "run", "basics.py::talk", "--lines", "10"],
        cwd=APPS,
        env=server.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen_first_at = None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "stdout line 0" in line and seen_first_at is None:
            seen_first_at = time.monotonic()
        if "stdout line 9" in line:
            last_at = time.monotonic()
            break
    process.wait(timeout=60)
    text = "".join(lines)
    assert seen_first_at is not None, text
    # The function prints one line every 0.2 s: the first arrives well before the last.
    assert last_at - seen_first_at > 1.0, text
    assert "stderr line 3" in text


def test_ctrl_c_stops_the_ephemeral_app_and_its_containers(server: Server) -> None:
    process = subprocess.Popen(
        [MODAL, "run", "basics.py::talk", "--lines", "1000"],
        cwd=APPS,
        env=server.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    app_id = None
    for line in process.stdout:
        if "/apps/ap-" in line:
            app_id = "ap-" + line.split("/apps/ap-")[1].split()[0]
        if "stdout line 2" in line:
            break
    assert app_id is not None
    process.send_signal(signal.SIGINT)
    # Keep reading: output still arriving would fill the pipe and block its exit.
    process.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        apps = json.loads(run_modal(server, "app", "list", "--json").stdout)
        state = next(a["state"] for a in apps if a["app_id"] == app_id)
        tasks = json.loads(run_modal(server, "container", "list", "--json").stdout)
        if state == "stopped" and not any(t["app_id"] == app_id for t in tasks):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"app {app_id} is {state} with containers {tasks}")
