#include "sandbox/exec_observer.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/openat2.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "attest/hash.h"
#include "common/fd.h"
#include "common/util.h"
#include "sandbox/seccomp.h"
#include "tests/temp_dir.h"

using namespace agentshim;
using json = nlohmann::json;

TEST(ExecObserver, Shebang) {
  EXPECT_EQ(observer::shebang_interpreter("#!/bin/sh\necho"), "/bin/sh");
  EXPECT_EQ(observer::shebang_interpreter("#! /usr/bin/env python3\n"), "/usr/bin/env");
  EXPECT_EQ(observer::shebang_interpreter("\x7f"
                                          "ELF..."),
            "");
  EXPECT_EQ(observer::shebang_interpreter("#"), "");
  EXPECT_EQ(observer::shebang_interpreter(std::string("#!") + std::string(300, 'a')), "");
}

TEST(ExecObserver, ReadsBoundedStringsFromProcessMemory) {
  int mem = ::open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(mem, 0);
  static const char s[] = "/usr/bin/agent";
  bool trunc = true;
  EXPECT_EQ(observer::read_cstring(mem, reinterpret_cast<unsigned long long>(s), 4096, &trunc), s);
  EXPECT_FALSE(trunc);
  EXPECT_EQ(observer::read_cstring(mem, reinterpret_cast<unsigned long long>(s), 4, &trunc), "/usr");
  EXPECT_TRUE(trunc);
  // An unmapped address reads as empty, never crashes.
  EXPECT_EQ(observer::read_cstring(mem, 8, 100, &trunc), "");
  EXPECT_EQ(observer::read_cstring(mem, 0, 100, &trunc), "");
  ::close(mem);
}

namespace {
std::string open_error(int dirfd, const std::string& path, unsigned long long resolve) {
  std::string err;
  int fd = observer::open_regular(dirfd, path, resolve, err);
  if (fd >= 0) {
    ::close(fd);
    return "";
  }
  return err.empty() ? "(no error text)" : err;
}
}  // namespace

TEST(ExecObserver, OpensOnlyRegularFilesInsideTheRoot) {
  testutil::TempDir d("observer-open");
  write_file(d.path + "/bin", "#!/bin/sh\n", 0755);
  ASSERT_EQ(::mkfifo((d.path + "/fifo").c_str(), 0600), 0);
  ASSERT_EQ(::symlink("/fifo", (d.path + "/to-fifo").c_str()), 0);
  ASSERT_EQ(::symlink("/proc/kmsg", (d.path + "/to-kmsg").c_str()), 0);
  ASSERT_EQ(::symlink("../../../../bin", (d.path + "/up").c_str()), 0);
  mkdir_p(d.path + "/dir");
  int root = ::open(d.path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(root, 0);
  const unsigned long long in_root = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  std::string err;
  int fd = observer::open_regular(root, "/bin", in_root, err);
  ASSERT_GE(fd, 0) << err;
  char buf[16] = {};
  EXPECT_EQ(::read(fd, buf, sizeof buf), 10);  // opened for reading
  ::close(fd);
  // A symlink climbing out stays in the root (/bin of the root, not the host's).
  EXPECT_EQ(open_error(root, "/up", in_root), "");
  // A FIFO (directly or through a symlink): refused without blocking and
  // without opening it (a writer would see a reader appear).
  EXPECT_NE(open_error(root, "/fifo", in_root).find("fifo"), std::string::npos);
  EXPECT_NE(open_error(root, "/to-fifo", in_root).find("fifo"), std::string::npos);
  int w = ::open((d.path + "/fifo").c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  EXPECT_EQ(w, -1) << "someone holds the FIFO open for reading";
  EXPECT_EQ(errno, ENXIO);
  // A symlink to /proc/kmsg resolves inside the root (absent there).
  EXPECT_NE(open_error(root, "/to-kmsg", in_root).find("No such file"), std::string::npos);
  EXPECT_NE(open_error(root, "/dir", in_root).find("directory"), std::string::npos);
  ::close(root);
  // With the host's root: /proc's "regular files" and devices are refused.
  int host = ::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(host, 0);
  EXPECT_NE(open_error(host, "/proc/kmsg", in_root).find("proc"), std::string::npos);
  EXPECT_NE(open_error(host, "/proc/self/status", in_root).find("proc"), std::string::npos);
  EXPECT_NE(open_error(host, "/sys/kernel/mm/transparent_hugepage/enabled", in_root).find("sysfs"),
            std::string::npos);
  EXPECT_NE(open_error(host, "/dev/null", in_root).find("character device"), std::string::npos);
  ::close(host);
  // A descriptor's magic link: the same checks.
  std::string lerr;
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(devnull, 0);
  EXPECT_EQ(observer::open_regular_link("/proc/self/fd/" + std::to_string(devnull), lerr), -1);
  EXPECT_NE(lerr.find("character device"), std::string::npos) << lerr;
  ::close(devnull);
  int self = observer::open_regular_link("/proc/self/exe", lerr);
  EXPECT_GE(self, 0) << lerr;
  if (self >= 0) ::close(self);
}

// One observer serves several listeners (the init's and exec sessions'):
// a process that loads the observer filter and hands its listener over is
// recorded with the tag it was added with; its listener is dropped when the
// process is gone; only seccomp listeners are accepted.
TEST(ExecObserver, ServesAddedListenersWithTheirTags) {
  auto prog = seccomp::exec_observer().bpf();
  std::mutex mu;
  std::vector<json> events;
  observer::ExecObserver obs(UniqueFd(), "", [&](const std::string& type, json data) {
    std::lock_guard<std::mutex> l(mu);
    if (type == "process.exec") events.push_back(std::move(data));
  });
  EXPECT_EQ(obs.listeners(), 0u);
  auto sp = make_socketpair(SOCK_SEQPACKET);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    sp.first.reset();
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) ::_exit(2);
    int fd = seccomp::load_program(prog);
    if (fd < 0) ::_exit(3);
    send_fds(sp.second.get(), "exec", &fd, 1);
    ::close(fd);
    char* argv[] = {const_cast<char*>("true"), const_cast<char*>("from-session"), nullptr};
    ::execv("/bin/true", argv);
    ::_exit(4);
  }
  sp.second.reset();
  std::vector<UniqueFd> fds;
  EXPECT_EQ(recv_fds(sp.first.get(), fds), "exec");
  ASSERT_EQ(fds.size(), 1u);
  EXPECT_TRUE(observer::is_seccomp_listener(fds[0].get()));
  EXPECT_FALSE(observer::is_seccomp_listener(sp.first.get()));
  EXPECT_TRUE(obs.add(std::move(fds[0]), {{"session", "s1"}}));
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  for (int i = 0; i < 200 && obs.listeners() > 0; i++) ::usleep(10000);
  EXPECT_EQ(obs.listeners(), 0u);  // HUP: the process under the filter is gone
  obs.stop();
  EXPECT_FALSE(obs.add(UniqueFd(::dup(0)), json::object()));  // stopped
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0]["session"], "s1");
  EXPECT_EQ(events[0]["path"], "/bin/true");
  EXPECT_EQ(events[0]["argv"], json::array({"true", "from-session"}));
  EXPECT_EQ(events[0]["pid"], child);
}

namespace {

// A child under the observer filter, its listener returned; the child
// runs `body` once the parent answers on the socket.
struct Observed {
  pid_t pid = -1;
  UniqueFd listener;
  UniqueFd go;
};

template <typename F>
Observed observed_child(F body) {
  auto prog = seccomp::exec_observer().bpf();
  auto sp = make_socketpair(SOCK_SEQPACKET);
  Observed o;
  o.pid = ::fork();
  if (o.pid == 0) {
    sp.first.reset();
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) ::_exit(2);
    int fd = seccomp::load_program(prog);
    if (fd < 0) ::_exit(3);
    send_fds(sp.second.get(), "exec", &fd, 1);
    ::close(fd);
    char c;
    if (::read(sp.second.get(), &c, 1) != 1) ::_exit(5);
    ::_exit(body());
  }
  sp.second.reset();
  std::vector<UniqueFd> fds;
  recv_fds(sp.first.get(), fds);
  if (!fds.empty()) o.listener = std::move(fds[0]);
  o.go = std::move(sp.first);
  return o;
}

int wait_exit(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

// A PATH lookup's misses are failed attempts with the errno the process
// got, apart from the program that ran.
TEST(ExecObserver, MissingPathsAreFailedAttemptsWithTheirErrno) {
  std::mutex mu;
  std::vector<std::pair<std::string, json>> events;
  observer::ExecObserver obs(UniqueFd(), "", [&](const std::string& type, json data) {
    std::lock_guard<std::mutex> l(mu);
    events.emplace_back(type, std::move(data));
  });
  auto o = observed_child([] {
    char* argv[] = {const_cast<char*>("x"), nullptr};
    ::execv("/nonexistent-dir/x", argv);
    if (errno != ENOENT) return 10;
    ::execv("/etc/passwd/x", argv);
    if (errno != ENOTDIR) return 11;
    char* targv[] = {const_cast<char*>("true"), nullptr};
    ::execv("/bin/true", targv);
    return 12;
  });
  ASSERT_TRUE(o.listener);
  ASSERT_TRUE(obs.add(std::move(o.listener), {{"session", "s2"}}));
  ASSERT_EQ(::write(o.go.get(), "g", 1), 1);
  EXPECT_EQ(wait_exit(o.pid), 0);
  for (int i = 0; i < 200 && obs.listeners() > 0; i++) ::usleep(10000);
  obs.stop();
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].first, "process.exec_failed");
  EXPECT_EQ(events[0].second["errno"], "ENOENT");
  EXPECT_EQ(events[0].second["path"], "/nonexistent-dir/x");
  EXPECT_EQ(events[0].second["session"], "s2");
  EXPECT_FALSE(events[0].second.contains("sha256"));
  EXPECT_EQ(events[1].first, "process.exec_failed");
  EXPECT_EQ(events[1].second["errno"], "ENOTDIR");
  EXPECT_EQ(events[2].first, "process.exec");
  EXPECT_EQ(events[2].second["path"], "/bin/true");
  EXPECT_TRUE(events[2].second.contains("sha256"));
}

// Nobody takes the listener (the supervisor is gone, or refused it): the
// exec fails with ENOSYS, nothing runs unrecorded, nothing waits forever.
TEST(ExecObserver, ListenerNobodyTakesFailsTheExecClosed) {
  auto o = observed_child([] {
    char* argv[] = {const_cast<char*>("true"), nullptr};
    ::execv("/bin/true", argv);
    return errno == ENOSYS ? 0 : 20;
  });
  ASSERT_TRUE(o.listener);
  o.listener.reset();
  ASSERT_EQ(::write(o.go.get(), "g", 1), 1);
  EXPECT_EQ(wait_exit(o.pid), 0);
}

// A process killed while its exec waits for the observer, and a listener
// closed while an exec waits on it: neither the process nor the observer
// hangs, and the observer drops the listener.
TEST(ExecObserver, DyingProcessAndStopWhileAnExecWaits) {
  auto o = observed_child([] {
    char* argv[] = {const_cast<char*>("true"), nullptr};
    ::execv("/bin/true", argv);
    return 30;
  });
  ASSERT_TRUE(o.listener);
  ASSERT_EQ(::write(o.go.get(), "g", 1), 1);
  // The exec now waits on a listener nobody serves yet.
  for (int i = 0; i < 100; i++) {
    std::string st = read_file("/proc/" + std::to_string(o.pid) + "/wchan");
    if (st.find("seccomp") != std::string::npos) break;
    ::usleep(10000);
  }
  ::kill(o.pid, SIGKILL);
  EXPECT_EQ(wait_exit(o.pid), 128 + SIGKILL);
  std::vector<json> events;
  observer::ExecObserver obs(UniqueFd(), "", [&](const std::string&, json d) { events.push_back(d); });
  ASSERT_TRUE(obs.add(std::move(o.listener), json::object()));
  for (int i = 0; i < 200 && obs.listeners() > 0; i++) ::usleep(10000);
  EXPECT_EQ(obs.listeners(), 0u);
  obs.stop();
  EXPECT_TRUE(events.empty());
}

// The kernel's account (fanotify): a child in a mount namespace of its own
// with a tmpfs; the observer marks that namespace's mounts. What is
// recorded is the file the kernel opened: a copy on the tmpfs, a memfd
// executed through /proc/self/fd/N (inode mark), and an exec while the file
// is open for writing is refused with ETXTBSY and recorded as a failure.
// argv comes from the BPF program (`bpf`: AGENTSHIM_EXEC_ARGV_BPF unset, the
// kernel here allows it) or, with it off, from the new image's cmdline.
static void kernel_opens_are_recorded(bool argv_bpf) {
  struct Env {
    explicit Env(bool on) {
      if (!on) ::setenv("AGENTSHIM_EXEC_ARGV_BPF", "off", 1);
    }
    ~Env() { ::unsetenv("AGENTSHIM_EXEC_ARGV_BPF"); }
  } env(argv_bpf);
  testutil::TempDir dir;
  const std::string mnt = dir.path + "/mnt";
  ASSERT_EQ(::mkdir(mnt.c_str(), 0755), 0);
  const std::string body = read_file("/bin/true");
  const std::string want = attest::hex(attest::sha256(body + "Z"));
  auto prog = seccomp::exec_observer().bpf();
  auto sp = make_socketpair(SOCK_SEQPACKET);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    sp.first.reset();
    if (::unshare(CLONE_NEWNS) < 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0 ||
        ::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=16m") < 0)
      ::_exit(2);
    const std::string copy = mnt + "/prog";
    int out = ::open(copy.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    int m = static_cast<int>(::syscall(SYS_memfd_create, "payload", 0));
    std::string data = body + "Z";
    if (out < 0 || m < 0 || ::write(out, data.data(), data.size()) != static_cast<ssize_t>(data.size()) ||
        ::write(m, data.data(), data.size()) != static_cast<ssize_t>(data.size()))
      ::_exit(3);
    ::close(out);
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) ::_exit(4);
    int fd = seccomp::load_program(prog);
    if (fd < 0) ::_exit(5);
    send_fds(sp.second.get(), "exec", &fd, 1);
    ::close(fd);
    char c;
    if (::read(sp.second.get(), &c, 1) != 1) ::_exit(6);
    auto run = [](const std::string& path, const char* tag) {
      pid_t c = ::fork();
      if (c == 0) {
        char* argv[] = {const_cast<char*>("prog"), const_cast<char*>(tag), nullptr};
        ::execv(path.c_str(), argv);
        ::_exit(100 + errno);
      }
      int st = 0;
      ::waitpid(c, &st, 0);
      return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    };
    if (run(copy, "copy") != 0) ::_exit(7);
    if (run("/proc/self/fd/" + std::to_string(m), "memfd") != 0) ::_exit(8);
    int w = ::open(copy.c_str(), O_WRONLY | O_CLOEXEC);
    if (run(copy, "busy") != 100 + ETXTBSY) ::_exit(9);
    ::close(w);
    ::_exit(0);
  }
  sp.second.reset();
  std::vector<UniqueFd> fds;
  ASSERT_EQ(recv_fds(sp.first.get(), fds), "exec");
  std::mutex mu;
  std::vector<std::pair<std::string, json>> events;
  {
    observer::ExecObserver obs(
        UniqueFd(), "",
        [&](const std::string& type, json data) {
          std::lock_guard<std::mutex> l(mu);
          events.emplace_back(type, std::move(data));
        },
        nullptr, pid);
    ASSERT_TRUE(obs.add(std::move(fds[0]), json::object()));
    ASSERT_EQ(::write(sp.first.get(), "g", 1), 1);
    EXPECT_EQ(wait_exit(pid), 0);
    for (int i = 0; i < 200 && obs.listeners() > 0; i++) ::usleep(10000);
    obs.stop();
  }
  std::lock_guard<std::mutex> l(mu);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events[0].first, "exec.watch");
  EXPECT_EQ(events[0].second["mechanism"], "fanotify") << events[0].second.dump();
  if (argv_bpf) {
    EXPECT_EQ(events[0].second["argv"], "bpf") << events[0].second.dump();
    EXPECT_FALSE(events[0].second.contains("argv_error"));
  } else {
    EXPECT_EQ(events[0].second["argv"], "cmdline");
    EXPECT_EQ(events[0].second.value("argv_error", ""), "disabled%20(AGENTSHIM_EXEC_ARGV_BPF=off)");
  }
  std::map<std::string, json> by_tag;
  for (const auto& [type, d] : events)
    if (d.contains("argv") && d["argv"].size() == 2) by_tag[type + ":" + d["argv"][1].get<std::string>()] = d;
  ASSERT_TRUE(by_tag.count("process.exec:copy")) << events.size();
  EXPECT_EQ(by_tag["process.exec:copy"]["sha256"], want);
  EXPECT_EQ(by_tag["process.exec:copy"]["observed"], "kernel");
  ASSERT_TRUE(by_tag.count("process.exec:memfd"));
  EXPECT_EQ(by_tag["process.exec:memfd"]["sha256"], want);
  for (const char* t : {"process.exec:copy", "process.exec:memfd"}) {
    const json& d = by_tag[t];
    EXPECT_EQ(d["argv"][0], "prog");
    if (argv_bpf) {
      EXPECT_EQ(d["argv_source"], "bpf") << d.dump();
      EXPECT_FALSE(d.contains("argv_fallback")) << d.dump();
    } else {
      // /bin/true exits at once: read from its image, or the caller's.
      EXPECT_TRUE(d["argv_source"] == "image" || d["argv_source"] == "caller") << d.dump();
    }
  }
  bool busy = false;
  for (const auto& [type, d] : events)
    if (type == "process.exec_failed" && d.value("errno", "") == "ETXTBSY") busy = true;
  EXPECT_TRUE(busy);
}

TEST(ExecObserver, KernelOpensAreRecordedWithTheirHashes) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (a mount namespace, fanotify)";
  kernel_opens_are_recorded(true);
}

// Without the BPF program (what a kernel without BTF or a supervisor
// without CAP_BPF gets): the run is recorded the same, argv from cmdline.
TEST(ExecObserver, WithoutTheBpfProgramArgvComesFromCmdline) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (a mount namespace, fanotify)";
  kernel_opens_are_recorded(false);
}
