"""Builds an image's steps into layers, one layer per step, each keyed by a hash of
(parent key, step, the content it copies, build args, the identity of the secrets it
sees), so an unchanged step is never run twice and a changed step rebuilds from there.

Steps run as root in a sandbox: the image's root filesystem (layers read-only, the new
layer as the writable top), own PID/IPC/UTS namespaces, Docker's default capability
set, the host's network (apt and pip reach their mirrors) and never the host's files.
"""

from __future__ import annotations

import asyncio
import dataclasses
import glob
import hashlib
import json
import os
import posixpath
import secrets as token_source
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from homeport.agent import rootfs
from homeport.agent.network import BridgeNetwork
from homeport.agent.sandbox import proc_arguments, spawn_bwrap
from homeport.images import dockerfile
from homeport.images.bases import BaseCache
from homeport.images.config import ImageConfig
from homeport.images.dockerfile import DockerfileError, Instruction
from homeport.images.layers import BASE_PREFIX, Layer, LayerStore

Log = Callable[[str], None]

CONTEXT_MOUNT = "/.homeport-context"
OUTPUT_TAIL_LINES = 20
# Docker's default capabilities minus CAP_NET_RAW (build steps share the host's network
# namespace: raw sockets there could sniff it): enough for apt (which drops to _apt) and pip.
BUILD_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip
# Build steps trust what the host trusts and use its proxy: on networks that intercept
# TLS (corporate proxies, this CI) pip and uv fail otherwise. The bundle is bound inside
# /dev (a tmpfs of the sandbox), so nothing of it lands in a layer or in the image.
HOST_CA_BUNDLE = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
SANDBOX_CA_BUNDLE = "/dev/.homeport-ca-certificates.crt"
CA_ENVIRONMENT = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
PROXY_ENVIRONMENT = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
METADATA_STEPS = {"ENV", "ARG", "LABEL", "EXPOSE", "USER", "ENTRYPOINT", "CMD", "SHELL"}

# COPY/ADD inside the sandbox, so paths resolve inside the image (its symlinks included)
# and never on the host. Docker's rules: a directory's contents are copied; a file goes
# into DEST when DEST ends in "/", is an existing directory, or there are several sources.
COPY_SCRIPT = r"""
set -e
dest="$1"; shift
into=0
case "$dest" in */) into=1 ;; esac
[ $# -gt 1 ] && into=1
[ -d "$dest" ] && into=1
for src in "$@"; do
  path="/.homeport-context/$src"
  if [ -d "$path" ]; then
    mkdir -p "$dest"; cp -a "$path/." "$dest/"; target="$dest"
  elif [ "$into" = 1 ]; then
    mkdir -p "$dest"; cp -a "$path" "$dest/"; target="$dest/$(basename "$src")"
  else
    mkdir -p "$(dirname "$dest")"; cp -a "$path" "$dest"; target="$dest"
  fi
  if [ -n "$HOMEPORT_CHOWN" ]; then chown -R "$HOMEPORT_CHOWN" "$target"; fi
  if [ -n "$HOMEPORT_CHMOD" ]; then chmod -R "$HOMEPORT_CHMOD" "$target"; fi
done
"""


class BuildFailed(Exception):
    """A step failed; the message names the step, its exit status and its output's tail."""


@dataclasses.dataclass(frozen=True)
class ParentImage:
    image_id: str
    chain: list[str]
    config: ImageConfig
    top_key: str


@dataclasses.dataclass
class BuildPlan:
    commands: list[str]
    parents: dict[str, ParentImage]  # docker tag ("base") -> a built image
    context_dir: Path | None  # files COPY reads (context files and the context mount)
    context_hash: str
    build_args: dict[str, str]
    secret_env: dict[str, str]
    secret_identity: str
    force: bool


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    chain: list[str]  # layer refs, bottom first
    config: ImageConfig
    top_key: str
    steps_run: int  # 0: everything came from the cache


class ImageBuilder:
    def __init__(self, layers: LayerStore, bases: BaseCache, network: BridgeNetwork | None = None) -> None:
        self.layers = layers
        self.bases = bases
        self.network = network

    async def build(
        self, plan: BuildPlan, log: Log, on_layer: Callable[[list[str]], None] = lambda chain: None
    ) -> BuiltImage:
        """Build the plan's steps; `on_layer` hears the chain after each step (so the layers
        of a build in progress are known to be in use)."""
        try:
            instructions = dockerfile.parse(plan.commands)
        except DockerfileError as error:
            raise BuildFailed(str(error)) from None
        if not instructions or instructions[0].keyword != "FROM":
            raise BuildFailed(
                "an image definition must start with FROM; build on modal.Image.debian_slim() or Image.from_registry(...)"
            )
        froms = [i for i in instructions if i.keyword == "FROM"]
        if len(froms) > 1:
            raise BuildFailed(
                f"multi-stage Dockerfiles are not supported by Homeport (second stage: `{froms[1].source}`)"
            )
        salt = token_source.token_hex(8) if plan.force else ""
        chain, config, key = await self._from(instructions[0], plan, log)
        arguments: dict[str, str] = {}
        steps_run = 0
        total = len(instructions)
        log(f"=> Step 1/{total}: {instructions[0].source}\n")
        for number, instruction in enumerate(instructions[1:], start=2):
            key = _step_key(key, instruction, plan, arguments, salt)
            prefix = f"=> Step {number}/{total}: {instruction.source}"
            cached = self.layers.get(key)
            if cached is not None:
                log(f"{prefix} (cached)\n")
                chain, config = [*chain, cached.ref], cached.config
                on_layer(chain)
                if instruction.keyword == "ARG":
                    arguments.update(_arg_values(instruction, plan, config, arguments))
                continue
            log(f"{prefix}\n")
            steps_run += 1
            layer = await self._run_step(number, instruction, chain, config, key, plan, arguments, log)
            chain, config = [*chain, layer.ref], layer.config
            on_layer(chain)
        if steps_run or not config.python_version:
            config = config.copy()
            config.python_version = await self._probe_python(chain, config)
        return BuiltImage(chain=chain, config=config, top_key=key, steps_run=steps_run)

    async def _from(
        self, instruction: Instruction, plan: BuildPlan, log: Log
    ) -> tuple[list[str], ImageConfig, str]:
        words = dockerfile.words(instruction, plan.build_args)
        if not words:
            raise BuildFailed(f"`{instruction.source}` names no image")
        tag = words[0]
        if instruction.flags.get("platform") not in (None, "", "linux/amd64"):
            raise BuildFailed(f"`{instruction.source}`: Homeport builds linux/amd64 images only")
        parent = plan.parents.get(tag)
        if parent is not None:
            return list(parent.chain), parent.config.copy(), parent.top_key
        if tag == "scratch":
            raise BuildFailed(
                "FROM scratch is not supported by Homeport; start from debian_slim() or a registry image"
            )
        try:
            base = await asyncio.to_thread(self.bases.ensure, tag, log)
        except Exception as error:
            raise BuildFailed(str(error)) from None
        key = hashlib.sha256(f"from\0{tag}\0{base.source}".encode()).hexdigest()
        return [BASE_PREFIX + base.rootfs.parent.name], base.config.copy(), key

    async def _run_step(
        self,
        number: int,
        instruction: Instruction,
        chain: list[str],
        config: ImageConfig,
        key: str,
        plan: BuildPlan,
        arguments: dict[str, str],
        log: Log,
    ) -> Layer:
        config = config.copy()
        variables = {**config.env, **arguments}
        keyword = instruction.keyword
        staging = self.layers.staging(key)
        try:
            if keyword in METADATA_STEPS:
                _apply_metadata(instruction, config, variables, plan, arguments)
            elif keyword == "WORKDIR":
                words = dockerfile.words(instruction, variables)
                if len(words) != 1:
                    raise BuildFailed(f"step {number} `{instruction.source}`: WORKDIR takes one path")
                workdir = posixpath.normpath(posixpath.join(config.workdir or "/", words[0]))
                await self._sandboxed(
                    number, instruction, chain, staging, config, ["mkdir", "-p", workdir], {}, None, log
                )
                config.workdir = workdir
            elif keyword == "RUN":
                command = instruction.exec_form()
                if command is None:
                    command = [*config.shell, instruction.arguments]
                if config.user not in ("", "root", "0", "0:0"):
                    user = config.user.split(":")[0]
                    command = [
                        "/bin/sh", "-c", 'exec setpriv --reuid="$(id -u "$0")" --regid="$(id -g "$0")" --init-groups "$@"', user, *command,
                    ]  # fmt: skip
                env = {**arguments, **plan.secret_env}
                await self._sandboxed(number, instruction, chain, staging, config, command, env, None, log)
            elif keyword in ("COPY", "ADD"):
                await self._copy(number, instruction, chain, staging, config, variables, plan, log)
            else:
                raise BuildFailed(
                    f"step {number} `{instruction.source}`: Homeport does not support {keyword}"
                )
            return self.layers.commit(key, staging, instruction.source, config, replace=plan.force)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    async def _copy(
        self,
        number: int,
        instruction: Instruction,
        chain: list[str],
        staging: Path,
        config: ImageConfig,
        variables: dict[str, str],
        plan: BuildPlan,
        log: Log,
    ) -> None:
        words = dockerfile.words(instruction, variables)
        if len(words) < 2:
            raise BuildFailed(
                f"step {number} `{instruction.source}`: {instruction.keyword} needs a source and a destination"
            )
        *sources, destination = words
        context = plan.context_dir
        source_image = instruction.flags.get("from")
        if source_image:
            # COPY --from=<image>: files out of another image (uv_pip_install copies uv this way).
            if source_image in plan.parents or instruction.keyword != "COPY":
                raise BuildFailed(
                    f"step {number} `{instruction.source}`: multi-stage builds are not supported by Homeport"
                )
            try:
                base = await asyncio.to_thread(self.bases.ensure, source_image, log)
            except Exception as error:
                raise BuildFailed(f"step {number} `{instruction.source}`: {error}") from None
            context = base.rootfs
        resolved: list[str] = []
        for source in sources:
            if instruction.keyword == "ADD" and "://" in source:
                raise BuildFailed(
                    f"step {number} `{instruction.source}`: ADD from a URL is not supported; use RUN with curl or wget"
                )
            relative = posixpath.normpath(source.lstrip("/")) if source.strip("/") else "."
            if relative.startswith(".."):
                raise BuildFailed(
                    f"step {number} `{instruction.source}`: {source} is outside the build context"
                )
            matches = sorted(glob.glob(relative, root_dir=context)) if context is not None else []
            if not matches:
                where = (
                    f"the image {source_image}"
                    if source_image
                    else "the build context (the files add_local_* and context files sent)"
                )
                raise BuildFailed(f"step {number} `{instruction.source}`: {source} is not in {where}")
            if instruction.keyword == "ADD" and any(
                m.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")) for m in matches
            ):
                raise BuildFailed(
                    f"step {number} `{instruction.source}`: ADD of archives (auto-extract) is not supported; use COPY and RUN tar"
                )
            resolved.extend(matches)
        if not destination.startswith("/"):
            destination = posixpath.join(config.workdir or "/", destination) + (
                "/" if destination.endswith("/") else ""
            )
        env = {
            "HOMEPORT_CHOWN": instruction.flags.get("chown", ""),
            "HOMEPORT_CHMOD": instruction.flags.get("chmod", ""),
        }
        command = ["/bin/sh", "-c", COPY_SCRIPT, "copy", destination, *resolved]
        await self._sandboxed(number, instruction, chain, staging, config, command, env, context, log)

    async def _sandboxed(
        self,
        number: int,
        instruction: Instruction,
        chain: list[str],
        staging: Path,
        config: ImageConfig,
        command: list[str],
        extra_env: dict[str, str],
        context: Path | None,
        log: Log,
    ) -> None:
        tail: list[str] = []

        def collect(text: str) -> None:
            log(text)
            tail.extend(text.splitlines())
            del tail[:-OUTPUT_TAIL_LINES]

        code = await run_in_image(
            self.layers, chain, staging, config, command, extra_env, context, collect, self.network
        )
        if code != 0:
            output = "\n".join(tail) or "(no output)"
            raise BuildFailed(
                f"step {number} `{instruction.source}` failed with exit status {code}. Last lines of its output:\n{output}"
            )

    async def _probe_python(self, chain: list[str], config: ImageConfig) -> str:
        staging = self.layers.staging("probe-" + token_source.token_hex(8))
        output: list[str] = []
        try:
            code = await run_in_image(
                self.layers, chain, staging, config, ["python", "-c", "import platform; print(platform.python_version())"], {}, None,
                output.append, self.network,
            )  # fmt: skip
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        text = "".join(output).strip().splitlines()
        return text[-1] if code == 0 and text else ""


async def run_in_image(
    layers: LayerStore,
    chain: list[str],
    staging: Path,
    config: ImageConfig,
    command: list[str],
    extra_env: dict[str, str],
    context: Path | None,
    on_output: Log,
    network: BridgeNetwork | None = None,
) -> int:
    """Run one build command as root on the image's root filesystem; writes land in
    `staging/fs`. With a node network, the step gets a network namespace of its own on the
    bridge (NAT out to the package mirrors; the host's own services out of reach). Returns
    its exit status."""
    overlay = rootfs.Overlay(layers.lower_dirs(chain), staging / "fs", staging / "work", staging / "merged")
    overlay.prepare()
    arguments = [
        "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", "homeport-build",
        "--bind", str(overlay.merged), "/", "--dev", "/dev", *proc_arguments(), "--cap-drop", "ALL",
    ]  # fmt: skip
    for capability in BUILD_CAPABILITIES:
        arguments += ["--cap-add", capability]
    for name in ("resolv.conf", "hosts"):
        if Path("/etc", name).is_file():
            arguments += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    if context is not None:
        arguments += ["--ro-bind", str(context), CONTEXT_MOUNT]
    host_environment = {name: os.environ[name] for name in PROXY_ENVIRONMENT if name in os.environ}
    if HOST_CA_BUNDLE.is_file():
        arguments += ["--ro-bind", str(HOST_CA_BUNDLE), SANDBOX_CA_BUNDLE]
        host_environment.update({name: SANDBOX_CA_BUNDLE for name in CA_ENVIRONMENT})
    arguments += ["--chdir", config.workdir or "/"]
    environment = {"HOME": "/root", **host_environment, **config.env, **extra_env}
    environment.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    attachment = await network.attach_in_thread(f"ta-b{token_source.token_hex(5)}") if network else None
    try:
        process = await spawn_bwrap(
            arguments, environment, command, overlay.mount_in_child, attachment, merge_stderr=True
        )
        assert process.stdout is not None
        try:
            while chunk := await process.stdout.read(64 * 1024):
                on_output(chunk.decode(errors="replace"))
            code = await process.wait()
        except asyncio.CancelledError:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await process.wait()
            raise
    finally:
        if attachment is not None and network is not None:
            await asyncio.to_thread(network.detach, attachment)
    _drop_mount_points(staging / "fs", context is not None)
    return code


def _drop_mount_points(upper: Path, had_context: bool) -> None:
    """bwrap makes mount points for what it binds; those must not end up in the layer."""
    if had_context:
        point = upper / CONTEXT_MOUNT.lstrip("/")
        if point.is_dir() and not any(point.iterdir()):
            point.rmdir()


def _step_key(
    parent: str, instruction: Instruction, plan: BuildPlan, arguments: dict[str, str], salt: str
) -> str:
    digest = hashlib.sha256()
    digest.update(parent.encode() + b"\0" + instruction.source.encode() + b"\0" + salt.encode())
    if instruction.keyword in ("COPY", "ADD"):
        digest.update(b"\0context\0" + plan.context_hash.encode())
    if instruction.keyword in ("RUN", "ARG"):
        digest.update(b"\0args\0" + json.dumps(plan.build_args, sort_keys=True).encode())
        digest.update(b"\0secrets\0" + plan.secret_identity.encode())
    return digest.hexdigest()


def _arg_values(
    instruction: Instruction, plan: BuildPlan, config: ImageConfig, arguments: dict[str, str]
) -> dict[str, str]:
    values = {}
    for name, default in dockerfile.key_values(instruction, {**config.env, **arguments}):
        values[name] = plan.build_args.get(name, default)
    return values


def _apply_metadata(
    instruction: Instruction,
    config: ImageConfig,
    variables: dict[str, str],
    plan: BuildPlan,
    arguments: dict[str, str],
) -> None:
    keyword = instruction.keyword
    if keyword == "ENV":
        for name, value in dockerfile.key_values(instruction, variables):
            config.env[name] = value
            variables[name] = value
    elif keyword == "ARG":
        arguments.update(_arg_values(instruction, plan, config, arguments))
    elif keyword == "USER":
        words = dockerfile.words(instruction, variables)
        config.user = words[0] if words else ""
    elif keyword in ("ENTRYPOINT", "CMD", "SHELL"):
        exec_form = instruction.exec_form()
        if keyword == "SHELL" and exec_form is None:
            raise BuildFailed(
                f'`{instruction.source}`: SHELL takes the JSON form, e.g. SHELL ["/bin/bash", "-c"]'
            )
        command = exec_form if exec_form is not None else [*config.shell, instruction.arguments]
        if keyword == "ENTRYPOINT":
            config.entrypoint = command
        elif keyword == "CMD":
            config.cmd = command
        else:
            config.shell = command
    # LABEL and EXPOSE change nothing a Homeport container uses.
