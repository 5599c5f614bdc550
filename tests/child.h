// Run a piece of a test in a forked child (seccomp filters, privileges and
// other one-way changes must not reach the test process).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

namespace agentshim::testutil {

// Fork; the child runs `body` and _exits with its return value. Returns the
// exit code, -1 if fork failed, -2 if waiting failed, or 1000 + the signal
// when the child was killed.
template <typename F>
int in_child(F body) {
  pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) ::_exit(body());
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -2;
  if (WIFSIGNALED(status)) return 1000 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

}  // namespace agentshim::testutil
