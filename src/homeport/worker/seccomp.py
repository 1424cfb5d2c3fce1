"""A seccomp filter for containers: the system calls that could reach past the sandbox
fail with EPERM, whatever capabilities a process might gain. bubblewrap installs it
(`--seccomp FD`) right before it executes the container's entrypoint.

The filter is a classic BPF program built here (no libseccomp binding needed): anything
not x86-64 (32-bit and x32 entry points, a classic way around deny lists) is refused,
then each listed call is refused, everything else allowed. The list follows Docker's
default profile where it matters for escapes.
"""

from __future__ import annotations

import errno
import os
import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_RET_K = 0x06
BPF_JSET_K = 0x45
OFFSET_NR = 0  # struct seccomp_data: int nr; __u32 arch; ...
OFFSET_ARCH = 4
OFFSET_ARG0 = 16  # args[0], low 32 bits (little-endian)
CLONE = 56
CLONE3 = 435
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWTIME
NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080

# x86-64 system call numbers refused inside containers, by what they would allow.
BLOCKED_X86_64 = {
    # new mounts and namespaces (a way to regain privileges inside a user namespace)
    "mount": 165, "umount2": 166, "pivot_root": 155, "unshare": 272, "setns": 308,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442,
    # other processes' memory and state
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
    # the kernel itself
    "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320,
    "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163, "bpf": 321, "perf_event_open": 298,
    "iopl": 172, "ioperm": 173, "syslog": 103, "quotactl": 179, "lookup_dcookie": 212, "userfaultfd": 323,
    # io_uring: a large kernel surface, and its operations bypass this filter
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    # the host's identity and clock
    "sethostname": 170, "setdomainname": 171, "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305,
    "adjtimex": 159,
    # files by handle (bypasses the mount namespace) and the kernel keyring (shared, not namespaced)
    "open_by_handle_at": 304, "name_to_handle_at": 303, "keyctl": 250, "add_key": 248, "request_key": 249,
}  # fmt: skip


# A zygote (worker/zygote.py) makes each container's namespaces and mounts itself, inside
# its own user namespace: it may use these; every container it forks installs the full
# filter on top before any of its code runs.
ZYGOTE_ALLOWED = {"mount", "umount2", "pivot_root", "unshare", "setns", "sethostname"}
BLOCKED_IN_ZYGOTE = {name: number for name, number in BLOCKED_X86_64.items() if name not in ZYGOTE_ALLOWED}


def _instruction(code: int, jump_true: int, jump_false: int, value: int) -> bytes:
    return struct.pack("=HBBI", code, jump_true, jump_false, value)


def program(blocked: dict[str, int] | None = None) -> bytes:
    """The filter as the kernel wants it: an array of struct sock_filter.

    Layout: refuse other architectures and x32; `clone` only without namespace flags
    (a new user namespace would hand the caller every capability inside it); `clone3`
    answers ENOSYS, so libc falls back to `clone`, whose flags can be inspected; then the
    deny list; everything else allowed."""
    numbers = sorted(set((blocked or BLOCKED_X86_64).values()) - {CLONE, CLONE3})
    # (code, jump-true label, jump-false label, value); labels resolve to relative offsets.
    code: list[tuple[int, str | None, str | None, int]] = [
        (BPF_LD_W_ABS, None, None, OFFSET_ARCH),
        (BPF_JEQ_K, None, "deny", AUDIT_ARCH_X86_64),
        (BPF_LD_W_ABS, None, None, OFFSET_NR),
        (BPF_JGE_K, "deny", None, X32_SYSCALL_BIT),
        (BPF_JEQ_K, "clone", None, CLONE),
        (BPF_JEQ_K, "enosys", None, CLONE3),
        *((BPF_JEQ_K, "deny", None, number) for number in numbers),
        (BPF_RET_K, None, None, SECCOMP_RET_ALLOW),
    ]
    labels = {"clone": len(code)}
    code += [
        (BPF_LD_W_ABS, None, None, OFFSET_ARG0),
        (BPF_JSET_K, "deny", None, NAMESPACE_FLAGS),
        (BPF_RET_K, None, None, SECCOMP_RET_ALLOW),
    ]
    labels["enosys"] = len(code)
    code.append((BPF_RET_K, None, None, SECCOMP_RET_ERRNO | errno.ENOSYS))
    labels["deny"] = len(code)
    code.append((BPF_RET_K, None, None, SECCOMP_RET_ERRNO | errno.EPERM))

    def offset(index: int, label: str | None) -> int:
        return 0 if label is None else labels[label] - (index + 1)

    return b"".join(
        _instruction(op, offset(index, true), offset(index, false), value) for index, (op, true, false, value) in enumerate(code)
    )


def supported() -> bool:
    return platform.machine() == "x86_64"


def program_fd(code: bytes | None = None) -> int:
    """A file descriptor holding the program (the container filter unless given), positioned
    at its start, for `bwrap --seccomp`. bubblewrap reads it once; the caller closes it after
    starting the sandbox."""
    fd = os.memfd_create("homeport-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program() if code is None else code)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
