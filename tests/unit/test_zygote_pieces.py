"""Unit tests of the zygote's small pieces: paths resolved inside a container's root, which
containers may be forked, and address claims that name their server."""

from __future__ import annotations

import os
from pathlib import Path

from homeport.agent import network
from homeport.agent.runtime import BoundDirectory, ContainerSpec
from homeport.agent.zygote_image import ZygoteImage
from homeport.agent.zygote_main import in_root


def test_bind_targets_resolve_symbolic_links_inside_the_container_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "run" / "resolve").mkdir(parents=True)
    os.symlink("/run/resolve/stub.conf", root / "etc" / "resolv.conf")  # absolute: the container's /run
    os.symlink("../../..", root / "run" / "up")  # climbing out stops at the root
    os.symlink("loop", root / "loop")
    assert in_root(str(root), "/etc/resolv.conf") == f"{root}/run/resolve/stub.conf"
    assert in_root(str(root), "/run/up/etc/hosts") == f"{root}/etc/hosts"
    assert in_root(str(root), "/../../etc") == f"{root}/etc"
    try:
        in_root(str(root), "/loop/x")
    except OSError as error:
        assert "too many symbolic links" in str(error)
    else:
        raise AssertionError("a symbolic link loop was followed forever")


def _spec(tmp_path: Path, environment: dict[str, str], **overrides) -> ContainerSpec:  # type: ignore[no-untyped-def]
    return ContainerSpec(
        task_id="ta-1", app_id="ap-1", function_id="fu-1", container_arguments=b"", environment=environment,
        files=[], client_package_dir=tmp_path, work_dir=tmp_path / "task", image_layers=[], **overrides,
    )  # fmt: skip


def test_containers_whose_start_up_settings_differ_from_the_zygote_start_afresh(tmp_path: Path) -> None:
    started = {"PATH": "/usr/bin", "PYTHONPATH": "/root:/pkg", "MODAL_IS_REMOTE": "1"}
    image = ZygoteImage("ws-1", (), tuple(sorted(started.items())), tmp_path, None)
    own = {**started, "MODAL_TASK_ID": "ta-1", "MODAL_OVERRIDE_HEADERS": "x", "API_KEY": "secret"}
    assert image.accepts(_spec(tmp_path, own))  # its own id, credential and ordinary secrets
    assert not image.accepts(_spec(tmp_path, {**own, "PYTHONHASHSEED": "0"}))  # read by the interpreter
    assert not image.accepts(_spec(tmp_path, {**own, "MODAL_LOGLEVEL": "DEBUG"}))  # read at client import
    assert not image.accepts(_spec(tmp_path, {**own, "TZ": "UTC"}))
    assert not image.accepts(_spec(tmp_path, own, gpu_devices=[0]))
    outside = BoundDirectory(tmp_path / "elsewhere", "/data", False)
    assert not image.accepts(_spec(tmp_path, own, directories=[outside]))


def test_address_claims_of_a_server_that_is_gone_are_stale(tmp_path: Path) -> None:
    claim = tmp_path / "10.89.0.2"
    claim.write_text(f"hp-abc {os.getpid()}")
    holder, owner = network._read_claim(claim)
    assert (holder, owner) == ("hp-abc", os.getpid()) and network._alive(owner)
    claim.write_text("hp-old")  # written before claims named their server
    assert network._read_claim(claim) == ("hp-old", None)
    assert not network._alive(2**22 + 1)  # above pid_max: no such process
