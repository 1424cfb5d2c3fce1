"""Images: one record per distinct definition (per workspace), built once into layers.

ImageGetOrCreate finds or creates the record and starts its build; everyone who asks
for the same image while it builds joins that one build and reads the same log
(`image_build_logs`, replayed by ImageJoinStreaming). A failed build is retried the
next time the image is asked for, reusing the layers of the steps that succeeded.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from modal._serialization import serialize
from modal_proto import api_pb2

from homeport import ids
from homeport.agent.runtime import CONTROL_DIR
from homeport.images.bases import BaseCache
from homeport.images.builder import BuildFailed, BuildPlan, BuiltImage, ImageBuilder, ParentImage
from homeport.images.config import ImageConfig
from homeport.images.layers import LayerStore
from homeport.server import errors
from homeport.server.metrics import Metrics
from homeport.server.store import schema

log = logging.getLogger("homeport.images")

PENDING = api_pb2.GenericResult.GENERIC_STATUS_UNSPECIFIED
SUCCESS = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
FAILURE = api_pb2.GenericResult.GENERIC_STATUS_FAILURE
LOG_FLUSH_S = 0.1
PARENT_WAIT_S = 3600


def secret_identity(values: dict[str, str]) -> str:
    """What a build's secrets contribute to cache keys: their content, not their ids
    (`run_commands(env=...)` makes a new secret object on every run). Only the digest is
    kept, never the values."""
    return hashlib.sha256(json.dumps(sorted(values.items())).encode()).hexdigest() if values else ""


def content_hash(image: api_pb2.Image, builder_version: str, secrets_digest: str = "") -> str:
    digest = hashlib.sha256()
    digest.update(builder_version.encode())
    for command in image.dockerfile_commands:
        digest.update(b"\0cmd\0" + command.encode())
    for base in image.base_images:
        digest.update(b"\0base\0" + base.docker_tag.encode() + b"=" + base.image_id.encode())
    for context_file in image.context_files:
        digest.update(
            b"\0file\0" + context_file.filename.encode() + b"\0" + hashlib.sha256(context_file.data).digest()
        )
    digest.update(b"\0mount\0" + image.context_mount_id.encode())
    digest.update(b"\0build\0" + image.build_function.SerializeToString(deterministic=True))
    for name in sorted(image.build_args):
        digest.update(b"\0arg\0" + name.encode() + b"=" + image.build_args[name].encode())
    digest.update(b"\0secrets\0" + secrets_digest.encode())
    return digest.hexdigest()


class ImageService:
    def __init__(
        self,
        engine: sa.Engine,
        notifier,  # type: ignore[no-untyped-def]
        layers: LayerStore,
        bases: BaseCache,
        mounts,  # type: ignore[no-untyped-def]
        secrets,  # type: ignore[no-untyped-def]
        apps,  # type: ignore[no-untyped-def]
        blob_path: Callable[[str], Path],
        contexts_dir: Path,
        network=None,  # type: ignore[no-untyped-def]  # BridgeNetwork: build steps get their own
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics or Metrics()
        self.notifier = notifier
        self.layers = layers
        self.builder = ImageBuilder(layers, bases, network)
        self.mounts = mounts
        self.secrets = secrets
        self.apps = apps
        self.blob_path = blob_path
        # Runs a build function in a container whose writable layer is kept (the scheduler's
        # Scheduler.run_build_function, wired in once both exist).
        self.run_build_function: Callable[..., Awaitable[api_pb2.GenericResult]] | None = None
        self.contexts_dir = contexts_dir
        # Builds running in this server. A second node would coordinate through a lease
        # column on the image record instead; one node needs no more than this.
        self._building: dict[str, asyncio.Task[None]] = {}
        self._failed_rebuilds: dict[str, str] = {}  # image id -> why its last forced rebuild failed
        self._group: asyncio.TaskGroup | None = None

    async def run(self) -> None:
        """Owns the build tasks: each one's failure is recorded on its image, never lost."""
        self.layers.clean_staging()
        async with asyncio.TaskGroup() as group:
            self._group = group
            await asyncio.Event().wait()

    # -- asking for an image -------------------------------------------------------------

    def get_or_create(
        self,
        workspace_id: str,
        image: api_pb2.Image,
        builder_version: str,
        force_build: bool,
        build_function_id: str = "",
    ) -> tuple[str, int, str]:
        """(image_id, status, exception); status PENDING means a build is running: join it."""
        key = content_hash(
            image, builder_version, secret_identity(self._secret_values(workspace_id, image.secret_ids))
        )
        i = schema.images
        with self.engine.begin() as connection:
            row = connection.execute(
                sa.select(i.c.id, i.c.status, i.c.exception).where(
                    i.c.workspace_id == workspace_id, i.c.content_hash == key
                )
            ).first()
            if row is None:
                image_id = ids.new_id("image")
                connection.execute(
                    i.insert().values(
                        id=image_id,
                        workspace_id=workspace_id,
                        content_hash=key,
                        definition=image.SerializeToString(),
                        status=PENDING,
                        exception="",
                        created_at=time.time(),
                    )
                )
                status, exception = PENDING, ""
            else:
                image_id, status, exception = row.id, row.status, row.exception
        if image_id in self._building:
            return image_id, PENDING, ""
        if status == SUCCESS and not force_build:
            return image_id, status, exception
        # New, failed before (retry: the steps that worked are cached), interrupted by a
        # restart, or force_build.
        self._start_build(workspace_id, image_id, force_build, build_function_id)
        return image_id, PENDING, ""

    def _secret_values(self, workspace_id: str, secret_ids) -> dict[str, str]:  # type: ignore[no-untyped-def]
        values: dict[str, str] = {}
        for secret_id in secret_ids:
            values.update(self.secrets.values(workspace_id, secret_id))
        return values

    def _start_build(self, workspace_id: str, image_id: str, force: bool, build_function_id: str) -> None:
        """Start one build of this image. The task is registered before anything waits for
        the database: a second request for the image meanwhile must find it building."""
        if self._group is None:
            raise RuntimeError("the image builder is not running (ImageService.run was not started)")
        self._failed_rebuilds.pop(image_id, None)
        task = self._group.create_task(
            self._reset_and_build(workspace_id, image_id, force, build_function_id)
        )
        self._building[image_id] = task
        task.add_done_callback(lambda _: self._building.pop(image_id, None))

    async def _reset_and_build(
        self, workspace_id: str, image_id: str, force: bool, build_function_id: str
    ) -> None:
        with self.engine.begin() as connection:
            built = (
                connection.execute(
                    sa.select(schema.images.c.status).where(schema.images.c.id == image_id)
                ).scalar()
                == SUCCESS
            )
            if not built:
                connection.execute(
                    schema.images.update()
                    .where(schema.images.c.id == image_id)
                    .values(status=PENDING, exception="")
                )
            # A forced rebuild of a built image keeps the record built: functions already using
            # it go on starting containers from the current layers until the new ones replace them.
            connection.execute(
                schema.image_build_logs.delete().where(schema.image_build_logs.c.image_id == image_id)
            )
        await self._build(workspace_id, image_id, force, build_function_id, rebuild=built)

    # -- building ------------------------------------------------------------------------

    async def _build(
        self, workspace_id: str, image_id: str, force: bool, build_function_id: str, rebuild: bool = False
    ) -> None:
        writer = BuildLog(self.engine, self.notifier, image_id)
        flusher = asyncio.create_task(writer.flush_periodically())
        started = time.monotonic()
        context_dir: Path | None = None
        try:
            definition = self._definition(image_id)
            parents = {
                base.docker_tag: await self._wait_for_parent(workspace_id, base.image_id)
                for base in definition.base_images
            }
            mount_files = (
                self.mounts.files(definition.context_mount_id)[1] if definition.context_mount_id else ()
            )
            context_dir, context_hash = await asyncio.to_thread(
                self._context, image_id, definition, mount_files
            )
            secret_env = self._secret_values(workspace_id, definition.secret_ids)
            if definition.volume_mounts and not definition.build_function.definition:
                raise BuildFailed(
                    "volumes= on run_commands/pip_install steps are not supported by Homeport yet; "
                    "use Image.run_function(..., volumes=...) for a build step that needs a volume"
                )
            if definition.gpu_config.count or definition.gpu_config.gpu_type:
                raise BuildFailed(
                    "gpu= on image build steps is not supported by Homeport yet; build without it"
                )
            if definition.build_function.definition:
                built = await self._run_function_step(
                    workspace_id, definition, build_function_id, parents, force, writer
                )
            else:
                built = await self.builder.build(
                    self._plan(definition, parents, context_dir, context_hash, secret_env, force),
                    writer.write,
                    lambda chain: self._record_progress(image_id, chain),
                )
            seconds = time.monotonic() - started
            writer.write(
                f"Built image {image_id} in {seconds:.1f}s ({built.steps_run} step(s) run, the rest cached)\n"
                if built.steps_run
                else f"Image {image_id} assembled from cached layers\n"
            )
            await writer.flush()
            with self.engine.begin() as connection:
                connection.execute(
                    schema.images.update()
                    .where(schema.images.c.id == image_id)
                    .values(
                        status=SUCCESS,
                        exception="",
                        layers=json.dumps(built.chain),
                        config=json.dumps(built.config.to_json()),
                        top_key=built.top_key,
                        built_at=time.time(),
                        build_seconds=seconds,
                    )
                )
            log.info("image %s built in %.1fs (%d steps run)", image_id, seconds, built.steps_run)
            self.metrics.image_built(True, seconds)
        except BuildFailed as failure:
            self.metrics.image_built(False, time.monotonic() - started)
            await self._fail(writer, image_id, str(failure), rebuild)
        except asyncio.CancelledError:
            await self._fail(
                writer,
                image_id,
                "the build was interrupted (server shutting down); it restarts when asked for again",
                rebuild,
            )
            raise
        except Exception as error:  # recorded on the image: the client sees it, the log keeps the traceback
            log.exception("image %s: build failed unexpectedly", image_id)
            await self._fail(writer, image_id, f"internal error while building: {error!r}", rebuild)
        finally:
            flusher.cancel()
            if context_dir is not None:
                shutil.rmtree(context_dir.parent, ignore_errors=True)
            # No longer building *before* waking the joiners, or they would read "pending"
            # once more and wait out their long-poll.
            self._building.pop(image_id, None)
            self.notifier.notify(f"image:{image_id}")

    @staticmethod
    def _plan(
        definition: api_pb2.Image,
        parents: dict[str, ParentImage],
        context_dir: Path | None,
        context_hash: str,
        secret_env: dict[str, str],
        force: bool,
    ) -> BuildPlan:
        return BuildPlan(
            commands=list(definition.dockerfile_commands),
            parents=parents,
            context_dir=context_dir,
            context_hash=context_hash,
            build_args=dict(definition.build_args),
            secret_env=secret_env,
            secret_identity=secret_identity(secret_env),
            force=force,
        )

    async def _run_function_step(
        self,
        workspace_id: str,
        definition: api_pb2.Image,
        function_id: str,
        parents: dict[str, ParentImage],
        force: bool,
        writer: BuildLog,
    ) -> BuiltImage:
        """Image.run_function: the function runs once, as a container of the parent image
        whose writable layer becomes the new layer. It sees its own secrets and volumes."""
        parent = parents.get("base")
        if parent is None or not function_id:
            raise BuildFailed("a run_function image needs its base image and build function")
        function = self.apps.function(function_id)
        function_definition = function.definition or api_pb2.Function()
        digest = hashlib.sha256()
        digest.update(parent.top_key.encode() + b"\0run_function\0")
        digest.update(definition.build_function.SerializeToString(deterministic=True))
        digest.update(
            secret_identity(self._secret_values(workspace_id, function_definition.secret_ids)).encode()
        )
        for mount in function_definition.volume_mounts:
            digest.update(f"\0volume\0{mount.volume_id}:{mount.mount_path}".encode())
        if force:
            digest.update(os.urandom(8))
        key = digest.hexdigest()
        name = function_definition.function_name or "function"
        cached = self.layers.get(key)
        if cached is not None:
            writer.write(f"=> run_function {name} (cached)\n")
            return BuiltImage(
                chain=[*parent.chain, cached.ref], config=cached.config, top_key=key, steps_run=0
            )
        writer.write(f"=> run_function {name}\n")
        function_input = definition.build_function.input
        if not function_input.args:
            function_input = api_pb2.FunctionInput(
                args=serialize(((), {})), data_format=api_pb2.DATA_FORMAT_PICKLE
            )
        staging = self.layers.staging(key)
        try:
            assert self.run_build_function is not None
            result = await self.run_build_function(
                workspace_id, function.app_id, function_id, function_input, staging, writer.write
            )
            if result.status != SUCCESS:
                detail = (result.traceback or result.exception or "no error message").strip()
                raise BuildFailed(
                    f"run_function {name} failed: {result.exception or 'the container failed'}\n{detail[-2000:]}"
                )
            _drop_sandbox_mount_points(
                staging / "fs", [mount.mount_path for mount in function_definition.volume_mounts]
            )
            layer = self.layers.commit(
                key, staging, f"run_function {name}", parent.config.copy(), replace=force
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return BuiltImage(chain=[*parent.chain, layer.ref], config=layer.config, top_key=key, steps_run=1)

    def _record_progress(self, image_id: str, chain: list[str]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                schema.images.update().where(schema.images.c.id == image_id).values(layers=json.dumps(chain))
            )

    async def _fail(self, writer: BuildLog, image_id: str, message: str, rebuild: bool = False) -> None:
        writer.write(f"Image build failed: {message}\n")
        await writer.flush()
        if rebuild:
            # The built layers stay in use; whoever forced this rebuild is told it failed.
            self._failed_rebuilds[image_id] = message
            log.warning(
                "image %s: forced rebuild failed, keeping the built layers: %s",
                image_id,
                message.splitlines()[0],
            )
            return
        with self.engine.begin() as connection:
            connection.execute(
                schema.images.update()
                .where(schema.images.c.id == image_id)
                .values(status=FAILURE, exception=message)
            )
        log.warning("image %s failed: %s", image_id, message.splitlines()[0])

    def _definition(self, image_id: str) -> api_pb2.Image:
        with self.engine.connect() as connection:
            data = connection.execute(
                sa.select(schema.images.c.definition).where(schema.images.c.id == image_id)
            ).scalar_one()
        return api_pb2.Image.FromString(data)

    async def _wait_for_parent(self, workspace_id: str, parent_id: str) -> ParentImage:
        deadline = time.monotonic() + PARENT_WAIT_S
        while True:
            with self.notifier.listen(f"image:{parent_id}") as listener:
                with self.engine.connect() as connection:
                    row = connection.execute(
                        sa.select(schema.images).where(
                            schema.images.c.id == parent_id, schema.images.c.workspace_id == workspace_id
                        )
                    ).first()
                if row is None:
                    raise BuildFailed(f"base image {parent_id} does not exist")
                if row.status == SUCCESS and row.layers:
                    return ParentImage(
                        parent_id,
                        json.loads(row.layers),
                        ImageConfig.from_json(json.loads(row.config)),
                        row.top_key,
                    )
                if row.status == FAILURE:
                    raise BuildFailed(f"its base image {parent_id} failed to build: {row.exception}")
                if time.monotonic() > deadline:
                    raise BuildFailed(f"timed out waiting for base image {parent_id} to build")
                await listener.wait(5.0)

    def _context(
        self, image_id: str, definition: api_pb2.Image, mount_files: Sequence[dict[str, Any]]
    ) -> tuple[Path | None, str]:
        """Lay out the files COPY may read: context files and the context mount's files (looked
        up by the caller: this runs on a thread, away from the database), at their paths."""
        entries: list[tuple[str, str, int, Callable[[Path], None]]] = []
        for context_file in definition.context_files:
            data = context_file.data
            entries.append(
                (
                    context_file.filename,
                    hashlib.sha256(data).hexdigest(),
                    0o644,
                    functools.partial(_write_bytes, data=data),
                )
            )
        for file in mount_files:
            source = self.blob_path(str(file["blob_id"]))
            entries.append(
                (
                    str(file["path"]),
                    str(file["sha256"]),
                    int(file["mode"]),
                    functools.partial(_copy_file, source),
                )
            )
        if not entries:
            return None, ""
        digest = hashlib.sha256()
        root = self.contexts_dir / f"{image_id}-{os.getpid()}-{time.monotonic_ns()}" / "context"
        root.mkdir(parents=True)
        for path, sha256_hex, mode, write in sorted(entries, key=lambda entry: entry[0]):
            relative = Path(path.lstrip("/"))
            if ".." in relative.parts:
                raise BuildFailed(f"context file {path} is outside the build context")
            digest.update(f"{relative}\0{sha256_hex}\0{mode & 0o7777:o}\n".encode())
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            write(target)
            os.chmod(target, mode & 0o7777 or 0o644)
        return root, digest.hexdigest()

    # -- reading -------------------------------------------------------------------------

    def status(self, workspace_id: str, image_id: str) -> tuple[int, str, ImageConfig | None]:
        i = schema.images
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(i.c.status, i.c.exception, i.c.config).where(
                    i.c.id == image_id, i.c.workspace_id == workspace_id
                )
            ).first()
        if row is None:
            raise errors.not_found(f"image {image_id} not found")
        config = ImageConfig.from_json(json.loads(row.config)) if row.config else None
        if image_id in self._building:
            return PENDING, "", config
        if image_id in self._failed_rebuilds:
            return FAILURE, self._failed_rebuilds[image_id], config
        return row.status, row.exception, config

    def log_entries(self, image_id: str, after_seq: int) -> list[tuple[int, str]]:
        logs = schema.image_build_logs
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(logs.c.seq, logs.c.data)
                .where(logs.c.image_id == image_id, logs.c.seq > after_seq)
                .order_by(logs.c.seq)
            ).all()
        return [(row.seq, row.data) for row in rows]

    def runtime_image(self, image_id: str) -> tuple[list[Path], ImageConfig]:
        """What a container of this image mounts here (overlay lowerdirs, topmost first) and its config."""
        chain, config = self.runtime_chain(image_id)
        return self.layers.lower_dirs(chain), config

    def runtime_chain(self, image_id: str) -> tuple[list[str], ImageConfig]:
        """A built image's layer chain (refs, bottom first) and its config."""
        i = schema.images
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(i.c.status, i.c.layers, i.c.config).where(i.c.id == image_id)
            ).first()
        if row is None or row.status != SUCCESS or not row.layers:
            raise LookupError(f"image {image_id} is not built; run the app again to build it")
        return json.loads(row.layers), ImageConfig.from_json(json.loads(row.config))


def _drop_sandbox_mount_points(upper: Path, volume_paths: list[str]) -> None:
    """What the container runtime bound in (control socket, arguments, /pkg, volumes) must
    not end up in a layer: remove those mount points, if empty."""
    shutil.rmtree(upper / CONTROL_DIR.lstrip("/"), ignore_errors=True)
    for path in ["/pkg", *volume_paths]:
        point = upper / path.lstrip("/")
        if point.is_dir() and not point.is_symlink() and not any(point.iterdir()):
            point.rmdir()


class BuildLog:
    """Build output on its way to the database: buffered (builds write in small pieces,
    also from threads) and flushed every LOG_FLUSH_S, waking whoever streams it."""

    def __init__(self, engine: sa.Engine, notifier, image_id: str) -> None:  # type: ignore[no-untyped-def]
        self.engine = engine
        self.notifier = notifier
        self.image_id = image_id
        self.pending: list[str] = []
        self.seq = 0
        self.lock = threading.Lock()  # bases are built in a thread and log from there

    def write(self, text: str) -> None:
        if text:
            with self.lock:
                self.pending.append(text)

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(LOG_FLUSH_S)
            await self.flush()

    async def flush(self) -> None:
        with self.lock:
            chunks, self.pending = self.pending, []
        if not chunks:
            return
        self.seq += 1
        seq = self.seq  # taken now: another flush may run while this one waits for the database
        with self.engine.begin() as connection:
            connection.execute(
                schema.image_build_logs.insert().values(image_id=self.image_id, seq=seq, data="".join(chunks))
            )
        self.notifier.notify(f"image:{self.image_id}")


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _copy_file(source: Path, path: Path) -> None:
    shutil.copyfile(source, path)
