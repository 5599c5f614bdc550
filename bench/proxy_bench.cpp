// Driver for bench/proxy.py: runs agentshim's egress Proxy outside a
// container, plus the upstream server and the clients the benchmark times.
//
//   proxy_bench proxy  --port P [--allow RULE]...   run a Proxy on 127.0.0.1:P until SIGTERM/SIGINT
//   proxy_bench server --port P                     upstream: first byte 'S' = sink (8-byte count N
//                                                   follows; replies with N once N bytes came), 'E' = echo
//   proxy_bench send    --to P [--via V] --bytes N  push N bytes, print {"seconds":...}
//   proxy_bench latency --to P [--via V] -n N       N sequential connect(+CONNECT)+1-byte round trips,
//                                                   print {"median_us":...,"p99_us":...}
// With port 0, proxy and server print "port N" once listening. Loopback only.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "netpolicy/proxy.h"

using namespace agentshim;
using Clock = std::chrono::steady_clock;

namespace {

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
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw_errno("connect");
  int one = 1;
  setsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
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
  int n = 100;
  std::vector<std::string> allow;
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
      net::Proxy p(listen_on(port), net::Allowlist::parse(allow, "--allow"), lim, {});
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
        int one = 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        std::thread(serve_conn, UniqueFd(c)).detach();
      }
    }
    if (cmd == "send") {
      std::vector<char> buf(1 << 20, 'x');
      auto t0 = Clock::now();
      UniqueFd s = open_path(via, to);
      send_all(s.get(), "S", 1);
      send_all(s.get(), reinterpret_cast<const char*>(&bytes), sizeof bytes);
      uint64_t left = bytes;
      while (left) {
        std::size_t k = static_cast<std::size_t>(std::min<uint64_t>(left, buf.size()));
        send_all(s.get(), buf.data(), k);
        left -= k;
      }
      uint64_t got = 0;
      recv_exact(s.get(), reinterpret_cast<char*>(&got), sizeof got);
      double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      if (got != bytes) throw Error("sink received " + std::to_string(got) + " of " + std::to_string(bytes));
      std::printf("{\"seconds\": %.6f}\n", secs);
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
