#include "sandbox/control.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "common/error.h"
#include "common/log.h"

namespace agentshim::control {

UniqueFd listen(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) throw_errno("socket (control)");
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) throw Error("control socket path too long: " + path);
  std::strcpy(addr.sun_path, path.c_str());
  ::unlink(path.c_str());
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) throw_errno("bind " + path);
  ::chmod(path.c_str(), 0600);
  if (::listen(fd.get(), 16) < 0) throw_errno("listen " + path);
  return fd;
}

json notify(const std::string& state_dir, const json& msg, bool wait_reply, int reply_timeout_s) {
  std::string path = state_dir + "/supervisor.sock";
  UniqueFd c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return {{"ok", false}, {"error", "socket path too long"}};
  std::strcpy(addr.sun_path, path.c_str());
  if (!c || ::connect(c.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    log::debug("supervisor not reachable at " + path + ": " + std::strerror(errno));
    return {{"ok", false}, {"error", std::strerror(errno)}};
  }
  struct timeval tv {
    reply_timeout_s, 0
  };
  if (reply_timeout_s > 0) ::setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string out = msg.dump() + "\n";
  if (::send(c.get(), out.data(), out.size(), MSG_NOSIGNAL) < 0)
    return {{"ok", false}, {"error", "send failed"}};
  if (!wait_reply) return {{"ok", true}, {"queued", true}};
  std::string buf;
  char tmp[4096];
  while (buf.find('\n') == std::string::npos) {
    ssize_t r = ::read(c.get(), tmp, sizeof tmp);
    if (r <= 0) break;
    buf.append(tmp, static_cast<std::size_t>(r));
  }
  try {
    return json::parse(buf.substr(0, buf.find('\n')));
  } catch (...) {
    return {{"ok", false}, {"error", "no reply"}};
  }
}

}  // namespace agentshim::control
