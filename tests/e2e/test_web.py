"""Web endpoints through the gateway: `modal deploy`, then plain HTTP (and a browser)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import MODAL, Server, assert_ok, run_modal, run_python


@pytest.fixture(scope="module")
def deployed(server: Server) -> Iterator[str]:
    text = assert_ok(run_modal(server, "deploy", "web_app.py"))
    yield text


def request(
    server: Server,
    label: str,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to `<label>.localhost`, the way curl or a browser sends it."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port + 1, timeout=timeout)
    connection.request(
        method, path, body=body, headers={"Host": f"{label}.localhost:{server.port + 1}", **(headers or {})}
    )
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def test_deploy_prints_each_url_and_get_web_url_returns_it(server: Server, deployed: str) -> None:
    port = server.port + 1
    assert f"http://main--webapp-echo.localhost:{port}" in deployed
    assert f"http://main--hello-label.localhost:{port}" in deployed  # label= overrides the name
    assert f"Model.predict -> http://main--webapp-model-predict.localhost:{port}" in deployed
    text = assert_ok(
        run_python(server, "import modal\nprint(modal.Function.from_name('webapp', 'echo').get_web_url())")
    )
    assert f"http://main--webapp-echo.localhost:{port}" in text


def test_the_printed_url_opens_from_python_on_this_machine(server: Server, deployed: str) -> None:
    """Python's resolver (glibc) finds *.localhost once scripts/install has set up nss-myhostname."""
    text = assert_ok(
        run_python(
            server,
            "import json, urllib.request, modal\n"
            "url = modal.Function.from_name('webapp', 'hello').get_web_url()\n"
            "print('GOT', json.load(urllib.request.urlopen(url + '?name=python', timeout=30)))\n",
        )
    )
    assert "GOT {'hello': 'python'}" in text


def test_fastapi_endpoint_json_and_query(server: Server, deployed: str) -> None:
    status, _, body = request(
        server,
        "main--webapp-echo",
        "POST",
        body=b'{"a": 1, "b": [2]}',
        headers={"Content-Type": "application/json"},
    )
    assert status == 200 and json.loads(body) == {"received": {"a": 1, "b": [2]}, "keys": ["a", "b"]}
    status, _, body = request(server, "main--hello-label", path="/?name=homeport")
    assert status == 200 and json.loads(body) == {"hello": "homeport"}
    status, _, _ = request(server, "main--webapp-echo", "GET")
    assert status == 405  # method= is enforced


def test_asgi_app_statuses_headers_redirects_cookies_and_forms(server: Server, deployed: str) -> None:
    status, headers, body = request(server, "main--webapp-api", path="/status/418")
    assert (status, headers["x-custom"], body) == (418, "yes", b"status 418")
    status, headers, _ = request(server, "main--webapp-api", path="/redirect")
    assert status == 307 and headers["location"] == "/status/200"
    status, headers, body = request(
        server, "main--webapp-api", path="/cookie", headers={"Cookie": "flavor=choc"}
    )
    assert json.loads(body) == {"seen": "choc"} and "flavor=oatmeal" in headers["set-cookie"]
    status, _, body = request(
        server,
        "main--webapp-api",
        "POST",
        "/form",
        body=b"a=1&b=two",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200 and json.loads(body) == {"fields": {"a": "1", "b": "two"}}


def test_wsgi_app(server: Server, deployed: str) -> None:
    status, _, body = request(server, "main--webapp-legacy", path="/some/path")
    assert status == 200 and body == b"wsgi says /some/path"


def test_class_method_endpoint_runs_after_enter(server: Server, deployed: str) -> None:
    status, _, body = request(server, "main--webapp-model-predict", path="/?x=4")
    assert status == 200 and json.loads(body) == {"prediction": 7}


def test_100_megabytes_each_way(server: Server, deployed: str) -> None:
    size = 100 * 1024 * 1024
    status, _, body = request(server, "main--webapp-api", "POST", "/size", body=os.urandom(size), timeout=300)
    assert status == 200 and json.loads(body) == {"bytes": size}
    status, _, body = request(server, "main--webapp-api", path="/download/100", timeout=300)
    assert status == 200 and len(body) == size and body[:512] == bytes(range(256)) * 2


def test_server_sent_events_arrive_as_they_are_yielded(server: Server, deployed: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port + 1, timeout=60)
    connection.request("GET", "/stream", headers={"Host": f"main--webapp-api.localhost:{server.port + 1}"})
    response = connection.getresponse()
    arrivals = []
    while len(arrivals) < 5:
        line = response.fp.readline()
        if line.startswith(b"data: "):
            arrivals.append(time.monotonic())
    connection.close()
    # The endpoint yields one event every 0.3 s: they must not arrive all at once at the end.
    assert arrivals[-1] - arrivals[0] > 0.9


def test_failures_map_to_http_statuses(server: Server, deployed: str) -> None:
    status, _, body = request(server, "main--nothing-here")
    assert status == 404 and b"main--nothing-here.localhost" in body
    status, _, body = request(server, "main--webapp-boom")
    assert status == 500 and b"this endpoint always fails" not in body
    logs = assert_ok(run_modal(server, "app", "logs", "webapp"))
    assert "this endpoint always fails" in logs  # the traceback is in the app's logs
    status, _, body = request(server, "main--webapp-broken-predict")
    assert status == 503 and b"weights are missing" in body
    status, _, _ = request(server, "main--webapp-slow")
    assert status == 504


def test_proxy_auth_needs_a_proxy_token(server: Server, deployed: str) -> None:
    status, _, _ = request(server, "main--webapp-guarded")
    assert status == 401
    api = server.client_env
    status, _, _ = request(
        server,
        "main--webapp-guarded",
        headers={"Modal-Key": api["MODAL_TOKEN_ID"], "Modal-Secret": api["MODAL_TOKEN_SECRET"]},
    )
    assert status == 401  # an API token is not a proxy-auth token
    created = server.homeport("token", "create", "--proxy-auth")
    assert created.returncode == 0, created.stderr
    key = dict(line.split(": ", 1) for line in created.stdout.strip().splitlines())
    status, _, body = request(server, "main--webapp-guarded", headers=key)
    assert status == 200 and json.loads(body) == {"secret": "only with proxy auth"}


def test_deployed_url_answers_in_a_headless_browser(server: Server, deployed: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"http://main--hello-label.localhost:{server.port + 1}/?name=browser"
    result = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert '{"hello":"browser"}' in result.stdout, result.stderr[-2000:]


def test_websocket_echo_through_asgi_app(server: Server, deployed: str) -> None:
    import asyncio

    import aiohttp

    async def conversation() -> list[object]:
        url = f"http://127.0.0.1:{server.port + 1}/echo"
        heard: list[object] = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(
                url, headers={"Host": f"main--webapp-api.localhost:{server.port + 1}"}
            ) as socket:
                await socket.send_str("hello")
                heard.append((await socket.receive(timeout=30)).data)
                await socket.send_bytes(b"abc")
                heard.append((await socket.receive(timeout=30)).data)
                await socket.send_str("bye")
                closing = await socket.receive(timeout=30)
                heard.append(closing.type.name)
        return heard

    assert asyncio.run(conversation()) == ["echo: hello", b"cba", "CLOSE"]


def test_web_server_decorator_proxies_to_the_containers_port(server: Server, deployed: str) -> None:
    status, headers, body = request(server, "main--webapp-files")
    assert status == 200 and body == b"<h1>served by a web_server</h1>"
    assert headers["server"].startswith("SimpleHTTP")


def test_modal_serve_reloads_on_change_and_keeps_the_url(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app_file = tmp_path / "served.py"
    source = (
        "import modal\napp = modal.App('served', image=modal.Image.debian_slim().pip_install('fastapi[standard]'))\n"
        "@app.function()\n@modal.fastapi_endpoint()\ndef hello():\n    return {'version': VERSION}\n"
    )
    app_file.write_text(source.replace("VERSION", "1"))
    process = subprocess.Popen(
        [MODAL, "serve", str(app_file)],
        cwd=tmp_path,
        env=server.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        label = "main--served-hello-dev"

        def version() -> object:
            status, _, body = request(server, label, timeout=30)
            return json.loads(body).get("version") if status == 200 else status

        deadline = time.monotonic() + 60
        while version() != 1:
            assert time.monotonic() < deadline, "modal serve never served version 1"
            time.sleep(0.5)
        app_file.write_text(source.replace("VERSION", "2"))
        deadline = time.monotonic() + 60
        while version() != 2:
            assert time.monotonic() < deadline, "modal serve did not reload"
            time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_concurrent_requests_fan_out_across_containers(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import concurrent.futures

    app_file = tmp_path / "fanout.py"
    app_file.write_text(
        "import socket, time, modal\napp = modal.App('fanout', image=modal.Image.debian_slim().pip_install('fastapi[standard]'))\n"
        "@app.function()\n@modal.fastapi_endpoint()\ndef work():\n    time.sleep(2)\n    return {'container': socket.gethostname()}\n"
    )
    assert_ok(run_modal(server, "deploy", str(app_file), cwd=tmp_path))
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: request(server, "main--fanout-work", timeout=120), range(4)))
    elapsed = time.monotonic() - started
    containers = {json.loads(body)["container"] for status, _, body in answers if status == 200}
    assert len(answers) == 4 and all(status == 200 for status, _, _ in answers)
    assert len(containers) > 1, containers  # not all four queued behind one container
    assert elapsed < 8, elapsed


def test_idle_endpoint_scales_to_zero_and_wakes_on_the_next_request(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app_file = tmp_path / "sleepy.py"
    app_file.write_text(
        "import socket, modal\napp = modal.App('sleepy', image=modal.Image.debian_slim().pip_install('fastapi[standard]'))\n"
        "@app.function(scaledown_window=2)\n@modal.fastapi_endpoint()\ndef who():\n    return {'container': socket.gethostname()}\n"
    )
    assert_ok(run_modal(server, "deploy", str(app_file), cwd=tmp_path))
    status, _, first = request(server, "main--sleepy-who")
    assert status == 200
    app_id = next(
        a["app_id"]
        for a in json.loads(assert_ok(run_modal(server, "app", "list", "--json")))
        if a["description"] == "sleepy" and a["state"] == "deployed"
    )
    deadline = time.monotonic() + 30
    while any(
        t["app_id"] == app_id for t in json.loads(assert_ok(run_modal(server, "container", "list", "--json")))
    ):
        assert time.monotonic() < deadline, "the idle container never stopped"
        time.sleep(0.5)
    status, _, second = request(server, "main--sleepy-who")
    assert status == 200 and json.loads(second)["container"] != json.loads(first)["container"]
