"""agent/layer_copy.py: a writable layer copied whole, and never through a link."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from homeport.agent.layer_copy import copy_tree


def test_a_layer_is_copied_with_what_overlayfs_needs(tmp_path: Path) -> None:
    layer, copy = tmp_path / "layer", tmp_path / "copy"
    (layer / "root" / "deep").mkdir(parents=True)
    (layer / "root" / "deep" / "model.bin").write_bytes(b"\x00weights" * 1000)
    os.chmod(layer / "root" / "deep" / "model.bin", 0o640)
    os.chown(layer / "root" / "deep" / "model.bin", 1000, 1001)
    (layer / "link").symlink_to("/etc/hostname")
    os.mknod(layer / "deleted", 0o600 | stat.S_IFCHR, os.makedev(0, 0))  # a whiteout
    os.setxattr(layer / "root", "trusted.overlay.opaque", b"y")
    os.mkfifo(layer / "pipe")
    copy.mkdir()
    copy_tree(layer, copy)
    model = copy / "root" / "deep" / "model.bin"
    assert model.read_bytes() == b"\x00weights" * 1000
    info = model.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o640, 1000, 1001)
    assert os.readlink(copy / "link") == "/etc/hostname"  # a link, never what it points to
    whiteout = os.stat(copy / "deleted", follow_symlinks=False)
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(copy / "root", "trusted.overlay.opaque") == b"y"
    assert stat.S_ISFIFO(os.stat(copy / "pipe").st_mode)


def test_a_directory_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    """What a container swaps in while it is copied is copied as a link at most."""
    host = tmp_path / "host-secrets"
    host.mkdir()
    (host / "key.pem").write_text("secret")
    layer, copy = tmp_path / "layer", tmp_path / "copy"
    layer.mkdir()
    (layer / "data").symlink_to(host)
    copy.mkdir()
    copy_tree(layer, copy)
    assert (copy / "data").is_symlink()
    assert not any(p.name == "key.pem" for p in copy.rglob("*") if not p.is_symlink())
