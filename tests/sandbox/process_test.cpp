#include "sandbox/process.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/capability.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "common/error.h"
#include "sandbox/oci.h"
#include "tests/child.h"

using namespace agentshim;
using json = nlohmann::json;

namespace {
// A process object read as the runtime reads it (oci::parse_process); `args`
// filled in when the test leaves it out.
oci::Process P(json j) {
  if (!j.contains("args")) j["args"] = {"true"};
  return oci::parse_process(j, "process");
}

json proc_with(const std::vector<std::string>& caps, bool ambient = false) {
  json p = {{"capabilities", {{"bounding", caps}, {"effective", caps}, {"permitted", caps}}}};
  if (ambient) p["capabilities"]["ambient"] = caps;
  return p;
}
}  // namespace

// runtime-tools' process_capabilities on a host whose bounding set lacks
// CAP_SYS_RESOURCE: each capability the host cannot grant is named once,
// with the sets that ask for it.
TEST(ProcessCapabilities, UngrantableOnesAreNamed) {
  auto host = [](int c) { return c != CAP_SYS_RESOURCE; };
  json p = proc_with({"CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_KILL"});
  p["capabilities"]["inheritable"] = {"CAP_SYS_RESOURCE"};
  EXPECT_EQ(process::ungrantable_capabilities(P(p), host),
            (std::vector<std::string>{"CAP_SYS_RESOURCE (bounding, effective, permitted, inheritable)"}));
  EXPECT_TRUE(process::ungrantable_capabilities(P(proc_with({"CAP_CHOWN", "CAP_KILL"})), host).empty());
  EXPECT_TRUE(process::ungrantable_capabilities(P(json::object()), host).empty());
  EXPECT_TRUE(process::ungrantable_capabilities(P({{"capabilities", nullptr}}), host).empty());
  auto none = [](int) { return false; };
  EXPECT_EQ(process::ungrantable_capabilities(P(proc_with({"CAP_KILL", "CAP_CHOWN"}, true)), none),
            (std::vector<std::string>{"CAP_KILL (bounding, effective, permitted, ambient)",
                                      "CAP_CHOWN (bounding, effective, permitted, ambient)"}));
}

// Docker's and Kubernetes' (containerd's) default capability sets, and
// runc's spec: grantable wherever the runtime runs with a bounding set that
// holds them (every host Docker supports). The check uses this process's own
// bounding set, so the test skips what this host lacks instead of failing.
TEST(ProcessCapabilities, DockerAndKubernetesDefaultsPassOnThisHost) {
  const std::vector<std::string> docker = {
      "CAP_CHOWN",   "CAP_DAC_OVERRIDE", "CAP_FSETID",           "CAP_FOWNER",
      "CAP_MKNOD",   "CAP_NET_RAW",      "CAP_SETGID",           "CAP_SETUID",
      "CAP_SETFCAP", "CAP_SETPCAP",      "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
      "CAP_KILL",    "CAP_AUDIT_WRITE"};
  for (const auto& c : docker) {
    auto v = oci::capability_from_name(c);
    ASSERT_TRUE(v) << c;
    if (prctl(PR_CAPBSET_READ, *v, 0, 0, 0) != 1) GTEST_SKIP() << c << " is not in this host's bounding set";
  }
  EXPECT_TRUE(process::ungrantable_capabilities(P(proc_with(docker))).empty());
  EXPECT_NO_THROW(process::check_capabilities(P(proc_with(docker))));
}

TEST(ProcessCapabilities, CheckThrowsNamingThem) {
  // Whatever this host's bounding set, a capability above the kernel's
  // cap_last_cap cannot be granted; use the host's own answer for one it lacks.
  int missing = -1;
  for (int c = 0; c <= CAP_LAST_CAP; c++)
    if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) != 1) missing = c;
  if (missing < 0) GTEST_SKIP() << "this host's bounding set is full";
  json p = proc_with({"CAP_KILL"});
  p["capabilities"]["effective"].push_back(oci::capability_name(missing));
  try {
    process::check_capabilities(P(p));
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("this host cannot grant " + oci::capability_name(missing) + " (effective)"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("bounding set"), std::string::npos) << m;
  }
}

// ---------------------------------------------------------------- seccomp: prepare, then install

namespace {

json allow_with(const char* rule) {
  return {{"defaultAction", "SCMP_ACT_ALLOW"}, {"syscalls", json::array({json::parse(rule)})}};
}

using testutil::in_child;

// In the child: no_new_privs, then the prepared filters; 0, or the child's
// exit code for what failed.
int install_with_nnp(const process::PreparedSeccomp& p, std::vector<process::Listener>& listeners) {
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 200;
  try {
    process::install_seccomp(p, listeners);
  } catch (...) {
    return 202;
  }
  return 0;
}

std::vector<std::string> kinds(const process::PreparedSeccomp& p) {
  std::vector<std::string> k;
  for (const auto& f : p.filters) k.push_back(f.program.listener() ? f.kind : "-");
  return k;
}

}  // namespace

TEST(ProcessSeccomp, PrepareMergesTheExecObserverLikeBefore) {
  json plain = allow_with(R"({"names": ["getppid"], "action": "SCMP_ACT_ERRNO"})");
  json notify = allow_with(R"({"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"})");
  process::Finalize f;
  // Nothing to load.
  auto p = process::prepare_seccomp(f);
  EXPECT_TRUE(p.filters.empty());
  EXPECT_FALSE(p.enosys_stub);
  // The observer alone.
  f.observe_exec = true;
  EXPECT_EQ(kinds(process::prepare_seccomp(f)), (std::vector<std::string>{"exec"}));
  // Merged into the first profile.
  f.seccomp = {plain, plain};
  EXPECT_EQ(kinds(process::prepare_seccomp(f)), (std::vector<std::string>{"exec", "-"}));
  // The config's own listener wins; no observer.
  f.seccomp = {notify, plain};
  EXPECT_EQ(kinds(process::prepare_seccomp(f)), (std::vector<std::string>{"config", "-"}));
  // Only the first NOTIFY filter asks for the (one) listener.
  f.seccomp = {notify, notify};
  p = process::prepare_seccomp(f);
  EXPECT_EQ(kinds(p), (std::vector<std::string>{"config", "-"}));
  EXPECT_EQ(p.filters[1].program.flags, 0u);
  // No observer asked for: no listener.
  f.observe_exec = false;
  f.seccomp = {plain, {}, nullptr};
  EXPECT_EQ(kinds(process::prepare_seccomp(f)), (std::vector<std::string>{"-"}));
}

TEST(ProcessSeccomp, PrepareErrorsNameTheField) {
  process::Finalize f;
  f.seccomp = {allow_with(R"({"names": ["getppid"], "action": "SCMP_ACT_BOGUS"})")};
  try {
    process::prepare_seccomp(f);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linux.seccomp.syscalls[0].action"), std::string::npos) << e.what();
  }
}

TEST(ProcessSeccomp, InstalledPreparedFiltersApplyWithTheEnosysStub) {
  // A deny-by-default profile (EPERM) stacked on one with an ERRNO rule:
  // known denied syscalls keep EPERM, newer ones get ENOSYS, allowed ones
  // work. (The sanitizer runtime needs mmap, sigaltstack and friends.)
  json deny = json::parse(R"({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
    "syscalls": [{"names": ["read", "write", "exit", "exit_group", "rt_sigreturn", "getpid", "getppid", "seccomp",
                            "mmap", "munmap", "mprotect", "madvise", "brk", "sigaltstack", "rt_sigaction",
                            "rt_sigprocmask", "gettid", "futex", "prctl", "sched_yield", "close"],
                  "action": "SCMP_ACT_ALLOW"}]})");
  json first = allow_with(R"({"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 11})");
  process::Finalize f;
  f.seccomp = {first, deny};
  auto p = process::prepare_seccomp(f);
  ASSERT_EQ(p.filters.size(), 2u);
  ASSERT_TRUE(p.enosys_stub);
  ASSERT_GE(p.max_nr, __NR_getppid);
  int max_nr = p.max_nr;
  int code = in_child([&]() -> int {
    std::vector<process::Listener> listeners;
    if (int e = install_with_nnp(p, listeners)) return e;
    if (!listeners.empty()) return 203;
    if (::syscall(max_nr + 200) != -1 || errno != ENOSYS) return 10;
    if (::syscall(__NR_getuid) != -1 || errno != EPERM) return 11;
    if (::syscall(__NR_getppid) != -1 || errno != EAGAIN) return 12;
    if (::syscall(__NR_getpid) <= 0) return 13;
    return 0;
  });
  EXPECT_EQ(code, 0) << "child exit code " << code;
}

TEST(ProcessSeccomp, InstallReturnsTheListenersWithTheirKinds) {
  process::Finalize f;
  f.seccomp = {allow_with(R"({"names": ["getppid"], "action": "SCMP_ACT_ERRNO"})")};
  f.observe_exec = true;
  auto p = process::prepare_seccomp(f);
  int code = in_child([&]() -> int {
    std::vector<process::Listener> listeners;
    if (int e = install_with_nnp(p, listeners)) return e;
    if (listeners.size() != 1 || listeners[0].kind != "exec" || listeners[0].fd < 3) return 10;
    if (::syscall(__NR_getppid) != -1 || errno != EPERM) return 11;
    return 0;
  });
  EXPECT_EQ(code, 0) << "child exit code " << code;
}

TEST(ProcessSeccomp, FinalizeLoadsThePreparedFilters) {
  // finalize() drops privileges and changes credentials: root only, in a child.
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  process::Finalize f;
  f.seccomp = {allow_with(R"({"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 11})")};
  auto p = process::prepare_seccomp(f);
  // With `prepared` the JSON is not looked at (a bad profile is not an error).
  f.seccomp = {allow_with(R"({"names": ["getppid"], "action": "SCMP_ACT_BOGUS"})")};
  f.prepared = &p;
  for (bool nnp : {false, true}) {
    int code = in_child([&]() -> int {
      json proc = {{"noNewPrivileges", nnp}, {"cwd", "/"}, {"user", {{"uid", 0}, {"gid", 0}}}};
      try {
        if (!process::finalize(P(proc), f).empty()) return 203;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 202;
      }
      if (::syscall(__NR_getppid) != -1 || errno != EAGAIN) return 10;
      return 0;
    });
    EXPECT_EQ(code, 0) << "noNewPrivileges " << nnp << ": child exit code " << code;
  }
  // Without it, finalize prepares in place (and the bad profile is an error).
  f.prepared = nullptr;
  int code = in_child([&]() -> int {
    try {
      process::finalize(P({{"cwd", "/"}}), f);
    } catch (const Error& e) {
      return std::string(e.what()).find("linux.seccomp.syscalls[0].action") != std::string::npos ? 0 : 10;
    }
    return 11;
  });
  EXPECT_EQ(code, 0);
}

TEST(Process, NewSessionLeavesTheCallersSessionAndGroup) {
  pid_t sid = ::getsid(0), pgrp = ::getpgrp();
  int code = in_child([&]() -> int {
    if (::getsid(0) != sid || ::getpgrp() != pgrp) return 10;  // inherited, as the runtime's child
    try {
      process::new_session();
      process::new_session();  // already the leader: a no-op, not EPERM
    } catch (...) {
      return 11;
    }
    if (::getsid(0) != ::getpid() || ::getpgrp() != ::getpid()) return 12;
    // No controlling terminal any more: /dev/tty is not the caller's.
    int t = ::open("/dev/tty", O_RDWR | O_CLOEXEC);
    if (t >= 0 || errno != ENXIO) return 13;
    return 0;
  });
  EXPECT_EQ(code, 0) << "child exit code " << code;
}

TEST(ProcessSeccomp, PreparedAlwaysCarriesTheTerminalGuard) {
  process::Finalize f;  // no profile at all
  auto p = process::prepare_seccomp(f);
  EXPECT_TRUE(p.filters.empty());
  EXPECT_FALSE(p.terminal_guard.insns.empty());
  int code = in_child([&]() -> int {
    std::vector<process::Listener> listeners;
    if (int e = install_with_nnp(p, listeners)) return e;
    int m = ::posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0) return 10;
    char c = 'x';
    if (::ioctl(m, TIOCSTI, &c) != -1 || errno != EPERM) return 11;
    return 0;
  });
  EXPECT_EQ(code, 0) << "child exit code " << code;
}
