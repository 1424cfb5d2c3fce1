"""The image builder's small pieces: Dockerfile parsing and the layer store's commit rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from homeport.images import dockerfile
from homeport.images.bases import BaseCache, recipe_for
from homeport.images.config import ImageConfig
from homeport.images.layers import LayerStore


def test_continuations_comments_and_flags_are_joined_like_docker() -> None:
    instructions = dockerfile.parse(
        [
            "# comment",
            "FROM python:3.11-slim-bookworm",
            "",
            "RUN echo a && \\",
            "    # inside",
            "    echo b",
            "COPY --chmod=755 a.sh /a.sh",
        ]
    )
    assert [i.keyword for i in instructions] == ["FROM", "RUN", "COPY"]
    assert instructions[1].arguments == "echo a && echo b"
    assert instructions[2].flags == {"chmod": "755"} and instructions[2].arguments == "a.sh /a.sh"


def test_env_forms_and_variable_substitution() -> None:
    (first, second) = dockerfile.parse(["ENV A=1 B='two words' C=${A}x", "ENV LEGACY some value"])
    assert dockerfile.key_values(first, {"A": "1"}) == [("A", "1"), ("B", "two words"), ("C", "1x")]
    assert dockerfile.key_values(second, {}) == [("LEGACY", "some value")]
    assert dockerfile.substitute("${MISSING:-fallback}/$A", {"A": "x"}) == "fallback/x"


def test_unsupported_instructions_are_named() -> None:
    with pytest.raises(dockerfile.DockerfileError, match="HEALTHCHECK"):
        dockerfile.parse(["FROM base", "HEALTHCHECK CMD true"])
    with pytest.raises(dockerfile.DockerfileError, match="unknown Dockerfile instruction FROBNICATE"):
        dockerfile.parse(["FROBNICATE now"])


def test_local_recipes_cover_the_clients_default_bases() -> None:
    assert recipe_for("python:3.11.12-slim-bookworm") is not None
    assert recipe_for("debian:bookworm-slim") is not None
    assert recipe_for("python:3.12.10-slim-bookworm") is None  # no Debian release has 3.12: needs a registry
    # debian_slim(python_version="3.13") asks for a bookworm tag; trixie has 3.13
    stand_in = recipe_for("python:3.13.3-slim-bookworm")
    assert stand_in is not None and (stand_in.release, stand_in.python) == ("trixie", "3.13")


def test_a_layer_exists_only_once_committed(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "layers", BaseCache(tmp_path / "bases"))
    key = "ab" * 32
    staging = store.staging(key)
    (staging / "fs" / "file").write_text("content")
    assert store.get(key) is None and store.all_refs() == []  # an interrupted build leaves nothing reusable
    layer = store.commit(key, staging, "RUN make file", ImageConfig(workdir="/w"))
    assert store.get(key) == layer and layer.config.workdir == "/w"
    assert (store.path(layer.ref) / "file").read_text() == "content"
    assert store.all_refs() == [layer.ref]
