"""Installed as a .pth hook by hostile_zygote_app.py: runs in every Python of that image at
start-up, and so inside its zygote, which holds capabilities in a user namespace of its own.
There it tries to reach the host through them and prints what happened."""

import ctypes
import errno
import os

MS_REMOUNT, MS_BIND = 32, 4096


def attempt(action):  # type: ignore[no-untyped-def]
    try:
        result = action()
    except OSError as error:
        return errno.errorcode.get(error.errno or 0, str(error.errno))
    if result in (0, None) or (isinstance(result, int) and result > 0):
        return "allowed"
    return errno.errorcode.get(ctypes.get_errno(), "failed")


def write_same(path):  # type: ignore[no-untyped-def]
    with open(path) as current:
        value = current.read()
    with open(path, "w") as setting:
        setting.write(value)


def network_admin():  # type: ignore[no-untyped-def]
    """Take the loopback interface down: needs CAP_NET_ADMIN over the network namespace."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        fcntl.ioctl(probe, 0x8914, struct.pack("16sH14x", b"lo", 0))  # SIOCSIFFLAGS


if "HOMEPORT_ZYGOTE_FD" in os.environ:  # only in the zygote
    libc = ctypes.CDLL(None, use_errno=True)
    os.makedirs("/tmp/probe-proc", exist_ok=True)
    results = {
        "host_sysctl": attempt(lambda: write_same("/proc/sys/vm/swappiness")),
        "fresh_writable_proc": attempt(lambda: libc.mount(b"proc", b"/tmp/probe-proc", b"proc", 0, None)),
        "client_package_writable": attempt(
            lambda: libc.mount(None, b"/pkg", None, MS_REMOUNT | MS_BIND, None)
        ),
        "image_writable": attempt(
            lambda: libc.mount(None, b"/.homeport/image", None, MS_REMOUNT | MS_BIND, None)
        ),
        "zygote_script": attempt(lambda: open("/.homeport/zygote.py", "a").close()),
        "stage": attempt(lambda: open("/.homeport/t/planted", "w").close()),
        "network_admin": attempt(network_admin),
    }
    print("ZYGOTE-PROBE", results, flush=True)
