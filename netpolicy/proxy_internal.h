// Internals shared by the proxy's parts (not for users of proxy.h):
//   proxy.cpp           Proxy: lifecycle, worker pool, events, connecting upstream
//   proxy_acceptor.cpp  the head loop: accept, read request heads, admit, hand over
//   proxy_tunnel.cpp    CONNECT: the one relay engine (a thread per direction)
//   proxy_http.cpp      plain HTTP: one exchange, and a keep-alive session of them
//   proxy_tls.cpp       an intercepted CONNECT: TLS both ways, requests read like plain HTTP
//   proxy_io.cpp        waiting with deadlines and stop, sending, lingering
#pragma once

#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "netpolicy/http.h"
#include "netpolicy/proxy.h"

namespace agentshim::net {

using Clock = std::chrono::steady_clock;

// One client connection, from accept to its last response.
struct Proxy::Conn {
  UniqueFd fd;
  uint16_t client_port = 0;
  int request = 1;                    // index of the current request on this client connection
  Clock::time_point conn_start;       // accept: the total timeout counts from here
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
  std::string credential, path;  // applied credentials (names) and the path, when any was applied
  bool intercepted = false;      // a request read inside an intercepted TLS tunnel
  json origin;                   // who is behind the connection (Proxy::set_attribution), null: unknown
};

namespace proxy_io {

constexpr std::size_t kRelayBuf = 256 * 1024;
// Per direction of a tunnel: resident only as far as one recv filled it (see docs/NETWORK.md).
constexpr std::size_t kTunnelBuf = 4 << 20;

uint16_t peer_port(int fd);
// Milliseconds until t for poll(2): 0 if past, rounded up.
int ms_until(Clock::time_point t);
void set_nodelay(int fd);
// "host:port", IPv6 in brackets.
std::string authority(const std::string& host, uint16_t port);

enum class Wait { ready, timeout, stopped };
// Wait for `events` on fd, or the stop eventfd, or the deadline.
Wait wait_fd(int fd, short events, int stop_fd, Clock::time_point deadline);
// Best effort full send with a deadline; false on error/timeout/stop.
bool send_all(int fd, std::string_view data, int stop_fd, Clock::time_point deadline);
// After an error response: stop writing, read and discard what the client
// still sends (so closing does not reset the connection under the response).
void linger_close(int fd, int stop_fd);

// Two connected sockets being relayed, with the connection's deadlines.
struct Relay {
  int client, upstream, stop_fd;
  const Limits& limits;
  Clock::time_point start;  // of the client connection (total timeout)
  Clock::time_point last;   // of the last byte moved (idle timeout)
  uint64_t up = 0, down = 0;
  std::function<bool(std::function<void()>)> spawn = {};  // runs a task on a pooled thread

  // poll(2) on p[0..n) plus the stop eventfd (p[n] is filled in) until the
  // idle or total deadline. false when a deadline passed or stop: sets `end`.
  bool poll_step(pollfd* p, int n, std::string& end);
};

// A tunnel's two directions until both end, a deadline passes or stop;
// returns the event's `end`.
std::string tunnel(Relay& rl);

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
Exchange http_exchange(Relay& rl, const http::Request& req, std::string leftover, bool keep);

// An idle upstream connection kept for the next request is usable if it has
// neither closed nor sent anything unasked.
bool upstream_idle_ok(int fd);

// http_exchange for the request in c.req, its outcome recorded in c (end,
// status, error, bytes). When the upstream's response was bad and nothing
// reached the client yet (x.bad_response && !c.down), c says why and the
// caller answers 502 instead of cutting the connection.
Exchange exchange_request(Proxy::Conn& c, Relay& rl, std::string leftover, bool keep);

// Reading the next request head on a client connection (plain HTTP after its
// first request, and inside an intercepted TLS tunnel).
enum class HeadRead {
  head,       // pr holds a complete, valid head
  bad,        // a malformed head: answer c.status (c says why)
  stopped,    // the proxy is stopping
  idle,       // nothing arrived before the deadline, or the client closed: ends quietly
  timed_out,  // part of a head arrived, not all of it in time: answer 408 (c says why)
  closed,     // the client closed (or failed) mid-head: record the event (c says why)
};
// Receive from c.fd into buf (bytes already in buf are parsed first) until a
// request head is complete or malformed, within max_header_bytes and the
// deadline. origin: the CONNECT target an intercepted request must name.
HeadRead read_request_head(Proxy::Conn& c, std::string& buf, const Limits& limits, int stop_fd,
                           Clock::time_point deadline, const http::Origin* origin, http::ParseResult& pr);

}  // namespace proxy_io
}  // namespace agentshim::net
