"""Images. Until the image builder lands (issue 3), this server builds nothing.

It accepts the plain `debian_slim()` base for the Python version its process runtime
runs, and answers any other build step with a build failure that names the step;
never a silent success.
"""

from __future__ import annotations

import hashlib
import re
import time

import sqlalchemy as sa
from modal_proto import api_pb2

from homeport import ids
from homeport.server import errors
from homeport.server.store import schema

SUCCESS = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
FAILURE = api_pb2.GenericResult.GENERIC_STATUS_FAILURE

# What `Image.debian_slim()` sends at builder 2025.06 after its FROM line.
DEBIAN_SLIM_STEPS = [
    "RUN apt-get update",
    "RUN apt-get install -y gcc gfortran build-essential",
    "RUN pip install --upgrade pip wheel uv",
    "RUN echo 'debconf debconf/frontend select Noninteractive' | debconf-set-selections",
]
DEBIAN_SLIM_FROM = re.compile(r"^FROM python:(\d+)\.(\d+)(?:\.\d+)?-slim-(bookworm|trixie)$")


def content_hash(image: api_pb2.Image, builder_version: str) -> str:
    digest = hashlib.sha256()
    digest.update(builder_version.encode())
    for command in image.dockerfile_commands:
        digest.update(b"\0cmd\0" + command.encode())
    for base in image.base_images:
        digest.update(b"\0base\0" + base.docker_tag.encode() + b"=" + base.image_id.encode())
    for context_file in image.context_files:
        digest.update(b"\0file\0" + context_file.filename.encode() + b"\0" + hashlib.sha256(context_file.data).digest())
    digest.update(b"\0mount\0" + image.context_mount_id.encode())
    digest.update(b"\0build\0" + image.build_function.SerializeToString(deterministic=True))
    return digest.hexdigest()


def unsupported_step(image: api_pb2.Image, runtime_python: tuple[int, int]) -> str | None:
    """None if this server can run the image as is; else why not, naming the step."""
    commands = list(image.dockerfile_commands)
    if image.base_images or not commands:
        step = next((c for c in commands if not c.startswith("FROM")), commands[0] if commands else "(empty image)")
        return f"image builds are not supported by this server yet (step `{step}`)"
    match = DEBIAN_SLIM_FROM.match(commands[0])
    if match is None:
        return f"image builds are not supported by this server yet (base `{commands[0]}`); use modal.Image.debian_slim()"
    wanted = (int(match.group(1)), int(match.group(2)))
    if wanted != runtime_python:
        return (
            f"this server runs functions on Python {runtime_python[0]}.{runtime_python[1]} until image builds are "
            f"supported; asked for Python {wanted[0]}.{wanted[1]} (`{commands[0]}`)"
        )
    for command in commands[1:]:
        if command in DEBIAN_SLIM_STEPS or command.startswith("CMD "):
            continue
        return f"image builds are not supported by this server yet (step `{command}`)"
    return None


class ImageService:
    def __init__(self, engine: sa.Engine, runtime_python: tuple[int, int]) -> None:
        self.engine = engine
        self.runtime_python = runtime_python

    def get_or_create(self, workspace_id: str, image: api_pb2.Image, builder_version: str) -> tuple[str, int, str]:
        """Returns (image_id, status, exception)."""
        key = content_hash(image, builder_version)
        i = schema.images
        with self.engine.begin() as connection:
            row = connection.execute(
                sa.select(i.c.id, i.c.status, i.c.exception).where(i.c.workspace_id == workspace_id, i.c.content_hash == key)
            ).first()
            if row is not None:
                return row.id, row.status, row.exception
            problem = unsupported_step(image, self.runtime_python)
            status, exception = (FAILURE, problem) if problem else (SUCCESS, "")
            image_id = ids.new_id("image")
            connection.execute(
                i.insert().values(
                    id=image_id,
                    workspace_id=workspace_id,
                    content_hash=key,
                    definition=image.SerializeToString(),
                    status=status,
                    exception=exception,
                    created_at=time.time(),
                )
            )
        return image_id, status, exception

    def get(self, workspace_id: str, image_id: str) -> tuple[int, str]:
        i = schema.images
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(i.c.status, i.c.exception).where(i.c.id == image_id, i.c.workspace_id == workspace_id)
            ).first()
        if row is None:
            raise errors.not_found(f"image {image_id} not found")
        return row.status, row.exception
