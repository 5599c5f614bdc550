// The proxy's head loop (its StoppableLoop thread): accepts client
// connections and reads their request heads on one epoll, each with its own
// deadline and all of them within one memory budget; answers what it will
// not serve (malformed, denied, over a limit) and hands a complete, admitted
// head to a pooled worker.
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <set>

#include "netpolicy/proxy_internal.h"

namespace agentshim::net {

using namespace proxy_io;

class Proxy::Acceptor {
 public:
  explicit Acceptor(Proxy& p) : p_(p), lim_(p.limits_) {}
  ~Acceptor() {
    // Stopping: connections still in their head phase are closed without an event.
    conns_.clear();
    p_.pending_ = 0;
    p_.pending_head_bytes_ = 0;
  }
  void run();

 private:
  int ep() const { return p_.ep_.get(); }
  int listen_fd() const { return p_.listen_.get(); }
  bool add(int fd, uint32_t ev);
  // The head budget: capacity of every pending connection's buffer.
  void charge(Conn& c);
  void release(Conn& c);
  void close_conn(int fd);
  // Answer with an error, then keep reading (discarding) for a moment so the
  // client sees the response rather than a reset.
  void answer(Conn& c, int status, const std::string& text);
  void accept_all(Clock::time_point now);
  void read_head(Conn& c);
  void admit(Conn& c, const http::ParseResult& pr);
  // Expired deadlines: header timeouts (slowloris) and finished drains.
  void expire();
  void pause_listen(Clock::time_point now);
  void resume_listen(Clock::time_point now);

  Proxy& p_;
  const Limits& lim_;
  std::map<int, std::unique_ptr<Conn>> conns_;
  std::set<std::pair<Clock::time_point, int>> deadlines_;
  Clock::time_point listen_paused_until_{};
  bool listen_paused_ = false;
  std::size_t head_bytes_ = 0;
};

void Proxy::loop() {
  Acceptor(*this).run();
}

bool Proxy::Acceptor::add(int fd, uint32_t ev) {
  epoll_event e{};
  e.events = ev;
  e.data.fd = fd;
  return epoll_ctl(ep(), EPOLL_CTL_ADD, fd, &e) == 0;
}

void Proxy::Acceptor::charge(Conn& c) {
  head_bytes_ = head_bytes_ - c.charged + c.buf.capacity();
  c.charged = c.buf.capacity();
  p_.pending_head_bytes_ = head_bytes_;
}

void Proxy::Acceptor::release(Conn& c) {
  c.buf.clear();
  c.buf.shrink_to_fit();
  head_bytes_ -= c.charged;
  c.charged = 0;
  p_.pending_head_bytes_ = head_bytes_;
}

void Proxy::Acceptor::close_conn(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  release(*it->second);
  deadlines_.erase({it->second->deadline, fd});
  epoll_ctl(ep(), EPOLL_CTL_DEL, fd, nullptr);
  conns_.erase(it);
  p_.pending_ = static_cast<int>(conns_.size());
}

void Proxy::Acceptor::answer(Conn& c, int status, const std::string& text) {
  release(c);  // the head is not needed while draining
  c.status = status;
  p_.emit(c);  // recorded before the client can see the answer
  std::string r = http::error_response(status, text);
  ::send(c.fd.get(), r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  ::shutdown(c.fd.get(), SHUT_WR);
  deadlines_.erase({c.deadline, c.fd.get()});
  c.draining = true;
  c.deadline = Clock::now() + std::chrono::milliseconds(1000);
  deadlines_.insert({c.deadline, c.fd.get()});
}

void Proxy::Acceptor::admit(Conn& c, const http::ParseResult& pr) {
  const auto& rq = pr.request;
  c.method = rq.method;
  c.host = rq.host;
  c.port = rq.port;
  auto d = p_.allow_.check_name(rq.host, rq.port);
  c.rule = d.rule;
  if (!d.allowed) {
    c.reason = d.reason;
    c.end = "refused";
    p_.attribute(c);  // a denial is the decision a record most needs to place
    answer(c, 403, "agentshim: " + rq.method + " to " + authority(rq.host, rq.port) + " denied: " + d.reason);
    return;
  }
  c.decision = "allowed";
  if (p_.active_.load() >= lim_.max_connections) {
    c.reason = "too many connections";
    c.end = "refused";
    c.error = true;
    answer(c, 503, "agentshim: too many connections");
    return;
  }
  // Hand over to a worker thread.
  int fd = c.fd.get();
  auto it = conns_.find(fd);
  std::unique_ptr<Conn> own = std::move(it->second);
  deadlines_.erase({own->deadline, fd});
  epoll_ctl(ep(), EPOLL_CTL_DEL, fd, nullptr);
  conns_.erase(it);
  p_.pending_ = static_cast<int>(conns_.size());
  own->req = rq;
  own->leftover = own->buf.substr(pr.head_len);
  release(*own);  // the worker's buffers are bounded by max_connections
  ++p_.active_;
  if (!p_.dispatch(own)) {
    --p_.active_;
    p_.refuse(*own, 503, "cannot start a worker thread", "agentshim: service unavailable");
  }
}

void Proxy::Acceptor::pause_listen(Clock::time_point now) {
  // Out of descriptors: stop accepting for a moment instead of spinning.
  epoll_event e{};
  e.data.fd = listen_fd();
  epoll_ctl(ep(), EPOLL_CTL_MOD, listen_fd(), &e);
  listen_paused_ = true;
  listen_paused_until_ = now + std::chrono::milliseconds(100);
}

void Proxy::Acceptor::resume_listen(Clock::time_point now) {
  if (!listen_paused_ || now < listen_paused_until_) return;
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.fd = listen_fd();
  epoll_ctl(ep(), EPOLL_CTL_MOD, listen_fd(), &e);
  listen_paused_ = false;
}

void Proxy::Acceptor::accept_all(Clock::time_point now) {
  for (int k = 0; k < 64; ++k) {
    int cfd = accept4(listen_fd(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) pause_listen(now);
      if (errno == EINTR || errno == ECONNABORTED) continue;
      break;
    }
    ++p_.n_conn_;
    auto c = std::make_unique<Conn>();
    c->fd.reset(cfd);
    c->client_port = peer_port(cfd);
    c->start = c->conn_start = now;
    if (static_cast<int>(conns_.size()) >= lim_.max_pending) {
      p_.refuse(*c, 503, "too many pending connections", "agentshim: too many connections");
      continue;
    }
    c->deadline = now + std::chrono::milliseconds(lim_.header_timeout_ms);
    if (!add(cfd, EPOLLIN)) continue;
    deadlines_.insert({c->deadline, cfd});
    conns_.emplace(cfd, std::move(c));
    p_.pending_ = static_cast<int>(conns_.size());
  }
}

void Proxy::Acceptor::read_head(Conn& c) {
  int fd = c.fd.get();
  if (c.draining) {
    char buf[16384];
    ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r > 0) c.drained += static_cast<std::size_t>(r);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR) || c.drained > (1u << 20)) close_conn(fd);
    return;
  }
  std::size_t want = lim_.max_header_bytes + 1 - std::min(c.buf.size(), lim_.max_header_bytes);
  want = std::min<std::size_t>(want, 16384);
  // Read into the loop's own buffer; the connection's grows by what came.
  char in[16384];
  ssize_t r = ::recv(fd, in, want, MSG_DONTWAIT);
  int rerr = errno;
  if (r < 0 && (rerr == EAGAIN || rerr == EINTR)) return;
  if (r <= 0) {
    if (!c.buf.empty()) {
      c.reason = "bad request: connection closed before the request head was complete";
      c.end = r == 0 ? "client-closed" : "error: " + std::string(strerror(rerr));
      c.error = true;
      p_.emit(c);
    }
    close_conn(fd);
    return;
  }
  std::size_t need = c.buf.size() + static_cast<std::size_t>(r);
  // What the buffer may grow to (std::string at least doubles).
  std::size_t grow = need > c.buf.capacity() ? std::max(need, 2 * c.buf.capacity()) : c.buf.capacity();
  if (head_bytes_ - c.charged + grow > lim_.max_pending_header_bytes) {
    ++p_.n_over_budget_;
    c.reason = "pending request heads over the proxy's memory budget (" +
               std::to_string(lim_.max_pending_header_bytes) + " bytes)";
    c.end = "refused";
    c.error = true;
    answer(c, 503, "agentshim: too many pending request bytes");
    return;
  }
  c.buf.append(in, static_cast<std::size_t>(r));
  charge(c);
  auto pr = http::parse_request_head(c.buf, lim_.max_header_bytes, lim_.max_headers);
  if (pr.state == http::ParseResult::State::incomplete) return;
  if (pr.state == http::ParseResult::State::error) {
    if (!pr.request.method.empty()) c.method = pr.request.method;
    c.reason = "bad request: " + pr.reason;
    c.end = "refused";
    c.error = true;
    answer(c, pr.status, "agentshim: bad request: " + pr.reason);
    return;
  }
  admit(c, pr);
}

void Proxy::Acceptor::expire() {
  auto now = Clock::now();
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    int fd = deadlines_.begin()->second;
    auto it = conns_.find(fd);
    if (it == conns_.end()) {
      deadlines_.erase(deadlines_.begin());
      continue;
    }
    Conn& c = *it->second;
    if (!c.draining) {
      c.reason = "request head not complete within " + std::to_string(lim_.header_timeout_ms) + " ms";
      c.end = "header-timeout";
      c.error = true;
      c.status = 408;
      p_.emit(c);
      std::string r = http::error_response(408, "agentshim: request head not received in time");
      ::send(fd, r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    close_conn(fd);
  }
}

void Proxy::Acceptor::run() {
  const int stop_fd = p_.loop_.stop_fd();
  epoll_event evs[64];
  for (;;) {
    p_.reap(false);
    int timeout = 1000;
    if (!deadlines_.empty()) timeout = std::min(timeout, ms_until(deadlines_.begin()->first));
    if (listen_paused_) timeout = std::min(timeout, ms_until(listen_paused_until_));
    int n = epoll_wait(ep(), evs, 64, timeout);
    if (n < 0 && errno != EINTR) return;
    auto now = Clock::now();
    resume_listen(now);
    for (int i = 0; i < std::max(n, 0); ++i) {
      int fd = evs[i].data.fd;
      if (fd == stop_fd) return;
      if (fd == listen_fd()) {
        accept_all(now);
        continue;
      }
      auto it = conns_.find(fd);
      if (it != conns_.end()) read_head(*it->second);
    }
    expire();
  }
}

}  // namespace agentshim::net
