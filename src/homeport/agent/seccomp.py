"""The containers' seccomp filter: an allow-list built with libseccomp.

Modelled on Docker's default profile: the system calls ordinary programs make are
allowed; those that reach past the sandbox (new mounts and namespaces, other processes'
memory, the kernel, the host's clock and identity, io_uring) fail with EPERM; every
other call, including any a later kernel adds, fails with ENOSYS, so libc falls back as
it would on an older kernel. `clone` is allowed only without namespace flags (a new user
namespace would hand the caller every capability inside it) and `clone3` answers ENOSYS,
since its flags live in memory a filter cannot read. Other architectures' entry points
(32-bit and x32 on x86-64) are refused.

libseccomp (the system library, through the `pyseccomp` binding) turns names into each
architecture's numbers and compiles the BPF program; bubblewrap installs it with
`--seccomp FD` right before the container's entrypoint, and a zygote's containers load it
themselves before any of their code runs.
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile

import pyseccomp

# What ordinary programs call, following Docker's default profile (its unconditional
# allows, and its capability-gated ones where the container holds the capability).
ALLOWED = """
accept accept4 access alarm arch_prctl bind brk cachestat capget capset chdir chmod chown
chroot clock_getres clock_gettime clock_nanosleep close close_range connect
copy_file_range creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_pwait
epoll_pwait2 epoll_wait eventfd eventfd2 execve execveat exit exit_group faccessat
faccessat2 fadvise64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown
fchownat fcntl fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat
fstatfs fsync ftruncate futex futex_requeue futex_wait futex_waitv futex_wake futimesat
get_mempolicy get_robust_list get_thread_area getcpu getcwd getdents getdents64 getegid
geteuid getgid getgroups getitimer getpeername getpgid getpgrp getpid getppid getpriority
getrandom getresgid getresuid getrlimit getrusage getsid getsockname getsockopt gettid
gettimeofday getuid getxattr inotify_add_watch inotify_init inotify_init1
inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents io_setup io_submit ioctl
ioprio_get ioprio_set kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lgetxattr link linkat listen listxattr llistxattr
lremovexattr lseek lsetxattr lstat madvise map_shadow_stack membarrier memfd_create memfd_secret mincore
mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap modify_ldt mprotect mq_getsetattr
mq_notify mq_open mq_timedreceive mq_timedsend mq_unlink mremap msgctl msgget msgrcv
msgsnd msync munlock munlockall munmap nanosleep newfstatat open openat openat2 pause
pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll
prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pwrite64 pwritev
pwritev2 read readahead readlink readlinkat readv recvfrom recvmmsg recvmsg
remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq
rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
rt_sigtimedwait rt_tgsigqueueinfo sched_get_priority_max sched_get_priority_min
sched_getaffinity sched_getattr sched_getparam sched_getscheduler sched_rr_get_interval
sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp
select semctl semget semop semtimedop sendfile sendmmsg sendmsg sendto set_robust_list
set_thread_area set_tid_address setfsgid setfsuid setgid setgroups setitimer setpgid
setpriority setregid setresgid setresuid setreuid setrlimit setsid setsockopt setuid
setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 socket
socketpair splice stat statfs statx symlink symlinkat sync sync_file_range syncfs sysinfo
tee tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_settime
timerfd_create timerfd_gettime timerfd_settime times tkill truncate umask uname unlink
unlinkat utime utimensat utimes vfork vmsplice wait4 waitid write writev
""".split()

# Refused with EPERM, by what they would allow.
REFUSED = """
mount umount2 pivot_root unshare setns open_tree move_mount fsopen fsconfig fsmount fspick mount_setattr
ptrace process_vm_readv process_vm_writev
init_module finit_module delete_module kexec_load kexec_file_load reboot swapon swapoff acct bpf
perf_event_open iopl ioperm syslog quotactl lookup_dcookie userfaultfd
io_uring_setup io_uring_enter io_uring_register
sethostname setdomainname settimeofday clock_settime clock_adjtime adjtimex
open_by_handle_at name_to_handle_at keyctl add_key request_key
""".split() + [
    # NUMA placement: Docker allows these only with CAP_SYS_NICE, which containers lack
    "mbind", "set_mempolicy", "move_pages", "migrate_pages",
]  # fmt: skip

# A zygote (agent/zygote.py) makes each container's namespaces and mounts itself, inside
# its own user namespace: it may use these; every container it forks installs the full
# filter on top before any of its code runs.
ZYGOTE_ALLOWED = ("mount", "umount2", "pivot_root", "unshare", "setns", "sethostname")

# personality(2) only to query or for the execution domains programs ask for (Docker's rule).
PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)
# CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
# CLONE_NEWNET, CLONE_NEWTIME
NAMESPACE_FLAGS = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
)


def supported() -> bool:
    """Whether libseccomp can build a filter for this machine."""
    try:
        return pyseccomp.system_arch() != 0
    except Exception:
        return False


@functools.cache
def program(for_zygote: bool = False) -> bytes:
    """The filter as the kernel wants it: an array of struct sock_filter."""
    permitted = ZYGOTE_ALLOWED if for_zygote else ()
    seccomp = pyseccomp.SyscallFilter(pyseccomp.ERRNO(errno.ENOSYS))
    seccomp.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.ERRNO(errno.EPERM))
    seccomp.set_attr(pyseccomp.Attr.CTL_NNP, 0)  # no_new_privs is set by whoever loads it
    for name in (*ALLOWED, *permitted):
        _add(seccomp, pyseccomp.ALLOW, name)
    for name in REFUSED:
        if name not in permitted:
            _add(seccomp, pyseccomp.ERRNO(errno.EPERM), name)
    for persona in PERSONALITIES:
        _add(seccomp, pyseccomp.ALLOW, "personality", pyseccomp.Arg(0, pyseccomp.EQ, persona))
    _add(seccomp, pyseccomp.ALLOW, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, NAMESPACE_FLAGS, 0))
    for flag in _bits(NAMESPACE_FLAGS):
        _add(
            seccomp, pyseccomp.ERRNO(errno.EPERM), "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag)
        )
    # clone3 is on no list: the default answer, ENOSYS, makes libc fall back to clone.
    with tempfile.TemporaryFile() as compiled:
        seccomp.export_bpf(compiled)
        compiled.seek(0)
        return compiled.read()


def _add(seccomp: pyseccomp.SyscallFilter, action: int, name: str, *args: pyseccomp.Arg) -> None:
    try:
        number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    except Exception:
        return  # not a system call of this architecture
    if number < 0:
        return
    seccomp.add_rule(action, name, *args)


def _bits(mask: int) -> list[int]:
    return [1 << bit for bit in range(mask.bit_length()) if mask & (1 << bit)]


def program_fd(code: bytes | None = None) -> int:
    """A file descriptor holding the program (the container filter unless given), positioned
    at its start, for `bwrap --seccomp`. bubblewrap reads it once; the caller closes it after
    starting the sandbox."""
    fd = os.memfd_create("homeport-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program() if code is None else code)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
