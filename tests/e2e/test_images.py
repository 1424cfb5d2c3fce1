"""Images are built from the client's steps into real root filesystems, cached by content."""

from __future__ import annotations

import ast
import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from homeport.images.bases import BaseCache
from tests.conftest import MODAL, Server, assert_ok, output, run_modal, run_python, start_server


def reported(text: str, label: str) -> dict:
    line = next(line for line in text.splitlines() if line.startswith(label + " "))
    return ast.literal_eval(line[len(label) + 1 :])


def write_app(
    directory: Path, image_expression: str, body: str = "return open('/result').read().strip()"
) -> Path:
    app_file = directory / "app.py"
    app_file.write_text(
        "import modal\n"
        f"image = {image_expression}\n"
        "app = modal.App('image-probe')\n"
        "@app.function(image=image)\n"
        "def probe():\n"
        f"    {body}\n"
        "@app.local_entrypoint()\n"
        "def main():\n"
        "    print('RESULT', repr(probe.remote()))\n"
    )
    return app_file


def result_of(text: str) -> str:
    return ast.literal_eval(text.split("RESULT ", 1)[1].splitlines()[0])


@pytest.fixture(scope="module")
def images_app_output(server: Server) -> str:
    """One run of the app that uses every image method (its two images build once)."""
    return assert_ok(run_modal(server, "run", "images_app.py", timeout=900))


def test_every_builder_method_shapes_the_functions_filesystem(images_app_output: str) -> None:
    builder = reported(images_app_output, "BUILDER")
    assert builder["jq"] == "2"  # apt_install
    assert builder["six"] == "1.16.0"  # pip_install
    assert builder["iniconfig"] == "iniconfig"  # uv_pip_install
    assert builder["marker"] == "built" and builder["home"] == "/root"  # run_commands
    assert builder["greeting"] == "hello from env" and builder["spaced"] == "a b  c"  # env
    assert builder["cwd"] == "/srv/app"  # workdir
    assert builder["one"] == "first"  # add_local_file(copy=True)
    assert builder["nested"] == ["two.txt"]  # add_local_dir(copy=True)
    assert builder["helper"] == "COPIED!" and builder["helper_file"].startswith(
        "/root/helper_pkg"
    )  # python source
    assert builder["flavor"] == "chocolate"  # dockerfile_commands with ARG and build_args
    assert builder["config"] == "threshold=42"  # COPY from the context dir
    assert builder["host_checkout_visible"] is False  # the image's filesystem, not the host's


def test_dockerfile_instructions_are_honoured(images_app_output: str) -> None:
    image = reported(images_app_output, "DOCKERFILE")
    assert image["cwd"] == "/srv/site"  # WORKDIR with $VAR
    assert (
        image["mode"] == "from dockerfile" and image["home"] == "/srv/site"
    )  # multi-pair ENV with continuation
    assert image["settings"] == 'name = "site"'  # COPY to a relative destination
    assert image["data"] == ["a.txt", "b.txt"]  # COPY of a directory's contents
    assert image["edition"] == "edition=community"  # ARG default, seen by RUN
    assert image["continued"] == "continued"  # RUN across continuation lines
    assert image["exec"] == "exec-form"  # RUN ["..."]
    assert image["shell"] == "bash"  # SHELL
    assert image["build_user"] == "nobody"  # USER applies to later RUN steps
    assert image["edition_env"] is None  # ARG is build-time only


def test_unchanged_image_is_not_built_again(server: Server, tmp_path: Path) -> None:
    nonce = secrets.token_hex(4)
    app_file = write_app(tmp_path, f"modal.Image.debian_slim().run_commands('echo {nonce} > /result')")
    first = assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path))
    assert f"RUN echo {nonce} > /result" in first  # built, with its log streamed
    second = assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path))
    assert result_of(second) == nonce
    assert "=> Step" not in second and "Built image" not in second


def test_changing_a_step_rebuilds_from_that_step_only(server: Server, tmp_path: Path) -> None:
    nonce = secrets.token_hex(4)
    for value in ("one", "two"):
        app_file = write_app(
            tmp_path,
            f"modal.Image.debian_slim().run_commands('echo {nonce} > /first').run_commands('echo {value} > /result')",
            body="return open('/first').read().strip() + '/' + open('/result').read().strip()",
        )
        text = assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path))
        assert result_of(text) == f"{nonce}/{value}"
        assert f"RUN echo {value} > /result" in text
        if value == "two":
            assert f"RUN echo {nonce} > /first" not in text  # the unchanged step came from the cache


def test_force_build_rebuilds(server: Server, tmp_path: Path) -> None:
    app_file = write_app(
        tmp_path, "modal.Image.debian_slim().run_commands('cat /proc/sys/kernel/random/uuid > /result')"
    )
    first = result_of(assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path)))
    cached = result_of(assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path)))
    forced_text = assert_ok(
        run_modal(server, "run", str(app_file), cwd=tmp_path, MODAL_FORCE_BUILD="1", timeout=600)
    )
    assert cached == first
    assert result_of(forced_text) != first
    assert "(cached)" not in forced_text


def test_broken_step_fails_the_run_with_step_status_and_output(server: Server, tmp_path: Path) -> None:
    app_file = write_app(tmp_path, "modal.Image.debian_slim().run_commands('echo about to break; exit 3')")
    result = run_modal(server, "run", str(app_file), cwd=tmp_path)
    assert result.returncode != 0
    text = output(result)
    assert "`RUN echo about to break; exit 3` failed with exit status 3" in text
    assert (
        "about to break" in text.split("failed with exit status 3", 1)[1]
    )  # the output's tail, in the error


def test_unsupported_instruction_fails_naming_it(server: Server, tmp_path: Path) -> None:
    app_file = write_app(tmp_path, "modal.Image.debian_slim().dockerfile_commands(['HEALTHCHECK CMD true'])")
    result = run_modal(server, "run", str(app_file), cwd=tmp_path)
    assert result.returncode != 0
    assert "Homeport does not support the Dockerfile instruction HEALTHCHECK" in output(result)


def test_two_clients_asking_for_one_image_share_one_build(server: Server, tmp_path: Path) -> None:
    nonce = secrets.token_hex(4)
    app_file = write_app(
        tmp_path, f"modal.Image.debian_slim().run_commands('sleep 3; echo building-{nonce} > /result')"
    )
    runs = [
        subprocess.Popen(
            [MODAL, "run", str(app_file)],
            cwd=tmp_path,
            env=server.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    texts = [run.communicate(timeout=300)[0] for run in runs]
    for run, text in zip(runs, texts):
        assert run.returncode == 0, text
        assert result_of(text) == f"building-{nonce}"
    built = {re.search(r"Built image (im-\w+)", text).group(1) for text in texts}  # type: ignore[union-attr]
    assert len(built) == 1  # both watched the same build's log
    (image_id,) = built
    assert len(re.findall(rf"image {image_id} built in", server.log_text())) == 1


def test_images_list_shows_sizes_and_prune_removes_only_unused_layers(tmp_path: Path) -> None:
    server = start_server(tmp_path, server_env={"HOMEPORT_LAYER_DIR": str(tmp_path / "layers")})
    try:
        app_file = write_app(
            tmp_path,
            "modal.Image.debian_slim().run_commands('cat /proc/sys/kernel/random/uuid > /result', force_build=True)",
        )
        first = result_of(assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path, timeout=600)))
        second = result_of(assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path)))
        assert first != second  # force_build=True: the step ran again, leaving its old layer unused

        listing = server.homeport("images", "list")
        assert listing.returncode == 0, listing.stderr
        assert "built" in listing.stdout and "MiB" in listing.stdout
        assert "cat /proc/sys/kernel/random/uuid" in listing.stdout

        time.sleep(2.5)  # past the grace period that protects a layer just committed
        pruned = server.homeport("images", "prune")
        assert pruned.returncode == 0, pruned.stderr
        assert "Removed 1 layer(s)" in pruned.stdout
        assert "Removed 0 layer(s)" in server.homeport("images", "prune").stdout

        app_file.write_text(app_file.read_text().replace(", force_build=True", ""))
        text = assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path))
        assert result_of(text) == second and "=> Step" not in text  # the live layers survived
    finally:
        server.stop()


def test_run_function_bakes_its_writes_with_its_secrets_and_volumes(server: Server, tmp_path: Path) -> None:
    nonce = secrets.token_hex(4)
    (tmp_path / "seed.txt").write_text(f"seed-{nonce}")
    assert_ok(run_modal(server, "volume", "create", f"build-vol-{nonce}", cwd=tmp_path))
    assert_ok(run_modal(server, "volume", "put", f"build-vol-{nonce}", "seed.txt", "/seed.txt", cwd=tmp_path))
    app_file = tmp_path / "app.py"
    app_file.write_text(
        "import os, modal\n"
        "def prepare(suffix):\n"
        "    seed = open('/vol/seed.txt').read()\n"
        "    os.makedirs('/opt/baked', exist_ok=True)\n"
        "    open('/opt/baked/result', 'w').write(f\"{os.environ['BUILD_TOKEN']}:{seed}:{suffix}\")\n"
        "    print('prepared in the build')\n"
        f"vol = modal.Volume.from_name('build-vol-{nonce}')\n"
        "image = modal.Image.debian_slim().run_function(\n"
        "    prepare, args=('arg',), secrets=[modal.Secret.from_dict({'BUILD_TOKEN': 'tok'})], volumes={'/vol': vol})\n"
        "app = modal.App('run-function')\n"
        "@app.function(image=image)\n"
        "def probe():\n"
        "    return open('/opt/baked/result').read(), os.environ.get('BUILD_TOKEN'), os.path.exists('/vol')\n"
        "@app.local_entrypoint()\n"
        "def main():\n"
        "    print('RESULT', repr(probe.remote()))\n"
    )
    text = assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path, timeout=600))
    assert "prepared in the build" in text  # the build function's output is in the build log
    assert result_of(text) == (
        f"tok:seed-{nonce}:arg",
        None,
        False,
    )  # baked; secret and volume were build-only
    again = assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path))
    assert "prepared in the build" not in again and result_of(again)[0] == f"tok:seed-{nonce}:arg"  # cached


def test_from_registry_pulls_from_a_local_oci_layout(tmp_path: Path) -> None:
    # A registry stand-in: an OCI layout holding one image, with its own env and workdir.
    base = BaseCache(Path(os.environ.get("HOMEPORT_CACHE_DIR", "/var/cache/homeport")) / "bases").ensure(
        "python:3.11-slim-bookworm", lambda text: None
    )
    layout, reference = tmp_path / "oci", "homeport.test/python:3.11"
    bundle = tmp_path / "bundle"
    for command in (
        ["umoci", "init", "--layout", str(layout)],
        ["umoci", "new", "--image", f"{layout}:{reference}"],
        ["umoci", "unpack", "--image", f"{layout}:{reference}", str(bundle)],
        ["cp", "-a", f"{base.rootfs}/.", str(bundle / "rootfs")],
        ["sh", "-c", f"echo from-the-layout > {bundle}/rootfs/etc/origin"],
        ["umoci", "repack", "--image", f"{layout}:{reference}", str(bundle)],
        [
            "umoci",
            "config",
            "--image",
            f"{layout}:{reference}",
            "--config.env",
            "ORIGIN=oci",
            "--config.workingdir",
            "/srv",
        ],
    ):
        subprocess.run(command, check=True, capture_output=True)
    server = start_server(
        tmp_path / "server",
        server_env={"HOMEPORT_OCI_MIRROR": str(layout), "HOMEPORT_CACHE_DIR": str(tmp_path / "cache")},
    )
    try:
        app_file = write_app(
            tmp_path,
            f"modal.Image.from_registry({reference!r})",
            body="import os; return open('/etc/origin').read().strip(), os.environ.get('ORIGIN'), os.getcwd()",
        )
        text = assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path, timeout=600))
        assert f"unpacking {reference} from the local OCI layout" in text
        assert result_of(text) == ("from-the-layout", "oci", "/srv")
    finally:
        server.stop()


def test_failed_forced_rebuild_leaves_deployed_functions_on_the_built_image(
    server: Server, tmp_path: Path
) -> None:
    nonce = secrets.token_hex(4)
    deadline = int(time.time()) + 25  # the step passes before this moment and fails after it
    app_file = tmp_path / "deployed.py"
    app_file.write_text(
        "import modal\n"
        f"image = modal.Image.debian_slim().run_commands('test $(date +%s) -lt {deadline}', 'echo {nonce} > /result')\n"
        f"app = modal.App('forced-{nonce}')\n"
        "@app.function(image=image, scaledown_window=2)\n"
        "def read():\n"
        "    return open('/result').read().strip()\n"
    )
    assert_ok(run_modal(server, "deploy", str(app_file), cwd=tmp_path))
    call = (
        f"import modal\nprint('RESULT', repr(modal.Function.from_name('forced-{nonce}', 'read').remote()))\n"
    )
    assert result_of(assert_ok(run_python(server, call))) == nonce
    time.sleep(max(deadline + 1 - time.time(), 0))
    forced = run_modal(server, "deploy", str(app_file), cwd=tmp_path, MODAL_FORCE_BUILD="1")
    assert forced.returncode != 0 and "failed with exit status 1" in output(forced)
    time.sleep(5)  # past scaledown_window: the next call needs a new container from the built layers
    assert result_of(assert_ok(run_python(server, call))) == nonce


def test_build_steps_cannot_reach_the_hosts_own_services(server: Server, tmp_path: Path) -> None:
    nonce = secrets.token_hex(4)
    probe = (
        "import socket\n"
        "def attempt(host):\n"
        "    try:\n"
        f"        socket.create_connection((host, {server.port}), timeout=2).close()\n"
        "        return 'reached'\n"
        "    except OSError as error:\n"
        "        return type(error).__name__\n"
        f"print('{nonce}', attempt('127.0.0.1'), attempt('10.89.0.1'))\n"
    )
    (tmp_path / "probe.py").write_text(probe)
    app_file = write_app(
        tmp_path,
        "modal.Image.debian_slim().add_local_file('probe.py', '/probe.py', copy=True)"
        ".run_commands('python /probe.py > /result')",
    )
    text = assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path))
    loopback, bridge = result_of(text).split()[1:]
    assert loopback == "ConnectionRefusedError"  # its own loopback, not the host's gRPC port
    assert bridge in ("TimeoutError", "timeout")  # the host answers containers only on the blob port


def test_an_image_on_another_python_runs_with_a_client_package_for_it(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Python 3.13 (from Debian trixie, no registry needed): containers get /pkg built for 3.13."""
    app_file = tmp_path / "py313.py"
    app_file.write_text(
        "import sys, modal\n"
        "app = modal.App('py313')\n"
        "@app.function(image=modal.Image.from_registry('python:3.13-slim-trixie'))\n"
        "def version():\n"
        "    import google.protobuf\n"
        "    return f'{sys.version_info[0]}.{sys.version_info[1]} protobuf {google.protobuf.__version__}'\n"
        "@app.local_entrypoint()\n"
        "def main():\n"
        "    print('RAN ON', version.remote())\n"
    )
    text = assert_ok(run_modal(server, "run", str(app_file), cwd=tmp_path, timeout=900))
    assert "RAN ON 3.13 protobuf" in text
