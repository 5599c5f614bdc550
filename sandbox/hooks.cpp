#include "sandbox/hooks.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "common/log.h"
#include "common/util.h"

namespace agentshim::hooks {
namespace {

long long now_ms() {
  struct timespec ts {};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

void run_one(const json& h, const std::string& kind, std::size_t idx, const std::string& state) {
  std::string path = h["path"];
  std::vector<std::string> args, env;
  if (h.contains("args") && h["args"].is_array())
    for (const auto& a : h["args"]) args.push_back(a);
  if (args.empty()) args.push_back(path);
  // As runc: a hook without `env` gets the runtime's own environment; an
  // `env` (even empty) is the whole environment.
  if (h.contains("env") && h["env"].is_array()) {
    for (const auto& e : h["env"]) env.push_back(e);
  } else {
    for (char** e = environ; e && *e; e++) env.emplace_back(*e);
  }
  long long timeout_ms =
      h.contains("timeout") && h["timeout"].is_number_integer() ? h["timeout"].get<long long>() * 1000 : -1;
  std::string what = kind + " hook #" + std::to_string(idx) + " (" + path + ")";

  auto in = make_pipe(O_CLOEXEC);
  auto out = make_pipe(O_CLOEXEC);
  auto err = make_pipe(O_CLOEXEC);
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);

  pid_t pid = ::fork();
  if (pid < 0) throw_errno("fork for " + what);
  if (pid == 0) {
    ::dup2(in.first.get(), 0);
    ::dup2(out.second.get(), 1);
    ::dup2(err.second.get(), 2);
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    ::execve(path.c_str(), argv.data(), envp.data());
    std::string msg = "exec " + path + ": " + std::strerror(errno);
    ssize_t r = ::write(2, msg.data(), msg.size());
    (void)r;
    ::_exit(127);
  }
  in.first.reset();
  out.second.reset();
  err.second.reset();
  // The hook may not read stdin; never block on it.
  ::fcntl(in.second.get(), F_SETFL, O_NONBLOCK);
  // A hook that exits without reading stdin must not kill us with SIGPIPE:
  // block it around the write, drop a pending one, treat EPIPE as fine.
  sigset_t pipe_set, old_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  ::pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
  ssize_t wr = ::write(in.second.get(), state.data(), state.size());
  if (wr < 0 && errno == EPIPE) {
    struct timespec zero {};
    ::sigtimedwait(&pipe_set, nullptr, &zero);
    wr = static_cast<ssize_t>(state.size());
  }
  ::pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
  (void)wr;
  in.second.reset();

  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  std::string sout, serr;
  long long deadline = timeout_ms >= 0 ? now_ms() + timeout_ms : -1;
  bool timed_out = false;
  for (;;) {
    struct pollfd fds[3] = {{pidfd.get(), POLLIN, 0}, {out.first.get(), POLLIN, 0}, {err.first.get(), POLLIN, 0}};
    int wait = deadline < 0 ? -1 : static_cast<int>(std::max(0LL, deadline - now_ms()));
    int n = ::poll(fds, 3, wait);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) {
      timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    char buf[4096];
    for (int i = 1; i < 3; i++) {
      if (fds[i].revents & (POLLIN | POLLHUP)) {
        int fd = i == 1 ? out.first.get() : err.first.get();
        ssize_t r = ::read(fd, buf, sizeof buf);
        if (r > 0) {
          std::string& dst = i == 1 ? sout : serr;
          if (dst.size() < 65536) dst.append(buf, static_cast<std::size_t>(r));
        } else if (r == 0) {
          if (i == 1) out.first.reset(); else err.first.reset();
        }
      }
    }
    if (fds[0].revents & POLLIN) break;
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) throw Error(what + ": timed out after " + std::to_string(timeout_ms / 1000) + "s");
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
  std::string st = WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                     : "killed by signal " + std::to_string(WTERMSIG(status));
  throw Error(what + ": " + st + ", stdout: " + trim(sout) + ", stderr: " + trim(serr));
}

}  // namespace

void run(const json& config, const std::string& kind, const json& state) {
  if (!config.contains("hooks") || !config["hooks"].is_object()) return;
  const json& hooks = config["hooks"];
  if (!hooks.contains(kind) || !hooks[kind].is_array()) return;
  std::string s = state.dump();
  std::size_t i = 0;
  for (const auto& h : hooks[kind]) run_one(h, kind, i++, s);
}

std::size_t run_all(const json& config, const std::string& kind, const json& state) {
  if (!config.contains("hooks") || !config["hooks"].is_object()) return 0;
  const json& hooks = config["hooks"];
  if (!hooks.contains(kind) || !hooks[kind].is_array()) return 0;
  std::string s = state.dump();
  std::size_t i = 0, failed = 0;
  for (const auto& h : hooks[kind]) {
    try {
      run_one(h, kind, i++, s);
    } catch (const std::exception& e) {
      // A warning where the operator sees it: stderr, and --log when given.
      failed++;
      const std::string msg =
          std::string(e.what()) + " (continuing: " + kind + " hook failures are warnings)";
      log::warn(msg);
      std::string line = "agentshim: warning: " + msg + "\n";
      ssize_t r = ::write(2, line.data(), line.size());
      (void)r;
    }
  }
  return failed;
}

}  // namespace agentshim::hooks
