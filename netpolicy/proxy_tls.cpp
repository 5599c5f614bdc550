// An intercepted CONNECT (netpolicy/tls.h, docs/CREDENTIALS.md "TLS"):
// connect upstream and verify its TLS first (a refusal is still a plain
// answer to the CONNECT the client can read), answer 200, terminate the
// client's TLS with the run's certificate for the CONNECT host, then serve
// the requests on the decrypted stream one after another (keep-alive):
// each is checked against the request rules, gets the credentials, and is
// recorded as its own net.connection event (tls "intercepted", with its
// path). The two TLS connections are relayed to socketpairs by a pump on a
// pooled thread; the exchange code reads and writes the plain ends.
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <condition_variable>
#include <cstring>
#include <mutex>

#include "netpolicy/proxy_internal.h"
#include "netpolicy/tls.h"

namespace agentshim::net {

using namespace proxy_io;

namespace {

bool set_nonblocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0;
}

}  // namespace

void Proxy::intercept_session(Conn& c) {
  const int stop = loop_.stop_fd();
  const std::string target = "CONNECT to " + authority(c.host, c.port);
  c.intercepted = true;
  c.path.clear();
  set_nodelay(c.fd.get());  // the handshake's several writes must not wait for delayed ACKs
  if (!c.leftover.empty()) {
    // The client sent bytes before the tunnel existed: its TLS handshake
    // cannot be taken over from the middle.
    c.status = 400;
    c.reason = "bad request: data after CONNECT before the 200 answer (an intercepted destination)";
    c.end = "refused";
    c.error = true;
    respond(c, 400, "agentshim: bad request: data sent before the tunnel was established");
    return;
  }
  UniqueFd up;
  if (!connect_upstream(c, up)) return;
  const auto hs_deadline = Clock::now() + std::chrono::milliseconds(limits_.header_timeout_ms);
  if (!set_nonblocking(up.get()) || !set_nonblocking(c.fd.get())) {
    c.status = 502;
    c.reason = std::string("fcntl: ") + strerror(errno);
    c.end = "error: " + c.reason;
    c.error = true;
    respond(c, 502, "agentshim: " + target + " failed");
    return;
  }
  // Upstream first: its certificate must verify before the client is told
  // the tunnel exists.
  auto uh = tls_->connect(up.get(), c.host, stop, hs_deadline);
  if (!uh.ssl) {
    ++n_tls_refused_;
    c.status = 502;
    c.reason = uh.error;
    c.end = "refused";
    c.error = true;
    respond(c, 502, "agentshim: " + target + " refused: " + uh.error);
    return;
  }
  static const std::string ok = "HTTP/1.1 200 Connection established\r\n\r\n";
  if (!send_all(c.fd.get(), ok, stop, hs_deadline)) {
    c.status = 200;
    c.end = "client-closed";
    emit(c);
    return;
  }
  auto ch = tls_->accept(c.fd.get(), c.host, stop, hs_deadline);
  if (!ch.ssl) {
    // The tunnel was answered 200; the client's handshake failed or was
    // refused (a server name other than the CONNECT host, no http/1.1).
    ++n_tls_refused_;
    c.status = 200;
    if (ch.refused) c.decision = "denied";
    c.reason = ch.error;
    c.end = "refused";
    c.error = !ch.refused;
    emit(c);
    return;
  }
  ++n_intercepted_;
  // The decrypted streams: the exchange code works on a[0] (client) and
  // b[0] (upstream); the pump owns the TLS sockets and a[1], b[1].
  int a[2], b[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, a) != 0) {
    c.end = std::string("error: socketpair: ") + strerror(errno);
    c.error = true;
    emit(c);
    return;
  }
  UniqueFd a0(a[0]), a1(a[1]);
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, b) != 0) {
    c.end = std::string("error: socketpair: ") + strerror(errno);
    c.error = true;
    emit(c);
    return;
  }
  UniqueFd b0(b[0]), b1(b[1]);
  struct Shared {
    UniqueFd client, upstream, a1, b1;
    std::vector<tls::PumpSide> sides;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    std::string end;
  };
  auto sh = std::make_shared<Shared>();
  sh->client = std::move(c.fd);
  sh->upstream = std::move(up);
  sh->a1 = std::move(a1);
  sh->b1 = std::move(b1);
  sh->sides.push_back({std::move(ch.ssl), sh->client.get(), sh->a1.get()});
  sh->sides.push_back({std::move(uh.ssl), sh->upstream.get(), sh->b1.get()});
  const int idle = limits_.idle_timeout_ms;
  bool started = run_task([sh, stop, idle] {
    std::string end;
    try {
      end = tls::pump(sh->sides, stop, idle);
    } catch (const std::exception& e) {
      end = std::string("error: ") + e.what();
    }
    sh->sides.clear();  // the SSL objects, before the sockets they use
    sh->client.reset();
    sh->upstream.reset();
    sh->a1.reset();
    sh->b1.reset();
    std::lock_guard lk(sh->mu);
    sh->end = end;
    sh->done = true;
    sh->cv.notify_all();
  });
  if (!started) {
    c.fd = std::move(sh->client);
    c.status = 200;
    c.end = "error: cannot start a relay thread";
    c.error = true;
    emit(c);
    return;
  }
  // The requests: the client side of this connection is now the plain end.
  c.fd = std::move(a0);
  intercepted_requests(c, b0.get());
  c.fd.reset();
  b0.reset();
  std::unique_lock lk(sh->mu);
  sh->cv.wait(lk, [&] { return sh->done; });
}

void Proxy::intercepted_requests(Conn& c, int upstream) {
  const int stop = loop_.stop_fd();
  const http::Origin origin{c.host, c.port};
  const std::string rule = c.rule, resolved = c.resolved;
  const int max_requests = std::max(1, limits_.max_requests_per_connection);
  std::string buf;
  for (;;) {
    // The next request head (the first one too: the CONNECT was request 1's
    // admission, each request inside is its own event).
    c.method.clear();
    c.reason.clear();
    c.end.clear();
    c.decision = "allowed";
    c.rule = rule;
    c.resolved = resolved;
    c.status = 0;
    c.up = c.down = 0;
    c.error = false;
    c.credential.clear();
    c.path.clear();
    c.start = Clock::now();
    auto deadline = c.start + std::chrono::milliseconds(limits_.header_timeout_ms);
    if (limits_.total_timeout_ms > 0)
      deadline = std::min(deadline, c.conn_start + std::chrono::milliseconds(limits_.total_timeout_ms));
    http::ParseResult pr;
    const auto got = proxy_io::read_request_head(c, buf, limits_, stop, deadline, &origin, pr);
    if (got == proxy_io::HeadRead::timed_out) respond(c, 408, "agentshim: request head not received in time");
    if (got == proxy_io::HeadRead::bad) respond(c, c.status, "agentshim: " + c.reason);
    if (got == proxy_io::HeadRead::closed) emit(c);
    if (got != proxy_io::HeadRead::head) return;
    c.req = pr.request;
    c.method = c.req.method;
    buf.erase(0, pr.head_len);
    if (!check_request_rules(c) || !apply_credentials(c)) return;
    c.path = c.req.path.substr(0, c.req.path.find('?')).substr(0, 256);
    c.reason = "matched rule " + c.rule;
    bool keep = c.req.keep_alive && c.request < max_requests;
    Relay rl{c.fd.get(), upstream, stop, limits_, c.conn_start, Clock::now()};
    Exchange x = exchange_request(c, rl, std::move(buf), keep);
    buf.clear();
    if (x.bad_response && rl.down == 0) {
      respond(c, 502,
              "agentshim: " + c.method + " to " + authority(c.host, c.port) + " failed: bad response");
      return;
    }
    emit(c);
    // One upstream connection per tunnel: when it cannot carry the next
    // request, the client's connection ends too (the client reconnects).
    if (!x.client_reusable || !x.upstream_reusable) return;
    buf = std::move(x.pipelined);
    ++c.request;
  }
}

}  // namespace agentshim::net
