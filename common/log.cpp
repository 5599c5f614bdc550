#include "common/log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>

namespace agentshim::log {
namespace {
std::mutex g_mu;
Options g_opts;
int g_fd = -1;

const char* level_name(Level l) {
  switch (l) {
    case Level::debug:
      return "debug";
    case Level::info:
      return "info";
    case Level::warning:
      return "warning";
    case Level::error:
      return "error";
  }
  return "info";
}

void write_all(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    off += static_cast<std::size_t>(n);
  }
}
}  // namespace

std::string now_rfc3339() {
  struct timespec ts {};
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm {};
  gmtime_r(&ts.tv_sec, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%09ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec);
  return buf;
}

void configure(const Options& opts) {
  std::lock_guard lk(g_mu);
  g_opts = opts;
  if (g_fd >= 0) ::close(g_fd);
  g_fd = -1;
  if (!opts.file.empty()) {
    g_fd = ::open(opts.file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  }
}

int fd() {
  std::lock_guard lk(g_mu);
  return g_fd;
}

void reopen() {
  std::lock_guard lk(g_mu);
  if (g_opts.file.empty()) return;
  if (g_fd >= 0 && fcntl(g_fd, F_GETFD) >= 0) return;
  g_fd = ::open(g_opts.file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

void write(Level lvl, const std::string& msg) {
  std::lock_guard lk(g_mu);
  if (lvl == Level::debug && !g_opts.debug) return;
  std::string line;
  if (g_opts.json) {
    nlohmann::json j = {{"level", level_name(lvl)}, {"msg", msg}, {"time", now_rfc3339()}};
    line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  } else {
    nlohmann::json m = msg;
    line = "time=\"" + now_rfc3339() + "\" level=" + level_name(lvl) +
           " msg=" + m.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  if (g_fd >= 0)
    write_all(g_fd, line);
  else if (g_opts.debug)
    write_all(2, line);
}

void warn_user(const std::string& m) {
  write(Level::warning, m);
  bool on_stderr;
  {
    std::lock_guard lk(g_mu);
    on_stderr = g_fd < 0 && g_opts.debug;  // write() put it there already
  }
  if (!on_stderr) write_all(2, "agentshim: warning: " + m + "\n");
}

}  // namespace agentshim::log
