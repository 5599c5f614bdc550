#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "netpolicy/proxy_internal.h"

namespace agentshim::net::proxy_io {

uint16_t peer_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return 0;
}

int ms_until(Clock::time_point t) {
  auto d = std::chrono::duration_cast<std::chrono::milliseconds>(t - Clock::now()).count();
  if (d < 0) return 0;
  return static_cast<int>(std::min<long long>(d + 1, 1 << 30));
}

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

std::string authority(const std::string& host, uint16_t port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Wait wait_fd(int fd, short events, int stop_fd, Clock::time_point deadline) {
  for (;;) {
    pollfd p[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
    int r = ::poll(p, 2, ms_until(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (p[1].revents) return Wait::stopped;
    if (r > 0) return Wait::ready;
    if (Clock::now() >= deadline) return Wait::timeout;
  }
}

bool send_all(int fd, std::string_view data, int stop_fd, Clock::time_point deadline) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (wait_fd(fd, POLLOUT, stop_fd, deadline) != Wait::ready) return false;
      continue;
    }
    return false;
  }
  return true;
}

void linger_close(int fd, int stop_fd) {
  ::shutdown(fd, SHUT_WR);
  auto deadline = Clock::now() + std::chrono::milliseconds(1000);
  char buf[4096];
  std::size_t total = 0;
  while (total < (1u << 20)) {
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) return;
    if (n > 0) {
      total += static_cast<std::size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return;
    if (wait_fd(fd, POLLIN, stop_fd, deadline) != Wait::ready) return;
  }
}

bool Relay::poll_step(pollfd* p, int n, std::string& end) {
  Clock::time_point dl = last + std::chrono::milliseconds(limits.idle_timeout_ms);
  bool total_first = false;
  if (limits.total_timeout_ms > 0) {
    auto t = start + std::chrono::milliseconds(limits.total_timeout_ms);
    if (t < dl) {
      dl = t;
      total_first = true;
    }
  }
  p[n] = {stop_fd, POLLIN, 0};
  int r = ::poll(p, static_cast<nfds_t>(n + 1), ms_until(dl));
  if (r < 0 && errno == EINTR) return true;
  if (p[n].revents) {
    end = "stopped";
    return false;
  }
  if (r == 0 && Clock::now() >= dl) {
    end = total_first ? "total-timeout" : "idle-timeout";
    return false;
  }
  return true;
}

}  // namespace agentshim::net::proxy_io
