"""Copying a running container's writable layer (for memory snapshots and
Sandbox.snapshot_filesystem) without ever following a symbolic link.

The container can change its layer while the node copies it. A copy that walks by path
(`cp -a`) can be raced: a directory swapped for a link to a host directory between two
steps would copy the host's files into the result, which other containers then see. Here
every level is opened relative to its parent's descriptor with O_NOFOLLOW, so a changing
tree can only ever yield its own files.

Kept: directories, regular files, symbolic links (as links), FIFOs, overlayfs whiteouts
(character devices 0/0); modes, owners, times and extended attributes (overlayfs's
opaque-directory marks among them). Other device nodes and sockets are left out (a
container cannot make real devices; its sockets mean nothing in a copy).
"""

from __future__ import annotations

import os
import stat

DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def copy_tree(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
    """Copy the contents of `source` into the existing directory `destination`."""
    source_fd = os.open(source, DIRECTORY)
    try:
        destination_fd = os.open(destination, DIRECTORY)
        try:
            _copy_directory(source_fd, destination_fd)
            _copy_metadata(source_fd, destination_fd, os.fstat(source_fd))
        finally:
            os.close(destination_fd)
    finally:
        os.close(source_fd)


def _copy_directory(source_fd: int, destination_fd: int) -> None:
    for name in os.listdir(source_fd):
        try:
            info = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
        except FileNotFoundError:  # removed meanwhile
            continue
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            _copy_subdirectory(name, source_fd, destination_fd)
        elif stat.S_ISREG(mode):
            _copy_file(name, source_fd, destination_fd)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=source_fd), name, dir_fd=destination_fd)
            os.chown(name, info.st_uid, info.st_gid, dir_fd=destination_fd, follow_symlinks=False)
            os.utime(
                name, ns=(info.st_atime_ns, info.st_mtime_ns), dir_fd=destination_fd, follow_symlinks=False
            )
        elif stat.S_ISFIFO(mode) or (stat.S_ISCHR(mode) and info.st_rdev == 0):
            os.mknod(name, mode, info.st_rdev, dir_fd=destination_fd)
            os.chown(name, info.st_uid, info.st_gid, dir_fd=destination_fd, follow_symlinks=False)
            os.utime(
                name, ns=(info.st_atime_ns, info.st_mtime_ns), dir_fd=destination_fd, follow_symlinks=False
            )


def _copy_subdirectory(name: str, source_fd: int, destination_fd: int) -> None:
    try:
        child = os.open(name, DIRECTORY, dir_fd=source_fd)
    except (FileNotFoundError, NotADirectoryError, OSError):
        return  # swapped for something else, or gone: nothing of it is copied
    try:
        os.mkdir(name, 0o700, dir_fd=destination_fd)
        copy = os.open(name, DIRECTORY, dir_fd=destination_fd)
        try:
            _copy_directory(child, copy)
            _copy_metadata(child, copy, os.fstat(child))
        finally:
            os.close(copy)
    finally:
        os.close(child)


def _copy_file(name: str, source_fd: int, destination_fd: int) -> None:
    try:
        # O_NONBLOCK: should it have become a FIFO meanwhile, opening it does not wait.
        original = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=source_fd)
    except OSError:
        return
    try:
        info = os.fstat(original)
        if not stat.S_ISREG(info.st_mode):
            return
        copy = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=destination_fd,
        )
        try:
            offset = 0
            while True:
                sent = os.sendfile(copy, original, offset, 1 << 24)
                if sent == 0:
                    break
                offset += sent
            _copy_metadata(original, copy, info)
        finally:
            os.close(copy)
    finally:
        os.close(original)


def _copy_metadata(source: int, destination: int, info: os.stat_result) -> None:
    for attribute in os.listxattr(source):
        try:
            os.setxattr(destination, attribute, os.getxattr(source, attribute))
        except OSError:
            pass  # an attribute this file system does not take
    os.fchown(destination, info.st_uid, info.st_gid)
    os.fchmod(destination, stat.S_IMODE(info.st_mode))
    os.utime(destination, ns=(info.st_atime_ns, info.st_mtime_ns))
