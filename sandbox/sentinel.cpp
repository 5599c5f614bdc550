#include "sandbox/sentinel.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <optional>

#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "sandbox/cgroups/cgroups.h"
#include "sandbox/process.h"
#include "sandbox/supervisor.h"
#include "sandbox/sync.h"

namespace agentshim::sentinel {
namespace {

using json = nlohmann::json;

// The sentinel moves itself into the container's cgroup when the supervisor
// has made it (a process moving itself joins v1 hierarchies without a grace
// period; see cgroups::Manager::join_self). A supervisor that fails first
// just closes the socket.
// One request from the supervisor, answered: `act` on a message of type
// Request, then Reply (or Failure with the error). Anything else, or a
// supervisor that fails first and just closes the socket: no answer.
template <typename Request, typename Reply, typename Act>
void answer(int sock, Act act) {
  std::optional<sync::Message> m;
  try {
    m = sync::recv(sock);
  } catch (...) {
    return;
  }
  const auto* req = m ? std::get_if<Request>(&*m) : nullptr;
  if (!req) return;
  sync::Message reply = Reply{};
  try {
    act(*req);
  } catch (const std::exception& e) {
    reply = sync::Failure{e.what()};
  }
  try {
    sync::send(sock, reply);
  } catch (...) {
  }
}

void sentinel_join_cgroup(int sock) {
  answer<sync::Join, sync::Joined>(sock, [](const sync::Join& join) {
    auto cg = cgroups::Manager::load(join.cgroup);
    cg->join_self(cg->v2_only());
  });
}

// The sentinel enters the init's namespaces when the supervisor says so
// (after the init has made them all, before `create` returns): clients
// that reach the container through the --pid-file pid (nsenter, CNI
// plugins, `podman top`, /proc/PID/net, CRI joining a pod's namespaces)
// then find the container's, never the host's. Its pid namespace is
// reached through the init instead (peers.h). Entering uses a pidfd, so
// the user namespace (if the container has its own) comes first and every
// other type follows in one call; a type the sentinel already shares is
// left out (re-entering one's own user namespace is EINVAL).
void enter_namespaces(pid_t pid) {
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) throw_errno("pidfd_open " + std::to_string(pid) + " (the container init)");
  struct Kind {
    const char* name;
    int flag;
  };
  int flags = 0;
  for (Kind k : {Kind{"user", CLONE_NEWUSER}, Kind{"mnt", CLONE_NEWNS}, Kind{"net", CLONE_NEWNET},
                 Kind{"ipc", CLONE_NEWIPC}, Kind{"uts", CLONE_NEWUTS}, Kind{"cgroup", CLONE_NEWCGROUP}}) {
    struct stat mine {
    }, theirs{};
    std::string p = "/proc/" + std::to_string(pid) + "/ns/" + k.name;
    if (::stat((std::string("/proc/self/ns/") + k.name).c_str(), &mine) < 0) {
      if (errno == ENOENT) continue;  // a kernel without this namespace type
      throw_errno(std::string("stat /proc/self/ns/") + k.name);
    }
    if (::stat(p.c_str(), &theirs) < 0) throw_errno("stat " + p);
    if (mine.st_dev != theirs.st_dev || mine.st_ino != theirs.st_ino) flags |= k.flag;
  }
  if (flags && ::setns(pidfd.get(), flags) < 0)
    throw_errno("setns into the namespaces of the container init (pid " + std::to_string(pid) + ")");
}

void sentinel_enter(int sock) {
  answer<sync::Enter, sync::Entered>(sock, [](const sync::Enter& e) { enter_namespaces(e.pid); });
}

// The sentinel: the process `create` forked, whose pid goes to --pid-file.
// It joins the container's cgroup (so a client reading stats and OOM events
// through that pid finds the container's), stays single-threaded and tiny,
// forwards every signal it gets to the supervisor, and exits with the
// supervisor's status — which is the container's. The supervisor is its
// only child and dies with it (PDEATHSIG), taking the container with it.
[[noreturn]] void sentinel_main(pid_t worker) {
  prctl(PR_SET_NAME, "agentshim-run");
  int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull >= 0) {
    for (int fd = 0; fd < 3; fd++) ::dup2(devnull, fd);
    ::close(devnull);
  }
  ::syscall(SYS_close_range, 3, ~0U, 0);
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, nullptr);
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(worker, &status, WNOHANG);
    if (r < 0 && errno == ECHILD) ::_exit(1);
    if (r == worker) {
      if (WIFEXITED(status)) ::_exit(WEXITSTATUS(status));
      ::_exit(128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0));
    }
    siginfo_t si{};
    struct timespec ts {
      1, 0
    };
    int sig = ::sigtimedwait(&all, &si, &ts);
    if (sig <= 0 || sig == SIGCHLD) continue;
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    // The supervisor, done with the container: its status, now (the record
    // is finished afterwards; see Supervisor::release_sentinel).
    if (sig == kReleaseSignal && si.si_code == SI_QUEUE && si.si_pid == worker)
      ::_exit(si.si_value.sival_int & 0xff);
    ::kill(worker, sig);
  }
}

}  // namespace

void run(setup::Setup s) {
  process::set_oom_score_adj(0, -1000);
  ::signal(SIGCHLD, SIG_DFL);  // a caller that ignores SIGCHLD must not make us lose the status
  pid_t sentinel = ::getpid();
  auto join = make_socketpair(SOCK_SEQPACKET);
  pid_t worker = ::fork();
  if (worker < 0) {
    log::error(std::string("fork supervisor: ") + std::strerror(errno));
    ::_exit(1);
  }
  if (worker == 0) {
    prctl(PR_SET_PDEATHSIG, kSentinelLostSignal);
    if (::getppid() != sentinel) ::_exit(1);
    join.second.reset();
    supervisor::run(s, sentinel, std::move(join.first));
  }
  join.first.reset();
  // The supervisor owns every descriptor of the setup; the sentinel keeps none.
  s.cli_sock.reset();
  s.console_sock.reset();
  s.exec_fifo.reset();
  s.state_dirfd.reset();
  sentinel_join_cgroup(join.second.get());
  sentinel_enter(join.second.get());
  join.second.reset();
  sentinel_main(worker);
}

}  // namespace agentshim::sentinel
