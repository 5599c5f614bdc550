#include "sandbox/sockowner.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>

#include "common/error.h"
#include "common/util.h"
#include "sandbox/peers.h"

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
    // Unsigned, as NLMSG_OK compares it with nlmsg_len; a multiple of NLMSG_ALIGNTO so
    // NLMSG_NEXT (which subtracts an aligned length no larger than it) never wraps.
    auto len = static_cast<unsigned>(n) & ~(NLMSG_ALIGNTO - 1U);
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

struct DirCloser {
  void operator()(DIR* d) const { ::closedir(d); }
};
using Dir = std::unique_ptr<DIR, DirCloser>;

std::optional<std::string> cgroup_of(pid_t pid) {
  try {
    return read_file("/proc/" + std::to_string(pid) + "/cgroup");
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

uint64_t netns_of(pid_t pid) {
  struct stat st {};
  std::string ns = "/proc/" + std::to_string(pid) + "/ns/net";
  return ::stat(ns.c_str(), &st) == 0 ? st.st_ino : 0;
}

}  // namespace

std::vector<pid_t> holders_of(uint64_t inode, const std::vector<pid_t>& candidates, bool* exhausted) {
  const std::string want = "socket:[" + std::to_string(inode) + "]";
  std::vector<pid_t> out;
  std::size_t seen = 0;
  if (exhausted) *exhausted = false;
  char target[64];
  for (pid_t pid : candidates) {
    Dir d(::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str()));
    if (!d) continue;
    while (dirent* e = ::readdir(d.get())) {
      if (!all_digits(e->d_name)) continue;
      if (++seen > kMaxFdEntries) {
        if (exhausted) *exhausted = true;
        return out;
      }
      ssize_t n = ::readlinkat(::dirfd(d.get()), e->d_name, target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = 0;
      if (want == target) {
        out.push_back(pid);
        if (out.size() >= 16) return out;
        break;
      }
    }
  }
  return out;
}

pid_t holder_of(uint64_t inode, const std::vector<pid_t>& candidates) {
  auto h = holders_of(inode, candidates);
  return h.empty() ? 0 : h.front();
}

std::vector<pid_t> pids_in_netns(uint64_t netns_ino) {
  std::vector<pid_t> out;
  Dir d(::opendir("/proc"));
  if (!d) return out;
  while (dirent* e = ::readdir(d.get())) {
    if (!all_digits(e->d_name)) continue;
    auto pid = static_cast<pid_t>(std::stol(e->d_name));
    if (netns_of(pid) == netns_ino) out.push_back(pid);
  }
  return out;
}

Attributor::Attributor(uint64_t netns_ino) : netns_ino_(netns_ino), diag_(open_diag()) {}

std::vector<pid_t> Attributor::candidates(bool refresh) {
  // Processes come and go with every command the container runs; a list a
  // second old is tried first and made anew when it holds no answer.
  auto now = std::chrono::steady_clock::now();
  if (refresh || cached_at_ == std::chrono::steady_clock::time_point{} ||
      now - cached_at_ > std::chrono::seconds(1)) {
    cached_ = pids_in_netns(netns_ino_);
    // The serving process holds the accepted end, never the client's.
    std::erase(cached_, ::getpid());
    cached_at_ = now;
  }
  return cached_;
}

std::vector<Holder> Attributor::holders(int fd) {
  sockaddr_in peer{}, local{};
  socklen_t pl = sizeof peer, ll = sizeof local;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) < 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) < 0 || peer.sin_family != AF_INET ||
      local.sin_family != AF_INET)
    return {};
  Tcp4 t;
  t.src = peer.sin_addr;
  t.sport = ntohs(peer.sin_port);
  t.dst = local.sin_addr;
  t.dport = ntohs(local.sin_port);
  std::vector<pid_t> pids;
  {
    std::lock_guard lk(mu_);
    auto f = lookup_tcp4(diag_.get(), t);
    if (!f) return {};
    bool cut = false;
    pids = holders_of(f->inode, candidates(false), &cut);
    if (pids.empty() && !cut) pids = holders_of(f->inode, candidates(true));
  }
  if (pids.empty()) return {};
  // Which container each belongs to: the agentshim containers in this
  // namespace, told apart by their cgroup (a pod's containers share the
  // network, and may share the pid namespace, but each has its own cgroup).
  std::vector<std::pair<peers::Peer, std::string>> pod;
  for (auto& p : peers::all()) {
    if (netns_of(p.init_pid) != netns_ino_) continue;
    if (auto cg = cgroup_of(p.init_pid)) pod.emplace_back(std::move(p), std::move(*cg));
  }
  std::vector<Holder> out;
  for (pid_t pid : pids) {
    Holder h;
    h.pid = pid;
    if (auto cg = cgroup_of(pid))
      for (const auto& [p, pcg] : pod)
        if (*cg == pcg) {
          h.id = p.id;
          h.root = p.root;
          break;
        }
    out.push_back(std::move(h));
  }
  return out;
}

}  // namespace agentshim::sockowner
