// Process-wide logging in runc's formats.
//
// text: `time="..." level=info msg="..."` (logrus text shape, as runc writes)
// json: one object per line {"level":"error","msg":"...","time":"..."}; containerd
// takes the error it reports from the last "level":"error" line.
#pragma once

#include <string>

namespace agentshim::log {

enum class Level { debug = 0, info, warning, error };

struct Options {
  std::string file;  // empty: stderr only for warnings/errors
  bool json = false;
  bool debug = false;
};

void configure(const Options& opts);
// Re-open the log file after fork when descriptors were closed (no-op when
// no file is configured).
void reopen();
void write(Level lvl, const std::string& msg);
// The log file descriptor (-1 when logging to stderr), so a forked daemon
// can keep it while closing everything else it inherited.
int fd();

inline void debug(const std::string& m) {
  write(Level::debug, m);
}
inline void info(const std::string& m) {
  write(Level::info, m);
}
inline void warn(const std::string& m) {
  write(Level::warning, m);
}
// A warning the user of a client should see (a policy decision that changed
// what they asked for): in the log, where containerd, Docker and Podman read
// a runtime's messages, and on stderr, which `agentshim run`, Podman and
// the shims show.
void warn_user(const std::string& m);
inline void error(const std::string& m) {
  write(Level::error, m);
}

// RFC 3339 UTC timestamp with nanoseconds, e.g. 2026-11-23T03:19:57.123456789Z.
std::string now_rfc3339();

}  // namespace agentshim::log
