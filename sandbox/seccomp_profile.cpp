// Generated from configs/seccomp/default.json (a unit test checks they are
// equal): edit both together.
#include "sandbox/seccomp_profile.h"

namespace agentshim::seccomp_profile {
namespace {
constexpr const char* kProfile = R"json(
{
 "defaultAction": "SCMP_ACT_ERRNO",
 "defaultErrnoRet": 1,
 "architectures": [
  "SCMP_ARCH_X86_64"
 ],
 "syscalls": [
  {
   "names": [
    "accept",
    "accept4",
    "access",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_waitv",
    "futimesat",
    "get_robust_list",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev"
   ],
   "action": "SCMP_ACT_ALLOW",
   "comment": "Docker's default allowlist (x86_64 names) minus what agents do not need; see docs/POLICY.md"
  },
  {
   "names": [
    "clone"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 2114060288,
     "valueTwo": 0,
     "op": "SCMP_CMP_MASKED_EQ"
    }
   ],
   "comment": "clone without any CLONE_NEW* flag"
  },
  {
   "names": [
    "personality"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 0,
     "op": "SCMP_CMP_EQ"
    }
   ],
   "comment": "personality: only PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE and queries"
  },
  {
   "names": [
    "personality"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 8,
     "op": "SCMP_CMP_EQ"
    }
   ],
   "comment": "personality: only PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE and queries"
  },
  {
   "names": [
    "personality"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 131072,
     "op": "SCMP_CMP_EQ"
    }
   ],
   "comment": "personality: only PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE and queries"
  },
  {
   "names": [
    "personality"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 131080,
     "op": "SCMP_CMP_EQ"
    }
   ],
   "comment": "personality: only PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE and queries"
  },
  {
   "names": [
    "personality"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 4294967295,
     "op": "SCMP_CMP_EQ"
    }
   ],
   "comment": "personality: only PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE and queries"
  },
  {
   "names": [
    "socket"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 1,
     "op": "SCMP_CMP_EQ"
    },
    {
     "index": 1,
     "value": 15,
     "valueTwo": 1,
     "op": "SCMP_CMP_MASKED_EQ"
    }
   ],
   "comment": "socket: AF_UNIX, AF_INET, AF_INET6 with SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET (no raw or packet sockets)"
  },
  {
   "names": [
    "socket"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 1,
     "op": "SCMP_CMP_EQ"
    },
    {
     "index": 1,
     "value": 15,
     "valueTwo": 2,
     "op": "SCMP_CMP_MASKED_EQ"
    }
   ],
   "comment": "socket: AF_UNIX, AF_INET, AF_INET6 with SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET (no raw or packet sockets)"
  },
  {
   "names": [
    "socket"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 1,
     "op": "SCMP_CMP_EQ"
    },
    {
     "index": 1,
     "value": 15,
     "valueTwo": 5,
     "op": "SCMP_CMP_MASKED_EQ"
    }
   ],
   "comment": "socket: AF_UNIX, AF_INET, AF_INET6 with SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET (no raw or packet sockets)"
  },
  {
   "names": [
    "socket"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 2,
     "op": "SCMP_CMP_EQ"
    },
    {
     "index": 1,
     "value": 15,
     "valueTwo": 1,
     "op": "SCMP_CMP_MASKED_EQ"
    }
   ],
   "comment": "socket: AF_UNIX, AF_INET, AF_INET6 with SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET (no raw or packet sockets)"
  },
  {
   "names": [
    "socket"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 2,
     "op": "SCMP_CMP_EQ"
    },
    {
     "index": 1,
     "value": 15,
     "valueTwo": 2,
     "op": "SCMP_CMP_MASKED_EQ"
    }
   ],
   "comment": "socket: AF_UNIX, AF_INET, AF_INET6 with SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET (no raw or packet sockets)"
  },
  {
   "names": [
    "socket"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 2,
     "op": "SCMP_CMP_EQ"
    },
    {
     "index": 1,
     "value": 15,
     "valueTwo": 5,
     "op": "SCMP_CMP_MASKED_EQ"
    }
   ],
   "comment": "socket: AF_UNIX, AF_INET, AF_INET6 with SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET (no raw or packet sockets)"
  },
  {
   "names": [
    "socket"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 10,
     "op": "SCMP_CMP_EQ"
    },
    {
     "index": 1,
     "value": 15,
     "valueTwo": 1,
     "op": "SCMP_CMP_MASKED_EQ"
    }
   ],
   "comment": "socket: AF_UNIX, AF_INET, AF_INET6 with SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET (no raw or packet sockets)"
  },
  {
   "names": [
    "socket"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 10,
     "op": "SCMP_CMP_EQ"
    },
    {
     "index": 1,
     "value": 15,
     "valueTwo": 2,
     "op": "SCMP_CMP_MASKED_EQ"
    }
   ],
   "comment": "socket: AF_UNIX, AF_INET, AF_INET6 with SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET (no raw or packet sockets)"
  },
  {
   "names": [
    "socket"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 10,
     "op": "SCMP_CMP_EQ"
    },
    {
     "index": 1,
     "value": 15,
     "valueTwo": 5,
     "op": "SCMP_CMP_MASKED_EQ"
    }
   ],
   "comment": "socket: AF_UNIX, AF_INET, AF_INET6 with SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET (no raw or packet sockets)"
  },
  {
   "names": [
    "socket"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 16,
     "op": "SCMP_CMP_EQ"
    },
    {
     "index": 1,
     "value": 15,
     "valueTwo": 2,
     "op": "SCMP_CMP_MASKED_EQ"
    },
    {
     "index": 2,
     "value": 0,
     "op": "SCMP_CMP_EQ"
    }
   ],
   "comment": "socket: AF_NETLINK NETLINK_ROUTE only (getaddrinfo, ip addr)"
  },
  {
   "names": [
    "socket"
   ],
   "action": "SCMP_ACT_ALLOW",
   "args": [
    {
     "index": 0,
     "value": 16,
     "op": "SCMP_CMP_EQ"
    },
    {
     "index": 1,
     "value": 15,
     "valueTwo": 3,
     "op": "SCMP_CMP_MASKED_EQ"
    },
    {
     "index": 2,
     "value": 0,
     "op": "SCMP_CMP_EQ"
    }
   ],
   "comment": "socket: AF_NETLINK NETLINK_ROUTE only (getaddrinfo, ip addr)"
  },
  {
   "names": [
    "clone3",
    "fchmodat2",
    "cachestat",
    "map_shadow_stack",
    "futex_wake",
    "futex_wait",
    "futex_requeue",
    "statmount",
    "listmount",
    "lsm_get_self_attr",
    "lsm_set_self_attr",
    "lsm_list_modules",
    "mseal",
    "setxattrat",
    "getxattrat",
    "listxattrat",
    "removexattrat",
    "open_tree_attr",
    "uretprobe",
    "file_getattr",
    "file_setattr"
   ],
   "action": "SCMP_ACT_ERRNO",
   "errnoRet": 38,
   "comment": "newer syscalls: ENOSYS so libc falls back (clone3 -> clone), as Docker does"
  }
 ]
}
)json";
}  // namespace

const nlohmann::json& builtin() {
  static const nlohmann::json profile = nlohmann::json::parse(kProfile);
  return profile;
}

}  // namespace agentshim::seccomp_profile
