#include "netpolicy/proxy.h"

#include <fcntl.h>
#include <netdb.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "netpolicy/proxy_internal.h"
#include "netpolicy/tls.h"

namespace agentshim::net {

using namespace proxy_io;

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
  ep_.reset(epoll_create1(EPOLL_CLOEXEC));
  if (!ep_) throw_errno("proxy: epoll_create1");
  for (int fd : {loop_.stop_fd(), listen_.get()}) {
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
  loop_.start([this] { loop(); });
}

void Proxy::stop() {
  if (!loop_.stop()) return;
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
  json t = {{"allowed", n_allowed_.load()},  {"denied", n_denied_.load()},
            {"bytes_up", bytes_up_.load()},  {"bytes_down", bytes_down_.load()},
            {"connections", n_conn_.load()}, {"errors", n_errors_.load()}};
  std::lock_guard lk(cred_mu_);
  if (creds_) {
    json used = json::object();
    for (const auto& a : *creds_) {
      auto it = cred_applied_.find(a.def.name);
      used[a.def.name] = it == cred_applied_.end() ? 0 : it->second;
    }
    t["credentials"] = {{"requests", used}, {"placeholders_caught", cred_caught_}};
  }
  if (tls_)
    t["tls"] = {{"intercepted_connections", n_intercepted_.load()},
                {"refused_handshakes", n_tls_refused_.load()},
                {"certificates_issued", tls_->authority().issued()}};
  return t;
}

void Proxy::set_credentials(std::vector<cred::Active> creds) {
  std::map<std::string, FileStamp> stamps;
  for (const auto& a : creds)
    if (a.def.source.kind == cred::Source::Kind::file)
      if (auto st = stamp_of(a.def.source.file)) stamps[a.def.name] = *st;
  auto p = std::make_shared<const std::vector<cred::Active>>(std::move(creds));
  {
    std::lock_guard lk(rotate_mu_);
    stamps_ = std::move(stamps);
  }
  std::lock_guard lk(cred_mu_);
  creds_ = std::move(p);
}

bool Proxy::FileStamp::operator==(const FileStamp& o) const {
  return dev == o.dev && ino == o.ino && size == o.size && mtime.tv_sec == o.mtime.tv_sec &&
         mtime.tv_nsec == o.mtime.tv_nsec && ctime.tv_sec == o.ctime.tv_sec &&
         ctime.tv_nsec == o.ctime.tv_nsec;
}

std::optional<Proxy::FileStamp> Proxy::stamp_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return FileStamp{st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim};
}

void Proxy::maybe_rotate() {
  std::unique_lock rl(rotate_mu_, std::try_to_lock);
  if (!rl.owns_lock() || stamps_.empty()) return;  // another request is checking right now
  auto now = std::chrono::steady_clock::now();
  if (now < next_rotate_check_) return;
  next_rotate_check_ = now + std::chrono::seconds(1);
  auto cur = credentials();
  if (!cur) return;
  std::vector<cred::Active> next;
  bool changed = false;
  for (const auto& a : *cur) {
    next.push_back(a);
    auto it = stamps_.find(a.def.name);
    if (it == stamps_.end()) continue;
    auto st = stamp_of(a.def.source.file);
    if (!st || *st == it->second) continue;
    it->second = *st;
    json ev = {{"credential", a.def.name}, {"source", "file " + a.def.source.file}};
    try {
      std::string secret = cred::load_secret(a.def.source);
      if (secret == a.secret) continue;
      next.back().secret = std::move(secret);
      changed = true;
      ev["action"] = "rotated";
    } catch (const std::exception& e) {
      ev["action"] = "failed";
      ev["reason"] = std::string(e.what()) + "; the previous value stays in use";
    }
    if (sink_) try {
        sink_("net.credential_rotation", std::move(ev));
      } catch (...) {
      }
  }
  if (!changed) return;
  auto p = std::make_shared<const std::vector<cred::Active>>(std::move(next));
  std::lock_guard lk(cred_mu_);
  creds_ = std::move(p);
}

std::shared_ptr<const std::vector<cred::Active>> Proxy::credentials() const {
  std::lock_guard lk(cred_mu_);
  return creds_;
}

bool Proxy::intercepts(const std::string& host, uint16_t port) const {
  if (!tls_) return false;
  if (rules_.covers(host, port)) return true;
  auto creds = credentials();
  if (!creds) return false;
  for (const auto& a : *creds)
    for (const auto& d : a.def.destinations)
      if (d.host == host && d.port == port) return true;
  return false;
}

bool Proxy::check_request_rules(Conn& c) {
  if (rules_.empty()) return true;
  auto d = rules_.check(c.host, c.port, c.method, c.req.path);
  if (d.allowed) return true;
  c.decision = "denied";
  c.rule = d.rule;
  c.status = 403;
  c.reason = d.reason;
  c.end = "refused";
  respond(c, 403, "agentshim: " + c.method + " to " + authority(c.host, c.port) + " denied: " + d.reason);
  return false;
}

bool Proxy::apply_credentials(Conn& c) {
  c.credential.clear();
  c.path.clear();
  maybe_rotate();
  auto creds = credentials();
  if (!creds || creds->empty()) return true;
  auto rw = cred::rewrite(c.req, *creds, c.host, c.port);
  for (const auto& name : rw.stripped) {
    {
      std::lock_guard lk(cred_mu_);
      ++cred_caught_;
    }
    ++n_denied_;
    if (!sink_) continue;
    try {
      json d = {{"client_port", c.client_port},
                {"request", c.request},
                {"method", c.method},
                {"host", c.host},
                {"port", c.port},
                {"credential", name},
                {"action", rw.deny ? "denied" : "stripped"},
                {"decision", "denied"}};
      if (!c.origin.is_null()) d["origin"] = c.origin;
      sink_("net.credential", std::move(d));
    } catch (...) {
      // as in emit()
    }
  }
  if (rw.deny) {
    c.decision = "denied";
    c.status = 403;
    c.reason = rw.reason;
    c.end = "refused";
    respond(c, 403, "agentshim: " + c.method + " to " + authority(c.host, c.port) + " denied: " + rw.reason);
    return false;
  }
  if (!rw.applied.empty()) {
    std::lock_guard lk(cred_mu_);
    for (const auto& n : rw.applied) {
      ++cred_applied_[n];
      c.credential += (c.credential.empty() ? "" : ",") + n;
    }
    c.path = c.req.path.substr(0, c.req.path.find('?')).substr(0, 256);
  }
  return true;
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
  if (!c.credential.empty()) d["credential"] = c.credential;
  if (!c.credential.empty() || c.intercepted) d["path"] = c.path;
  if (c.intercepted) d["tls"] = "intercepted";
  if (!c.origin.is_null()) d["origin"] = c.origin;
  try {
    sink_("net.connection", std::move(d));
  } catch (...) {
    // a failing sink must not take the proxy down; the supervisor records log failures itself
  }
}

void Proxy::attribute(Conn& c) {
  if (!attribute_ || !c.origin.is_null()) return;
  try {
    c.origin = attribute_(c.fd.get());
  } catch (...) {
    c.origin = nullptr;  // unknown: the events stay the serving container's alone
  }
}

void Proxy::worker(std::unique_ptr<Conn> cp) {
  Conn& c = *cp;
  attribute(c);
  if (c.req.is_connect)
    tunnel_session(c);
  else
    http_session(c);
  c.fd.reset();
}

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
  int stop = loop_.stop_fd();
  emit(c);  // recorded before the client can see the answer
  auto r = http::error_response(status, text);
  if (send_all(c.fd.get(), r, stop, Clock::now() + std::chrono::seconds(5))) linger_close(c.fd.get(), stop);
}

bool Proxy::connect_upstream(Conn& c, UniqueFd& up) {
  int stop = loop_.stop_fd();
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

}  // namespace agentshim::net
