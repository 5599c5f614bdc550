#include "sandbox/sockowner.h"

#include <dirent.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common/error.h"

namespace agentshim::sockowner {

UniqueFd open_diag() {
  UniqueFd fd(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!fd) throw_errno("socket(AF_NETLINK, NETLINK_SOCK_DIAG)");
  return fd;
}

std::optional<Found> lookup_tcp4(int diag, const Tcp4& c) {
  struct {
    nlmsghdr nh;
    inet_diag_req_v2 req;
  } msg{};
  msg.nh.nlmsg_len = sizeof msg;
  msg.nh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nh.nlmsg_flags = NLM_F_REQUEST;  // one socket, by its id (no NLM_F_DUMP)
  msg.nh.nlmsg_seq = 1;
  msg.req.sdiag_family = AF_INET;
  msg.req.sdiag_protocol = IPPROTO_TCP;
  msg.req.idiag_states = ~0U;
  msg.req.id.idiag_sport = htons(c.sport);
  msg.req.id.idiag_dport = htons(c.dport);
  std::memcpy(&msg.req.id.idiag_src[0], &c.src, sizeof c.src);
  std::memcpy(&msg.req.id.idiag_dst[0], &c.dst, sizeof c.dst);
  msg.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  msg.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(diag, &msg, sizeof msg, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0)
    throw_errno("sock_diag: sendto");
  alignas(nlmsghdr) char buf[8192];
  for (;;) {
    ssize_t n = ::recv(diag, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("sock_diag: recv");
    int len = static_cast<int>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_type == NLMSG_ERROR) {
        // ENOENT: no such socket (closed, or not in this namespace).
        if (h->nlmsg_len >= NLMSG_LENGTH(sizeof(nlmsgerr))) {
          const auto* e = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
          if (e->error == 0 || e->error == -ENOENT) return std::nullopt;
          errno = -e->error;
          throw_errno("sock_diag: lookup of a TCP connection");
        }
        return std::nullopt;
      }
      if (h->nlmsg_type == NLMSG_DONE) return std::nullopt;
      if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg)))
        continue;
      const auto* m = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
      if (m->idiag_inode == 0) return std::nullopt;  // a TIME_WAIT or not-yet-owned socket
      return Found{m->idiag_inode, m->idiag_uid};
    }
    return std::nullopt;
  }
}

namespace {
bool all_digits(const char* s) {
  if (!*s) return false;
  for (; *s; ++s)
    if (*s < '0' || *s > '9') return false;
  return true;
}
}  // namespace

pid_t holder_of(uint64_t inode, const std::vector<pid_t>& candidates) {
  const std::string want = "socket:[" + std::to_string(inode) + "]";
  char target[64];
  for (pid_t pid : candidates) {
    std::string dir = "/proc/" + std::to_string(pid) + "/fd";
    DIR* d = ::opendir(dir.c_str());
    if (!d) continue;
    pid_t found = 0;
    while (dirent* e = ::readdir(d)) {
      if (!all_digits(e->d_name)) continue;
      ssize_t n = ::readlinkat(::dirfd(d), e->d_name, target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = 0;
      if (want == target) {
        found = pid;
        break;
      }
    }
    ::closedir(d);
    if (found) return found;
  }
  return 0;
}

std::vector<pid_t> pids_in_netns(uint64_t netns_ino) {
  std::vector<pid_t> out;
  DIR* d = ::opendir("/proc");
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    if (!all_digits(e->d_name)) continue;
    struct stat st {};
    std::string ns = std::string("/proc/") + e->d_name + "/ns/net";
    if (::stat(ns.c_str(), &st) == 0 && st.st_ino == netns_ino)
      out.push_back(static_cast<pid_t>(std::stol(e->d_name)));
  }
  ::closedir(d);
  return out;
}

}  // namespace agentshim::sockowner
