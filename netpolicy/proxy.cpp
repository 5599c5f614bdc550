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
constexpr std::size_t kTunnelBuf = 4 << 20;  // per direction of a tunnel: resident only as far as one recv filled it (see docs/NETWORK.md)
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
  int request = 1;                // index of the current request on this client connection
  Clock::time_point conn_start;   // accept: the total timeout counts from here
  Clock::time_point start, deadline;  // start: of the current request (its duration_ms)
  std::string buf;
  std::size_t charged = 0;  // buf's capacity, as counted in the head budget
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
  for (;;) {
    std::list<Worker> finished;
    {
      std::lock_guard lk(pool_mu_);
      for (auto it = workers_.begin(); it != workers_.end();) {
        auto next = std::next(it);
        if (all || it->done->load()) finished.splice(finished.end(), workers_, it);
        it = next;
      }
    }
    if (finished.empty()) return;
    for (auto& w : finished)
      if (w.t.joinable()) w.t.join();
    if (!all) return;  // all: threads a stopping tunnel started meanwhile are joined too
  }
}

// Queue a job for an idle pooled thread, or start one for it. False (the
// job taken back out of the queue and returned through `job`) when no
// thread could be started. Called with pool_mu_ held.
bool Proxy::enqueue_locked(Job& job) {
  jobs_.push_back(std::move(job));
  if (idle_ >= static_cast<int>(jobs_.size())) {
    pool_cv_.notify_one();
    return true;
  }
  auto done = std::make_shared<std::atomic<bool>>(false);
  try {
    // Started from the loop thread or a worker, whose signals are all blocked: inherited.
    workers_.push_back({std::thread([this, done] {
                          pool_thread();
                          done->store(true);
                        }),
                        done});
  } catch (const std::system_error&) {
    job = std::move(jobs_.back());
    jobs_.pop_back();
    return false;
  }
  return true;
}

// Hand a connection to the pool. False (and the connection still owned by
// the caller) when no thread could be started.
bool Proxy::dispatch(std::unique_ptr<Conn>& c) {
  std::lock_guard lk(pool_mu_);
  Job job{std::move(c), {}};
  if (enqueue_locked(job)) return true;
  c = std::move(job.conn);
  return false;
}

bool Proxy::run_task(std::function<void()> fn) {
  std::lock_guard lk(pool_mu_);
  Job job{nullptr, std::move(fn)};
  return enqueue_locked(job);
}

void Proxy::pool_thread() {
  for (;;) {
    Job job;
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
    if (job.conn) {
      worker(std::move(job.conn));
      --active_;
    } else {
      job.fn();
    }
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
            {"request", c.request},
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
  // The head budget: capacity of every pending connection's buffer.
  std::size_t head_bytes = 0;
  auto charge = [&](Conn& c) {
    head_bytes = head_bytes - c.charged + c.buf.capacity();
    c.charged = c.buf.capacity();
    pending_head_bytes_ = head_bytes;
  };
  auto release = [&](Conn& c) {
    c.buf.clear();
    c.buf.shrink_to_fit();
    head_bytes -= c.charged;
    c.charged = 0;
    pending_head_bytes_ = head_bytes;
  };

  auto close_conn = [&](int fd) {
    auto it = conns.find(fd);
    if (it == conns.end()) return;
    release(*it->second);
    deadlines.erase({it->second->deadline, fd});
    epoll_ctl(ep.get(), EPOLL_CTL_DEL, fd, nullptr);
    conns.erase(it);
    pending_ = static_cast<int>(conns.size());
  };
  // Answer with an error, then keep reading (discarding) for a moment so the
  // client sees the response rather than a reset.
  auto answer = [&](Conn& c, int status, const std::string& text) {
    release(c);  // the head is not needed while draining
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
    release(*own);  // the worker's buffers are bounded by max_connections
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
          c->start = c->conn_start = now;
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
      // Read into the loop's own buffer; the connection's grows by what came.
      char in[16384];
      ssize_t r = ::recv(fd, in, want, MSG_DONTWAIT);
      int rerr = errno;
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
      std::size_t need = c.buf.size() + static_cast<std::size_t>(r);
      // What the buffer may grow to (std::string at least doubles).
      std::size_t grow = need > c.buf.capacity() ? std::max(need, 2 * c.buf.capacity()) : c.buf.capacity();
      if (head_bytes - c.charged + grow > limits_.max_pending_header_bytes) {
        ++n_over_budget_;
        c.reason = "pending request heads over the proxy's memory budget (" +
                   std::to_string(limits_.max_pending_header_bytes) + " bytes)";
        c.end = "refused";
        c.error = true;
        answer(c, 503, "agentshim: too many pending request bytes");
        continue;
      }
      c.buf.append(in, static_cast<std::size_t>(r));
      charge(c);
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
  pending_head_bytes_ = 0;
}

namespace {

struct Relay {
  int client, upstream, stop_fd;
  const Limits& limits;
  Clock::time_point start;
  Clock::time_point last;
  uint64_t up = 0, down = 0;
  std::function<bool(std::function<void()>)> spawn = {};  // runs a task on a pooled thread

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

// Fallback when no relay thread can be started: one thread, both directions,
// non-blocking splice(2), poll() when nothing moved.
std::string tunnel_poll(Relay& rl) {
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


// A tunnel's two directions, each on its own thread: blocking recv into a
// buffer, blocking send out of it (measured faster than splice(2) and than a
// single poll loop on loopback: bench/proxy.py, docs/NETWORK.md). The calling
// (worker) thread only watches: the stop eventfd, the idle and total
// deadlines, and a direction ending with an error; it ends the tunnel by
// shutting both sockets down, which wakes a blocked recv/send at once.
// Returns "" when the relay threads could not be started (nothing was read).
std::string tunnel_threads(Relay& rl) {
  if (!rl.spawn) return "";
  // Shared with the direction tasks, which may outlive this frame by the few
  // instructions after their last report.
  struct Shared {
    std::atomic<int64_t> last;  // steady_clock ticks of the last byte moved either way
    std::atomic<bool> aborted{false};
    std::mutex mu;
    std::string end;  // first error
    int done = 0;
    uint64_t bytes[2] = {0, 0};
    UniqueFd ev;  // eventfd: a direction finished
  };
  auto sh = std::make_shared<Shared>();
  sh->ev.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!sh->ev) return "";
  sh->last = Clock::now().time_since_epoch().count();
  // Blocking sockets; a send returns (with what it moved) at least every
  // second, so a slow reader still counts as activity for the idle timeout.
  for (int fd : {rl.client, rl.upstream}) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) return "";
    timeval tv{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  auto dir = [sh](int src, int dst, int idx, const char* src_name, const char* dst_name) {
    std::string end;
    uint64_t moved = 0;
    try {
      std::unique_ptr<char[]> buf(new char[kTunnelBuf]);  // not zero-filled: untouched pages stay unmapped
      for (;;) {
        ssize_t n = ::recv(src, buf.get(), kTunnelBuf, 0);
        if (n == 0) {
          ::shutdown(dst, SHUT_WR);  // half-close travels on
          break;
        }
        if (n < 0) {
          if (errno == EINTR) continue;
          end = src_name;
          break;
        }
        sh->last = Clock::now().time_since_epoch().count();
        std::size_t off = 0, len = static_cast<std::size_t>(n);
        while (off < len) {
          ssize_t k = ::send(dst, buf.get() + off, len - off, MSG_NOSIGNAL);
          if (k > 0) {
            off += static_cast<std::size_t>(k);
            moved += static_cast<uint64_t>(k);
            sh->last = Clock::now().time_since_epoch().count();
          } else if (k < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (sh->aborted.load()) break;
          } else {
            end = dst_name;
            break;
          }
        }
        if (!end.empty() || off < len) break;
      }
    } catch (const std::exception& e) {
      end = std::string("error: ") + e.what();
    }
    std::lock_guard lk(sh->mu);
    if (!end.empty() && sh->end.empty()) sh->end = end;
    sh->bytes[idx] = moved;
    ++sh->done;
    uint64_t one = 1;
    if (::write(sh->ev.get(), &one, sizeof one) < 0) {
      // cannot fail: at most two writes
    }
  };
  int client = rl.client, upstream = rl.upstream;
  int started = 0;
  if (rl.spawn([dir, client, upstream] { dir(client, upstream, 0, "client-closed", "upstream-closed"); })) ++started;
  if (started == 1 &&
      rl.spawn([dir, client, upstream] { dir(upstream, client, 1, "upstream-closed", "client-closed"); }))
    ++started;
  std::string end;
  if (started < 2) {
    if (started == 0) {
      for (int fd : {rl.client, rl.upstream}) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
      return "";  // nothing moved yet: the caller relays on its own
    }
    end = "error: cannot start a relay thread";  // one direction alone cannot be watched: stop it
  }
  while (end.empty()) {
    {
      std::lock_guard lk(sh->mu);
      if (sh->done == 2) {
        end = sh->end.empty() ? "closed" : sh->end;
        break;
      }
      if (!sh->end.empty()) {
        end = sh->end;
        break;
      }
    }
    auto last = Clock::time_point(Clock::duration(sh->last.load()));
    Clock::time_point dl = last + std::chrono::milliseconds(rl.limits.idle_timeout_ms);
    bool total_first = false;
    if (rl.limits.total_timeout_ms > 0) {
      auto t = rl.start + std::chrono::milliseconds(rl.limits.total_timeout_ms);
      if (t < dl) {
        dl = t;
        total_first = true;
      }
    }
    if (Clock::now() >= dl) {
      end = total_first ? "total-timeout" : "idle-timeout";
      break;
    }
    pollfd p[2] = {{sh->ev.get(), POLLIN, 0}, {rl.stop_fd, POLLIN, 0}};
    int r = ::poll(p, 2, ms_until(dl));
    if (r > 0 && p[1].revents) {
      end = "stopped";
      break;
    }
    if (p[0].revents) {
      uint64_t v;
      if (::read(sh->ev.get(), &v, sizeof v) < 0) {
        // EAGAIN: already consumed
      }
    }
  }
  // Whatever ended the tunnel ends both directions now; wait for them (they
  // return at once: their sockets are shut down).
  sh->aborted = true;
  ::shutdown(rl.client, SHUT_RDWR);
  ::shutdown(rl.upstream, SHUT_RDWR);
  for (;;) {
    {
      std::lock_guard lk(sh->mu);
      if (sh->done == started) break;
    }
    pollfd p{sh->ev.get(), POLLIN, 0};
    ::poll(&p, 1, 100);
    uint64_t v;
    if (::read(sh->ev.get(), &v, sizeof v) < 0) {
      // EAGAIN: nothing new
    }
  }
  rl.up += sh->bytes[0];
  rl.down += sh->bytes[1];
  return end;
}

std::string tunnel(Relay& rl) {
  std::string end = tunnel_threads(rl);
  return end.empty() ? tunnel_poll(rl) : end;
}

// The outcome of one plain HTTP exchange on a (possibly persistent) connection.
struct Exchange {
  std::string end;
  int status = 0;
  bool client_reusable = false;    // the client may send the next request
  bool upstream_reusable = false;  // the upstream connection may carry the next one
  bool bad_response = false;       // the upstream's response head was malformed or ambiguous
  std::string pipelined;           // client bytes after this request's body
};

// Plain HTTP: forward one request (head built here) and its body, relay the
// response as framed by the upstream. keep: the proxy would serve another
// request on this client connection after this one.
Exchange http_exchange(Relay& rl, const http::Request& req, std::string leftover, bool keep) {
  Exchange x;
  std::string to_up = http::upstream_head(req, keep), to_client;
  uint64_t remaining = req.body == http::Body::length ? req.content_length : 0;
  http::ChunkedValidator chunked;
  bool body_done = req.body == http::Body::none, client_eof = false, up_eof = false;
  // Request body: returns the bytes of `in` that belong to it (-1: bad chunked framing).
  auto take_body = [&](std::string_view in) -> long long {
    if (body_done) return 0;
    if (req.body == http::Body::length) {
      auto k = std::min<uint64_t>(remaining, in.size());
      to_up.append(in.substr(0, static_cast<std::size_t>(k)));
      remaining -= k;
      body_done = remaining == 0;
      return static_cast<long long>(k);
    }
    long long k = chunked.feed(in);
    if (k < 0) return -1;
    to_up.append(in.substr(0, static_cast<std::size_t>(k)));
    body_done = chunked.done();
    return k;
  };
  auto take_client = [&](std::string_view in) -> bool {
    long long k = take_body(in);
    if (k < 0) return false;
    // Bytes after the body: the next (pipelined) request, kept for later.
    x.pipelined.append(in.substr(static_cast<std::size_t>(k)));
    return true;
  };
  auto fail = [&](std::string end) {
    x.end = std::move(end);
    x.client_reusable = x.upstream_reusable = false;
    return x;
  };
  if (!take_client(leftover)) return fail("error: bad chunked body: " + chunked.error());
  // Response state.
  enum class Phase { head, body, done } phase = Phase::head;
  std::string rhead;  // response head bytes not yet parsed
  http::ResponseBody rbody = http::ResponseBody::close;
  uint64_t rremaining = 0;
  http::ChunkedValidator rchunked;
  bool resp_close = true, upstream_extra = false, got_any = false;
  const bool head_req = req.method == "HEAD";
  // Feed upstream bytes to the response framing; false on a framing error (x.end set).
  auto take_up = [&](std::string_view in) -> bool {
    while (!in.empty()) {
      if (phase == Phase::done) {
        upstream_extra = true;  // bytes beyond the response: this upstream is not reused
        return true;
      }
      if (phase == Phase::head) {
        std::size_t old = rhead.size();
        rhead.append(in);
        auto rh = http::parse_response_head(rhead, head_req);
        if (rh.state == http::ResponseHead::State::incomplete) return true;
        if (rh.state == http::ResponseHead::State::error) {
          x.end = "error: bad response: " + rh.reason;
          x.bad_response = true;
          return false;
        }
        in = in.substr(rh.head_len - old);
        rhead.clear();
        x.status = rh.status;
        if (rh.interim) {  // 100 Continue and friends: forwarded, the real head follows
          to_client += rh.forward + "\r\n";
          continue;
        }
        resp_close = rh.close;
        rbody = rh.body;
        rremaining = rh.content_length;
        bool close_client = !keep || resp_close;
        to_client += rh.forward + (close_client ? "Connection: close\r\n\r\n" : "\r\n");
        phase = rbody == http::ResponseBody::none ? Phase::done : Phase::body;
        continue;
      }
      // Body.
      if (rbody == http::ResponseBody::close) {
        to_client.append(in);
        return true;
      }
      if (rbody == http::ResponseBody::length) {
        auto k = static_cast<std::size_t>(std::min<uint64_t>(rremaining, in.size()));
        to_client.append(in.substr(0, k));
        rremaining -= k;
        in.remove_prefix(k);
        if (!rremaining) phase = Phase::done;
        continue;
      }
      long long k = rchunked.feed(in);
      if (k < 0) {
        x.end = "error: bad chunked response: " + rchunked.error();
        return false;
      }
      to_client.append(in.substr(0, static_cast<std::size_t>(k)));
      in.remove_prefix(static_cast<std::size_t>(k));
      if (rchunked.done()) phase = Phase::done;
    }
    return true;
  };
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
        // The upstream may have answered (and closed) before reading the
        // whole body: relay that answer, then end the client connection.
        if (!got_any) return fail("upstream-closed");
        to_up.clear();
        body_done = true;
        keep = false;
      }
    }
    if (!to_client.empty()) {
      ssize_t n = ::send(rl.client, to_client.data(), to_client.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        to_client.erase(0, static_cast<std::size_t>(n));
        rl.down += static_cast<uint64_t>(n);
        progress = true;
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        return fail("client-closed");
      }
    }
    if (to_client.empty()) {
      if (phase == Phase::done) {
        x.end = "closed";
        // Reusable only when both sides framed everything and nobody asked to
        // close. A response that came before the whole request body (the
        // upstream did not wait for it) ends the client connection.
        x.client_reusable = keep && !resp_close && body_done;
        x.upstream_reusable = x.client_reusable && !upstream_extra && to_up.empty();
        if (!x.client_reusable) x.pipelined.clear();
        return x;
      }
      if (up_eof) {
        if (phase == Phase::body && rbody == http::ResponseBody::close) {
          x.end = "closed";
          x.pipelined.clear();
          return x;  // close-delimited: the client connection ends too
        }
        return fail("upstream-closed");
      }
    }
    // Read the client only for the request body (pipelined requests wait in
    // the socket buffer once the body is complete: memory stays bounded).
    if (!client_eof && !body_done && to_up.size() < kRelayBuf) {
      ssize_t n = ::recv(rl.client, buf.data(), buf.size(), MSG_DONTWAIT);
      if (n > 0) {
        progress = true;
        if (!take_client(std::string_view(buf.data(), static_cast<std::size_t>(n))))
          return fail("error: bad chunked body: " + chunked.error());
      } else if (n == 0) {
        client_eof = true;
        return fail("client-closed");
      } else if (errno != EAGAIN && errno != EINTR) {
        return fail("client-closed");
      }
    }
    if (!up_eof && to_client.size() < kRelayBuf) {
      ssize_t n = ::recv(rl.upstream, buf.data(), buf.size(), MSG_DONTWAIT);
      if (n > 0) {
        progress = true;
        got_any = true;
        if (!take_up(std::string_view(buf.data(), static_cast<std::size_t>(n)))) return fail(x.end);
      } else if (n == 0) {
        up_eof = true;
        progress = true;
      } else if (errno != EAGAIN && errno != EINTR) {
        return fail("upstream-closed");
      }
    }
    if (progress) {
      rl.last = Clock::now();
      continue;
    }
    pollfd p[3];
    short ce = 0, ue = 0;
    if (!client_eof && !body_done && to_up.size() < kRelayBuf) ce |= POLLIN;
    if (!to_client.empty()) ce |= POLLOUT;
    if (!up_eof && to_client.size() < kRelayBuf) ue |= POLLIN;
    if (!to_up.empty()) ue |= POLLOUT;
    p[0] = {ce ? rl.client : -1, ce, 0};
    p[1] = {ue ? rl.upstream : -1, ue, 0};
    std::string end;
    if (!rl.poll_step(p, 2, end)) return fail(end);
    if (p[0].revents & POLLERR) return fail("client-closed");
    if (p[1].revents & POLLERR) return fail("upstream-closed");
  }
}

// An idle upstream connection kept for the next request is usable if it has
// neither closed nor sent anything unasked.
bool upstream_idle_ok(int fd) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  return ::poll(&p, 1, 0) == 0;
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

void Proxy::respond(Conn& c, int status, const std::string& text) {
  int stop = stop_fd_.get();
  emit(c);  // recorded before the client can see the answer
  auto r = http::error_response(status, text);
  if (send_all(c.fd.get(), r, stop, Clock::now() + std::chrono::seconds(5))) linger_close(c.fd.get(), stop);
}

bool Proxy::connect_upstream(Conn& c, UniqueFd& up) {
  int stop = stop_fd_.get();
  auto fail = [&](int status, const std::string& reason, const std::string& text) {
    c.status = status;
    c.reason = reason;
    c.end = "refused";
    c.error = true;
    respond(c, status, text);
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
    return false;
  }
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
        return false;
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
      respond(c, 403, "agentshim: " + target + " denied: " + denial);
      return false;
    }
    if (timed_out)
      fail(504, "connect timed out", "agentshim: " + target + " failed: connect timed out");
    else
      fail(502, "upstream unreachable", "agentshim: " + target + " failed: upstream unreachable");
    return false;
  }
  set_nodelay(up.get());
  c.reason = "matched rule " + c.rule;
  return true;
}

void Proxy::worker(std::unique_ptr<Conn> cp) {
  Conn& c = *cp;
  if (!c.req.is_connect) {
    http_session(c);
    c.fd.reset();
    return;
  }
  int stop = stop_fd_.get();
  UniqueFd up;
  if (!connect_upstream(c, up)) return;
  set_nodelay(c.fd.get());
  Relay rl{c.fd.get(), up.get(), stop, limits_, c.conn_start, Clock::now()};
  rl.spawn = [this](std::function<void()> fn) { return run_task(std::move(fn)); };
  try {
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

void Proxy::http_session(Conn& c) {
  int stop = stop_fd_.get();
  set_nodelay(c.fd.get());
  UniqueFd up;
  std::string up_host, up_resolved, up_rule;
  uint16_t up_port = 0;
  std::string leftover = std::move(c.leftover);
  const int max_requests = std::max(1, limits_.max_requests_per_connection);
  for (;;) {
    // Upstream: the kept connection if it goes to the same place and is still
    // healthy (its address is checked again for this request), else a new one.
    bool reuse = up && up_host == c.host && up_port == c.port && upstream_idle_ok(up.get());
    if (reuse) {
      sockaddr_storage ss{};
      socklen_t sl = sizeof ss;
      if (getpeername(up.get(), reinterpret_cast<sockaddr*>(&ss), &sl) != 0 ||
          !allow_.check_address(c.host, c.port, ss).allowed)
        reuse = false;
    }
    if (reuse) {
      c.resolved = up_resolved;
      c.rule = up_rule;
      c.reason = "matched rule " + c.rule;
    } else {
      up.reset();
      if (!connect_upstream(c, up)) return;
      up_host = c.host;
      up_port = c.port;
      up_resolved = c.resolved;
      up_rule = c.rule;
    }
    bool keep = c.req.keep_alive && c.request < max_requests;
    Relay rl{c.fd.get(), up.get(), stop, limits_, c.conn_start, Clock::now()};
    Exchange x;
    try {
      x = http_exchange(rl, c.req, std::move(leftover), keep);
    } catch (const std::exception& e) {
      x.end = std::string("error: ") + e.what();
    }
    c.end = x.end;
    c.status = x.status;
    if (c.end.rfind("error", 0) == 0) c.error = true;
    c.up = rl.up;
    c.down = rl.down;
    if (x.bad_response && rl.down == 0) {
      // Nothing reached the client yet: it gets a 502 instead of a cut connection.
      c.status = 502;
      c.reason = x.end.substr(7);
      respond(c, 502, "agentshim: " + c.method + " to " + authority(c.host, c.port) + " failed: bad response");
      return;
    }
    emit(c);  // before the client's socket is closed or the next request is read
    if (!x.client_reusable) return;
    if (!x.upstream_reusable) up.reset();
    // The next request on this connection: its head must be complete within
    // header_timeout_ms (and the total timeout); none arriving ends the
    // connection quietly, a partial one is recorded like in the head loop.
    c.method.clear();
    c.host.clear();
    c.resolved.clear();
    c.rule.clear();
    c.reason.clear();
    c.end.clear();
    c.decision = "denied";
    c.port = 0;
    c.status = 0;
    c.up = c.down = 0;
    c.error = false;
    ++c.request;
    c.start = Clock::now();
    auto deadline = c.start + std::chrono::milliseconds(limits_.header_timeout_ms);
    if (limits_.total_timeout_ms > 0)
      deadline = std::min(deadline, c.conn_start + std::chrono::milliseconds(limits_.total_timeout_ms));
    std::string buf = std::move(x.pipelined);
    http::ParseResult pr;
    for (;;) {
      if (!buf.empty()) {
        pr = http::parse_request_head(buf, limits_.max_header_bytes, limits_.max_headers);
        if (pr.state != http::ParseResult::State::incomplete) break;
      }
      auto w = wait_fd(c.fd.get(), POLLIN, stop, deadline);
      if (w == Wait::stopped) return;
      if (w == Wait::timeout) {
        if (buf.empty()) return;  // an idle persistent connection simply ends
        c.reason = "request head not complete within " + std::to_string(limits_.header_timeout_ms) + " ms";
        c.end = "header-timeout";
        c.error = true;
        c.status = 408;
        respond(c, 408, "agentshim: request head not received in time");
        return;
      }
      std::size_t want = limits_.max_header_bytes + 1 - std::min(buf.size(), limits_.max_header_bytes);
      want = std::min<std::size_t>(want, 16384);
      std::size_t old = buf.size();
      buf.resize(old + want);
      ssize_t r = ::recv(c.fd.get(), buf.data() + old, want, MSG_DONTWAIT);
      int rerr = errno;
      buf.resize(old + static_cast<std::size_t>(std::max<ssize_t>(r, 0)));
      if (r < 0 && (rerr == EAGAIN || rerr == EINTR)) continue;
      if (r <= 0) {
        if (!buf.empty()) {
          c.reason = "bad request: connection closed before the request head was complete";
          c.end = r == 0 ? "client-closed" : "error: " + std::string(strerror(rerr));
          c.error = true;
          emit(c);
        }
        return;
      }
    }
    if (pr.state == http::ParseResult::State::error) {
      if (!pr.request.method.empty()) c.method = pr.request.method;
      c.reason = "bad request: " + pr.reason;
      c.end = "refused";
      c.error = true;
      c.status = pr.status;
      respond(c, pr.status, "agentshim: bad request: " + pr.reason);
      return;
    }
    const auto& rq = pr.request;
    c.method = rq.method;
    c.host = rq.host;
    c.port = rq.port;
    if (rq.is_connect) {
      // A tunnel is its own connection: not after requests on this one.
      c.reason = "bad request: CONNECT on a persistent plain HTTP connection";
      c.end = "refused";
      c.error = true;
      c.status = 400;
      respond(c, 400, "agentshim: bad request: CONNECT must be the first request on a connection");
      return;
    }
    auto d = allow_.check_name(rq.host, rq.port);
    c.rule = d.rule;
    if (!d.allowed) {
      c.reason = d.reason;
      c.end = "refused";
      c.status = 403;
      respond(c, 403, "agentshim: " + rq.method + " to " + authority(rq.host, rq.port) + " denied: " + d.reason);
      return;
    }
    c.decision = "allowed";
    c.req = rq;
    leftover = buf.substr(pr.head_len);
  }
}

}  // namespace agentshim::net
