// Driver for bench/proxy.py: runs agentshim's egress Proxy outside a
// container, plus the upstream server and the clients the benchmark times.
//
//   proxy_bench proxy  --port P [--allow RULE]...   run a Proxy on 127.0.0.1:P until SIGTERM/SIGINT
//   proxy_bench server --port P                     upstream: first byte 'S' = sink (8-byte count N
//                                                   follows; replies with N once N bytes came), 'E' = echo
//   proxy_bench send    --to P [--via V] --bytes N  push N bytes, print {"seconds":...}
//   proxy_bench latency --to P [--via V] -n N       N sequential connect(+CONNECT)+1-byte round trips,
//                                                   print {"median_us":...,"p99_us":...}
//   proxy_bench relay --port P --to U --mode M      a bare CONNECT relay (no allowlist, no limits) to
//                                                   127.0.0.1:U, to compare relay strategies
//                                                   (M: poll = the proxy's loop, threads = a blocking
//                                                   splice thread per direction, copy = a blocking
//                                                   read/write thread per direction, copypoll =
//                                                   one thread, non-blocking recv/send and poll)
// Options: --rate MiBps (send: throttle to that rate), --pipe BYTES (relay pipe size), --sockbuf BYTES
// (SO_SNDBUF/SO_RCVBUF on every socket of send, server and relay; 0 = kernel autotuning),
// --wsize BYTES (send/copy write size). send also prints its own CPU time (user_s, sys_s).
// With port 0, proxy and server print "port N" once listening. Loopback only.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "netpolicy/proxy.h"
#include "netpolicy/tls.h"
#include "sandbox/sockowner.h"

using namespace agentshim;
using Clock = std::chrono::steady_clock;

namespace {

int g_sockbuf = 0;  // --sockbuf: 0 = autotuning

void tune(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (g_sockbuf > 0) {
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &g_sockbuf, sizeof g_sockbuf);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &g_sockbuf, sizeof g_sockbuf);
  }
}

UniqueFd listen_on(uint16_t port) {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) throw_errno("socket");
  int one = 1;
  setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw_errno("bind 127.0.0.1");
  if (::listen(s.get(), 1024) != 0) throw_errno("listen");
  socklen_t l = sizeof a;
  getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &l);
  std::printf("port %u\n", ntohs(a.sin_port));
  std::fflush(stdout);
  return s;
}

UniqueFd dial(uint16_t port) {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  tune(s.get());
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw_errno("connect");
  return s;
}

void send_all(int fd, const char* p, std::size_t n) {
  while (n) {
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k <= 0) throw_errno("send");
    p += k;
    n -= static_cast<std::size_t>(k);
  }
}

void recv_exact(int fd, char* p, std::size_t n) {
  while (n) {
    ssize_t k = ::recv(fd, p, n, 0);
    if (k <= 0) throw Error("recv: connection ended early");
    p += k;
    n -= static_cast<std::size_t>(k);
  }
}

// Connect to `to`, directly (via == 0) or through a CONNECT proxy on `via`.
UniqueFd open_path(uint16_t via, uint16_t to) {
  if (!via) return dial(to);
  UniqueFd s = dial(via);
  std::string req = "CONNECT 127.0.0.1:" + std::to_string(to) +
                    " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(to) + "\r\n\r\n";
  send_all(s.get(), req.data(), req.size());
  std::string head;
  char c;
  while (head.size() < 4096 && head.find("\r\n\r\n") == std::string::npos) {
    recv_exact(s.get(), &c, 1);
    head += c;
  }
  if (head.compare(0, 12, "HTTP/1.1 200") != 0 && head.compare(0, 12, "HTTP/1.0 200") != 0)
    throw Error("proxy refused: " + head.substr(0, head.find('\r')));
  return s;
}

void serve_conn(UniqueFd c) {
  char mode;
  try {
    recv_exact(c.get(), &mode, 1);
  } catch (const Error&) {
    return;
  }
  std::vector<char> buf(1 << 20);
  uint64_t total = 0, expect = UINT64_MAX;
  if (mode == 'S') {
    try {
      recv_exact(c.get(), reinterpret_cast<char*>(&expect), sizeof expect);
    } catch (const Error&) {
      return;
    }
  }
  // The sink answers once it has the announced byte count (no half-close
  // needed: tinyproxy closes both ways when the client shuts down writing).
  while (total < expect) {
    ssize_t n = ::recv(c.get(), buf.data(),
                       static_cast<std::size_t>(std::min<uint64_t>(buf.size(), expect - total)), 0);
    if (n <= 0) break;
    total += static_cast<uint64_t>(n);
    if (mode == 'E' && ::send(c.get(), buf.data(), static_cast<std::size_t>(n), MSG_NOSIGNAL) != n) break;
  }
  if (mode == 'S') ::send(c.get(), &total, sizeof total, MSG_NOSIGNAL);
}

// ---- relay strategies (bench only) ----

// One direction, blocking splice through a pipe: src -> pipe -> dst.
void splice_dir(int src, int dst, int pipe_size) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return;
  if (pipe_size > 0) fcntl(p[1], F_SETPIPE_SZ, pipe_size);
  std::size_t chunk = static_cast<std::size_t>(fcntl(p[1], F_GETPIPE_SZ));
  for (;;) {
    ssize_t n = splice(src, nullptr, p[1], nullptr, chunk, SPLICE_F_MOVE | SPLICE_F_MORE);
    if (n <= 0) break;
    while (n > 0) {
      ssize_t k =
          splice(p[0], nullptr, dst, nullptr, static_cast<std::size_t>(n), SPLICE_F_MOVE | SPLICE_F_MORE);
      if (k <= 0) {
        n = -1;
        break;
      }
      n -= k;
    }
    if (n < 0) break;
  }
  ::shutdown(dst, SHUT_WR);
  close(p[0]);
  close(p[1]);
}

void copy_dir(int src, int dst, std::size_t wsize) {
  std::vector<char> buf(wsize);
  for (;;) {
    ssize_t n = ::recv(src, buf.data(), buf.size(), 0);
    if (n <= 0) break;
    try {
      send_all(dst, buf.data(), static_cast<std::size_t>(n));
    } catch (const Error&) {
      break;
    }
  }
  ::shutdown(dst, SHUT_WR);
}

// The proxy's strategy (netpolicy/proxy.cpp tunnel()): one thread, both
// directions, non-blocking splice, poll() when nothing moved.
void poll_relay(int a, int b, int pipe_size) {
  struct Dir {
    int src, dst, r, w;
    std::size_t q = 0;
    bool eof = false, shut = false;
  } d[2] = {{a, b, -1, -1}, {b, a, -1, -1}};
  for (int fd : {a, b}) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);  // as the proxy's sockets
  for (auto& x : d) {
    int p[2];
    pipe2(p, O_CLOEXEC | O_NONBLOCK);
    if (pipe_size > 0) fcntl(p[1], F_SETPIPE_SZ, pipe_size);
    x.r = p[0];
    x.w = p[1];
  }
  std::size_t chunk = static_cast<std::size_t>(fcntl(d[0].w, F_GETPIPE_SZ));
  const unsigned fl = SPLICE_F_NONBLOCK | SPLICE_F_MOVE;
  for (;;) {
    bool progress = false, dead = false;
    for (auto& x : d) {
      if (!x.eof) {
        ssize_t n = splice(x.src, nullptr, x.w, nullptr, chunk, fl);
        if (n > 0) {
          x.q += static_cast<std::size_t>(n);
          progress = true;
        } else if (n == 0) {
          x.eof = true;
        } else if (errno != EAGAIN && errno != EINTR) {
          dead = true;
        }
      }
      if (x.q) {
        ssize_t n = splice(x.r, nullptr, x.dst, nullptr, x.q, fl);
        if (n > 0) {
          x.q -= static_cast<std::size_t>(n);
          progress = true;
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
          dead = true;
        }
      }
      if (x.eof && !x.q && !x.shut) {
        ::shutdown(x.dst, SHUT_WR);
        x.shut = true;
      }
    }
    if (dead || (d[0].shut && d[1].shut)) break;
    if (progress) continue;
    pollfd p[2];
    short ae = 0, be = 0;
    if (!d[0].eof && !d[0].q) ae |= POLLIN;
    if (d[1].q) ae |= POLLOUT;
    if (!d[1].eof && !d[1].q) be |= POLLIN;
    if (d[0].q) be |= POLLOUT;
    p[0] = {ae ? a : -1, ae, 0};
    p[1] = {be ? b : -1, be, 0};
    ::poll(p, 2, -1);
  }
  for (auto& x : d) {
    close(x.r);
    close(x.w);
  }
}

// One thread, both directions, non-blocking recv/send through a buffer per
// direction, poll() when nothing moved.
void copy_poll_relay(int a, int b, std::size_t bufsize) {
  for (int fd : {a, b}) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  struct Dir {
    int src, dst;
    std::vector<char> buf;
    std::size_t off = 0, len = 0;
    bool eof = false, shut = false;
  } d[2] = {{a, b, std::vector<char>(bufsize)}, {b, a, std::vector<char>(bufsize)}};
  for (;;) {
    bool progress = false, dead = false;
    for (auto& x : d) {
      if (!x.eof && x.len == 0) {
        ssize_t n = ::recv(x.src, x.buf.data(), x.buf.size(), 0);
        if (n > 0) {
          x.off = 0;
          x.len = static_cast<std::size_t>(n);
          progress = true;
        } else if (n == 0) {
          x.eof = true;
        } else if (errno != EAGAIN && errno != EINTR) {
          dead = true;
        }
      }
      if (x.len) {
        ssize_t n = ::send(x.dst, x.buf.data() + x.off, x.len, MSG_NOSIGNAL);
        if (n > 0) {
          x.off += static_cast<std::size_t>(n);
          x.len -= static_cast<std::size_t>(n);
          progress = true;
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
          dead = true;
        }
      }
      if (x.eof && !x.len && !x.shut) {
        ::shutdown(x.dst, SHUT_WR);
        x.shut = true;
      }
    }
    if (dead || (d[0].shut && d[1].shut)) break;
    if (progress) continue;
    pollfd p[2];
    short ae = 0, be = 0;
    if (!d[0].eof && !d[0].len) ae |= POLLIN;
    if (d[1].len) ae |= POLLOUT;
    if (!d[1].eof && !d[1].len) be |= POLLIN;
    if (d[0].len) be |= POLLOUT;
    p[0] = {ae ? a : -1, ae, 0};
    p[1] = {be ? b : -1, be, 0};
    ::poll(p, 2, -1);
  }
}

void relay_conn(UniqueFd c, uint16_t to, std::string mode, int pipe_size, std::size_t wsize) {
  tune(c.get());
  std::string head;
  char ch;
  try {
    while (head.size() < 4096 && head.find("\r\n\r\n") == std::string::npos) {
      recv_exact(c.get(), &ch, 1);
      head += ch;
    }
  } catch (const Error&) {
    return;
  }
  UniqueFd u;
  try {
    u = dial(to);
  } catch (const Error&) {
    return;
  }
  static const char ok[] = "HTTP/1.1 200 Connection established\r\n\r\n";
  send_all(c.get(), ok, sizeof ok - 1);
  if (mode == "poll") {
    poll_relay(c.get(), u.get(), pipe_size);
  } else if (mode == "copypoll") {
    copy_poll_relay(c.get(), u.get(), wsize);
  } else if (mode == "threads") {
    std::thread t(splice_dir, u.get(), c.get(), pipe_size);
    splice_dir(c.get(), u.get(), pipe_size);
    t.join();
  } else {
    std::thread t(copy_dir, u.get(), c.get(), wsize);
    copy_dir(c.get(), u.get(), wsize);
    t.join();
  }
}

// ---- TLS (the intercepted case): an HTTPS upstream and an HTTPS client.

void write_text(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) throw_errno("fopen " + path);
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
}

// Read one response or request head from TLS; returns the head, leaves the rest in carry.
std::string ssl_head(SSL* s, std::string& carry) {
  char b[16384];
  for (;;) {
    auto e = carry.find("\r\n\r\n");
    if (e != std::string::npos) {
      std::string h = carry.substr(0, e + 4);
      carry.erase(0, e + 4);
      return h;
    }
    int n = SSL_read(s, b, sizeof b);
    if (n <= 0) throw Error("TLS read ended");
    carry.append(b, static_cast<std::size_t>(n));
  }
}

uint64_t content_length(const std::string& head) {
  auto p = head.find("Content-Length: ");
  return p == std::string::npos ? 0 : std::stoull(head.substr(p + 16));
}

void ssl_skip(SSL* s, std::string& carry, uint64_t n) {
  char b[65536];
  uint64_t from_carry = std::min<uint64_t>(n, carry.size());
  carry.erase(0, static_cast<std::size_t>(from_carry));
  n -= from_carry;
  while (n) {
    int k = SSL_read(s, b, static_cast<int>(std::min<uint64_t>(n, sizeof b)));
    if (k <= 0) throw Error("TLS read ended in a body");
    n -= static_cast<uint64_t>(k);
  }
}

void ssl_write_all(SSL* s, const char* p, std::size_t n) {
  while (n) {
    int k = SSL_write(s, p, static_cast<int>(std::min<std::size_t>(n, 1 << 20)));
    if (k <= 0) throw Error("TLS write failed");
    p += k;
    n -= static_cast<std::size_t>(k);
  }
}

void tls_serve_conn(SSL_CTX* ctx, UniqueFd c) {
  tune(c.get());
  net::tls::SslPtr s(SSL_new(ctx));
  SSL_set_fd(s.get(), c.get());
  if (SSL_accept(s.get()) != 1) return;
  std::string carry;
  static const std::string ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  try {
    for (;;) {
      std::string h = ssl_head(s.get(), carry);
      ssl_skip(s.get(), carry, content_length(h));
      ssl_write_all(s.get(), ok.data(), ok.size());
    }
  } catch (const Error&) {
  }
}

struct TlsClient {
  net::tls::CtxPtr ctx{SSL_CTX_new(TLS_client_method())};
  explicit TlsClient(const std::string& ca) {
    if (SSL_CTX_load_verify_locations(ctx.get(), ca.c_str(), nullptr) != 1) throw Error("load " + ca);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    static const unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    SSL_CTX_set_alpn_protos(ctx.get(), alpn, sizeof alpn);
  }
  struct Conn {
    UniqueFd fd;
    net::tls::SslPtr ssl;
    std::string carry;
  };
  Conn open(uint16_t via, uint16_t to) {
    Conn c{open_path(via, to), net::tls::SslPtr(SSL_new(ctx.get())), {}};
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c.ssl.get()), "127.0.0.1");
    SSL_set_fd(c.ssl.get(), c.fd.get());
    if (SSL_connect(c.ssl.get()) != 1) throw Error("TLS handshake failed");
    return c;
  }
  static void exchange(Conn& c, const std::string& head, uint64_t body, const std::vector<char>& buf) {
    ssl_write_all(c.ssl.get(), head.data(), head.size());
    while (body) {
      std::size_t k = static_cast<std::size_t>(std::min<uint64_t>(body, buf.size()));
      ssl_write_all(c.ssl.get(), buf.data(), k);
      body -= k;
    }
    std::string h = ssl_head(c.ssl.get(), c.carry);
    ssl_skip(c.ssl.get(), c.carry, content_length(h));
  }
};

std::string get_head(uint16_t to) {
  return "GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(to) + "\r\n\r\n";
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int usage() {
  std::fprintf(stderr, "usage: proxy_bench proxy|server|send|latency ... (see the source)\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  std::string cmd = argv[1];
  uint16_t port = 0, to = 0, via = 0;
  uint64_t bytes = 0;
  int n = 100, pipe_size = 1 << 20;
  double rate = 0;
  std::size_t wsize = 1 << 20;
  std::string mode = "threads";
  bool attribute = false;
  std::vector<std::string> allow;
  std::string upstream_ca, run_ca_out, ca_out, ca;
  int intercept = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--port")
      port = static_cast<uint16_t>(std::stoi(v));
    else if (k == "--to")
      to = static_cast<uint16_t>(std::stoi(v));
    else if (k == "--via")
      via = static_cast<uint16_t>(std::stoi(v));
    else if (k == "--bytes")
      bytes = std::stoull(v);
    else if (k == "-n")
      n = std::stoi(v);
    else if (k == "--allow")
      allow.push_back(v);
    else if (k == "--mode")
      mode = v;
    else if (k == "--pipe")
      pipe_size = std::stoi(v);
    else if (k == "--sockbuf")
      g_sockbuf = std::stoi(v);
    else if (k == "--rate")
      rate = std::stod(v);
    else if (k == "--wsize")
      wsize = std::stoull(v);
    else if (k == "--tls-upstream-ca")
      upstream_ca = v;
    else if (k == "--run-ca-out")
      run_ca_out = v;
    else if (k == "--intercept")
      intercept = std::stoi(v);
    else if (k == "--ca-out")
      ca_out = v;
    else if (k == "--ca")
      ca = v;
    else if (k == "--attribute")
      attribute = v == "1";
    else
      return usage();
  }
  signal(SIGPIPE, SIG_IGN);
  try {
    if (cmd == "proxy") {
      sigset_t set;
      sigemptyset(&set);
      sigaddset(&set, SIGTERM);
      sigaddset(&set, SIGINT);
      pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before the proxy's threads exist
      net::Limits lim;
      lim.max_connections = 1024;
      lim.max_requests_per_connection = 1 << 20;  // the HTTPS case: every request on one connection
      net::Proxy p(listen_on(port), net::Allowlist::parse(allow, "--allow"), lim, {});
      if (!upstream_ca.empty()) {
        // TLS: the run's CA (its certificate for the client to trust), and
        // an allow-everything request rule on --intercept PORT so CONNECTs
        // to it are intercepted; others stay opaque.
        auto run_ca = net::tls::Authority::generate("bench");
        if (!run_ca_out.empty()) write_text(run_ca_out, run_ca->ca_pem());
        p.set_tls(std::make_shared<net::tls::Interceptor>(run_ca, upstream_ca));
        if (intercept)
          p.set_request_rules(net::RequestRules::parse(
              nlohmann::json::array({{{"host", "127.0.0.1"}, {"port", intercept}, {"action", "allow"}}}),
              "bench"));
      }
      if (attribute) {
        // What a pod's sandbox does for every connection (sandbox/sockowner.h),
        // here in the host's namespace: every process on the machine is a
        // candidate, the worst case.
        struct stat st {};
        if (::stat("/proc/self/ns/net", &st) < 0) throw std::runtime_error("stat /proc/self/ns/net");
        auto attr = std::make_shared<sockowner::Attributor>(st.st_ino);
        p.set_attribution([attr](int fd) -> nlohmann::json {
          auto hs = attr->holders(fd);
          return hs.empty() ? nlohmann::json(nullptr) : nlohmann::json(hs.front().pid);
        });
      }
      p.start();
      int sig = 0;
      sigwait(&set, &sig);
      p.stop();
      std::cout << p.totals().dump() << std::endl;
      return 0;
    }
    if (cmd == "server") {
      UniqueFd l = listen_on(port);
      for (;;) {
        int c = ::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        tune(c);
        std::thread(serve_conn, UniqueFd(c)).detach();
      }
    }
    if (cmd == "tlsserver") {
      auto ca_ = net::tls::Authority::generate("bench upstream");
      write_text(ca_out, ca_->ca_pem());
      net::tls::CtxPtr ctx(SSL_CTX_new(TLS_server_method()));
      SSL_CTX_use_certificate(ctx.get(), ca_->leaf("127.0.0.1").get());
      SSL_CTX_use_PrivateKey(ctx.get(), ca_->leaf_key());
      UniqueFd l = listen_on(port);
      for (;;) {
        int c = ::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        std::thread(tls_serve_conn, ctx.get(), UniqueFd(c)).detach();
      }
    }
    if (cmd == "tlsclient") {
      // setup: n new connections (CONNECT, TLS, one GET); request: n GETs on
      // one connection; throughput: one POST of --bytes.
      TlsClient cl(ca);
      std::vector<char> buf(wsize, 'x');
      std::vector<double> setup, req;
      for (int i = 0; i < n; ++i) {
        auto t0 = Clock::now();
        auto c = cl.open(via, to);
        TlsClient::exchange(c, get_head(to), 0, buf);
        setup.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      }
      auto c = cl.open(via, to);
      for (int i = 0; i < n; ++i) {
        auto t0 = Clock::now();
        TlsClient::exchange(c, get_head(to), 0, buf);
        req.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      }
      auto t0 = Clock::now();
      TlsClient::exchange(c,
                          "POST /v1/upload HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(to) +
                              "\r\nContent-Length: " + std::to_string(bytes) + "\r\n\r\n",
                          bytes, buf);
      double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      std::printf("{\"setup_us\": %.1f, \"request_us\": %.1f, \"mib_s\": %.1f}\n", median(setup), median(req),
                  static_cast<double>(bytes) / secs / (1 << 20));
      return 0;
    }
    if (cmd == "relay") {
      if (mode != "poll" && mode != "threads" && mode != "copy" && mode != "copypoll") return usage();
      UniqueFd l = listen_on(port);
      for (;;) {
        int c = ::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        std::thread(relay_conn, UniqueFd(c), to, mode, pipe_size, wsize).detach();
      }
    }
    if (cmd == "send") {
      std::vector<char> buf(wsize, 'x');
      auto t0 = Clock::now();
      UniqueFd s = open_path(via, to);
      send_all(s.get(), "S", 1);
      send_all(s.get(), reinterpret_cast<const char*>(&bytes), sizeof bytes);
      uint64_t left = bytes;
      while (left) {
        std::size_t k = static_cast<std::size_t>(std::min<uint64_t>(left, buf.size()));
        send_all(s.get(), buf.data(), k);
        left -= k;
        if (rate > 0) {  // throttle: never ahead of rate MiB/s since t0
          auto due =
              t0 + std::chrono::duration<double>(static_cast<double>(bytes - left) / (rate * (1 << 20)));
          std::this_thread::sleep_until(due);
        }
      }
      uint64_t got = 0;
      recv_exact(s.get(), reinterpret_cast<char*>(&got), sizeof got);
      double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      if (got != bytes) throw Error("sink received " + std::to_string(got) + " of " + std::to_string(bytes));
      rusage ru{};
      getrusage(RUSAGE_SELF, &ru);
      auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
      std::printf("{\"seconds\": %.6f, \"user_s\": %.4f, \"sys_s\": %.4f}\n", secs, tv(ru.ru_utime),
                  tv(ru.ru_stime));
      return 0;
    }
    if (cmd == "latency") {
      std::vector<double> us;
      for (int i = 0; i < n; ++i) {
        auto t0 = Clock::now();
        UniqueFd s = open_path(via, to);
        send_all(s.get(), "Ex", 2);
        char b;
        recv_exact(s.get(), &b, 1);
        us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      }
      std::sort(us.begin(), us.end());
      std::printf("{\"median_us\": %.1f, \"p99_us\": %.1f}\n", us[us.size() / 2],
                  us[std::min(us.size() - 1, us.size() * 99 / 100)]);
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "proxy_bench %s: %s\n", cmd.c_str(), e.what());
    return 1;
  }
  return usage();
}
