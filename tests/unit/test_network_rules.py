"""The host ports containers may reach (agent/network.py): one ACCEPT rule per port, named
for the process that opened it, removed by the next setup once that process is gone."""

from __future__ import annotations

import os
import subprocess

from homeport.agent import network
from homeport.agent.network import PORT_OWNER, BridgeNetwork


def _rules() -> list[str]:
    listing = subprocess.run(
        ["iptables", "-w", "-S", "HOMEPORT-INPUT"], capture_output=True, text=True, check=True
    ).stdout
    return listing.splitlines()


def _gone_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_port_rule_outlives_its_process_only_until_the_next_setup() -> None:
    # A bridge and subnet of its own (no server of the tests uses 10.97.0.0/24), on the
    # chain every server and node on this host shares.
    bridge = BridgeNetwork("hptestrules", "10.97.0.0/24")
    assert network.available() is None, network.available()
    bridge.setup([41001])
    gone = _gone_pid()
    orphan = ["-d", bridge.gateway, "-p", "tcp", "--dport", "41002", "-m", "comment",
              "--comment", f"{PORT_OWNER}{gone}", "-j", "ACCEPT"]  # fmt: skip
    unnamed = ["-d", bridge.gateway, "-p", "tcp", "--dport", "41003", "-j", "ACCEPT"]  # an older server's
    for rule in (orphan, unnamed):
        subprocess.run(["iptables", "-w", "-I", "HOMEPORT-INPUT", "1", *rule], check=True)
    try:
        bridge.setup([41001])
        ports = [line for line in _rules() if bridge.gateway in line]
        assert len(ports) == 1 and "--dport 41001" in ports[0], ports
        assert f"{PORT_OWNER}{os.getpid()}" in ports[0]
        assert _rules()[-1] == "-A HOMEPORT-INPUT -j DROP"  # the catch-all stays last
        bridge.forget_ports()
        assert not [line for line in _rules() if bridge.gateway in line]
    finally:
        for rule in (orphan, unnamed):
            subprocess.run(["iptables", "-w", "-D", "HOMEPORT-INPUT", *rule], capture_output=True)
        bridge.forget_ports()
        subprocess.run(["ip", "link", "del", "hptestrules"], capture_output=True)
        subprocess.run(
            ["iptables", "-w", "-D", "INPUT", "-i", "hptestrules", "-j", "HOMEPORT-INPUT"],
            capture_output=True,
        )
        subprocess.run(
            ["iptables", "-w", "-t", "nat", "-D", "POSTROUTING", "-s", "10.97.0.0/24", "!", "-o", "hptestrules", "-j", "MASQUERADE"],
            capture_output=True,
        )  # fmt: skip
