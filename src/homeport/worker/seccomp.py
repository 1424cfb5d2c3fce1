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
OFFSET_NR = 0  # struct seccomp_data: int nr; __u32 arch; ...
OFFSET_ARCH = 4

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
    # the host's identity and clock
    "sethostname": 170, "setdomainname": 171, "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305,
    "adjtimex": 159,
    # files by handle (bypasses the mount namespace) and the kernel keyring (shared, not namespaced)
    "open_by_handle_at": 304, "name_to_handle_at": 303, "keyctl": 250, "add_key": 248, "request_key": 249,
}  # fmt: skip


def _instruction(code: int, jump_true: int, jump_false: int, value: int) -> bytes:
    return struct.pack("=HBBI", code, jump_true, jump_false, value)


def program(blocked: dict[str, int] | None = None) -> bytes:
    """The filter as the kernel wants it: an array of struct sock_filter."""
    numbers = sorted(set((blocked or BLOCKED_X86_64).values()))
    deny = 5 + len(numbers) + 1  # index of the final "refuse" instruction
    code = [
        _instruction(BPF_LD_W_ABS, 0, 0, OFFSET_ARCH),
        _instruction(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        _instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM),
        _instruction(BPF_LD_W_ABS, 0, 0, OFFSET_NR),
        _instruction(BPF_JGE_K, deny - 5, 0, X32_SYSCALL_BIT),
    ]
    for index, number in enumerate(numbers, start=5):
        code.append(_instruction(BPF_JEQ_K, deny - (index + 1), 0, number))
    code.append(_instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    code.append(_instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM))
    return b"".join(code)


def supported() -> bool:
    return platform.machine() == "x86_64"


def program_fd() -> int:
    """A file descriptor holding the program, positioned at its start, for `bwrap --seccomp`.
    bubblewrap reads it once; the caller closes it after starting the sandbox."""
    fd = os.memfd_create("homeport-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
