"""Cgroups left by servers that were killed are removed; nothing in use is."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest

from homeport.agent import cgroups


@pytest.fixture
def made() -> Iterator[dict[str, cgroups.Cgroup]]:
    tag = secrets.token_hex(4)
    groups = {
        kind: cgroups.Cgroup(f"sweep-test-{kind}-{tag}", cgroups.Limits())
        for kind in ("stale", "young", "busy", "kept")
    }
    for group in groups.values():
        group.create()
    yield groups
    for group in groups.values():
        group.remove()


def _age(group: cgroups.Cgroup, seconds: float) -> None:
    for path in group.paths.values():
        os.utime(path, (time.time() - seconds, time.time() - seconds))


def test_only_old_empty_cgroups_nobody_keeps_are_removed(made: dict[str, cgroups.Cgroup]) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        made["busy"].add(sleeper.pid)
        for kind in ("stale", "busy", "kept"):
            _age(made[kind], 3600)
        kept_name = made["kept"].paths["pids"].name
        cgroups.sweep_stale(keep={kept_name})
        assert not any(path.exists() for path in made["stale"].paths.values())
        for kind in ("young", "busy", "kept"):
            assert all(path.exists() for path in made[kind].paths.values()), kind
    finally:
        sleeper.kill()
        sleeper.wait()  # gone, so the fixture can remove its cgroup
