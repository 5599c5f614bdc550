// Proxy tests with real sockets on 127.0.0.1 ephemeral ports: upstream
// servers are threads of this process; loopback upstreams are admitted by an
// explicit 127.0.0.1:PORT rule (the documented way).
#include "netpolicy/proxy.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "common/error.h"
#include "common/fd.h"

using namespace agentshim;
using namespace agentshim::net;
using Clock = std::chrono::steady_clock;

namespace {

UniqueFd listen_loopback(int backlog = 128) {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) throw_errno("socket");
  int one = 1;
  setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw_errno("bind");
  if (::listen(s.get(), backlog) != 0) throw_errno("listen");
  return s;
}

uint16_t port_of(int fd, bool peer = false) {
  sockaddr_in a{};
  socklen_t l = sizeof a;
  if (peer)
    getpeername(fd, reinterpret_cast<sockaddr*>(&a), &l);
  else
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &l);
  return ntohs(a.sin_port);
}

UniqueFd connect_to(uint16_t port) {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  timeval tv{10, 0};
  setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(s.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw_errno("connect");
  return s;
}

void send_str(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) throw_errno("send");
    off += static_cast<std::size_t>(n);
  }
}

// Read until the end of a response head; returns the head, leaves the rest in `rest`.
std::string read_head(int fd, std::string* rest = nullptr) {
  std::string buf;
  char c[4096];
  while (buf.find("\r\n\r\n") == std::string::npos) {
    ssize_t n = ::recv(fd, c, sizeof c, 0);
    if (n <= 0) break;
    buf.append(c, static_cast<std::size_t>(n));
  }
  auto e = buf.find("\r\n\r\n");
  if (e == std::string::npos) return buf;
  if (rest) *rest = buf.substr(e + 4);
  return buf.substr(0, e + 4);
}

std::string read_to_eof(int fd) {
  std::string buf;
  char c[65536];
  for (;;) {
    ssize_t n = ::recv(fd, c, sizeof c, 0);
    if (n <= 0) break;
    buf.append(c, static_cast<std::size_t>(n));
  }
  return buf;
}

struct Events {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<std::string, json>> list;
  EventSink sink() {
    return [this](const std::string& t, json d) {
      std::lock_guard lk(mu);
      list.emplace_back(t, std::move(d));
      cv.notify_all();
    };
  }
  // Wait for the n-th event (1-based) and return it.
  json wait(std::size_t n, int ms = 5000) {
    std::unique_lock lk(mu);
    cv.wait_for(lk, std::chrono::milliseconds(ms), [&] { return list.size() >= n; });
    if (list.size() < n) return json();
    return list[n - 1].second;
  }
  std::size_t size() {
    std::lock_guard lk(mu);
    return list.size();
  }
};

// An upstream thread serving `n` connections one after another with `fn`.
struct Upstream {
  UniqueFd lfd;
  uint16_t port;
  std::thread t;
  template <class F>
  Upstream(int n, F fn) : lfd(listen_loopback()), port(port_of(lfd.get())) {
    t = std::thread([this, n, fn] {
      for (int i = 0; i < n; ++i) {
        UniqueFd c(::accept4(lfd.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!c) return;
        fn(c.get());
      }
    });
  }
  ~Upstream() {
    ::shutdown(lfd.get(), SHUT_RDWR);
    if (t.joinable()) t.join();
  }
};

void echo(int fd) {
  char buf[65536];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    send_str(fd, std::string(buf, static_cast<std::size_t>(n)));
  }
  ::shutdown(fd, SHUT_WR);
}

std::string rules_port(uint16_t p) {
  return "127.0.0.1:" + std::to_string(p);
}

struct Fixture {
  Events ev;
  std::unique_ptr<Proxy> proxy;
  uint16_t port = 0;
  std::atomic<int> resolver_calls{0};
  std::map<std::string, std::vector<std::string>> names;
  Fixture(std::vector<std::string> rules, Limits lim = {},
          std::map<std::string, std::vector<std::string>> n = {})
      : names(std::move(n)) {
    auto l = listen_loopback(4096);
    port = port_of(l.get());
    Resolver r = [this](const std::string& host) {
      ++resolver_calls;
      std::vector<sockaddr_storage> out;
      auto it = names.find(host);
      if (it == names.end()) return out;
      for (const auto& ip : it->second) {
        if (ip == "throw") throw std::runtime_error("getaddrinfo internals: secret-resolver-detail");
        out.push_back(to_sockaddr(*parse_ip(ip), 0));
      }
      return out;
    };
    proxy = std::make_unique<Proxy>(std::move(l), Allowlist::parse(rules, "test"), lim, ev.sink(), r);
    proxy->start();
  }
  UniqueFd client() { return connect_to(port); }
};

std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937_64 g(seed);
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; i += 8) {
    uint64_t v = g();
    std::memcpy(&s[i], &v, std::min<std::size_t>(8, n - i));
  }
  return s;
}

}  // namespace

TEST(Proxy, ConnectTunnelIsByteExactBothWays) {
  Upstream up(1, echo);
  Fixture f({rules_port(up.port)});
  auto c = f.client();
  std::string data = random_bytes(4 << 20, 1);
  // Bytes sent right behind the CONNECT head are forwarded too.
  send_str(c.get(), "CONNECT 127.0.0.1:" + std::to_string(up.port) + " HTTP/1.1\r\nHost: x\r\n\r\nEARLY");
  std::string rest;
  auto head = read_head(c.get(), &rest);
  ASSERT_EQ(head, "HTTP/1.1 200 Connection established\r\n\r\n");
  std::thread w([&] {
    send_str(c.get(), data);
    ::shutdown(c.get(), SHUT_WR);
  });
  std::string got = rest + read_to_eof(c.get());
  w.join();
  ASSERT_EQ(got.size(), data.size() + 5);
  EXPECT_EQ(got.substr(0, 5), "EARLY");
  EXPECT_TRUE(got.substr(5) == data);
  auto e = f.ev.wait(1);
  EXPECT_EQ(e["decision"], "allowed");
  EXPECT_EQ(e["method"], "CONNECT");
  EXPECT_EQ(e["host"], "127.0.0.1");
  EXPECT_EQ(e["port"], up.port);
  EXPECT_EQ(e["resolved"], "127.0.0.1");
  EXPECT_EQ(e["rule"], rules_port(up.port));
  EXPECT_EQ(e["status"], 200);
  EXPECT_EQ(e["bytes_up"], data.size() + 5);
  EXPECT_EQ(e["bytes_down"], data.size() + 5);
  EXPECT_EQ(e["end"], "closed");
  EXPECT_EQ(e["client_port"], port_of(c.get()));
  EXPECT_TRUE(e["duration_ms"].is_number_integer());
  for (auto& [k, v] : e.items()) EXPECT_TRUE(v.is_string() || v.is_number_integer()) << k;
  auto t = f.proxy->totals();
  EXPECT_EQ(t["allowed"], 1);
  EXPECT_EQ(t["denied"], 0);
  EXPECT_EQ(t["connections"], 1);
  EXPECT_EQ(t["bytes_up"], data.size() + 5);
  EXPECT_EQ(f.resolver_calls.load(), 0);  // IP literal: nothing to resolve
}

TEST(Proxy, HalfCloseIsPropagatedEachWay) {
  // Upstream reads to EOF, then answers and closes: works only if the
  // client's shutdown(SHUT_WR) reaches it while the other way stays open.
  Upstream up(1, [](int fd) {
    std::string all = read_to_eof(fd);
    send_str(fd, "got " + std::to_string(all.size()));
  });
  Fixture f({"up.test:" + std::to_string(up.port), rules_port(up.port)}, {}, {{"up.test", {"127.0.0.1"}}});
  auto c = f.client();
  send_str(c.get(), "CONNECT up.test:" + std::to_string(up.port) + " HTTP/1.1\r\n\r\n");
  ASSERT_EQ(read_head(c.get()).substr(0, 12), "HTTP/1.1 200");
  send_str(c.get(), std::string(100000, 'x'));
  ::shutdown(c.get(), SHUT_WR);
  EXPECT_EQ(read_to_eof(c.get()), "got 100000");
  auto e = f.ev.wait(1);
  EXPECT_EQ(e["end"], "closed");
  EXPECT_EQ(e["host"], "up.test");
  EXPECT_EQ(e["resolved"], "127.0.0.1");
  EXPECT_EQ(e["rule"], rules_port(up.port));  // the IP rule unlocked the loopback address
  EXPECT_EQ(f.resolver_calls.load(), 1);      // resolved once, connected to what was checked
}

namespace {
// A minimal HTTP upstream: reads one request (Content-Length or chunked body), records it, answers.
struct HttpUpstream {
  std::string received;
  std::unique_ptr<Upstream> up;
  explicit HttpUpstream(int n = 1) {
    up = std::make_unique<Upstream>(n, [this](int fd) {
      std::string buf;
      char c[65536];
      for (;;) {
        auto e = buf.find("\r\n\r\n");
        if (e != std::string::npos) {
          std::string head = buf.substr(0, e);
          auto cl = head.find("Content-Length: ");
          if (cl != std::string::npos) {
            std::size_t n = std::stoul(head.substr(cl + 16));
            if (buf.size() >= e + 4 + n) break;
          } else if (head.find("Transfer-Encoding: chunked") != std::string::npos) {
            if (buf.size() >= 5 && buf.compare(buf.size() - 5, 5, "0\r\n\r\n") == 0) break;
          } else {
            break;
          }
        }
        ssize_t n = ::recv(fd, c, sizeof c, 0);
        if (n <= 0) break;
        buf.append(c, static_cast<std::size_t>(n));
      }
      received = buf;
      send_str(fd, "HTTP/1.1 201 Created\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
    });
  }
  uint16_t port() const { return up->port; }
};
}  // namespace

TEST(Proxy, PlainHttpGetIsForwardedInOriginForm) {
  HttpUpstream hu;
  Fixture f({rules_port(hu.port())});
  auto c = f.client();
  std::string auth = "127.0.0.1:" + std::to_string(hu.port());
  send_str(c.get(), "GET http://" + auth + "/p/q?x=1 HTTP/1.1\r\nHost: " + auth +
                        "\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
                        "Proxy-Authorization: Basic Zm9vOmJhcg==\r\nUser-Agent: t\r\n\r\n");
  std::string resp = read_to_eof(c.get());
  EXPECT_EQ(resp, "HTTP/1.1 201 Created\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
  hu.up.reset();  // join
  EXPECT_EQ(hu.received.rfind("GET /p/q?x=1 HTTP/1.1\r\n", 0), 0u) << hu.received;
  EXPECT_NE(hu.received.find("Host: " + auth + "\r\n"), std::string::npos);
  EXPECT_NE(hu.received.find("User-Agent: t\r\n"), std::string::npos);
  // The client asked for keep-alive: the upstream request is persistent (no Connection field).
  for (const char* gone :
       {"Proxy-Connection", "X-Hop", "Proxy-Authorization", "keep-alive", "Via:", "Forwarded", "Connection:"})
    EXPECT_EQ(hu.received.find(gone), std::string::npos) << gone;
  auto e = f.ev.wait(1);
  EXPECT_EQ(e["method"], "GET");
  EXPECT_EQ(e["status"], 201);
  EXPECT_EQ(e["end"], "closed");
  EXPECT_EQ(e["bytes_down"], resp.size());
}

TEST(Proxy, PlainHttpPostBodies) {
  for (bool chunked : {false, true}) {
    HttpUpstream hu;
    Fixture f({rules_port(hu.port())});
    auto c = f.client();
    std::string auth = "127.0.0.1:" + std::to_string(hu.port());
    std::string body = random_bytes(300000, 7);
    std::string wire;
    if (chunked) {
      char sz[32];
      snprintf(sz, sizeof sz, "%zx\r\n", body.size() - 1000);
      wire = std::string(sz) + body.substr(0, body.size() - 1000) + "\r\n3e8;e=1\r\n" +
             body.substr(body.size() - 1000) + "\r\n0\r\n\r\n";
    }
    std::string head = "POST http://" + auth + "/up HTTP/1.1\r\nHost: " + auth + "\r\n" +
                       (chunked ? "Transfer-Encoding: chunked\r\n"
                                : "Content-Length: " + std::to_string(body.size()) + "\r\n") +
                       "\r\n";
    send_str(c.get(), head + (chunked ? wire : body) + "GARBAGE AFTER THE BODY");
    std::string resp = read_to_eof(c.get());
    EXPECT_NE(resp.find("201 Created"), std::string::npos);
    hu.up.reset();
    auto e = hu.received.find("\r\n\r\n");
    ASSERT_NE(e, std::string::npos);
    EXPECT_TRUE(hu.received.substr(e + 4) == (chunked ? wire : body)) << "chunked=" << chunked;
    EXPECT_EQ(hu.received.find("GARBAGE"), std::string::npos);
    EXPECT_NE(hu.received.find(chunked ? "Transfer-Encoding: chunked\r\n" : "Content-Length: 300000\r\n"),
              std::string::npos);
  }
}

TEST(Proxy, DeniedGets403AndAnEvent) {
  Fixture f({"allowed.test:443"});
  auto c = f.client();
  send_str(c.get(), "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
  std::string resp = read_to_eof(c.get());
  // Where clients show it for CONNECT: the reason phrase and Proxy-Status.
  EXPECT_EQ(
      resp.rfind("HTTP/1.1 403 Forbidden (agentshim: CONNECT to example.com:443 denied: no allowlist rule "
                 "matches)\r\n",
                 0),
      0u)
      << resp;
  EXPECT_NE(
      resp.find("\r\nProxy-Status: agentshim; error=http_request_denied; details=\"agentshim: CONNECT to "
                "example.com:443 denied: no allowlist rule matches\"\r\n"),
      std::string::npos)
      << resp;
  EXPECT_NE(resp.find("\r\n\r\nagentshim: CONNECT to example.com:443 denied: no allowlist rule matches\n"),
            std::string::npos)
      << resp;
  auto e = f.ev.wait(1);
  EXPECT_EQ(e["decision"], "denied");
  EXPECT_EQ(e["reason"], "no allowlist rule matches");
  EXPECT_EQ(e["status"], 403);
  EXPECT_EQ(e["host"], "example.com");
  EXPECT_EQ(e["port"], 443);
  EXPECT_EQ(e["rule"], "");
  EXPECT_EQ(e["resolved"], "");
  // wrong port for an allowed name, plain HTTP
  auto c2 = f.client();
  send_str(c2.get(), "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n");
  EXPECT_EQ(read_to_eof(c2.get()).rfind("HTTP/1.1 403", 0), 0u);
  EXPECT_EQ(f.ev.wait(2)["method"], "GET");
  EXPECT_EQ(f.proxy->totals()["denied"], 2);
  EXPECT_EQ(f.resolver_calls.load(), 0);  // denied names are never resolved
}

TEST(Proxy, SpecialAddressesRefusedForNameRulesAllowedByIpRule) {
  Upstream up(1, echo);
  std::string p = std::to_string(up.port);
  Fixture f({"*.test", "127.0.0.1:" + p}, {},
            {{"meta.test", {"169.254.169.254"}},
             {"priv.test", {"10.1.2.3"}},
             {"six.test", {"::ffff:192.168.0.1"}},
             {"loop.test", {"127.0.0.1"}}});
  int n = 0;
  for (const char* name : {"meta.test", "priv.test", "six.test"}) {
    auto c = f.client();
    send_str(c.get(), std::string("CONNECT ") + name + ":80 HTTP/1.1\r\n\r\n");
    std::string resp = read_to_eof(c.get());
    EXPECT_EQ(resp.rfind("HTTP/1.1 403", 0), 0u) << name << ": " << resp;
    auto e = f.ev.wait(++n);
    EXPECT_EQ(e["decision"], "denied") << name;
    EXPECT_NE(e["reason"].get<std::string>().find("only an IP or CIDR rule"), std::string::npos);
    EXPECT_FALSE(e["resolved"].get<std::string>().empty());
  }
  EXPECT_EQ(f.ev.wait(1)["resolved"], "169.254.169.254");
  EXPECT_NE(f.ev.wait(1)["reason"].get<std::string>().find("link-local"), std::string::npos);
  // 127.0.0.1 on another port: still refused (the IP rule names one port)
  {
    auto c = f.client();
    send_str(c.get(), "CONNECT loop.test:1 HTTP/1.1\r\n\r\n");
    EXPECT_EQ(read_to_eof(c.get()).rfind("HTTP/1.1 403", 0), 0u);
    ++n;
  }
  // ... and admitted on the port the IP rule names.
  auto c = f.client();
  send_str(c.get(), "CONNECT loop.test:" + p + " HTTP/1.1\r\n\r\n");
  ASSERT_EQ(read_head(c.get()).substr(0, 12), "HTTP/1.1 200");
  send_str(c.get(), "ping");
  char b[4];
  ASSERT_EQ(::recv(c.get(), b, 4, MSG_WAITALL), 4);
  EXPECT_EQ(std::string(b, 4), "ping");
  c.reset();
  auto e = f.ev.wait(n + 1);
  EXPECT_EQ(e["decision"], "allowed");
  EXPECT_EQ(e["rule"], "127.0.0.1:" + p);
}

TEST(Proxy, UnreachableAndUnresolvableGive502WithoutResolverDetails) {
  uint16_t dead;
  {
    auto l = listen_loopback();
    dead = port_of(l.get());
  }  // closed: nothing listens there now
  Fixture f({rules_port(dead), "*.test"}, {}, {{"boom.test", {"throw"}}});
  auto c = f.client();
  send_str(c.get(), "CONNECT 127.0.0.1:" + std::to_string(dead) + " HTTP/1.1\r\n\r\n");
  std::string resp = read_to_eof(c.get());
  EXPECT_EQ(resp.rfind("HTTP/1.1 502 Bad Gateway (agentshim: CONNECT to 127.0.0.1:", 0), 0u) << resp;
  auto e = f.ev.wait(1);
  EXPECT_EQ(e["status"], 502);
  EXPECT_EQ(e["decision"], "allowed");
  for (const char* name : {"boom.test", "nx.test"}) {
    auto c2 = f.client();
    send_str(c2.get(), std::string("GET http://") + name + "/ HTTP/1.1\r\nHost: " + name + "\r\n\r\n");
    resp = read_to_eof(c2.get());
    EXPECT_EQ(resp.rfind("HTTP/1.1 502", 0), 0u) << resp;
    EXPECT_EQ(resp.find("secret"), std::string::npos);
    EXPECT_EQ(resp.find("getaddrinfo"), std::string::npos);
  }
  EXPECT_EQ(f.ev.wait(3)["reason"], "cannot resolve host");
  EXPECT_EQ(f.proxy->totals()["errors"], 3);
}

TEST(Proxy, ConnectTimeoutGives504) {
  // A listener whose accept queue is full drops SYNs: connecting hangs.
  auto l = listen_loopback(0);
  uint16_t p = port_of(l.get());
  std::vector<UniqueFd> fill;
  for (int i = 0; i < 4; ++i) {
    UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(p);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
    fill.push_back(std::move(s));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  Limits lim;
  lim.connect_timeout_ms = 300;
  Fixture f({rules_port(p)}, lim);
  auto c = f.client();
  auto t0 = Clock::now();
  send_str(c.get(), "CONNECT 127.0.0.1:" + std::to_string(p) + " HTTP/1.1\r\n\r\n");
  std::string resp = read_to_eof(c.get());
  EXPECT_EQ(resp.rfind("HTTP/1.1 504 Gateway Timeout", 0), 0u) << resp;
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(3));
  EXPECT_EQ(f.ev.wait(1)["status"], 504);
}

TEST(Proxy, BadRequestsAnsweredWithStatusAndEvent) {
  Limits lim;
  lim.max_header_bytes = 1024;
  Fixture f({"*.test"}, lim);
  struct {
    std::string req;
    std::string status;
  } cases[] = {
      {"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", "400"},
      {"GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n", "400"},
      {"POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
       "400"},
      {"POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nTransfer-Encoding: "
       "chunked\r\n\r\n",
       "400"},
      {"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX: " + std::string(2000, 'a') + "\r\n\r\n", "431"},
      {"CONNECT a.test HTTP/1.1\r\n\r\n", "400"},
  };
  std::size_t n = 0;
  for (const auto& c : cases) {
    auto fd = f.client();
    send_str(fd.get(), c.req);
    std::string resp = read_to_eof(fd.get());
    EXPECT_EQ(resp.substr(0, 12), "HTTP/1.1 " + c.status) << c.req.substr(0, 60) << " -> " << resp;
    auto e = f.ev.wait(++n);
    EXPECT_EQ(e["decision"], "denied");
    EXPECT_EQ(e["status"], std::stoi(c.status));
    EXPECT_EQ(e["reason"].get<std::string>().rfind("bad request: ", 0), 0u);
  }
  EXPECT_EQ(f.ev.wait(2)["host"], "");  // nothing unvalidated in the event
  EXPECT_EQ(f.proxy->totals()["errors"], n);
}

TEST(Proxy, HeaderTimeoutClosesSlowloris) {
  Limits lim;
  lim.header_timeout_ms = 300;
  Fixture f({"*.test"}, lim);
  auto c = f.client();
  auto t0 = Clock::now();
  send_str(c.get(), "GET http://a.test/ HTTP/1.1\r\nHost: a");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  send_str(c.get(), ".te");  // trickling does not extend the deadline
  std::string resp = read_to_eof(c.get());
  auto dt = Clock::now() - t0;
  EXPECT_EQ(resp.rfind("HTTP/1.1 408", 0), 0u) << resp;
  EXPECT_LT(dt, std::chrono::milliseconds(2000));
  EXPECT_GE(dt, std::chrono::milliseconds(250));
  auto e = f.ev.wait(1);
  EXPECT_EQ(e["end"], "header-timeout");
  EXPECT_EQ(e["status"], 408);
}

TEST(Proxy, ThousandIdleConnectionsDoNotBlockAGoodOne) {
  Upstream up(1, echo);
  Fixture f({rules_port(up.port)});
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 1000; ++i) {
    idle.push_back(f.client());
    if (i % 2) send_str(idle.back().get(), "CONNECT 127.0.0.1:1 HT");  // half a head
  }
  for (int i = 0; i < 200 && f.proxy->pending_connections() < 1000; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(f.proxy->pending_connections(), 1000);
  auto t0 = Clock::now();
  auto c = f.client();
  send_str(c.get(), "CONNECT 127.0.0.1:" + std::to_string(up.port) + " HTTP/1.1\r\n\r\nhi");
  std::string rest;
  ASSERT_EQ(read_head(c.get(), &rest).substr(0, 12), "HTTP/1.1 200");
  while (rest.size() < 2) {
    char b[2];
    ssize_t k = ::recv(c.get(), b, 2, 0);
    ASSERT_GT(k, 0);
    rest.append(b, static_cast<std::size_t>(k));
  }
  EXPECT_EQ(rest, "hi");
  EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(500));
  EXPECT_EQ(f.proxy->active_connections(), 1);
}

TEST(Proxy, MaxConnectionsGives503) {
  Upstream up(2, echo);
  Limits lim;
  lim.max_connections = 1;
  Fixture f({rules_port(up.port)}, lim);
  std::string req = "CONNECT 127.0.0.1:" + std::to_string(up.port) + " HTTP/1.1\r\n\r\n";
  auto c1 = f.client();
  send_str(c1.get(), req);
  ASSERT_EQ(read_head(c1.get()).substr(0, 12), "HTTP/1.1 200");
  auto c2 = f.client();
  send_str(c2.get(), req);
  EXPECT_EQ(read_to_eof(c2.get()).rfind("HTTP/1.1 503", 0), 0u);
  auto e = f.ev.wait(1);
  EXPECT_EQ(e["status"], 503);
  EXPECT_EQ(e["reason"], "too many connections");
  // Once the first ends, a new one is served.
  c1.reset();
  for (int i = 0; i < 200 && f.proxy->active_connections() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  auto c3 = f.client();
  send_str(c3.get(), req);
  EXPECT_EQ(read_head(c3.get()).substr(0, 12), "HTTP/1.1 200");
}

TEST(Proxy, IdleTunnelTimesOut) {
  Upstream up(1, echo);
  Limits lim;
  lim.idle_timeout_ms = 300;
  Fixture f({rules_port(up.port)}, lim);
  auto c = f.client();
  send_str(c.get(), "CONNECT 127.0.0.1:" + std::to_string(up.port) + " HTTP/1.1\r\n\r\n");
  ASSERT_EQ(read_head(c.get()).substr(0, 12), "HTTP/1.1 200");
  auto t0 = Clock::now();
  EXPECT_EQ(read_to_eof(c.get()), "");
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(3));
  EXPECT_EQ(f.ev.wait(1)["end"], "idle-timeout");
}

TEST(Proxy, StopIsPromptWithLiveConnections) {
  Upstream up(1, echo);
  Fixture f({rules_port(up.port)});
  auto c = f.client();
  send_str(c.get(), "CONNECT 127.0.0.1:" + std::to_string(up.port) + " HTTP/1.1\r\n\r\n");
  ASSERT_EQ(read_head(c.get()).substr(0, 12), "HTTP/1.1 200");
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 20; ++i) idle.push_back(f.client());
  auto t0 = Clock::now();
  f.proxy->stop();
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(1));
  EXPECT_EQ(read_to_eof(c.get()), "");  // the tunnel was closed
  EXPECT_EQ(f.ev.wait(1)["end"], "stopped");
  f.proxy->stop();  // idempotent
  // The listener is closed.
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(f.port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_NE(::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
}

TEST(Proxy, SlowResolverBlocksOnlyItsOwnConnection) {
  Upstream up(1, echo);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  Events ev;
  auto l = listen_loopback();
  uint16_t port = port_of(l.get());
  Resolver r = [&](const std::string& host) {
    std::vector<sockaddr_storage> out;
    if (host == "slow.test") {
      std::unique_lock lk(mu);
      cv.wait_for(lk, std::chrono::seconds(10), [&] { return release; });
    }
    return out;  // unresolvable
  };
  Proxy p(std::move(l), Allowlist::parse({"slow.test", rules_port(up.port)}, "t"), {}, ev.sink(), r);
  p.start();
  auto slow = connect_to(port);
  send_str(slow.get(), "CONNECT slow.test:443 HTTP/1.1\r\n\r\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto t0 = Clock::now();
  auto c = connect_to(port);
  send_str(c.get(), "CONNECT 127.0.0.1:" + std::to_string(up.port) + " HTTP/1.1\r\n\r\n");
  EXPECT_EQ(read_head(c.get()).substr(0, 12), "HTTP/1.1 200");
  EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(500));
  {
    std::lock_guard lk(mu);
    release = true;
  }
  cv.notify_all();
  EXPECT_EQ(read_to_eof(slow.get()).rfind("HTTP/1.1 502", 0), 0u);
  p.stop();
}

TEST(Proxy, SinkFailureDoesNotBreakTheProxy) {
  auto l = listen_loopback();
  uint16_t port = port_of(l.get());
  std::atomic<int> calls{0};
  Proxy p(std::move(l), Allowlist{}, {}, [&](const std::string&, json) {
    ++calls;
    throw std::runtime_error("log full");
  });
  p.start();
  for (int i = 0; i < 2; ++i) {
    auto c = connect_to(port);
    send_str(c.get(), "CONNECT a.test:443 HTTP/1.1\r\n\r\n");
    EXPECT_EQ(read_to_eof(c.get()).rfind("HTTP/1.1 403", 0), 0u);
  }
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(p.totals()["denied"], 2);
}

TEST(Proxy, ClientResetDuringDownloadEndsTheTunnel) {
  // SIGPIPE keeps its default action in this process (the proxy's threads
  // block it; the supervisor ignores it as well).
  ASSERT_EQ(signal(SIGPIPE, SIG_DFL), SIG_DFL);
  Upstream up(1, [](int fd) {
    std::string chunk(1 << 20, 'z');
    for (int i = 0; i < 2000; ++i)
      if (::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL) <= 0) break;
  });
  Fixture f({rules_port(up.port)});
  auto c = f.client();
  send_str(c.get(), "CONNECT 127.0.0.1:" + std::to_string(up.port) + " HTTP/1.1\r\n\r\n");
  ASSERT_EQ(read_head(c.get()).substr(0, 12), "HTTP/1.1 200");
  char buf[65536];
  ASSERT_GT(::recv(c.get(), buf, sizeof buf, MSG_WAITALL), 0);
  linger lg{1, 0};
  setsockopt(c.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  c.reset();  // RST
  auto e = f.ev.wait(1);
  EXPECT_EQ(e["end"], "client-closed");
  EXPECT_GT(e["bytes_down"].get<uint64_t>(), 0u);
}

TEST(Proxy, MaxPendingRefusesNewHeadsBeyondTheLimit) {
  Limits lim;
  lim.max_pending = 3;
  Fixture f({"*.test"}, lim);
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 3; ++i) idle.push_back(f.client());
  for (int i = 0; i < 200 && f.proxy->pending_connections() < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ(f.proxy->pending_connections(), 3);
  auto c = f.client();
  EXPECT_EQ(read_to_eof(c.get()).rfind("HTTP/1.1 503", 0), 0u);
  auto e = f.ev.wait(1);
  EXPECT_EQ(e["reason"], "too many pending connections");
  EXPECT_EQ(e["host"], "");
  // A pending client that closes after a partial head leaves an event; one that sent nothing does not.
  send_str(idle[0].get(), "CONNECT a.te");
  idle[0].reset();
  idle[1].reset();
  auto e2 = f.ev.wait(2);
  EXPECT_EQ(e2["end"], "client-closed");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(f.ev.size(), 2u);
}

TEST(Proxy, TotalTimeoutEndsABusyTunnel) {
  Upstream up(1, echo);
  Limits lim;
  lim.total_timeout_ms = 400;
  Fixture f({rules_port(up.port)}, lim);
  auto c = f.client();
  send_str(c.get(), "CONNECT 127.0.0.1:" + std::to_string(up.port) + " HTTP/1.1\r\n\r\n");
  ASSERT_EQ(read_head(c.get()).substr(0, 12), "HTTP/1.1 200");
  auto t0 = Clock::now();
  // Keep the tunnel busy (never idle) until the proxy closes it.
  char b[2];
  for (;;) {
    if (::send(c.get(), "ab", 2, MSG_NOSIGNAL) != 2) break;
    if (::recv(c.get(), b, 2, MSG_WAITALL) != 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (Clock::now() - t0 > std::chrono::seconds(5)) break;
  }
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2));
  auto e = f.ev.wait(1);
  EXPECT_EQ(e["end"], "total-timeout");
  EXPECT_GT(e["bytes_up"].get<uint64_t>(), 2u);
}

TEST(Proxy, Ipv6LiteralTunnelNeedsAnIpRule) {
  UniqueFd l6(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  if (::bind(l6.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    GTEST_SKIP() << "no IPv6 loopback address (::1) here; IPv6 rules are covered by the Allowlist tests";
  ASSERT_EQ(::listen(l6.get(), 8), 0);
  socklen_t len = sizeof a;
  getsockname(l6.get(), reinterpret_cast<sockaddr*>(&a), &len);
  std::string p = std::to_string(ntohs(a.sin6_port));
  std::thread srv([&] {
    UniqueFd c(::accept4(l6.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (c) echo(c.get());
  });
  Fixture f({"[::1]:" + p, "six.test"}, {}, {{"six.test", {"::1"}}});
  {
    auto c = f.client();  // a name rule does not unlock ::1 (the IP rule names another port)
    send_str(c.get(), "CONNECT six.test:1 HTTP/1.1\r\n\r\n");
    EXPECT_EQ(read_to_eof(c.get()).rfind("HTTP/1.1 403", 0), 0u);
  }
  auto c = f.client();
  send_str(c.get(), "CONNECT [::1]:" + p + " HTTP/1.1\r\n\r\n");
  ASSERT_EQ(read_head(c.get()).substr(0, 12), "HTTP/1.1 200");
  send_str(c.get(), "v6");
  char b[2];
  ASSERT_EQ(::recv(c.get(), b, 2, MSG_WAITALL), 2);
  ::shutdown(c.get(), SHUT_WR);
  EXPECT_EQ(read_to_eof(c.get()), "");
  srv.join();
  auto e = f.ev.wait(2);
  EXPECT_EQ(e["host"], "::1");
  EXPECT_EQ(e["resolved"], "::1");
  EXPECT_EQ(e["rule"], "[::1]:" + p);
  EXPECT_EQ(f.ev.wait(1)["reason"], "address ::1 is loopback; only an IP or CIDR rule can allow it");
}

// ---- plain HTTP keep-alive ----

namespace {
// A persistent HTTP upstream: serves requests on each accepted connection
// until the client closes or sends `Connection: close`. `answer(i, head)`
// gives the raw response for the i-th request (0-based, across connections);
// one whose text contains "Connection: close", or a close-delimited one, ends
// that connection.
struct KeepAliveUpstream {
  std::mutex mu;
  std::vector<std::string> heads;  // request heads as received
  std::atomic<int> connections{0};
  std::function<std::string(int, const std::string&)> answer;
  std::unique_ptr<Upstream> up;
  explicit KeepAliveUpstream(int conns, std::function<std::string(int, const std::string&)> a)
      : answer(std::move(a)) {
    up = std::make_unique<Upstream>(conns, [this](int fd) {
      ++connections;
      std::string buf;
      char c[65536];
      for (;;) {
        auto e = buf.find("\r\n\r\n");
        while (e == std::string::npos) {
          ssize_t n = ::recv(fd, c, sizeof c, 0);
          if (n <= 0) return;
          buf.append(c, static_cast<std::size_t>(n));
          e = buf.find("\r\n\r\n");
        }
        std::string head = buf.substr(0, e + 4);
        std::size_t body = 0;
        auto cl = head.find("Content-Length: ");
        if (cl != std::string::npos) body = std::stoul(head.substr(cl + 16));
        while (buf.size() < e + 4 + body) {
          ssize_t n = ::recv(fd, c, sizeof c, 0);
          if (n <= 0) return;
          buf.append(c, static_cast<std::size_t>(n));
        }
        buf.erase(0, e + 4 + body);
        int i;
        {
          std::lock_guard lk(mu);
          i = static_cast<int>(heads.size());
          heads.push_back(head);
        }
        std::string r = answer(i, head);
        send_str(fd, r);
        bool close_delimited = r.find("Content-Length") == std::string::npos &&
                               r.find("chunked") == std::string::npos && head.rfind("HEAD ", 0) != 0;
        if (close_delimited || r.find("Connection: close") != std::string::npos ||
            head.find("Connection: close") != std::string::npos)
          return;
      }
    });
  }
  uint16_t port() const { return up->port; }
};

std::string ok_response(const std::string& body) {
  return "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

std::string get(const std::string& auth, const std::string& path, const std::string& extra = "") {
  return "GET http://" + auth + path + " HTTP/1.1\r\nHost: " + auth + "\r\n" + extra + "\r\n";
}

// Read one response with a Content-Length body (or chunked, up to "0\r\n\r\n").
std::string read_response(int fd, std::string& carry) {
  char c[65536];
  for (;;) {
    auto e = carry.find("\r\n\r\n");
    if (e != std::string::npos) {
      std::string head = carry.substr(0, e + 4);
      auto cl = head.find("Content-Length: ");
      if (cl != std::string::npos) {
        std::size_t n = std::stoul(head.substr(cl + 16));
        if (carry.size() >= e + 4 + n) {
          std::string r = carry.substr(0, e + 4 + n);
          carry.erase(0, e + 4 + n);
          return r;
        }
      } else if (head.find("chunked") != std::string::npos) {
        auto z = carry.find("\r\n0\r\n\r\n", e);
        if (z != std::string::npos) {
          std::string r = carry.substr(0, z + 7);
          carry.erase(0, z + 7);
          return r;
        }
      }
    }
    ssize_t n = ::recv(fd, c, sizeof c, 0);
    if (n <= 0) {
      std::string r = carry;
      carry.clear();
      return r;
    }
    carry.append(c, static_cast<std::size_t>(n));
  }
}

bool peer_closed(int fd, int ms = 3000) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, ms) <= 0) return false;
  char b;
  return ::recv(fd, &b, 1, MSG_DONTWAIT) == 0;
}
}  // namespace

TEST(ProxyKeepAlive, TwoRequestsOnOneConnectionShareTheUpstream) {
  KeepAliveUpstream ku(1, [](int i, const std::string&) { return ok_response("body" + std::to_string(i)); });
  Fixture f({rules_port(ku.port())});
  auto c = f.client();
  std::string auth = "127.0.0.1:" + std::to_string(ku.port()), carry;
  send_str(c.get(), get(auth, "/one"));
  auto r1 = read_response(c.get(), carry);
  EXPECT_EQ(r1, ok_response("body0"));
  send_str(c.get(), get(auth, "/two"));
  auto r2 = read_response(c.get(), carry);
  EXPECT_EQ(r2, ok_response("body1"));
  auto e1 = f.ev.wait(1), e2 = f.ev.wait(2);
  EXPECT_EQ(e1["request"], 1);
  EXPECT_EQ(e2["request"], 2);
  for (auto* e : {&e1, &e2}) {
    EXPECT_EQ((*e)["decision"], "allowed");
    EXPECT_EQ((*e)["status"], 200);
    EXPECT_EQ((*e)["end"], "closed");
    EXPECT_EQ((*e)["client_port"], port_of(c.get()));
    EXPECT_EQ((*e)["resolved"], "127.0.0.1");
    EXPECT_EQ((*e)["rule"], rules_port(ku.port()));
  }
  EXPECT_EQ(e1["bytes_down"], r1.size());
  EXPECT_EQ(e2["bytes_down"], r2.size());
  c.reset();
  ku.up.reset();
  EXPECT_EQ(ku.connections.load(), 1);  // one upstream connection for both
  ASSERT_EQ(ku.heads.size(), 2u);
  EXPECT_EQ(ku.heads[1].rfind("GET /two HTTP/1.1\r\n", 0), 0u);
  EXPECT_EQ(ku.heads[0].find("Connection:"), std::string::npos);
  auto t = f.proxy->totals();
  EXPECT_EQ(t["allowed"], 2);
  EXPECT_EQ(t["connections"], 1);
}

TEST(ProxyKeepAlive, SecondRequestToDeniedHostGets403) {
  KeepAliveUpstream ku(1, [](int, const std::string&) { return ok_response("fine"); });
  Fixture f({rules_port(ku.port())});
  auto c = f.client();
  std::string auth = "127.0.0.1:" + std::to_string(ku.port()), carry;
  send_str(c.get(), get(auth, "/"));
  EXPECT_EQ(read_response(c.get(), carry), ok_response("fine"));
  send_str(c.get(), get("evil.example", "/steal"));
  std::string r = read_to_eof(c.get());
  EXPECT_EQ(r.rfind("HTTP/1.1 403 ", 0), 0u) << r;
  auto e2 = f.ev.wait(2);
  EXPECT_EQ(e2["decision"], "denied");
  EXPECT_EQ(e2["request"], 2);
  EXPECT_EQ(e2["host"], "evil.example");
  EXPECT_EQ(e2["status"], 403);
  EXPECT_EQ(f.ev.wait(1)["decision"], "allowed");
  EXPECT_EQ(f.resolver_calls.load(), 0);  // denied by name: never resolved
}

TEST(ProxyKeepAlive, ConnectionCloseFromEitherSideEndsTheConnection) {
  {  // the client's
    KeepAliveUpstream ku(1, [](int, const std::string&) { return ok_response("x"); });
    Fixture f({rules_port(ku.port())});
    auto c = f.client();
    std::string auth = "127.0.0.1:" + std::to_string(ku.port());
    send_str(c.get(), get(auth, "/", "Connection: close\r\n"));
    std::string r = read_to_eof(c.get());  // the proxy closes after the response
    EXPECT_EQ(r, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx");
    ku.up.reset();
    ASSERT_EQ(ku.heads.size(), 1u);
    EXPECT_NE(ku.heads[0].find("Connection: close\r\n"), std::string::npos);
    EXPECT_EQ(f.ev.wait(1)["end"], "closed");
  }
  {  // the upstream's
    KeepAliveUpstream ku(1, [](int, const std::string&) {
      return std::string("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
    });
    Fixture f({rules_port(ku.port())});
    auto c = f.client();
    std::string auth = "127.0.0.1:" + std::to_string(ku.port()), carry;
    send_str(c.get(), get(auth, "/"));
    EXPECT_EQ(read_response(c.get(), carry),
              "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    EXPECT_TRUE(peer_closed(c.get()));
    EXPECT_EQ(f.ev.wait(1)["status"], 200);
  }
}

TEST(ProxyKeepAlive, ChunkedResponseThenASecondRequest) {
  std::string chunked =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\n"
      "Trailer-Field: 1\r\n\r\n";
  KeepAliveUpstream ku(1,
                       [&](int i, const std::string&) { return i == 0 ? chunked : ok_response("second"); });
  Fixture f({rules_port(ku.port())});
  auto c = f.client();
  std::string auth = "127.0.0.1:" + std::to_string(ku.port());
  send_str(c.get(), get(auth, "/a"));
  // The chunked body ends with the trailer section; read exactly that much.
  std::string got;
  char b[4096];
  while (got.size() < chunked.size()) {
    ssize_t n = ::recv(c.get(), b, sizeof b, 0);
    ASSERT_GT(n, 0);
    got.append(b, static_cast<std::size_t>(n));
  }
  EXPECT_EQ(got, chunked);
  send_str(c.get(), get(auth, "/b"));
  std::string carry;
  EXPECT_EQ(read_response(c.get(), carry), ok_response("second"));
  EXPECT_EQ(f.ev.wait(2)["request"], 2);
  c.reset();
  ku.up.reset();
  EXPECT_EQ(ku.connections.load(), 1);
}

TEST(ProxyKeepAlive, PipelinedRequestsAnsweredInOrder) {
  KeepAliveUpstream ku(1, [](int i, const std::string& head) {
    return ok_response(std::to_string(i) + ":" + head.substr(0, head.find(" HTTP/")));
  });
  Fixture f({rules_port(ku.port())});
  auto c = f.client();
  std::string auth = "127.0.0.1:" + std::to_string(ku.port());
  std::string body = random_bytes(70000, 3);
  // Three requests in one write, the middle one with a body.
  send_str(c.get(), get(auth, "/1") + "POST http://" + auth + "/2 HTTP/1.1\r\nHost: " + auth +
                        "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body +
                        get(auth, "/3", "Connection: close\r\n"));
  std::string all = read_to_eof(c.get());
  EXPECT_EQ(all, ok_response("0:GET /1") + ok_response("1:POST /2") +
                     "HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\n2:GET /3");
  for (int i = 1; i <= 3; ++i) EXPECT_EQ(f.ev.wait(static_cast<std::size_t>(i))["request"], i);
  EXPECT_EQ(f.ev.wait(2)["bytes_up"].get<uint64_t>() > body.size(), true);
  ku.up.reset();
  EXPECT_EQ(ku.connections.load(), 1);
}

TEST(ProxyKeepAlive, DifferentHostOpensANewUpstreamConnection) {
  KeepAliveUpstream a(1, [](int, const std::string&) { return ok_response("A"); });
  KeepAliveUpstream b(1, [](int, const std::string&) { return ok_response("B"); });
  Fixture f({rules_port(a.port()), rules_port(b.port())});
  auto c = f.client();
  std::string carry;
  send_str(c.get(), get("127.0.0.1:" + std::to_string(a.port()), "/"));
  EXPECT_EQ(read_response(c.get(), carry), ok_response("A"));
  send_str(c.get(), get("127.0.0.1:" + std::to_string(b.port()), "/"));
  EXPECT_EQ(read_response(c.get(), carry), ok_response("B"));
  EXPECT_EQ(f.ev.wait(2)["port"], b.port());
  c.reset();
}

TEST(ProxyKeepAlive, LimitsStillHold) {
  {  // max requests per connection: the last allowed response says close
    KeepAliveUpstream ku(1, [](int, const std::string&) { return ok_response("r"); });
    Limits lim;
    lim.max_requests_per_connection = 2;
    Fixture f({rules_port(ku.port())}, lim);
    auto c = f.client();
    std::string auth = "127.0.0.1:" + std::to_string(ku.port()), carry;
    send_str(c.get(), get(auth, "/"));
    EXPECT_EQ(read_response(c.get(), carry), ok_response("r"));
    send_str(c.get(), get(auth, "/"));
    EXPECT_EQ(read_to_eof(c.get()), "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nr");
    ku.up.reset();
    EXPECT_NE(ku.heads[1].find("Connection: close"), std::string::npos);
  }
  {  // an idle persistent connection ends after header_timeout_ms, quietly
    KeepAliveUpstream ku(1, [](int, const std::string&) { return ok_response("r"); });
    Limits lim;
    lim.header_timeout_ms = 300;
    Fixture f({rules_port(ku.port())}, lim);
    auto c = f.client();
    std::string auth = "127.0.0.1:" + std::to_string(ku.port()), carry;
    send_str(c.get(), get(auth, "/"));
    EXPECT_EQ(read_response(c.get(), carry), ok_response("r"));
    auto t0 = Clock::now();
    EXPECT_TRUE(peer_closed(c.get(), 3000));
    EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(2000));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_EQ(f.ev.size(), 1u);
  }
  {  // a smuggling shape as the second request: 400, recorded
    KeepAliveUpstream ku(1, [](int, const std::string&) { return ok_response("r"); });
    Fixture f({rules_port(ku.port())});
    auto c = f.client();
    std::string auth = "127.0.0.1:" + std::to_string(ku.port()), carry;
    send_str(c.get(), get(auth, "/"));
    EXPECT_EQ(read_response(c.get(), carry), ok_response("r"));
    send_str(c.get(), "POST http://" + auth + "/ HTTP/1.1\r\nHost: " + auth +
                          "\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    std::string r = read_to_eof(c.get());
    EXPECT_EQ(r.rfind("HTTP/1.1 400 ", 0), 0u) << r;
    auto e = f.ev.wait(2);
    EXPECT_EQ(e["status"], 400);
    EXPECT_EQ(e["request"], 2);
    ku.up.reset();
    EXPECT_EQ(ku.heads.size(), 1u);
  }
  {  // total timeout covers the whole connection, not each request
    KeepAliveUpstream ku(1, [](int, const std::string&) { return ok_response("r"); });
    Limits lim;
    lim.total_timeout_ms = 500;
    Fixture f({rules_port(ku.port())}, lim);
    auto c = f.client();
    std::string auth = "127.0.0.1:" + std::to_string(ku.port()), carry;
    auto t0 = Clock::now();
    send_str(c.get(), get(auth, "/"));
    EXPECT_EQ(read_response(c.get(), carry), ok_response("r"));
    EXPECT_TRUE(peer_closed(c.get(), 3000));
    EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(2000));
  }
}

TEST(ProxyKeepAlive, AmbiguousResponseFramingGets502) {
  KeepAliveUpstream ku(1, [](int, const std::string&) {
    return std::string("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc");
  });
  Fixture f({rules_port(ku.port())});
  auto c = f.client();
  send_str(c.get(), get("127.0.0.1:" + std::to_string(ku.port()), "/"));
  std::string r = read_to_eof(c.get());
  EXPECT_EQ(r.rfind("HTTP/1.1 502 ", 0), 0u) << r;
  EXPECT_EQ(r.find("abc"), std::string::npos);
  auto e = f.ev.wait(1);
  EXPECT_EQ(e["status"], 502);
  EXPECT_NE(e["end"].get<std::string>().find("bad response"), std::string::npos);
}

TEST(ProxyKeepAlive, HeadResponseHasNoBodyAndCloseDelimitedEndsTheConnection) {
  KeepAliveUpstream ku(1, [](int i, const std::string&) {
    if (i == 0) return std::string("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");  // HEAD: no body
    return std::string("HTTP/1.1 200 OK\r\n\r\nuntil close");                           // close-delimited
  });
  Fixture f({rules_port(ku.port())});
  auto c = f.client();
  std::string auth = "127.0.0.1:" + std::to_string(ku.port());
  send_str(c.get(), "HEAD http://" + auth + "/ HTTP/1.1\r\nHost: " + auth + "\r\n\r\n");
  std::string head = read_head(c.get());
  EXPECT_EQ(head, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
  send_str(c.get(), get(auth, "/"));
  std::string rest = read_to_eof(c.get());  // the upstream closes, so does the proxy
  EXPECT_EQ(rest, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close");
}

TEST(Proxy, PendingHeadsShareOneMemoryBudget) {
  // 40 clients each send 12 KiB of a never-finished head: without a budget
  // that is 40 buffers of 16-32 KiB. With a 128 KiB budget the total stays
  // under it, the excess is answered 503 and counted, and the budget comes
  // back when the clients go.
  Limits lim;
  lim.max_header_bytes = 65536;
  lim.max_pending_header_bytes = 128 * 1024;
  Fixture f({"*.test"}, lim);
  std::string part = "CONNECT a.test:443 HTTP/1.1\r\nX-Pad: " + std::string(12 * 1024, 'a');
  std::vector<UniqueFd> cs;
  for (int i = 0; i < 40; ++i) {
    cs.push_back(f.client());
    send_str(cs.back().get(), part);
  }
  for (int i = 0; i < 400 && f.proxy->pending_connections() < 40; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // every head read
  EXPECT_LE(f.proxy->pending_header_bytes(), lim.max_pending_header_bytes);
  EXPECT_GE(f.proxy->pending_header_bytes(), 64u * 1024);  // the budget is used, not refused early
  EXPECT_GT(f.proxy->refused_over_budget(), 10u);
  EXPECT_LT(f.proxy->refused_over_budget(), 40u);
  auto e = f.ev.wait(1);
  EXPECT_EQ(e["status"], 503);
  EXPECT_EQ(e["reason"].get<std::string>().rfind("pending request heads over the proxy's memory budget", 0),
            0u);
  cs.clear();
  for (int i = 0; i < 400 && f.proxy->pending_connections() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(f.proxy->pending_connections(), 0);
  EXPECT_EQ(f.proxy->pending_header_bytes(), 0u);
}

namespace {
cred::Active test_credential(uint16_t port) {
  cred::Active a;
  a.def = cred::parse("api",
                      {{"source", {{"env", "UNUSED"}}},
                       {"placeholder_env", "API_TOKEN"},
                       {"destinations", {{{"host", "127.0.0.1"}, {"port", port}, {"path_prefix", "/api/"}}}},
                       {"apply", {{"header", "Authorization"}, {"format", "Bearer {}"}}}},
                      "test");
  a.placeholder = cred::make_placeholder();
  a.secret = "sk-the-real-secret";
  return a;
}

std::vector<std::pair<std::string, json>> events_of(Events& ev, std::size_t n) {
  ev.wait(n);
  std::lock_guard lk(ev.mu);
  return ev.list;
}
}  // namespace

TEST(ProxyCredentials, AppliedOnItsDestinationStrippedOrDeniedElsewhereOnOneConnection) {
  KeepAliveUpstream ku(1, [](int i, const std::string&) { return ok_response("r" + std::to_string(i)); });
  Fixture f({rules_port(ku.port())});
  auto a = test_credential(ku.port());
  const std::string ph = a.placeholder;
  f.proxy->set_credentials({a});
  auto c = f.client();
  std::string auth = "127.0.0.1:" + std::to_string(ku.port()), carry;
  // 1: its destination and path: the placeholder becomes the secret.
  send_str(c.get(), get(auth, "/api/models", "Authorization: Bearer " + ph + "\r\n"));
  auto r1 = read_response(c.get(), carry);
  EXPECT_EQ(r1, ok_response("r0"));
  // 2: same host, a path outside the prefix: stripped, forwarded without it.
  send_str(c.get(), get(auth, "/elsewhere", "Authorization: Bearer " + ph + "\r\nX-Leak: " + ph + "\r\n"));
  auto r2 = read_response(c.get(), carry);
  EXPECT_EQ(r2, ok_response("r1"));
  // 3: the placeholder in the target: 403 naming the credential, nothing sent.
  send_str(c.get(), get(auth, "/x?token=" + ph));
  auto r3 = read_response(c.get(), carry);
  EXPECT_EQ(r3.rfind("HTTP/1.1 403", 0), 0u) << r3;
  EXPECT_NE(r3.find("credential api"), std::string::npos) << r3;
  for (const auto* r : {&r1, &r2, &r3}) {
    EXPECT_EQ(r->find(a.secret), std::string::npos);
    EXPECT_EQ(r->find(ph), std::string::npos);
  }
  c.reset();
  ku.up.reset();
  ASSERT_EQ(ku.heads.size(), 2u);
  EXPECT_NE(ku.heads[0].find("\r\nAuthorization: Bearer sk-the-real-secret\r\n"), std::string::npos)
      << ku.heads[0];
  EXPECT_EQ(ku.heads[0].find(ph), std::string::npos);
  EXPECT_EQ(ku.heads[1].find("Authorization"), std::string::npos) << ku.heads[1];
  EXPECT_EQ(ku.heads[1].find(ph), std::string::npos) << ku.heads[1];
  EXPECT_EQ(ku.heads[1].find("sk-the"), std::string::npos) << ku.heads[1];
  auto evs = events_of(f.ev, 5);
  ASSERT_EQ(evs.size(), 5u);
  // Every event: no secret, no placeholder.
  for (const auto& [t, d] : evs) {
    EXPECT_EQ(d.dump().find("sk-the"), std::string::npos) << d.dump();
    EXPECT_EQ(d.dump().find(ph), std::string::npos) << d.dump();
  }
  EXPECT_EQ(evs[0].first, "net.connection");
  EXPECT_EQ(evs[0].second["credential"], "api");
  EXPECT_EQ(evs[0].second["path"], "/api/models");
  EXPECT_EQ(evs[1].first, "net.credential");
  EXPECT_EQ(evs[1].second["action"], "stripped");
  EXPECT_EQ(evs[1].second["decision"], "denied");
  EXPECT_EQ(evs[1].second["credential"], "api");
  EXPECT_EQ(evs[1].second["request"], 2);
  EXPECT_EQ(evs[2].first, "net.connection");
  EXPECT_FALSE(evs[2].second.contains("credential"));
  EXPECT_EQ(evs[3].first, "net.credential");
  EXPECT_EQ(evs[3].second["action"], "denied");
  EXPECT_EQ(evs[4].first, "net.connection");
  EXPECT_EQ(evs[4].second["status"], 403);
  EXPECT_EQ(evs[4].second["decision"], "denied");
  auto t = f.proxy->totals();
  EXPECT_EQ(t["credentials"]["requests"]["api"], 1);
  EXPECT_EQ(t["credentials"]["placeholders_caught"], 2);
}

TEST(ProxyCredentials, NoCredentialsNoRewriteAndNoTotals) {
  KeepAliveUpstream ku(1, [](int, const std::string&) { return ok_response("x"); });
  Fixture f({rules_port(ku.port())});
  auto c = f.client();
  std::string auth = "127.0.0.1:" + std::to_string(ku.port()), carry;
  send_str(c.get(), get(auth, "/api/", "Authorization: Bearer agentshim-cred-0000\r\n"));
  EXPECT_EQ(read_response(c.get(), carry), ok_response("x"));
  c.reset();
  ku.up.reset();
  ASSERT_EQ(ku.heads.size(), 1u);
  EXPECT_NE(ku.heads[0].find("Authorization: Bearer agentshim-cred-0000"), std::string::npos);
  EXPECT_FALSE(f.proxy->totals().contains("credentials"));
}

TEST(ProxyRequestRules, CheckedPerRequestOnOneConnectionAndConnectRefused) {
  KeepAliveUpstream ku(1, [](int i, const std::string&) { return ok_response("r" + std::to_string(i)); });
  Fixture f({rules_port(ku.port())});
  f.proxy->set_request_rules(RequestRules::parse(
      json::array({{{"host", "127.0.0.1"}, {"port", ku.port()}, {"methods", {"GET"}}, {"action", "allow"}}}),
      "t"));
  auto c = f.client();
  std::string auth = "127.0.0.1:" + std::to_string(ku.port()), carry;
  send_str(c.get(), get(auth, "/a"));
  EXPECT_EQ(read_response(c.get(), carry), ok_response("r0"));
  send_str(c.get(), "DELETE http://" + auth + "/a HTTP/1.1\r\nHost: " + auth + "\r\n\r\n");
  auto r = read_response(c.get(), carry);
  EXPECT_EQ(r.rfind("HTTP/1.1 403", 0), 0u) << r;
  EXPECT_NE(r.find("no request rule for this destination allows DELETE"), std::string::npos) << r;
  EXPECT_NE(r.find("Proxy-Status: agentshim; error=http_request_denied"), std::string::npos) << r;
  auto e2 = f.ev.wait(2);
  EXPECT_EQ(e2["decision"], "denied");
  EXPECT_EQ(e2["status"], 403);
  auto t = f.client();
  send_str(t.get(), "CONNECT " + auth + " HTTP/1.1\r\nHost: " + auth + "\r\n\r\n");
  auto h = read_head(t.get());
  EXPECT_EQ(h.rfind("HTTP/1.1 403", 0), 0u) << h;
  c.reset();
  ku.up.reset();
  EXPECT_EQ(ku.heads.size(), 1u);  // neither refused request reached the upstream
}
