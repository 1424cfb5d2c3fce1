"""`sb.filesystem.*` inside a sandbox: client 1.6.4 runs
`/__modal/.bin/modal-sandbox-fs-tools '<json>'` for each operation, and the supervisor runs
this script with the node's interpreter in its place (standard library only).

The request is one JSON object naming the operation ({"ReadFile": {"path": ...}}). On
success the exit code is 0 and stdout is the answer (file bytes, or JSON); on failure the
exit code is 1 and stderr is one JSON object {"error_kind", "message"}, with the kinds the
client maps to its exceptions (modal/_utils/sandbox_fs_utils.py).
"""

from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import shutil
import stat
import sys

if __package__:
    from homeport.agent.in_sandbox.fs_watch import watch
else:  # run as a script inside the sandbox (isolated: -I), no homeport package: the file beside this one
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fs_watch import watch  # type: ignore[import-not-found,no-redef]

CHUNK = 1024 * 1024


class Failure(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _failure(error: OSError, path: str) -> Failure:
    kinds = {
        "ENOENT": "NotFound",
        "EISDIR": "IsDirectory",
        "ENOTDIR": "NotDirectory",
        "EACCES": "PermissionDenied",
        "EPERM": "PermissionDenied",
        "EEXIST": "PathAlreadyExists",
        "ENOTEMPTY": "DirectoryNotEmpty",
    }
    kind = kinds.get(errno.errorcode.get(error.errno or 0, ""), "Unknown")
    # Client 1.6.4 adds the path it asked about to the messages of the kinds it knows.
    failing = str(error.filename or path)
    message = error.strerror or str(error)
    if kind == "Unknown" or failing != path:
        message += f": {failing}"
    return Failure(kind, message)


def _name(lookup, number: int) -> str:  # type: ignore[no-untyped-def]
    try:
        return str(lookup(number)[0])
    except KeyError:
        return str(number)


def file_info(path: str) -> dict[str, object]:
    info = os.lstat(path)
    kind = "symlink" if stat.S_ISLNK(info.st_mode) else "directory" if stat.S_ISDIR(info.st_mode) else "file"
    return {
        "name": os.path.basename(path.rstrip("/")) or "/",
        "path": path,
        "type": kind,
        "size": info.st_size,
        "mode": info.st_mode,
        "permissions": stat.filemode(info.st_mode)[1:],
        "owner": _name(pwd.getpwuid, info.st_uid),
        "group": _name(grp.getgrgid, info.st_gid),
        "modified_time": info.st_mtime,
        "symlink_target": os.readlink(path) if kind == "symlink" else None,
    }


def read_file(path: str) -> None:
    if os.path.isdir(path):
        raise Failure("IsDirectory", f"is a directory: {path}")
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            sys.stdout.buffer.write(chunk)


def write_file(path: str) -> None:
    if os.path.isdir(path):
        raise Failure("IsDirectory", f"is a directory: {path}")
    parent = os.path.dirname(path)
    if parent and os.path.exists(parent) and not os.path.isdir(parent):
        raise Failure("NotDirectory", f"not a directory: {parent}")
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as target:
        while chunk := sys.stdin.buffer.read(CHUNK):
            target.write(chunk)


def list_files(path: str) -> None:
    if not os.path.exists(path):
        raise Failure("NotFound", f"no such directory: {path}")
    if not os.path.isdir(path):
        raise Failure("NotDirectory", f"not a directory: {path}")
    entries = [file_info(os.path.join(path, name)) for name in sorted(os.listdir(path))]
    sys.stdout.write(json.dumps(entries))


def make_directory(path: str, parents: bool) -> None:
    if parents:
        if os.path.exists(path) and not os.path.isdir(path):
            raise Failure("PathAlreadyExists", f"exists and is not a directory: {path}")
        os.makedirs(path, exist_ok=True)
    else:
        os.mkdir(path)


def remove(path: str, recursive: bool) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        if recursive:
            shutil.rmtree(path)
        else:
            os.rmdir(path)
    else:
        os.remove(path)


def run(request: dict) -> None:  # type: ignore[type-arg]
    ((operation, arguments),) = request.items()
    path = arguments.get("path", "")
    try:
        if operation == "ReadFile":
            read_file(path)
        elif operation == "WriteFile":
            write_file(path)
        elif operation == "ListFiles":
            list_files(path)
        elif operation == "Stat":
            sys.stdout.write(json.dumps(file_info(path)))
        elif operation == "MakeDirectory":
            make_directory(path, bool(arguments.get("parents")))
        elif operation == "Remove":
            remove(path, bool(arguments.get("recursive")))
        elif operation == "Watch":
            timeout = arguments.get("timeout_secs")
            watch(
                path,
                bool(arguments.get("recursive")),
                arguments.get("filter"),
                float(timeout) if timeout else None,
            )
        else:
            raise Failure("NotSupported", f"{operation} is not supported by this server yet")
    except OSError as error:
        raise _failure(error, path) from None


def main() -> None:
    try:
        run(json.loads(sys.argv[1]))
    except Failure as failure:
        sys.stderr.write(json.dumps({"error_kind": failure.kind, "message": str(failure)}))
        sys.exit(1)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
