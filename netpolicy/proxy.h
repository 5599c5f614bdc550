// Egress proxy: HTTP/1.1 CONNECT tunnels and absolute-form plain HTTP,
// admitted by an Allowlist, one event per connection.
//
// Threads and parts (docs/ARCHITECTURE.md, "Network proxy"): the acceptor
// (proxy_acceptor.cpp, the StoppableLoop's thread) accepts and reads request
// heads (epoll, one deadline per connection, no thread per pending client:
// slowloris and idle clients cost a buffer each). A complete, allowlisted
// head is handed to a worker thread (pooled, reused) that resolves the name,
// checks every address and connects to exactly the address it checked
// (proxy.cpp), then runs a tunnel (proxy_tunnel.cpp) or plain HTTP exchanges
// (proxy_http.cpp). The one relay engine: a tunnel's two directions each run
// on a pooled thread doing blocking recv/send through a 4 MiB buffer, while
// the worker watches the idle/total deadlines and stop (and ends both by
// shutting the sockets down); see docs/NETWORK.md for why this beat
// splice(2) here. stop() wakes every thread through the loop's one eventfd
// and joins them.
//
// Plain HTTP keep-alive: requests are served one after another on the same
// client connection (pipelined ones in order) by the same worker. Each
// request is checked against the allowlist on its own and gets its own
// net.connection event. The upstream connection is reused while the next
// request goes to the same host:port and both sides allow it; the response
// is framed (Content-Length, chunked, or close-delimited, which ends the
// client connection too). `Connection: close` from either side, HTTP/1.0,
// max_requests_per_connection, an error answer, or a request body the
// upstream did not read end the client connection after that response.
//
// net.connection event data (integers and strings only):
//   client_port, request (1-based index of the request on its client
//   connection; 1 for CONNECT), method ("CONNECT" or the HTTP method, "" if unparsable),
//   host (validated, normalized; "" if none), port, resolved (the address
//   connected to or refused, "" if none), decision ("allowed"/"denied"),
//   rule, reason (one line), status (the status line the proxy sent: 200 for
//   an established tunnel, the upstream's status for plain HTTP (0 if none
//   seen), or the error status: 400/403/408/431/501/502/503/504), bytes_up
//   (client->upstream payload), bytes_down, duration_ms, end:
//   "closed" (both sides finished normally), "client-closed" (the client went
//   away or reset first), "upstream-closed" (upstream reset / closed before
//   the request body was sent), "idle-timeout", "total-timeout",
//   "header-timeout", "stopped", "refused" (error answered before any
//   upstream traffic), "error: <what>".
//   With credentials (set_credentials), a request they were applied to also
//   has credential (the names, comma-separated) and path (the request's
//   path, at most 256 bytes, query removed).
// net.credential event, one per request carrying a placeholder where its
// credential may not go (an exfiltration attempt): client_port, request,
// method, host, port, credential (name), action ("stripped": the header
// field was removed and the request forwarded without it; "denied": the
// placeholder was in the request target, the request was answered 403),
// decision "denied". Never a secret or a placeholder value.
// decision is "allowed" when the allowlist admitted the destination (even if
// connecting then failed: status 502/504 says so), "denied" otherwise,
// including malformed requests (reason starts with "bad request:").
// totals(): allowed / denied count events by decision, of which errors are
// the ones that did not reach the upstream or failed (4xx except 403, 5xx,
// header timeouts); connections = client connections accepted.
#pragma once

#include <netinet/in.h>
#include <sys/stat.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/fd.h"
#include "common/stoppable_loop.h"
#include "netpolicy/allowlist.h"
#include "netpolicy/credentials.h"
#include "netpolicy/request_rules.h"

namespace agentshim::net {

namespace tls {
class Interceptor;
}

using json = nlohmann::json;
// Called from proxy threads; must be cheap; the sink must be thread-safe.
using EventSink = std::function<void(const std::string& type, json data)>;
// Name -> addresses (port ignored). The default uses getaddrinfo in the
// calling (worker) thread's namespace. May throw; empty = unresolvable.
using Resolver = std::function<std::vector<sockaddr_storage>(const std::string& host)>;
std::vector<sockaddr_storage> system_resolve(const std::string& host);

struct Limits {
  std::size_t max_header_bytes = 16384;
  int max_headers = 100;
  int max_connections = 256;      // active tunnels/requests at once; beyond: 503 and close
  int max_pending = 4096;         // connections still sending their request head; beyond: 503 and close
  int header_timeout_ms = 10000;  // whole request head must arrive within this (slowloris)
  // Memory of all request heads still being received, together (the
  // buffers' capacity): a connection whose next read would take the total
  // above it is answered 503 and closed (net.connection, reason "pending
  // request heads over the proxy's memory budget"), so the head phase costs
  // the supervisor at most this much whatever max_pending and
  // max_header_bytes say (docs/NETWORK.md).
  std::size_t max_pending_header_bytes = 8u << 20;
  int connect_timeout_ms = 10000;
  int idle_timeout_ms = 300000;
  int total_timeout_ms = 0;  // 0 = none
  // Plain HTTP keep-alive: requests served on one client connection (1 = one
  // request per connection). The next request head must be complete within
  // header_timeout_ms of the previous response's end.
  int max_requests_per_connection = 100;
};

class Proxy {
 public:
  // listen_fd: bound and listening TCP socket (made non-blocking here).
  Proxy(UniqueFd listen_fd, Allowlist allow, Limits limits, EventSink sink, Resolver resolver = {});
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;
  void start();
  void stop();
  // The credentials this container asked for (netpolicy/credentials.h),
  // applied on the requests the proxy reads (plain HTTP, intercepted TLS).
  // Thread-safe: a later call replaces them for the requests that follow.
  // A credential read from a file is also re-read by the proxy itself when
  // the file changes (rotation, docs/CREDENTIALS.md): a
  // net.credential_rotation event {credential, source, action "rotated", or
  // "failed" and the reason, the old value kept}.
  void set_credentials(std::vector<cred::Active> creds);
  // Before start(): request-level rules (netpolicy/request_rules.h).
  void set_request_rules(RequestRules rules) { rules_ = std::move(rules); }
  // Before start(): TLS interception (netpolicy/tls.h). A CONNECT to a
  // destination that has a credential or request rules is then terminated
  // with the run's certificate and its requests are read, checked and
  // rewritten like plain HTTP; every other CONNECT stays an opaque tunnel.
  // Without it such a CONNECT is an opaque tunnel (credentials) or denied
  // (request rules).
  void set_tls(std::shared_ptr<tls::Interceptor> tls) { tls_ = std::move(tls); }
  // Would a CONNECT to host:port be intercepted?
  bool intercepts(const std::string& host, uint16_t port) const;
  // Before start(): who is behind a client connection (the supervisor's
  // sandbox/sockowner lookup), asked by the worker that serves it while the
  // client waits for its answer; a non-null answer is the "origin" of that
  // connection's events. An exception counts as "unknown".
  using Attribute = std::function<json(int client_fd)>;
  void set_attribution(Attribute a) { attribute_ = std::move(a); }
  json totals() const;
  int active_connections() const { return active_.load(); }
  int pending_connections() const { return pending_.load(); }
  // Bytes held now by request heads in the head phase (<= max_pending_header_bytes).
  std::size_t pending_header_bytes() const { return pending_head_bytes_.load(); }
  // Connections refused because the head budget was used up.
  uint64_t refused_over_budget() const { return n_over_budget_.load(); }

  struct Conn;  // internal (proxy_internal.h)

 private:
  class Acceptor;  // the head loop (proxy_acceptor.cpp)
  void loop();
  void worker(std::unique_ptr<Conn> c);
  // c.origin from attribute_, once: for a request the allowlist denies (in
  // the head loop) and for every admitted connection (in its worker).
  void attribute(Conn& c);
  // CONNECT: connect, answer 200, relay until the end (proxy_tunnel.cpp).
  void tunnel_session(Conn& c);
  // An intercepted CONNECT (proxy_tls.cpp): both TLS handshakes, then the
  // requests on the decrypted stream, each checked and recorded.
  void intercept_session(Conn& c);
  void intercepted_requests(Conn& c, int upstream);
  // Resolve, check every address, connect (one budget). On failure the error
  // answer was sent and recorded (false).
  bool connect_upstream(Conn& c, UniqueFd& up);
  // Plain HTTP on one client connection: request after request (keep-alive) (proxy_http.cpp).
  void http_session(Conn& c);
  // Send an error answer (recorded first) and let the client read it.
  void respond(Conn& c, int status, const std::string& text);
  void emit(Conn& c);
  // Answer a connection the proxy will not serve (recorded first), without
  // waiting for the client to read it.
  void refuse(Conn& c, int status, std::string reason, const std::string& text);
  void reap(bool all);
  bool dispatch(std::unique_ptr<Conn>& c);
  // Run fn on a pooled thread (a tunnel direction); false if none could be started.
  bool run_task(std::function<void()> fn);
  void pool_thread();

  UniqueFd listen_;
  // The head loop's thread; its stop_fd() is what every worker and relay polls too.
  StoppableLoop loop_{"proxy"};
  UniqueFd ep_;  // the head loop's epoll
  Allowlist allow_;
  Limits limits_;
  EventSink sink_;
  Resolver resolver_;
  Attribute attribute_;
  // Worker pool (connections and tunnel directions): threads are reused; one
  // idle for 30 s exits.
  std::mutex pool_mu_;
  std::condition_variable pool_cv_;
  struct Job {
    std::unique_ptr<Conn> conn;  // a connection for worker(), or
    std::function<void()> fn;    // a task (one direction of a tunnel)
  };
  std::deque<Job> jobs_;
  bool enqueue_locked(Job& job);
  int idle_ = 0;
  bool pool_stop_ = false;
  struct Worker {
    std::thread t;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::list<Worker> workers_;
  std::atomic<int> active_{0}, pending_{0};
  std::atomic<std::size_t> pending_head_bytes_{0};
  std::atomic<uint64_t> n_over_budget_{0};
  // Credentials: the set in use (replaced whole by set_credentials) and,
  // per name, how many requests carried it; placeholders caught elsewhere.
  mutable std::mutex cred_mu_;
  std::shared_ptr<const std::vector<cred::Active>> creds_;
  std::map<std::string, uint64_t> cred_applied_;
  uint64_t cred_caught_ = 0;
  std::shared_ptr<const std::vector<cred::Active>> credentials() const;
  // Rotation: a credential whose source is a file is re-read when the file
  // changed (identity, size, mtime, ctime), checked at most once a second.
  struct FileStamp {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    timespec mtime{}, ctime{};
    bool operator==(const FileStamp& o) const;
  };
  std::mutex rotate_mu_;
  std::map<std::string, FileStamp> stamps_;  // by credential name (file sources)
  std::chrono::steady_clock::time_point next_rotate_check_{};
  static std::optional<FileStamp> stamp_of(const std::string& path);
  void maybe_rotate();
  // Apply the credentials to the current request of c (its req, host and
  // port); records a caught placeholder. False: the request was refused
  // (answered and recorded).
  bool apply_credentials(Conn& c);
  RequestRules rules_;
  std::shared_ptr<tls::Interceptor> tls_;
  std::atomic<uint64_t> n_intercepted_{0}, n_tls_refused_{0};
  // Check the current request of c against the request rules; false: it was
  // refused (answered 403 and recorded).
  bool check_request_rules(Conn& c);
  std::atomic<uint64_t> n_allowed_{0}, n_denied_{0}, n_errors_{0}, n_conn_{0}, bytes_up_{0}, bytes_down_{0};
};

}  // namespace agentshim::net
