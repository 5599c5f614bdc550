// Running a helper program (an OCI hook, ps(1)) and collecting what it said:
// posix_spawn, argv passed as a vector (never through a shell), stdin fed
// from a string, stdout and stderr captured, an optional timeout enforced by
// SIGKILL, the child always reaped. The one place agentshim starts a program
// it does not control.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace agentshim {

struct SpawnSpec {
  // argv[0] is what the program sees as its name.
  std::vector<std::string> argv;
  // The file executed: an absolute path, or "" to look argv[0] up in PATH.
  std::string path;
  // nullopt: the caller's environment; else the whole environment.
  std::optional<std::vector<std::string>> env;
  std::string input;               // written to its stdin, which is then closed
  long long timeout_ms = -1;       // < 0: no limit
  std::size_t max_output = 65536;  // bytes kept per stream (the rest is read and dropped)
};

struct SpawnResult {
  int status = 0;  // waitpid status
  bool timed_out = false;
  std::string out, err;
  bool succeeded() const;  // exited with status 0, no timeout
  // "exit status N" / "killed by signal N" / "timed out".
  std::string describe() const;
};

// Throws SysError when the program cannot be started for a reason other than
// exec's (pipes, fork); an exec failure (no such file, not executable) is
// reported as exit status 127 with "exec <path>: <reason>" in err, as a shell
// would.
SpawnResult spawn_and_wait(const SpawnSpec& s);

}  // namespace agentshim
