#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "netpolicy/proxy_internal.h"

namespace agentshim::net {

namespace proxy_io {

Exchange exchange_request(Proxy::Conn& c, Relay& rl, std::string leftover, bool keep) {
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
    c.status = 502;
    c.reason = x.end.substr(7);
  }
  return x;
}

HeadRead read_request_head(Proxy::Conn& c, std::string& buf, const Limits& limits, int stop_fd,
                           Clock::time_point deadline, const http::Origin* origin, http::ParseResult& pr) {
  for (;;) {
    if (!buf.empty()) {
      pr = http::parse_request_head(buf, limits.max_header_bytes, limits.max_headers, origin);
      if (pr.state == http::ParseResult::State::complete) return HeadRead::head;
      if (pr.state == http::ParseResult::State::error) {
        if (!pr.request.method.empty()) c.method = pr.request.method;
        c.decision = "denied";
        c.reason = "bad request: " + pr.reason;
        c.end = "refused";
        c.error = true;
        c.status = pr.status;
        return HeadRead::bad;
      }
    }
    auto w = wait_fd(c.fd.get(), POLLIN, stop_fd, deadline);
    if (w == Wait::stopped) return HeadRead::stopped;
    if (w == Wait::timeout) {
      if (buf.empty()) return HeadRead::idle;  // an idle (persistent) connection simply ends
      c.reason = "request head not complete within " + std::to_string(limits.header_timeout_ms) + " ms";
      c.end = "header-timeout";
      c.error = true;
      c.status = 408;
      return HeadRead::timed_out;
    }
    std::size_t want = limits.max_header_bytes + 1 - std::min(buf.size(), limits.max_header_bytes);
    want = std::min<std::size_t>(want, 16384);
    std::size_t old = buf.size();
    buf.resize(old + want);
    ssize_t r = ::recv(c.fd.get(), buf.data() + old, want, MSG_DONTWAIT);
    int rerr = errno;
    buf.resize(old + static_cast<std::size_t>(std::max<ssize_t>(r, 0)));
    if (r < 0 && (rerr == EAGAIN || rerr == EINTR)) continue;
    if (r <= 0) {
      if (buf.empty()) return HeadRead::idle;
      c.reason = "bad request: connection closed before the request head was complete";
      c.end = r == 0 ? "client-closed" : "error: " + std::string(strerror(rerr));
      c.error = true;
      return HeadRead::closed;
    }
  }
}

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

bool upstream_idle_ok(int fd) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  return ::poll(&p, 1, 0) == 0;
}

}  // namespace proxy_io

using namespace proxy_io;

// Plain HTTP on one client connection: request after request (keep-alive),
// each admitted and recorded on its own.
void Proxy::http_session(Conn& c) {
  int stop = loop_.stop_fd();
  set_nodelay(c.fd.get());
  UniqueFd up;
  std::string up_host, up_resolved, up_rule;
  uint16_t up_port = 0;
  std::string leftover = std::move(c.leftover);
  const int max_requests = std::max(1, limits_.max_requests_per_connection);
  for (;;) {
    // Credentials: put in where they may go, placeholders caught elsewhere
    // (before any upstream connection for this request).
    if (!check_request_rules(c) || !apply_credentials(c)) return;
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
    Exchange x = exchange_request(c, rl, std::move(leftover), keep);
    if (x.bad_response && rl.down == 0) {
      // Nothing reached the client yet: it gets a 502 instead of a cut connection.
      respond(c, 502,
              "agentshim: " + c.method + " to " + authority(c.host, c.port) + " failed: bad response");
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
    c.credential.clear();
    c.path.clear();
    ++c.request;
    c.start = Clock::now();
    auto deadline = c.start + std::chrono::milliseconds(limits_.header_timeout_ms);
    if (limits_.total_timeout_ms > 0)
      deadline = std::min(deadline, c.conn_start + std::chrono::milliseconds(limits_.total_timeout_ms));
    std::string buf = std::move(x.pipelined);
    http::ParseResult pr;
    const auto got = proxy_io::read_request_head(c, buf, limits_, stop, deadline, nullptr, pr);
    if (got == proxy_io::HeadRead::timed_out) respond(c, 408, "agentshim: request head not received in time");
    if (got == proxy_io::HeadRead::bad) respond(c, c.status, "agentshim: " + c.reason);
    if (got == proxy_io::HeadRead::closed) emit(c);
    if (got != proxy_io::HeadRead::head) return;
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
      respond(c, 403,
              "agentshim: " + rq.method + " to " + authority(rq.host, rq.port) + " denied: " + d.reason);
      return;
    }
    c.decision = "allowed";
    c.req = rq;
    leftover = buf.substr(pr.head_len);
  }
}

}  // namespace agentshim::net
