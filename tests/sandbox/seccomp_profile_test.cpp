// agentshim's default seccomp profile (configs/seccomp/default.json, built
// in): compiled with libseccomp, then its BPF program is evaluated here for
// a given syscall, architecture and arguments (a small classic-BPF
// interpreter), so every rule is checked by name and arguments without
// running the syscall. Two tests load it for real in a forked child.
#include "sandbox/seccomp_profile.h"

#include <gtest/gtest.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "common/util.h"
#include "sandbox/seccomp.h"

using namespace agentshim;
using json = nlohmann::json;

namespace {

constexpr uint32_t kAllow = SCMP_ACT_ALLOW;
constexpr uint32_t kEperm = SCMP_ACT_ERRNO(EPERM);
constexpr uint32_t kEnosys = SCMP_ACT_ERRNO(ENOSYS);
constexpr uint32_t kX32Bit = 0x40000000;

std::vector<sock_filter> bpf_of(const seccomp::Filter& f) {
  UniqueFd fd(::memfd_create("bpf", MFD_CLOEXEC));
  if (!fd) throw_errno("memfd_create");
  int rc = seccomp_export_bpf(f.ctx(), fd.get());
  if (rc < 0) throw SysError("seccomp_export_bpf", -rc);
  ::lseek(fd.get(), 0, SEEK_SET);
  std::string raw = read_all(fd.get(), "bpf");
  std::vector<sock_filter> prog(raw.size() / sizeof(sock_filter));
  std::memcpy(prog.data(), raw.data(), prog.size() * sizeof(sock_filter));
  return prog;
}

// Classic BPF as the kernel runs it for seccomp (struct seccomp_data input).
uint32_t run_bpf(const std::vector<sock_filter>& prog, const seccomp_data& d) {
  uint32_t A = 0, X = 0, M[BPF_MEMWORDS] = {};
  const auto* bytes = reinterpret_cast<const unsigned char*>(&d);
  for (std::size_t pc = 0; pc < prog.size(); pc++) {
    const sock_filter& i = prog[pc];
    uint32_t src = BPF_SRC(i.code) == BPF_X ? X : i.k;
    switch (BPF_CLASS(i.code)) {
      case BPF_LD:
        if (BPF_MODE(i.code) == BPF_ABS) {
          if (i.k + 4 > sizeof d) throw Error("bpf: load out of range");
          std::memcpy(&A, bytes + i.k, 4);
        } else if (BPF_MODE(i.code) == BPF_IMM) {
          A = i.k;
        } else if (BPF_MODE(i.code) == BPF_MEM) {
          A = M[i.k % BPF_MEMWORDS];
        } else if (BPF_MODE(i.code) == BPF_LEN) {
          A = sizeof d;
        } else {
          throw Error("bpf: unsupported load");
        }
        break;
      case BPF_LDX:
        X = BPF_MODE(i.code) == BPF_MEM   ? M[i.k % BPF_MEMWORDS]
            : BPF_MODE(i.code) == BPF_LEN ? sizeof d
                                          : i.k;
        break;
      case BPF_ST:
        M[i.k % BPF_MEMWORDS] = A;
        break;
      case BPF_STX:
        M[i.k % BPF_MEMWORDS] = X;
        break;
      case BPF_ALU:
        switch (BPF_OP(i.code)) {
          case BPF_ADD:
            A += src;
            break;
          case BPF_SUB:
            A -= src;
            break;
          case BPF_MUL:
            A *= src;
            break;
          case BPF_DIV:
            A = src ? A / src : 0;
            break;
          case BPF_MOD:
            A = src ? A % src : 0;
            break;
          case BPF_OR:
            A |= src;
            break;
          case BPF_AND:
            A &= src;
            break;
          case BPF_XOR:
            A ^= src;
            break;
          case BPF_LSH:
            A <<= src;
            break;
          case BPF_RSH:
            A >>= src;
            break;
          case BPF_NEG:
            A = -A;
            break;
          default:
            throw Error("bpf: unsupported alu op");
        }
        break;
      case BPF_JMP: {
        if (BPF_OP(i.code) == BPF_JA) {
          pc += i.k;
          break;
        }
        bool c = false;
        switch (BPF_OP(i.code)) {
          case BPF_JEQ:
            c = A == src;
            break;
          case BPF_JGT:
            c = A > src;
            break;
          case BPF_JGE:
            c = A >= src;
            break;
          case BPF_JSET:
            c = (A & src) != 0;
            break;
          default:
            throw Error("bpf: unsupported jump");
        }
        pc += c ? i.jt : i.jf;
        break;
      }
      case BPF_RET:
        return BPF_RVAL(i.code) == BPF_A ? A : i.k;
      case BPF_MISC:
        if (BPF_MISCOP(i.code) == BPF_TAX)
          X = A;
        else
          A = X;
        break;
    }
  }
  throw Error("bpf: program fell off the end");
}

class Profile : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    filter_ = new seccomp::Filter(seccomp::compile(seccomp_profile::builtin()));
    prog_ = new std::vector<sock_filter>(bpf_of(*filter_));
  }
  static void TearDownTestSuite() {
    delete prog_;
    delete filter_;
  }
  static int nr(const char* name) {
    int n = seccomp_syscall_resolve_name_arch(SCMP_ARCH_X86_64, name);
    if (n == __NR_SCMP_ERROR) throw Error(std::string("unknown syscall ") + name);
    return n;
  }
  static uint32_t action(const char* name, std::vector<uint64_t> args = {}, uint32_t arch = AUDIT_ARCH_X86_64,
                         uint32_t nr_or = 0) {
    seccomp_data d{};
    d.nr = nr(name) | static_cast<int>(nr_or);
    d.arch = arch;
    for (std::size_t i = 0; i < args.size() && i < 6; i++) d.args[i] = args[i];
    return run_bpf(*prog_, d);
  }
  static uint32_t action_nr(int n, uint32_t arch) {
    seccomp_data d{};
    d.nr = n;
    d.arch = arch;
    return run_bpf(*prog_, d);
  }
  static seccomp::Filter* filter_;
  static std::vector<sock_filter>* prog_;
};
seccomp::Filter* Profile::filter_ = nullptr;
std::vector<sock_filter>* Profile::prog_ = nullptr;

TEST_F(Profile, FileEqualsTheBuiltInAndDeniesByDefault) {
  json file = json::parse(read_file(std::string(AGENTSHIM_SOURCE_DIR) + "/configs/seccomp/default.json"));
  EXPECT_EQ(file, seccomp_profile::builtin());
  EXPECT_EQ(file["defaultAction"], "SCMP_ACT_ERRNO");
  EXPECT_EQ(file["defaultErrnoRet"], EPERM);
  EXPECT_EQ(file["architectures"], json::array({"SCMP_ARCH_X86_64"}));
}

TEST_F(Profile, ForbiddenSyscallsAreDenied) {
  for (const char* n : {"unshare",
                        "setns",
                        "mount",
                        "umount2",
                        "pivot_root",
                        "move_mount",
                        "open_tree",
                        "fsopen",
                        "fsconfig",
                        "fsmount",
                        "fspick",
                        "mount_setattr",
                        "bpf",
                        "perf_event_open",
                        "userfaultfd",
                        "keyctl",
                        "add_key",
                        "request_key",
                        "ptrace",
                        "process_vm_readv",
                        "process_vm_writev",
                        "kexec_load",
                        "kexec_file_load",
                        "init_module",
                        "finit_module",
                        "delete_module",
                        "io_uring_setup",
                        "io_uring_enter",
                        "io_uring_register",
                        "chroot",
                        "acct",
                        "swapon",
                        "swapoff",
                        "reboot",
                        "settimeofday",
                        "clock_settime",
                        "adjtimex",
                        "clock_adjtime",
                        "syslog",
                        "quotactl",
                        "lookup_dcookie",
                        "vhangup",
                        "name_to_handle_at",
                        "open_by_handle_at",
                        "iopl",
                        "ioperm",
                        "create_module",
                        "get_kernel_syms",
                        "query_module",
                        "nfsservctl",
                        "uselib",
                        "sysfs",
                        "ustat",
                        "_sysctl",
                        "sethostname",
                        "setdomainname",
                        "kcmp",
                        "pidfd_getfd",
                        "fanotify_init",
                        "modify_ldt",
                        "memfd_secret"}) {
    EXPECT_EQ(action(n), kEperm) << n;
  }
}

TEST_F(Profile, CommonSyscallsAreAllowed) {
  for (const char* n :
       {"read",   "write",      "openat",      "close",        "execve",     "execveat",   "futex",
        "mmap",   "munmap",     "brk",         "rt_sigaction", "exit_group", "wait4",      "pipe2",
        "dup3",   "fstat",      "newfstatat",  "statx",        "getdents64", "connect",    "accept4",
        "sendto", "recvfrom",   "epoll_wait",  "getrandom",    "prctl",      "arch_prctl", "set_tid_address",
        "rseq",   "faccessat2", "close_range", "vfork"})
    EXPECT_EQ(action(n), kAllow) << n;
}

TEST_F(Profile, CloneOnlyWithoutNamespaceFlags) {
  EXPECT_EQ(action("clone", {SIGCHLD}), kAllow);
  EXPECT_EQ(action("clone", {CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
                             CLONE_SYSVSEM | CLONE_SETTLS | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID}),
            kAllow);
  for (uint64_t f :
       {CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET})
    EXPECT_EQ(action("clone", {f | SIGCHLD}), kEperm) << std::hex << f;
  EXPECT_EQ(action("clone3"), kEnosys);  // libc falls back to clone
}

TEST_F(Profile, SocketFamiliesAndTypes) {
  EXPECT_EQ(action("socket", {AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0}), kAllow);
  EXPECT_EQ(action("socket", {AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0}), kAllow);
  EXPECT_EQ(action("socket", {AF_INET6, SOCK_STREAM, 0}), kAllow);
  EXPECT_EQ(action("socket", {AF_UNIX, SOCK_SEQPACKET, 0}), kAllow);
  EXPECT_EQ(action("socket", {AF_UNIX, SOCK_DGRAM, 0}), kAllow);
  EXPECT_EQ(action("socket", {AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0 /*NETLINK_ROUTE*/}), kAllow);
  EXPECT_EQ(action("socket", {AF_PACKET, SOCK_RAW, 0x0300}), kEperm);
  EXPECT_EQ(action("socket", {AF_PACKET, SOCK_DGRAM, 0x0300}), kEperm);
  EXPECT_EQ(action("socket", {AF_INET, SOCK_RAW, 1 /*ICMP*/}), kEperm);
  EXPECT_EQ(action("socket", {AF_INET6, SOCK_RAW | SOCK_CLOEXEC, 58}), kEperm);
  EXPECT_EQ(action("socket", {AF_NETLINK, SOCK_RAW, 9 /*NETLINK_AUDIT*/}), kEperm);
  EXPECT_EQ(action("socket", {40 /*AF_VSOCK*/, SOCK_STREAM, 0}), kEperm);
  // Upper bits set in the 64-bit register do not sneak a raw socket through.
  EXPECT_EQ(action("socket", {(1ULL << 32) | AF_INET, SOCK_STREAM, 0}), kEperm);
}

TEST_F(Profile, PersonalityOnlySafeValues) {
  for (uint64_t v : {0x0ULL, 0x8ULL, 0x20000ULL, 0x20008ULL, 0xffffffffULL})
    EXPECT_EQ(action("personality", {v}), kAllow) << std::hex << v;
  for (uint64_t v : {0x0400000ULL /*READ_IMPLIES_EXEC*/, 0x0040000ULL /*ADDR_NO_RANDOMIZE*/, 0x1ULL})
    EXPECT_EQ(action("personality", {v}), kEperm) << std::hex << v;
}

TEST_F(Profile, CompatAbisHaveNoWayThrough) {
  // i386 (int 0x80) and x32 (x86_64 numbers with bit 30) hit libseccomp's
  // bad-architecture action: the thread is killed, whatever the syscall.
  EXPECT_EQ(action_nr(3 /*i386 read*/, AUDIT_ARCH_I386), static_cast<uint32_t>(SCMP_ACT_KILL_THREAD));
  EXPECT_EQ(action_nr(310 /*i386 unshare*/, AUDIT_ARCH_I386), static_cast<uint32_t>(SCMP_ACT_KILL_THREAD));
  EXPECT_EQ(action("read", {}, AUDIT_ARCH_X86_64, kX32Bit), static_cast<uint32_t>(SCMP_ACT_KILL_THREAD));
  EXPECT_EQ(action("unshare", {}, AUDIT_ARCH_X86_64, kX32Bit), static_cast<uint32_t>(SCMP_ACT_KILL_THREAD));
}

// Real kernel: fork, set no_new_privs, load the profile, try.
template <typename F>
int in_child(F body) {
  pid_t pid = ::fork();
  if (pid < 0) throw_errno("fork");
  if (pid == 0) {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) ::_exit(90);
    try {
      auto f = seccomp::compile(seccomp_profile::builtin());
      f.load();
    } catch (...) {
      ::_exit(91);
    }
    ::_exit(body());
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  return st;
}

TEST(ProfileKernel, UnshareUserNamespaceIsEperm) {
  int st = in_child([] {
    long r = ::syscall(SYS_unshare, CLONE_NEWUSER);
    if (r == 0) return 1;
    if (errno != EPERM) return 2;
    // An ordinary fork still works under the profile.
    pid_t p = ::fork();
    if (p < 0) return 3;
    if (p == 0) ::_exit(7);
    int s = 0;
    ::waitpid(p, &s, 0);
    return WIFEXITED(s) && WEXITSTATUS(s) == 7 ? 0 : 4;
  });
  ASSERT_TRUE(WIFEXITED(st)) << st;
  EXPECT_EQ(WEXITSTATUS(st), 0);
}

TEST(ProfileKernel, I386AbiIsBlocked) {
  // Without the profile, int 0x80 works here (the i386 ABI is compiled in):
  // getpid through it returns our pid. Under the profile the thread dies.
  pid_t plain = ::fork();
  ASSERT_GE(plain, 0);
  if (plain == 0) {
    long ret;
    asm volatile("int $0x80" : "=a"(ret) : "a"(20 /*i386 getpid*/) : "memory");
    ::_exit(ret == ::getpid() ? 0 : 1);
  }
  int pst = 0;
  ::waitpid(plain, &pst, 0);
  if (!(WIFEXITED(pst) && WEXITSTATUS(pst) == 0))
    GTEST_SKIP()
        << "the kernel has no i386 syscall ABI (IA32_EMULATION off); the BPF check above covers the rule";
  int st = in_child([] {
    long ret;
    // i386 unshare(CLONE_NEWUSER): would succeed without the profile.
    asm volatile("int $0x80" : "=a"(ret) : "a"(310), "b"(CLONE_NEWUSER) : "memory");
    return ret == 0 ? 1 : 2;
  });
  ASSERT_TRUE(WIFSIGNALED(st)) << "i386 syscall was not blocked: exit "
                               << (WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  EXPECT_EQ(WTERMSIG(st), SIGSYS);
}

}  // namespace
