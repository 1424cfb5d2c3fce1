"""What a sandbox's definition asks for, read and checked before anything is recorded:
bad input is refused here with the client's error types and a message naming the fix."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from modal_proto import api_pb2

from homeport.agent.order import ReadinessProbe
from homeport.server import errors
from homeport.server.services.functions import gpu_request


def readiness_probe(definition: api_pb2.Sandbox) -> ReadinessProbe | None:
    if not definition.HasField("readiness_probe"):
        return None
    probe = definition.readiness_probe
    interval_ms = probe.interval_ms or 100
    if probe.HasField("tcp_port"):
        _check_port(probe.tcp_port, "the readiness probe's port")
        return ReadinessProbe(tcp_port=probe.tcp_port, interval_ms=interval_ms)
    if probe.HasField("exec_command") and probe.exec_command.argv:
        return ReadinessProbe(exec_argv=tuple(probe.exec_command.argv), interval_ms=interval_ms)
    raise errors.invalid_argument(
        "the readiness probe names neither a TCP port nor a command: use modal.Probe.with_tcp(port) "
        "or modal.Probe.with_exec(...)"
    )


def refuse_unsupported(definition: api_pb2.Sandbox, v1: bool) -> None:
    """What this server cannot give a sandbox yet: refused, never silently left out."""
    missing = []
    if not v1 and gpu_request(definition.resources):  # client 1.6.4 makes these through the V1 RPCs
        missing.append("gpu=")
    if definition.cloud_bucket_mounts or definition.s3_mounts:
        missing.append("CloudBucketMount volumes")
    if definition.nfs_mounts:
        missing.append("network file systems")
    if any(mount.sub_path for mount in definition.volume_mounts):
        missing.append("Volume mounts with a sub_path (mount the whole volume)")
    if missing:
        raise errors.invalid_argument(
            f"sandboxes with {', '.join(missing)} are not supported by this server yet: create the sandbox without them"
        )
    blocked = definition.network_access.network_access_type == api_pb2.NetworkAccess.BLOCKED
    if blocked and (definition.open_ports.ports or definition.inbound_cidr_allowlist):
        raise errors.invalid_argument(
            "a sandbox with block_network=True has no network to open ports on: leave out encrypted_ports, "
            "unencrypted_ports and inbound_cidr_allowlist, or the block_network"
        )
    for spec in definition.open_ports.ports:
        _check_port(spec.port, "a tunnel's port")
    if definition.pty_info.winsz_rows > 65535 or definition.pty_info.winsz_cols > 65535:
        raise errors.invalid_argument("the terminal's size must be at most 65535 rows and columns")


def _check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise errors.invalid_argument(f"{what} must be between 1 and 65535, not {port}")


def egress_cidrs(access: api_pb2.NetworkAccess) -> tuple[str, ...] | None:
    """outbound_cidr_allowlist=: the IPv4 ranges the sandbox may send to (None: anywhere)."""
    if access.network_access_type != api_pb2.NetworkAccess.ALLOWLIST:
        return None
    if access.allowed_domains:
        raise errors.invalid_argument(
            "outbound_domain_allowlist is not supported by this server yet: use outbound_cidr_allowlist="
        )
    # A sandbox has no IPv6 address: IPv6 ranges reach nothing.
    return tuple(cidr for cidr in cidrs(access.allowed_cidrs, "outbound_cidr_allowlist") if ":" not in cidr)


def cidrs(entries: Iterable[str], option: str) -> tuple[str, ...]:
    cidrs = []
    for cidr in entries:
        try:
            cidrs.append(str(ipaddress.ip_network(cidr, strict=False)))
        except ValueError:
            raise errors.invalid_argument(
                f"{option} entry {cidr!r} is not a CIDR range; write it like '10.0.0.0/8' or '1.2.3.4/32'"
            ) from None
    return tuple(cidrs)
