"""Container networking: each container gets a network namespace of its own with an
`eth0` (one end of a veth pair; the other end on the node's bridge) and a default route
through the bridge, NAT'ed out to whatever the host reaches.

- Containers cannot talk to each other: their bridge ports are isolated.
- From a container the host answers only on the bridge address and only on the ports a
  Homeport server registered (its blob/volume HTTP listener): the control plane itself
  is a Unix socket, and other host services stay out of reach.
- `block_network=True` containers get a namespace with only `lo` (bubblewrap's
  --unshare-net; for a zygote's container, `bring_up_loopback`).

Everything is done with `ip -batch` (one process per container start) and iptables.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import ipaddress
import logging
import os
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path

from homeport.agent import rootfs

log = logging.getLogger("homeport.network")

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
CLAIMS_DIR = Path("/run/homeport/container-addresses")
NAMESPACE_PREFIX = "hp-"
ORPHAN_AGE_S = 60.0
# Each host port a server or node opens to its containers is one ACCEPT rule, named for the
# process that asked for it: a server killed (or an older one that never removed them)
# leaves them behind, and the next setup removes those whose process is gone. Left in
# place, they let containers reach whatever later listens on that port of the bridge.
PORT_OWNER = "homeport-pid-"
_libc = ctypes.CDLL(None, use_errno=True)


class NetworkError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Attachment:
    namespace: str
    address: str
    host_interface: str

    def enter_in_child(self, fd: int) -> None:
        """Between fork and exec: move into the container's network namespace."""
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {self.namespace}: {os.strerror(errno)}")


class BridgeNetwork:
    def __init__(self, bridge: str = "homeport0", subnet: str = "10.89.0.0/16") -> None:
        self.bridge = bridge
        self.network = ipaddress.ip_network(subnet)
        self.gateway = str(next(self.network.hosts()))
        self._lock = threading.Lock()
        self._opened: set[int] = set()  # the host ports setup() opened to containers

    # -- the node ------------------------------------------------------------------------

    def setup(self, allowed_ports: list[int]) -> None:
        """The bridge, forwarding and NAT (idempotent), and the host ports containers may reach."""
        prefix = self.network.prefixlen
        if not Path(f"/sys/class/net/{self.bridge}").exists():
            _ip_batch(
                [f"link add {self.bridge} type bridge", f"addr add {self.gateway}/{prefix} dev {self.bridge}"]
            )
        _ip_batch([f"link set {self.bridge} up"])
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        subnet = str(self.network)
        _ensure_rule("nat", "POSTROUTING", ["-s", subnet, "!", "-o", self.bridge, "-j", "MASQUERADE"])
        # The host from inside: only registered ports on the bridge address, and replies.
        _ensure_rule(
            "filter", "INPUT", ["-i", self.bridge, "-j", "HOMEPORT-INPUT"], chain_to_create="HOMEPORT-INPUT"
        )
        _ensure_rule(
            "filter",
            "HOMEPORT-INPUT",
            ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        )
        removed = _remove_orphaned_ports()
        if removed:
            log.info("removed %d port rule(s) left on %s by processes that are gone", removed, self.bridge)
        for port in allowed_ports:
            _ensure_rule("filter", "HOMEPORT-INPUT", self._port_rule(port))
            self._opened.add(port)
        _ensure_rule("filter", "HOMEPORT-INPUT", ["-j", "DROP"], append_last=True)
        swept = self.sweep()
        if swept:
            log.info(
                "removed %d container network namespace(s) left by a server that stopped uncleanly", swept
            )

    def sweep(self) -> int:
        """Delete container namespaces nobody is in any more (left by a server that was
        killed), and their address claims. Young ones are spared: a container may be
        between getting its namespace and entering it."""
        swept = 0
        now = time.time()
        for entry in NETNS_DIR.glob(f"{NAMESPACE_PREFIX}*") if NETNS_DIR.exists() else []:
            try:
                if now - entry.stat().st_mtime < ORPHAN_AGE_S:
                    continue
            except FileNotFoundError:
                continue
            pids = subprocess.run(
                ["ip", "netns", "pids", entry.name], capture_output=True, text=True, check=False
            )
            if pids.returncode == 0 and not pids.stdout.strip():
                subprocess.run(["ip", "netns", "del", entry.name], capture_output=True, check=False)
                swept += 1
        for claim in CLAIMS_DIR.glob("*") if CLAIMS_DIR.exists() else []:
            try:
                holder, owner = _read_claim(claim)
                age = now - claim.stat().st_mtime
            except FileNotFoundError:
                continue
            if owner is not None and not _alive(owner):
                # Its server is gone, and with it (its mount namespace) the namespace: only
                # the name's file is left on /run. A node agent without a mount namespace
                # of its own (a Ray worker) leaves the name mounted: that needs unmounting.
                try:
                    (NETNS_DIR / holder).unlink(missing_ok=True)
                except OSError:
                    subprocess.run(["ip", "netns", "del", holder], capture_output=True, check=False)
                    if (NETNS_DIR / holder).exists():
                        log.warning(
                            "cannot remove the network namespace %s left by process %d", holder, owner
                        )
                        continue
                claim.unlink(missing_ok=True)
            elif owner is None and not (NETNS_DIR / holder).exists() and age > ORPHAN_AGE_S:
                claim.unlink(missing_ok=True)
        return swept

    def forget_ports(self) -> None:
        """Close the ports setup() opened to containers again."""
        while self._opened:
            port = self._opened.pop()
            subprocess.run(
                ["iptables", "-w", "-t", "filter", "-D", "HOMEPORT-INPUT", *self._port_rule(port)],
                capture_output=True,
                check=False,
            )

    def _port_rule(self, port: int) -> list[str]:
        owner = f"{PORT_OWNER}{os.getpid()}"
        return ["-d", self.gateway, "-p", "tcp", "--dport", str(port), "-m", "comment", "--comment", owner, "-j", "ACCEPT"]  # fmt: skip

    # -- containers ----------------------------------------------------------------------

    def attach(self, task_id: str, namespace_fd: int | None = None) -> Attachment:
        """A namespace with eth0 on the bridge: a new one, or (namespace_fd) one a zygote's
        container made for itself (see agent/zygote.py), given by an open descriptor."""
        short = task_id.removeprefix("ta-")[:10].lower()
        namespace, host_interface = f"{NAMESPACE_PREFIX}{short}", f"hv{short}"
        address = self._allocate(namespace)
        prefix = self.network.prefixlen
        try:
            if namespace_fd is not None:
                _name_namespace(namespace_fd, namespace)
            _ip_batch(
                [
                    *([] if namespace_fd is not None else [f"netns add {namespace}"]),
                    f"link add {host_interface} type veth peer name eth0 netns {namespace}",
                    f"link set {host_interface} master {self.bridge}",
                    f"link set dev {host_interface} type bridge_slave isolated on",
                    f"link set {host_interface} up",
                ]
            )
            _ip_batch(
                [
                    f"addr add {address}/{prefix} dev eth0",
                    "link set lo up",
                    # No IPv6 address on eth0: the bridge's link-local address would otherwise
                    # reach every host service bound to [::], around the IPv4 rules.
                    "link set dev eth0 addrgenmode none",
                    "link set eth0 up",
                    f"route add default via {self.gateway}",
                ],
                namespace,
            )
        except NetworkError:
            self._cleanup(namespace, host_interface)
            self._release(address)
            raise
        return Attachment(namespace, address, host_interface)

    def restrict_egress(self, attachment: Attachment, cidrs: tuple[str, ...]) -> None:
        """Let the container send only to `cidrs` (IPv4; it has no IPv6 address) and answer
        connections made to it (its tunnels); anything else is refused at once, not left to
        time out. The rules live in its own namespace, which it cannot change: it has no
        capabilities there."""
        rules = [
            "*filter",
            ":INPUT ACCEPT [0:0]",
            ":FORWARD ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            "-A OUTPUT -o lo -j ACCEPT",
            "-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            *(f"-A OUTPUT -d {cidr} -j ACCEPT" for cidr in cidrs),
            "-A OUTPUT -j REJECT",
            "COMMIT",
        ]
        _feed(
            ["nsenter", f"--net={NETNS_DIR / attachment.namespace}", "iptables-restore"],
            rules,
            "restricting the container's network (iptables-restore, which scripts/install installs)",
        )

    async def attach_in_thread(self, task_id: str, namespace_fd: int | None = None) -> Attachment:
        """`attach` off the event loop. If the caller is cancelled meanwhile (a server
        shutting down), the namespace and address are released once made, not leaked."""
        job = asyncio.ensure_future(asyncio.to_thread(self.attach, task_id, namespace_fd))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(
                lambda done: (
                    None if done.cancelled() or done.exception() is not None else self.detach(done.result())
                )
            )
            raise

    def detach(self, attachment: Attachment) -> None:
        self._cleanup(attachment.namespace, attachment.host_interface)
        self._release(attachment.address)

    def _cleanup(self, namespace: str, host_interface: str) -> None:
        # Deleting the namespace destroys eth0 and with it the host end of the pair.
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", host_interface], capture_output=True, check=False)

    def _allocate(self, namespace: str) -> str:
        """An address no container on this node uses, whichever server started it: claimed by
        creating CLAIMS_DIR/<address> (exclusively); a claim whose namespace is gone is stale."""
        CLAIMS_DIR.mkdir(parents=True, exist_ok=True)
        with self._lock:
            for address in self.network.hosts():
                if str(address) == self.gateway:
                    continue
                claim = CLAIMS_DIR / str(address)
                try:
                    fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    try:
                        holder, owner = _read_claim(claim)
                        age = time.time() - claim.stat().st_mtime
                    except FileNotFoundError:
                        continue
                    # A claim is stale once its server is gone; an old-style one (no server
                    # pid) once its namespace is gone and it is old enough: a young one may
                    # belong to a server that has not made its namespace yet.
                    if owner is not None and _alive(owner):
                        continue
                    if owner is None and ((holder and (NETNS_DIR / holder).exists()) or age < ORPHAN_AGE_S):
                        continue
                    claim.write_text(f"{namespace} {os.getpid()}")  # left by a server that died: take it over
                    return str(address)
                with os.fdopen(fd, "w") as file:
                    # The namespace's name, and the server that holds it: servers keep their
                    # mounts (the names) in mount namespaces of their own, so another server
                    # tells a live claim from a dead one by the holder's process.
                    file.write(f"{namespace} {os.getpid()}")
                return str(address)
        raise NetworkError(f"the container subnet {self.network} is exhausted")

    def _release(self, address: str) -> None:
        (CLAIMS_DIR / address).unlink(missing_ok=True)


def _read_claim(claim: Path) -> tuple[str, int | None]:
    holder, _, owner = claim.read_text().strip().partition(" ")
    return holder, int(owner) if owner.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _name_namespace(fd: int, name: str) -> None:
    """Make a namespace held by `fd` reachable as `ip -n <name>` (what `ip netns attach`
    does for a pid, without trusting a pid)."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    path = NETNS_DIR / name
    path.touch()
    try:
        rootfs.bind(f"/proc/self/fd/{fd}", path)
    except OSError as error:
        path.unlink(missing_ok=True)
        raise NetworkError(f"naming network namespace {name}: {error.strerror}") from None


def bring_up_loopback(namespace_fd: int) -> None:
    """A namespace with only `lo`, up (block_network=True for a zygote's container)."""
    result = subprocess.run(
        ["nsenter", f"--net=/proc/self/fd/{namespace_fd}", "ip", "link", "set", "lo", "up"],
        capture_output=True, text=True, check=False, pass_fds=(namespace_fd,),
    )  # fmt: skip
    if result.returncode != 0:
        raise NetworkError(f"bringing up the container's loopback failed: {result.stderr.strip()[-300:]}")


def _ip_batch(commands: list[str], namespace: str | None = None) -> None:
    where = ["-n", namespace] if namespace else []
    _feed(["ip", *where, "-batch", "-"], commands, "configuring the container network")


def _feed(command: list[str], lines: list[str], what: str) -> None:
    """Run a tool that reads its whole work from stdin (one process for many changes)."""
    result = subprocess.run(
        command, input="\n".join(lines) + "\n", capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise NetworkError(f"{what} failed: {result.stderr.strip()[-500:]}")


def _ensure_rule(
    table: str, chain: str, rule: list[str], chain_to_create: str | None = None, append_last: bool = False
) -> None:
    if chain_to_create:
        subprocess.run(
            ["iptables", "-w", "-t", table, "-N", chain_to_create], capture_output=True, check=False
        )
    exists = (
        subprocess.run(
            ["iptables", "-w", "-t", table, "-C", chain, *rule], capture_output=True, check=False
        ).returncode
        == 0
    )
    if exists and not append_last:
        return
    position = ["-A", chain] if append_last or chain == "POSTROUTING" else ["-I", chain, "1"]
    result = subprocess.run(
        ["iptables", "-w", "-t", table, *position, *rule], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise NetworkError(f"iptables {' '.join(rule)}: {result.stderr.strip()}")
    if exists:
        # The catch-all kept last: the copy at the end is in place before the earlier one
        # goes (-D takes the first match). Taken out first, every server and node sharing
        # this bridge would accept what it drops until it was back.
        subprocess.run(["iptables", "-w", "-t", table, "-D", chain, *rule], capture_output=True, check=False)


def _remove_orphaned_ports() -> int:
    """Delete the port rules of HOMEPORT-INPUT whose process is gone (or that name none:
    left by servers from before rules were named), in one iptables-restore."""
    listing = subprocess.run(
        ["iptables", "-w", "-t", "filter", "-S", "HOMEPORT-INPUT"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    orphaned = []
    for line in listing.splitlines():
        if not line.startswith("-A HOMEPORT-INPUT ") or "--dport" not in line:
            continue
        owner = re.search(rf"--comment \"?{PORT_OWNER}(\d+)", line)
        if owner is None or not _alive(int(owner.group(1))):
            orphaned.append("-D" + line[2:])
    if orphaned:
        script = "*filter\n" + "\n".join(orphaned) + "\nCOMMIT\n"
        result = subprocess.run(
            ["iptables-restore", "-w", "--noflush"], input=script, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:  # another server removed some first: one at a time
            for rule in orphaned:
                subprocess.run(
                    ["iptables", "-w", "-t", "filter", *shlex.split(rule)], capture_output=True, check=False
                )
    return len(orphaned)


def available() -> str | None:
    """None when per-container networks can be made here; else why not."""
    if os.geteuid() != 0:
        return "per-container networks need root"
    for tool in ("ip", "iptables"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode != 0:
            return f"{tool} is not installed"
    return None
