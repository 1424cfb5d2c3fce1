"""The dashboard, in headless Chromium: signed in through `modal dashboard`, it shows one
workspace's apps, functions (calls, errors, charts), containers (live logs, stop), images,
storage (never a secret's value) and usage; another workspace sees none of it."""

from __future__ import annotations

import http.cookiejar
import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, assert_ok, output, run_modal, run_python, start_server

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with an app that ran (calls, one failure), a volume, a dict and a secret."""
    tmp = tmp_path_factory.mktemp("dashboard")
    server = start_server(tmp)
    marker = tmp / "marker.txt"
    marker.write_text("in the volume")
    assert_ok(run_modal(server, "deploy", "basics.py"))
    assert_ok(run_modal(server, "volume", "create", "shown-volume"))
    assert_ok(run_modal(server, "volume", "put", "shown-volume", str(marker), "/marker.txt"))
    assert_ok(run_modal(server, "secret", "create", "shown-secret", "SHOWN_TOKEN=never-shown-value"))
    script = (
        "import modal\n"
        "modal.Dict.from_name('shown-dict', create_if_missing=True)['k'] = 'v'\n"
        "square = modal.Function.from_name('basics', 'square')\n"
        "print([square.remote(i) for i in range(3)])\n"
        "try:\n    modal.Function.from_name('basics', 'fail_on').remote(3)\nexcept Exception as error:\n    print(error)\n"
        "from limits_app import app, burn\n"
        "with app.run():\n    burn.remote(0.5)\n"
    )
    assert_ok(run_python(server, script))
    yield server
    server.stop()


def sign_in_url(server: Server, **env: str) -> str:
    text = output(run_modal(server, "dashboard", BROWSER="true", COLUMNS="400", **env))
    found = re.search(r"http://\S+/dashboard/signin\?t=\S+", text)
    assert found, text
    return found.group(0)


class Browser:
    """Headless Chromium with a profile of its own, so the session cookie persists."""

    def __init__(self, profile: Path, shots: Path) -> None:
        self.profile, self.shots = profile, shots

    def _run(self, *args: str) -> str:
        command = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update", f"--user-data-dir={self.profile}",
            "--virtual-time-budget=4000", *args,
        ]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=90).stdout

    def page(self, url: str, shot: str | None = None) -> str:
        if shot:
            self._run("--window-size=1200,1000", f"--screenshot={self.shots / shot}.png", url)
        return self._run("--dump-dom", url)


@pytest.fixture(scope="module")
def browser(shown: Server, tmp_path_factory: pytest.TempPathFactory) -> Browser:
    tmp = tmp_path_factory.mktemp("chromium")
    chromium = Browser(tmp / "profile", tmp)
    assert "basics" in chromium.page(sign_in_url(shown))  # signs in, lands on the apps page
    return chromium


def base(server: Server) -> str:
    return f"http://127.0.0.1:{server.port + 1}/dashboard"


def test_without_signing_in_the_dashboard_says_how(shown: Server, tmp_path: Path) -> None:
    page = Browser(tmp_path / "fresh", tmp_path).page(base(shown) + "/")
    assert "modal dashboard" in page and "basics" not in page


def test_apps_app_and_function_pages_show_what_ran(shown: Server, browser: Browser) -> None:
    apps = browser.page(base(shown) + "/", shot="apps")
    app_id = re.search(r'/dashboard/apps/(ap-\w+)">basics', apps).group(1)  # type: ignore[union-attr]
    app = browser.page(f"{base(shown)}/apps/{app_id}", shot="app")
    assert "square" in app and "fail_on" in app
    function_id = re.search(r'/dashboard/functions/(fu-\w+)">fail_on', app).group(1)  # type: ignore[union-attr]
    function = browser.page(f"{base(shown)}/functions/{function_id}", shot="function")
    assert "failure" in function and "ValueError" in function and "bad input 3" in function
    assert "<svg" in function and "Scaledown window" in function


def test_a_container_page_streams_its_logs(shown: Server, browser: Browser) -> None:
    containers = browser.page(base(shown) + "/containers", shot="containers")
    found = re.search(r'/dashboard/containers/(ta-\w+)">ta-\w+</a></td><td>square<', containers)
    assert found, containers
    page = browser.page(f"{base(shown)}/containers/{found.group(1)}", shot="container")
    assert "squaring 2" in page  # a line fetched by the page's script


def test_images_storage_and_usage(shown: Server, browser: Browser) -> None:
    images = browser.page(base(shown) + "/images", shot="images")
    image_id = re.search(r'/dashboard/images/(im-\w+)">', images).group(1)  # type: ignore[union-attr]
    assert "success" in images
    build_log = browser.page(f"{base(shown)}/images/{image_id}")
    assert "Built image" in build_log or "assembled from cached layers" in build_log
    storage = browser.page(base(shown) + "/storage", shot="storage")
    assert "shown-volume" in storage and "shown-dict" in storage and "shown-secret" in storage
    assert "never-shown-value" not in storage
    volume_id = re.search(r'/dashboard/storage/volumes/(vo-\w+)">shown-volume', storage).group(1)  # type: ignore[union-attr]
    assert "marker.txt" in browser.page(f"{base(shown)}/storage/volumes/{volume_id}")
    usage = browser.page(base(shown) + "/usage", shot="usage")
    assert "limits" in usage and "<svg" in usage  # the ephemeral app's cost, and a chart


def test_another_workspace_sees_nothing_of_it(shown: Server, tmp_path: Path) -> None:
    created = shown.homeport("workspace", "create", "onlooker")
    assert created.returncode == 0, created.stderr
    token = shown.homeport("token", "create", "--workspace", "onlooker")
    credentials = dict(line.split("=", 1) for line in token.stdout.split())
    browser = Browser(tmp_path / "onlooker", tmp_path)
    page = browser.page(sign_in_url(shown, **credentials))
    assert "onlooker" in page and "basics" not in page
    apps = Browser(tmp_path / "owner", tmp_path).page(sign_in_url(shown))
    app_id = re.search(r'/dashboard/apps/(ap-\w+)">basics', apps).group(1)  # type: ignore[union-attr]
    assert "No app" in browser.page(f"{base(shown)}/apps/{app_id}")


def test_stop_from_the_dashboard_stops_the_container(shown: Server) -> None:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(sign_in_url(shown), timeout=30).read()
    listing = json.loads(assert_ok(run_modal(shown, "container", "list", "--json")))
    assert listing, "a deployed app's container should still be running"
    task_id = listing[0]["container_id"]
    opener.open(
        urllib.request.Request(f"{base(shown)}/containers/{task_id}/stop", method="POST", data=b""),
        timeout=30,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = json.loads(assert_ok(run_modal(shown, "container", "list", "--json")))
        if task_id not in json.dumps(running):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"{task_id} still running after a stop from the dashboard")
