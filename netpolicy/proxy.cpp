#include "netpolicy/proxy.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <set>

#include "common/error.h"
#include "netpolicy/http.h"

namespace agentshim::net {

using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kRelayBuf = 256 * 1024;
constexpr int kPipeSize = 1 << 20;

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

enum class Wait { ready, timeout, stopped };

// Wait for `events` on fd, or the stop eventfd, or the deadline.
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

// Best effort full send with a deadline; false on error/timeout/stop.
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

// After an error response: stop writing, read and discard what the client
// still sends (so closing does not reset the connection under the response).
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

}  // namespace

std::thread start_thread_signals_blocked(std::function<void()> fn) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  std::thread t;
  try {
    t = std::thread(std::move(fn));
  } catch (...) {
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    throw;
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return t;
}

std::vector<sockaddr_storage> system_resolve(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::vector<sockaddr_storage> out;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0) return out;
  for (addrinfo* a = res; a; a = a->ai_next) {
    if ((a->ai_family != AF_INET && a->ai_family != AF_INET6) || a->ai_addrlen > sizeof(sockaddr_storage))
      continue;
    sockaddr_storage ss{};
    std::memcpy(&ss, a->ai_addr, a->ai_addrlen);
    out.push_back(ss);
  }
  freeaddrinfo(res);
  return out;
}

struct Proxy::Conn {
  UniqueFd fd;
  uint16_t client_port = 0;
  Clock::time_point start, deadline;
  std::string buf;
  bool draining = false;
  std::size_t drained = 0;
  http::Request req;
  std::string leftover;
  // event
  std::string method, host, resolved, decision = "denied", rule, reason, end;
  uint16_t port = 0;
  int status = 0;
  uint64_t up = 0, down = 0;
  bool error = false;
};

Proxy::Proxy(UniqueFd listen_fd, Allowlist allow, Limits limits, EventSink sink, Resolver resolver)
    : listen_(std::move(listen_fd)),
      allow_(std::move(allow)),
      limits_(limits),
      sink_(std::move(sink)),
      resolver_(resolver ? std::move(resolver) : Resolver(system_resolve)) {
  if (!listen_) throw Error("proxy: no listening socket");
  int fl = fcntl(listen_.get(), F_GETFL);
  if (fl < 0 || fcntl(listen_.get(), F_SETFL, fl | O_NONBLOCK) < 0)
    throw_errno("proxy: fcntl listening socket");
  stop_fd_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd_) throw_errno("proxy: eventfd");
  ep_.reset(epoll_create1(EPOLL_CLOEXEC));
  if (!ep_) throw_errno("proxy: epoll_create1");
  for (int fd : {stop_fd_.get(), listen_.get()}) {
    epoll_event e{};
    e.events = EPOLLIN;
    e.data.fd = fd;
    if (epoll_ctl(ep_.get(), EPOLL_CTL_ADD, fd, &e) != 0) throw_errno("proxy: epoll_ctl");
  }
}

Proxy::~Proxy() {
  stop();
}

void Proxy::start() {
  if (started_.exchange(true)) return;
  loop_thread_ = start_thread_signals_blocked([this] { loop(); });
}

void Proxy::stop() {
  if (stopped_.exchange(true)) return;
  uint64_t one = 1;
  if (::write(stop_fd_.get(), &one, sizeof one) < 0) {
    // eventfd write only fails on overflow, which cannot happen with one write
  }
  if (loop_thread_.joinable()) loop_thread_.join();
  listen_.reset();
  {
    std::lock_guard lk(pool_mu_);
    pool_stop_ = true;
  }
  pool_cv_.notify_all();
  reap(true);
}

void Proxy::reap(bool all) {
  std::list<Worker> finished;
  {
    std::lock_guard lk(pool_mu_);
    for (auto it = workers_.begin(); it != workers_.end();) {
      auto next = std::next(it);
      if (all || it->done->load()) finished.splice(finished.end(), workers_, it);
      it = next;
    }
  }
  for (auto& w : finished)
    if (w.t.joinable()) w.t.join();
}

// Hand a connection to an idle pooled thread, or start one. False (and `c`
// still owned by the caller) when no thread could be started.
bool Proxy::dispatch(std::unique_ptr<Conn>& c) {
  std::lock_guard lk(pool_mu_);
  jobs_.push_back(std::move(c));
  if (idle_ >= static_cast<int>(jobs_.size())) {
    pool_cv_.notify_one();
    return true;
  }
  auto done = std::make_shared<std::atomic<bool>>(false);
  try {
    // Started from the loop thread, whose signals are all blocked: inherited.
    workers_.push_back({std::thread([this, done] {
                          pool_thread();
                          done->store(true);
                        }),
                        done});
  } catch (const std::system_error&) {
    c = std::move(jobs_.back());
    jobs_.pop_back();
    return false;
  }
  return true;
}

void Proxy::pool_thread() {
  for (;;) {
    std::unique_ptr<Conn> job;
    {
      std::unique_lock lk(pool_mu_);
      ++idle_;
      bool got =
          pool_cv_.wait_for(lk, std::chrono::seconds(30), [&] { return pool_stop_ || !jobs_.empty(); });
      --idle_;
      if (!got || jobs_.empty()) return;  // idle for long, or stopping with nothing queued
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    worker(std::move(job));
    --active_;
  }
}

json Proxy::totals() const {
  return {{"allowed", n_allowed_.load()},     {"denied", n_denied_.load()},    {"bytes_up", bytes_up_.load()},
          {"bytes_down", bytes_down_.load()}, {"connections", n_conn_.load()}, {"errors", n_errors_.load()}};
}

void Proxy::emit(Conn& c) {
  if (c.decision == "allowed")
    ++n_allowed_;
  else
    ++n_denied_;
  if (c.error) ++n_errors_;
  bytes_up_ += c.up;
  bytes_down_ += c.down;
  if (!sink_) return;
  auto dur = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - c.start).count();
  json d = {{"client_port", c.client_port},
            {"method", c.method},
            {"host", c.host},
            {"port", c.port},
            {"resolved", c.resolved},
            {"decision", c.decision},
            {"rule", c.rule},
            {"reason", c.reason},
            {"status", c.status},
            {"bytes_up", c.up},
            {"bytes_down", c.down},
            {"duration_ms", static_cast<int64_t>(dur)},
            {"end", c.end}};
  try {
    sink_("net.connection", std::move(d));
  } catch (...) {
    // a failing sink must not take the proxy down; the supervisor records log failures itself
  }
}

void Proxy::loop() {
  const UniqueFd& ep = ep_;
  auto add = [&](int fd, uint32_t ev) {
    epoll_event e{};
    e.events = ev;
    e.data.fd = fd;
    return epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &e) == 0;
  };
  std::map<int, std::unique_ptr<Conn>> conns;
  std::set<std::pair<Clock::time_point, int>> deadlines;
  Clock::time_point listen_paused_until{};
  bool listen_paused = false;

  auto close_conn = [&](int fd) {
    auto it = conns.find(fd);
    if (it == conns.end()) return;
    deadlines.erase({it->second->deadline, fd});
    epoll_ctl(ep.get(), EPOLL_CTL_DEL, fd, nullptr);
    conns.erase(it);
    pending_ = static_cast<int>(conns.size());
  };
  // Answer with an error, then keep reading (discarding) for a moment so the
  // client sees the response rather than a reset.
  auto answer = [&](Conn& c, int status, const std::string& text) {
    c.status = status;
    emit(c);  // recorded before the client can see the answer
    std::string r = http::error_response(status, text);
    ::send(c.fd.get(), r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ::shutdown(c.fd.get(), SHUT_WR);
    deadlines.erase({c.deadline, c.fd.get()});
    c.draining = true;
    c.deadline = Clock::now() + std::chrono::milliseconds(1000);
    deadlines.insert({c.deadline, c.fd.get()});
  };

  auto handle_head = [&](Conn& c, const http::ParseResult& pr) {
    const auto& rq = pr.request;
    c.method = rq.method;
    c.host = rq.host;
    c.port = rq.port;
    auto d = allow_.check_name(rq.host, rq.port);
    c.rule = d.rule;
    if (!d.allowed) {
      c.reason = d.reason;
      c.end = "refused";
      answer(c, 403,
             "agentshim: " + rq.method + " to " + authority(rq.host, rq.port) + " denied: " + d.reason);
      return;
    }
    c.decision = "allowed";
    if (active_.load() >= limits_.max_connections) {
      c.reason = "too many connections";
      c.end = "refused";
      c.error = true;
      answer(c, 503, "agentshim: too many connections");
      return;
    }
    // Hand over to a worker thread.
    int fd = c.fd.get();
    auto it = conns.find(fd);
    std::unique_ptr<Conn> own = std::move(it->second);
    deadlines.erase({own->deadline, fd});
    epoll_ctl(ep.get(), EPOLL_CTL_DEL, fd, nullptr);
    conns.erase(it);
    pending_ = static_cast<int>(conns.size());
    own->req = rq;
    own->leftover = own->buf.substr(pr.head_len);
    own->buf.clear();
    own->buf.shrink_to_fit();
    ++active_;
    if (!dispatch(own)) {
      --active_;
      refuse(*own, 503, "cannot start a worker thread", "agentshim: service unavailable");
    }
  };

  epoll_event evs[64];
  for (;;) {
    reap(false);
    int timeout = 1000;
    if (!deadlines.empty()) timeout = std::min(timeout, ms_until(deadlines.begin()->first));
    if (listen_paused) timeout = std::min(timeout, ms_until(listen_paused_until));
    int n = epoll_wait(ep.get(), evs, 64, timeout);
    if (n < 0 && errno != EINTR) break;
    auto now = Clock::now();
    if (listen_paused && now >= listen_paused_until) {
      epoll_event e{};
      e.events = EPOLLIN;
      e.data.fd = listen_.get();
      epoll_ctl(ep.get(), EPOLL_CTL_MOD, listen_.get(), &e);
      listen_paused = false;
    }
    bool stop = false;
    for (int i = 0; i < std::max(n, 0); ++i) {
      int fd = evs[i].data.fd;
      if (fd == stop_fd_.get()) {
        stop = true;
        break;
      }
      if (fd == listen_.get()) {
        for (int k = 0; k < 64; ++k) {
          int cfd = accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (cfd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
              // Out of descriptors: stop accepting for a moment instead of spinning.
              epoll_event e{};
              e.data.fd = listen_.get();
              epoll_ctl(ep.get(), EPOLL_CTL_MOD, listen_.get(), &e);
              listen_paused = true;
              listen_paused_until = now + std::chrono::milliseconds(100);
            }
            if (errno == EINTR || errno == ECONNABORTED) continue;
            break;
          }
          ++n_conn_;
          auto c = std::make_unique<Conn>();
          c->fd.reset(cfd);
          c->client_port = peer_port(cfd);
          c->start = now;
          if (static_cast<int>(conns.size()) >= limits_.max_pending) {
            refuse(*c, 503, "too many pending connections", "agentshim: too many connections");
            continue;
          }
          c->deadline = now + std::chrono::milliseconds(limits_.header_timeout_ms);
          if (!add(cfd, EPOLLIN)) continue;
          deadlines.insert({c->deadline, cfd});
          conns.emplace(cfd, std::move(c));
          pending_ = static_cast<int>(conns.size());
        }
        continue;
      }
      auto it = conns.find(fd);
      if (it == conns.end()) continue;
      Conn& c = *it->second;
      if (c.draining) {
        char buf[16384];
        ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r > 0) c.drained += static_cast<std::size_t>(r);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR) || c.drained > (1u << 20)) close_conn(fd);
        continue;
      }
      std::size_t want = limits_.max_header_bytes + 1 - std::min(c.buf.size(), limits_.max_header_bytes);
      want = std::min<std::size_t>(want, 16384);
      std::size_t old = c.buf.size();
      c.buf.resize(old + want);
      ssize_t r = ::recv(fd, c.buf.data() + old, want, MSG_DONTWAIT);
      int rerr = errno;
      c.buf.resize(old + static_cast<std::size_t>(std::max<ssize_t>(r, 0)));
      if (r < 0 && (rerr == EAGAIN || rerr == EINTR)) continue;
      if (r <= 0) {
        if (!c.buf.empty()) {
          c.reason = "bad request: connection closed before the request head was complete";
          c.end = r == 0 ? "client-closed" : "error: " + std::string(strerror(rerr));
          c.error = true;
          emit(c);
        }
        close_conn(fd);
        continue;
      }
      auto pr = http::parse_request_head(c.buf, limits_.max_header_bytes, limits_.max_headers);
      if (pr.state == http::ParseResult::State::incomplete) continue;
      if (pr.state == http::ParseResult::State::error) {
        if (!pr.request.method.empty()) c.method = pr.request.method;
        c.reason = "bad request: " + pr.reason;
        c.end = "refused";
        c.error = true;
        answer(c, pr.status, "agentshim: bad request: " + pr.reason);
        continue;
      }
      handle_head(c, pr);
    }
    if (stop) break;
    // Expired deadlines: header timeouts (slowloris) and finished drains.
    now = Clock::now();
    while (!deadlines.empty() && deadlines.begin()->first <= now) {
      int fd = deadlines.begin()->second;
      auto it = conns.find(fd);
      if (it == conns.end()) {
        deadlines.erase(deadlines.begin());
        continue;
      }
      Conn& c = *it->second;
      if (!c.draining) {
        c.reason = "request head not complete within " + std::to_string(limits_.header_timeout_ms) + " ms";
        c.end = "header-timeout";
        c.error = true;
        c.status = 408;
        emit(c);
        std::string r = http::error_response(408, "agentshim: request head not received in time");
        ::send(fd, r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      }
      close_conn(fd);
    }
  }
  // Stopping: connections still in their head phase are closed without an event.
  conns.clear();
  pending_ = 0;
}

namespace {

struct Relay {
  int client, upstream, stop_fd;
  const Limits& limits;
  Clock::time_point start;
  Clock::time_point last;
  uint64_t up = 0, down = 0;

  // Returns 0 when a deadline passed / stop: sets `end`.
  int poll_step(pollfd* p, int n, std::string& end) {
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
    if (r < 0 && errno == EINTR) return 1;
    if (p[n].revents) {
      end = "stopped";
      return 0;
    }
    if (r == 0 && Clock::now() >= dl) {
      end = total_first ? "total-timeout" : "idle-timeout";
      return 0;
    }
    return 1;
  }
};

// One direction of a spliced tunnel.
struct SpliceDir {
  int src, dst;
  UniqueFd r, w;
  std::size_t queued = 0;
  bool eof = false, shut = false;
  uint64_t* bytes;
  const char* src_name;
  const char* dst_name;
};

std::string tunnel(Relay& rl) {
  SpliceDir dirs[2] = {
      {rl.client, rl.upstream, {}, {}, 0, false, false, &rl.up, "client-closed", "upstream-closed"},
      {rl.upstream, rl.client, {}, {}, 0, false, false, &rl.down, "upstream-closed", "client-closed"}};
  for (auto& d : dirs) {
    auto p = make_pipe(O_NONBLOCK | O_CLOEXEC);
    fcntl(p.second.get(), F_SETPIPE_SZ, kPipeSize);  // best effort: a smaller pipe still works
    d.r = std::move(p.first);
    d.w = std::move(p.second);
  }
  constexpr unsigned kFlags = SPLICE_F_NONBLOCK | SPLICE_F_MOVE;
  for (;;) {
    bool progress = false;
    for (auto& d : dirs) {
      if (!d.eof) {
        ssize_t n = splice(d.src, nullptr, d.w.get(), nullptr, kPipeSize, kFlags);
        if (n > 0) {
          d.queued += static_cast<std::size_t>(n);
          progress = true;
        } else if (n == 0) {
          d.eof = true;
        } else if (errno == EAGAIN) {
          // source empty, or the pipe is full: poll tells which
        } else if (errno != EINTR) {
          return d.src_name;
        }
      }
      if (d.queued) {
        ssize_t n = splice(d.r.get(), nullptr, d.dst, nullptr, d.queued, kFlags);
        if (n > 0) {
          d.queued -= static_cast<std::size_t>(n);
          *d.bytes += static_cast<uint64_t>(n);
          progress = true;
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
          return d.dst_name;
        }
      }
      if (d.eof && !d.queued && !d.shut) {
        ::shutdown(d.dst, SHUT_WR);
        d.shut = true;
      }
    }
    if (dirs[0].shut && dirs[1].shut) return "closed";
    if (progress) {
      rl.last = Clock::now();
      continue;
    }
    // No progress. A source is polled only while its pipe is empty: with data
    // queued, the destination's POLLOUT wakes us and the loop reads again.
    pollfd p[3];
    short ce = 0, ue = 0;
    if (!dirs[0].eof && !dirs[0].queued) ce |= POLLIN;
    if (dirs[1].queued) ce |= POLLOUT;
    if (!dirs[1].eof && !dirs[1].queued) ue |= POLLIN;
    if (dirs[0].queued) ue |= POLLOUT;
    p[0] = {ce ? rl.client : -1, ce, 0};
    p[1] = {ue ? rl.upstream : -1, ue, 0};
    std::string end;
    if (!rl.poll_step(p, 2, end)) return end;
    if (p[0].revents & POLLERR) return "client-closed";
    if (p[1].revents & POLLERR) return "upstream-closed";
  }
}

// Plain HTTP: forward the request (head already built) and its body, relay the
// response until the upstream closes.
std::string http_exchange(Relay& rl, const http::Request& req, std::string leftover, int& status) {
  std::string to_up = http::upstream_head(req), to_client;
  uint64_t remaining = req.body == http::Body::length ? req.content_length : 0;
  http::ChunkedValidator chunked;
  bool body_done = req.body == http::Body::none, client_eof = false, up_eof = false, got_status = false;
  std::string resp_start;
  bool got_response = false;
  auto take_body = [&](std::string_view in) -> bool {
    if (body_done) return true;
    if (req.body == http::Body::length) {
      auto k = std::min<uint64_t>(remaining, in.size());
      to_up.append(in.substr(0, k));
      remaining -= k;
      body_done = remaining == 0;
      return true;
    }
    long long k = chunked.feed(in);
    if (k < 0) return false;
    to_up.append(in.substr(0, static_cast<std::size_t>(k)));
    body_done = chunked.done();
    return true;
  };
  if (!take_body(leftover)) return "error: bad chunked body: " + chunked.error();
  std::vector<char> buf(kRelayBuf);
  for (;;) {
    bool progress = false;
    if (!to_up.empty()) {
      ssize_t n = ::send(rl.upstream, to_up.data(), to_up.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        to_up.erase(0, static_cast<std::size_t>(n));
        progress = true;
        rl.up += static_cast<uint64_t>(n);
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        return "upstream-closed";
      }
    }
    if (!to_client.empty()) {
      ssize_t n = ::send(rl.client, to_client.data(), to_client.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        to_client.erase(0, static_cast<std::size_t>(n));
        rl.down += static_cast<uint64_t>(n);
        progress = true;
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        return "client-closed";
      }
    }
    if (up_eof && to_client.empty()) return got_response ? "closed" : "upstream-closed";
    if (!client_eof && to_up.size() < kRelayBuf) {
      ssize_t n = ::recv(rl.client, buf.data(), buf.size(), MSG_DONTWAIT);
      if (n > 0) {
        progress = true;
        if (!take_body(std::string_view(buf.data(), static_cast<std::size_t>(n))))
          return "error: bad chunked body: " + chunked.error();
        // Bytes after the body (a pipelined request) are dropped: one request per connection.
      } else if (n == 0) {
        client_eof = true;
        if (!body_done) return "client-closed";
        progress = true;
      } else if (errno != EAGAIN && errno != EINTR) {
        return "client-closed";
      }
    }
    if (!up_eof && to_client.size() < kRelayBuf) {
      ssize_t n = ::recv(rl.upstream, buf.data(), buf.size(), MSG_DONTWAIT);
      if (n > 0) {
        progress = true;
        got_response = true;
        to_client.append(buf.data(), static_cast<std::size_t>(n));
        if (!got_status) {
          resp_start.append(buf.data(), std::min<std::size_t>(static_cast<std::size_t>(n), 16));
          if (resp_start.size() >= 12) {
            got_status = true;
            if (resp_start.compare(0, 7, "HTTP/1.") == 0 && resp_start[8] == ' ') {
              int s = 0;
              for (int i = 9; i < 12; ++i)
                s = (resp_start[i] >= '0' && resp_start[i] <= '9') ? s * 10 + resp_start[i] - '0' : -1000;
              if (s >= 100 && s <= 999) status = s;
            }
          }
        }
      } else if (n == 0) {
        up_eof = true;
        progress = true;
      } else if (errno != EAGAIN && errno != EINTR) {
        return "upstream-closed";
      }
    }
    if (progress) {
      rl.last = Clock::now();
      continue;
    }
    pollfd p[3];
    short ce = 0, ue = 0;
    if (!client_eof && to_up.size() < kRelayBuf) ce |= POLLIN;
    if (!to_client.empty()) ce |= POLLOUT;
    if (!up_eof && to_client.size() < kRelayBuf) ue |= POLLIN;
    if (!to_up.empty()) ue |= POLLOUT;
    p[0] = {ce ? rl.client : -1, ce, 0};
    p[1] = {ue ? rl.upstream : -1, ue, 0};
    std::string end;
    if (!rl.poll_step(p, 2, end)) return end;
    if (p[0].revents & POLLERR) return "client-closed";
    if (p[1].revents & POLLERR) return "upstream-closed";
  }
}

}  // namespace

void Proxy::refuse(Conn& c, int status, std::string reason, const std::string& text) {
  c.reason = std::move(reason);
  c.end = "refused";
  c.error = true;
  c.status = status;
  emit(c);  // recorded before the client can see the answer
  std::string r = http::error_response(status, text);
  ::send(c.fd.get(), r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

void Proxy::worker(std::unique_ptr<Conn> cp) {
  Conn& c = *cp;
  int stop = stop_fd_.get();
  // Record the event, send the error response, let the client read it.
  auto respond = [&](int status, const std::string& text) {
    emit(c);  // recorded before the client can see the answer
    auto r = http::error_response(status, text);
    if (send_all(c.fd.get(), r, stop, Clock::now() + std::chrono::seconds(5))) linger_close(c.fd.get(), stop);
  };
  auto fail = [&](int status, const std::string& reason, const std::string& text) {
    c.status = status;
    c.reason = reason;
    c.end = "refused";
    c.error = true;
    respond(status, text);
  };
  const std::string target = c.method + " to " + authority(c.host, c.port);
  // Resolve (in this thread: a slow resolver blocks only this connection).
  std::vector<sockaddr_storage> addrs;
  if (auto ip = parse_ip(c.host)) {
    addrs.push_back(to_sockaddr(*ip, c.port));
  } else {
    try {
      addrs = resolver_(c.host);
    } catch (...) {
      addrs.clear();
    }
  }
  if (addrs.size() > 32) addrs.resize(32);
  if (addrs.empty()) {
    fail(502, "cannot resolve host", "agentshim: " + target + " failed: cannot resolve host");
    return;
  }
  UniqueFd up;
  std::string denial, denial_rule, denial_addr;
  bool timed_out = false, tried = false;
  // One budget for all addresses: a name with many unreachable addresses
  // cannot hold the worker for connect_timeout_ms each.
  const auto connect_deadline = Clock::now() + std::chrono::milliseconds(limits_.connect_timeout_ms);
  for (auto a : addrs) {
    auto ip = ip_from_sockaddr(a);
    if (!ip) continue;
    a = to_sockaddr(*ip, c.port);
    auto d = allow_.check_address(c.host, c.port, a);
    if (!d.allowed) {
      if (denial.empty()) {
        denial = d.reason;
        denial_rule = d.rule;
        denial_addr = ip_to_string(*ip);
      }
      continue;
    }
    tried = true;
    c.rule = d.rule;
    c.resolved = ip_to_string(*ip);
    UniqueFd s(::socket(a.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!s) continue;
    socklen_t len = a.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
    int r = ::connect(s.get(), reinterpret_cast<sockaddr*>(&a), len);
    if (r != 0 && errno != EINPROGRESS) continue;
    if (r != 0) {
      auto w = wait_fd(s.get(), POLLOUT, stop, connect_deadline);
      if (w == Wait::stopped) {
        c.end = "stopped";
        c.reason = "proxy stopped";
        emit(c);
        return;
      }
      if (w == Wait::timeout) {
        timed_out = true;
        continue;
      }
      int err = 0;
      socklen_t el = sizeof err;
      if (getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) {
        timed_out = false;
        continue;
      }
    }
    up = std::move(s);
    break;
  }
  if (!up) {
    if (!tried) {
      c.decision = "denied";
      c.rule = denial_rule;
      c.resolved = denial_addr;
      c.status = 403;
      c.reason = denial;
      c.end = "refused";
      respond(403, "agentshim: " + target + " denied: " + denial);
      return;
    }
    if (timed_out)
      fail(504, "connect timed out", "agentshim: " + target + " failed: connect timed out");
    else
      fail(502, "upstream unreachable", "agentshim: " + target + " failed: upstream unreachable");
    return;
  }
  set_nodelay(up.get());
  set_nodelay(c.fd.get());
  c.reason = "matched rule " + c.rule;
  Relay rl{c.fd.get(), up.get(), stop, limits_, c.start, Clock::now()};
  try {
    if (c.req.is_connect) {
      c.status = 200;
      static const std::string ok = "HTTP/1.1 200 Connection established\r\n\r\n";
      auto dl = Clock::now() + std::chrono::milliseconds(limits_.idle_timeout_ms);
      if (!send_all(c.fd.get(), ok, stop, dl)) {
        c.end = "client-closed";
      } else if (!c.leftover.empty() && !send_all(up.get(), c.leftover, stop, dl)) {
        c.end = "upstream-closed";
      } else {
        rl.up += c.leftover.size();
        c.end = tunnel(rl);
      }
    } else {
      c.end = http_exchange(rl, c.req, std::move(c.leftover), c.status);
    }
  } catch (const std::exception& e) {
    c.end = std::string("error: ") + e.what();
    c.error = true;
  }
  if (c.end.rfind("error", 0) == 0) c.error = true;
  c.up = rl.up;
  c.down = rl.down;
  emit(c);  // before the client's socket is closed
  up.reset();
  c.fd.reset();
}

}  // namespace agentshim::net
