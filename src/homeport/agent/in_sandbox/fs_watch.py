"""`sb.filesystem.watch(path, recursive=, filter=, timeout=)` inside a sandbox, with inotify
(through ctypes: the node's Python, standard library only).

Client 1.6.4 reads one JSON object per stdout line, `{"event_type", "paths"}`, with the
event kinds of the Rust `notify` crate its own tool uses: Create, Modify, Remove, Access (a
file closed after writing), and Rename/RenameFrom/RenameTo (which it shows as Modify). It
stops the watch by closing our stdin; `timeout_secs` ends it too. A recursive watch follows
directories created while it runs.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import struct
import sys
import time

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_ISDIR = 0x400, 0x40000000
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
)
KINDS = (
    (IN_CREATE, "Create"),
    (IN_MOVED_TO, "RenameTo"),
    (IN_MOVED_FROM, "RenameFrom"),
    (IN_DELETE | IN_DELETE_SELF, "Remove"),
    (IN_MODIFY | IN_ATTRIB, "Modify"),
    (IN_CLOSE_WRITE, "Access"),
)
HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class Watcher:
    def __init__(self, recursive: bool) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            self._raise("inotify")
        self.recursive = recursive
        self.paths: dict[int, str] = {}

    def _raise(self, path: str) -> None:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), path)

    def add(self, path: str) -> None:
        descriptor = self._libc.inotify_add_watch(self.fd, os.fsencode(path), MASK)
        if descriptor < 0:
            self._raise(path)
        self.paths[descriptor] = path

    def add_tree(self, root: str) -> None:
        self.add(root)
        if self.recursive and os.path.isdir(root):
            for directory, subdirectories, _ in os.walk(root):
                for name in subdirectories:
                    try:
                        self.add(os.path.join(directory, name))
                    except OSError:
                        pass  # gone meanwhile, or unreadable: nothing to watch there

    def events(self) -> list[tuple[str, str]]:
        """(kind, path) of what happened since the last call."""
        found = []
        data = os.read(self.fd, 256 * 1024)
        offset = 0
        while offset < len(data):
            descriptor, mask, _, length = HEADER.unpack_from(data, offset)
            name = data[offset + HEADER.size : offset + HEADER.size + length].rstrip(b"\0")
            offset += HEADER.size + length
            base = self.paths.get(descriptor)
            if base is None:
                continue
            path = os.path.join(base, os.fsdecode(name)) if name else base
            if self.recursive and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                try:
                    self.add_tree(path)
                except OSError:
                    pass
            kind = next((kind for bits, kind in KINDS if mask & bits), None)
            if kind is not None:
                found.append((kind, path))
        return found


def watch(path: str, recursive: bool, wanted: list[str] | None, timeout_s: float | None) -> None:
    os.stat(path)  # a missing path fails as NotFound before anything is watched
    watcher = Watcher(recursive)
    watcher.add_tree(path)
    deadline = time.monotonic() + timeout_s if timeout_s else None
    poller = select.poll()
    poller.register(watcher.fd, select.POLLIN)
    poller.register(sys.stdin.fileno(), select.POLLIN | select.POLLHUP)
    while True:
        wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
        ready = poller.poll(wait_ms)
        if not ready and deadline is not None and time.monotonic() >= deadline:
            return
        for descriptor, _ in ready:
            if descriptor == watcher.fd:
                for kind, changed in watcher.events():
                    if wanted is None or kind in wanted:
                        sys.stdout.write(json.dumps({"event_type": kind, "paths": [changed]}) + "\n")
                sys.stdout.flush()
            elif not os.read(descriptor, 4096):  # the client closed our stdin: the watch is over
                return
