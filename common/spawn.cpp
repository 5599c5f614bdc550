#include "common/spawn.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "common/fd.h"

extern char** environ;

namespace agentshim {
namespace {

long long now_ms() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

// posix_spawn's attributes and file actions, destroyed on every path.
struct Attr {
  posix_spawnattr_t a;
  Attr() { ::posix_spawnattr_init(&a); }
  ~Attr() { ::posix_spawnattr_destroy(&a); }
};
struct Actions {
  posix_spawn_file_actions_t a;
  Actions() { ::posix_spawn_file_actions_init(&a); }
  ~Actions() { ::posix_spawn_file_actions_destroy(&a); }
};

// Kills and reaps a child that was not waited for (an exception on the way).
class Reaper {
 public:
  explicit Reaper(pid_t pid) : pid_(pid) {}
  ~Reaper() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  int wait() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = 0;
    return status;
  }

 private:
  pid_t pid_;
};

// Write the input without blocking on a program that does not read it and
// without dying of SIGPIPE when it exits first.
void feed(int fd, const std::string& input) {
  ::fcntl(fd, F_SETFL, O_NONBLOCK);
  sigset_t pipe_set, old_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  ::pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
  ssize_t wr = ::write(fd, input.data(), input.size());
  if (wr < 0 && errno == EPIPE) {
    struct timespec zero {};
    ::sigtimedwait(&pipe_set, nullptr, &zero);
  }
  ::pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
}

}  // namespace

bool SpawnResult::succeeded() const {
  return !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::string SpawnResult::describe() const {
  if (timed_out) return "timed out";
  return WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                           : "killed by signal " + std::to_string(WTERMSIG(status));
}

SpawnResult spawn_and_wait(const SpawnSpec& s) {
  if (s.argv.empty()) throw Error("spawn: empty argv");
  const std::string file = s.path.empty() ? s.argv[0] : s.path;
  auto in = make_pipe(O_CLOEXEC);
  auto out = make_pipe(O_CLOEXEC);
  auto err = make_pipe(O_CLOEXEC);
  std::vector<std::string> args = s.argv, env;
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (s.env) {
    env = *s.env;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
  }
  Actions fa;
  ::posix_spawn_file_actions_adddup2(&fa.a, in.first.get(), 0);
  ::posix_spawn_file_actions_adddup2(&fa.a, out.second.get(), 1);
  ::posix_spawn_file_actions_adddup2(&fa.a, err.second.get(), 2);
  Attr at;
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  // The program starts with no signal blocked and every signal at its default.
  ::posix_spawnattr_setsigmask(&at.a, &none);
  ::posix_spawnattr_setsigdefault(&at.a, &all);
  ::posix_spawnattr_setflags(&at.a, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = 0;
  char** e = s.env ? envp.data() : environ;
  int rc = s.path.empty() ? ::posix_spawnp(&pid, file.c_str(), &fa.a, &at.a, argv.data(), e)
                          : ::posix_spawn(&pid, file.c_str(), &fa.a, &at.a, argv.data(), e);
  if (rc != 0) {
    SpawnResult r;
    r.status = 127 << 8;  // as a shell reports a command it could not run
    r.err = "exec " + file + ": " + std::strerror(rc);
    return r;
  }
  Reaper child(pid);
  in.first.reset();
  out.second.reset();
  err.second.reset();
  feed(in.second.get(), s.input);
  in.second.reset();

  // Without a pidfd (a seccomp filter may refuse pidfd_open), the end of
  // both streams stands for the exit.
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  SpawnResult r;
  const long long deadline = s.timeout_ms >= 0 ? now_ms() + s.timeout_ms : -1;
  for (;;) {
    struct pollfd fds[3] = {
        {pidfd.get(), POLLIN, 0}, {out.first.get(), POLLIN, 0}, {err.first.get(), POLLIN, 0}};
    int wait = deadline < 0 ? -1 : static_cast<int>(std::max(0LL, deadline - now_ms()));
    int n = ::poll(fds, 3, wait);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("poll (" + file + ")");
    if (n == 0) {
      r.timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    char buf[4096];
    for (int i = 1; i < 3; i++) {
      if (!(fds[i].revents & (POLLIN | POLLHUP))) continue;
      UniqueFd& fd = i == 1 ? out.first : err.first;
      ssize_t got = ::read(fd.get(), buf, sizeof buf);
      if (got > 0) {
        std::string& dst = i == 1 ? r.out : r.err;
        if (dst.size() < s.max_output)
          dst.append(buf, std::min(static_cast<std::size_t>(got), s.max_output - dst.size()));
      } else if (got == 0) {
        fd.reset();
      }
    }
    // Done when it exited and both streams are drained (a process it left
    // behind may hold them open: what is not there now is not waited for).
    const bool drained = !out.first && !err.first;
    const bool exited = pidfd ? (fds[0].revents & POLLIN) != 0 : drained;
    if (exited && (drained || ((fds[1].revents | fds[2].revents) & (POLLIN | POLLHUP)) == 0)) break;
  }
  r.status = child.wait();
  return r;
}

}  // namespace agentshim
