"""Who a container is: its hostname, task id, cgroups, memory limit and address."""

import os
import platform
import socket

import modal

app = modal.App("identity")


def _address() -> str:
    """The container's own address: the source of its default route."""
    for line in open("/proc/net/route").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            gateway = socket.inet_ntoa(int(fields[2], 16).to_bytes(4, "little"))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((gateway, 9))  # a UDP connect sends nothing
                return probe.getsockname()[0]
    return ""


@app.function(scaledown_window=2, memory=300)
def identity() -> dict:
    return {
        "host": socket.gethostname(),
        "node": platform.node(),  # cached by Python once read: the client read it before "go"
        "cwd": os.getcwd(),
        "task": os.environ["MODAL_TASK_ID"],
        "cgroups": open("/proc/self/cgroup").read(),
        "memory_limit": int(open("/sys/fs/cgroup/memory/memory.limit_in_bytes").read()),
        "address": _address(),
    }
