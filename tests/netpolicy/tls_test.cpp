// TLS interception (netpolicy/tls.h, proxy_tls.cpp) with real sockets on
// 127.0.0.1: the upstream is a TLS server thread whose certificate comes
// from a second Authority (the "public" CA the proxy's upstream trust store
// is pointed at); the client verifies the proxy's certificate against the
// run's CA.
#include "netpolicy/tls.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>

#include "common/error.h"
#include "common/fd.h"
#include "netpolicy/http.h"
#include "netpolicy/proxy.h"

using namespace agentshim;
using namespace agentshim::net;

namespace {

// OpenSSL writes to its socket with write(2), which raises SIGPIPE when the
// peer has gone (a TLS 1.3 server's session tickets go out after the client
// may already have closed). The proxy's own threads block it (StoppableLoop);
// the test's threads do the same, and a SIGPIPE raised meanwhile is taken
// before the mask is restored so it cannot kill the test afterwards.
class NoSigpipe {
 public:
  NoSigpipe() {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGPIPE);
    ::pthread_sigmask(SIG_BLOCK, &s, &old_);
  }
  ~NoSigpipe() {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGPIPE);
    timespec zero{};
    while (::sigtimedwait(&s, nullptr, &zero) == SIGPIPE) {
    }
    ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  NoSigpipe(const NoSigpipe&) = delete;
  NoSigpipe& operator=(const NoSigpipe&) = delete;

 private:
  sigset_t old_{};
};

UniqueFd listen_loopback() {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  int one = 1;
  setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw_errno("bind");
  if (::listen(s.get(), 64) != 0) throw_errno("listen");
  return s;
}

uint16_t port_of(int fd) {
  sockaddr_in a{};
  socklen_t l = sizeof a;
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

std::string read_head(int fd) {
  std::string buf;
  char c;
  while (buf.find("\r\n\r\n") == std::string::npos) {
    if (::recv(fd, &c, 1, 0) != 1) break;
    buf += c;
  }
  return buf;
}

std::string ssl_read_response(SSL* s) {
  std::string buf;
  char b[4096];
  for (;;) {
    auto e = buf.find("\r\n\r\n");
    if (e != std::string::npos) {
      auto cl = buf.find("Content-Length: ");
      if (cl != std::string::npos && cl < e) {
        std::size_t n = std::stoul(buf.substr(cl + 16));
        if (buf.size() >= e + 4 + n) return buf.substr(0, e + 4 + n);
      }
    }
    int n = SSL_read(s, b, sizeof b);
    if (n <= 0) return buf;
    buf.append(b, static_cast<std::size_t>(n));
  }
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
  std::vector<std::pair<std::string, json>> wait(std::size_t n) {
    std::unique_lock lk(mu);
    cv.wait_for(lk, std::chrono::seconds(10), [&] { return list.size() >= n; });
    return list;
  }
};

// A TLS upstream on 127.0.0.1: each connection serves requests (heads
// recorded) until the client closes.
struct TlsUpstream {
  std::shared_ptr<tls::Authority> ca = tls::Authority::generate("upstream test");
  UniqueFd lfd = listen_loopback();
  uint16_t port = port_of(lfd.get());
  tls::CtxPtr ctx{SSL_CTX_new(TLS_server_method())};
  std::mutex mu;
  std::vector<std::string> heads;
  std::thread t;
  explicit TlsUpstream(std::shared_ptr<tls::Authority> cert_from = nullptr) {
    auto from = cert_from ? cert_from : ca;
    SSL_CTX_use_certificate(ctx.get(), from->leaf("127.0.0.1").get());
    SSL_CTX_use_PrivateKey(ctx.get(), from->leaf_key());
    t = std::thread([this] {
      NoSigpipe quiet;
      for (;;) {
        UniqueFd c(::accept4(lfd.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!c) return;
        tls::SslPtr s(SSL_new(ctx.get()));
        SSL_set_fd(s.get(), c.get());
        if (SSL_accept(s.get()) != 1) continue;
        std::string buf;
        char b[4096];
        for (;;) {
          auto e = buf.find("\r\n\r\n");
          if (e != std::string::npos) {
            {
              std::lock_guard lk(mu);
              heads.push_back(buf.substr(0, e + 4));
            }
            buf.erase(0, e + 4);
            static const std::string ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            SSL_write(s.get(), ok.data(), static_cast<int>(ok.size()));
            continue;
          }
          int n = SSL_read(s.get(), b, sizeof b);
          if (n <= 0) break;
          buf.append(b, static_cast<std::size_t>(n));
        }
      }
    });
  }
  std::string ca_file() {
    char tmpl[] = "/tmp/agentshim-tls-test-XXXXXX";
    int fd = ::mkstemp(tmpl);
    std::string pem = ca->ca_pem();
    if (::write(fd, pem.data(), pem.size()) != static_cast<ssize_t>(pem.size())) throw_errno("write");
    ::close(fd);
    return tmpl;
  }
  ~TlsUpstream() {
    ::shutdown(lfd.get(), SHUT_RDWR);
    if (t.joinable()) t.join();
  }
};

cred::Active credential(uint16_t port) {
  cred::Active a;
  a.def = cred::parse("api",
                      {{"source", {{"env", "UNUSED"}}},
                       {"placeholder_env", "API_TOKEN"},
                       {"destinations", {{{"host", "127.0.0.1"}, {"port", port}, {"path_prefix", "/v1/"}}}},
                       {"apply", {{"header", "Authorization"}, {"format", "Bearer {}"}}}},
                      "test");
  a.placeholder = cred::make_placeholder();
  a.secret = "sk-the-real-secret";
  return a;
}

struct ProxyUnderTest {
  Events ev;
  std::shared_ptr<tls::Authority> run_ca = tls::Authority::generate("run test");
  std::unique_ptr<Proxy> proxy;
  uint16_t port = 0;
  ProxyUnderTest(uint16_t upstream_port, const std::string& upstream_ca_file) {
    auto l = listen_loopback();
    port = port_of(l.get());
    proxy = std::make_unique<Proxy>(std::move(l),
                                    Allowlist::parse({"127.0.0.1:" + std::to_string(upstream_port)}, "test"),
                                    Limits{}, ev.sink());
    proxy->set_tls(std::make_shared<tls::Interceptor>(run_ca, upstream_ca_file));
  }
};

// CONNECT then a TLS handshake trusting the run's CA; sni "" = none (an IP).
struct Client {
  UniqueFd fd;
  tls::CtxPtr ctx{SSL_CTX_new(TLS_client_method())};
  tls::SslPtr ssl;
  std::string connect_head;
  bool handshake_ok = false;
  Client(uint16_t proxy_port, uint16_t target, X509* trust, const std::string& sni = "",
         const std::vector<unsigned char>& alpn = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'}) {
    NoSigpipe quiet;
    fd = connect_to(proxy_port);
    std::string req = "CONNECT 127.0.0.1:" + std::to_string(target) + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    ::send(fd.get(), req.data(), req.size(), MSG_NOSIGNAL);
    connect_head = read_head(fd.get());
    if (connect_head.rfind("HTTP/1.1 200", 0) != 0) return;
    X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx.get()), trust);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    ssl.reset(SSL_new(ctx.get()));
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl.get()), "127.0.0.1");
    if (!sni.empty()) SSL_set_tlsext_host_name(ssl.get(), sni.c_str());
    if (!alpn.empty()) SSL_set_alpn_protos(ssl.get(), alpn.data(), static_cast<unsigned>(alpn.size()));
    SSL_set_fd(ssl.get(), fd.get());
    handshake_ok = SSL_connect(ssl.get()) == 1;
    ERR_clear_error();
  }
  std::string request(const std::string& head) {
    NoSigpipe quiet;
    SSL_write(ssl.get(), head.data(), static_cast<int>(head.size()));
    return ssl_read_response(ssl.get());
  }
};

}  // namespace

TEST(TlsAuthority, LeafVerifiesAgainstTheRunCaAndIsCachedPerName) {
  auto ca = tls::Authority::generate("t");
  auto a = ca->leaf("api.example.test");
  EXPECT_EQ(a.get(), ca->leaf("api.example.test").get());
  auto ip = ca->leaf("127.0.0.1");
  EXPECT_EQ(ca->issued(), 2u);
  EXPECT_THROW(ca->leaf("bad name!"), Error);
  tls::CtxPtr unused;
  X509_STORE* st = X509_STORE_new();
  X509_STORE_add_cert(st, ca->ca_cert());
  for (auto [cert, name, is_ip] :
       {std::tuple{a.get(), "api.example.test", false}, {ip.get(), "127.0.0.1", true}}) {
    X509_STORE_CTX* ctx = X509_STORE_CTX_new();
    X509_STORE_CTX_init(ctx, st, cert, nullptr);
    X509_VERIFY_PARAM* vp = X509_STORE_CTX_get0_param(ctx);
    if (is_ip)
      X509_VERIFY_PARAM_set1_ip_asc(vp, name);
    else
      X509_VERIFY_PARAM_set1_host(vp, name, 0);
    EXPECT_EQ(X509_verify_cert(ctx), 1) << X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
    X509_STORE_CTX_free(ctx);
  }
  // Not valid for another name.
  EXPECT_NE(X509_check_host(a.get(), "other.example.test", 0, 0, nullptr), 1);
  X509_STORE_free(st);
  EXPECT_NE(ca->ca_pem().find("-----BEGIN CERTIFICATE-----"), std::string::npos);
}

TEST(TlsAuthority, ServerNameNormalisation) {
  EXPECT_EQ(tls::normalise_server_name("API.Example.Test."), "api.example.test");
  EXPECT_EQ(tls::normalise_server_name("bad name"), "");
  EXPECT_EQ(tls::normalise_server_name(nullptr), "");
}

TEST(HttpOrigin, InterceptedRequestsAreOriginFormForTheTunnelHost) {
  http::Origin o{"api.test", 443};
  auto ok = http::parse_request_head("GET /v1/x?y=1 HTTP/1.1\r\nHost: api.test\r\n\r\n", 16384, 100, &o);
  ASSERT_EQ(ok.state, http::ParseResult::State::complete) << ok.reason;
  EXPECT_EQ(ok.request.host, "api.test");
  EXPECT_EQ(ok.request.port, 443);
  EXPECT_EQ(ok.request.path, "/v1/x?y=1");
  for (const char* bad : {"GET /v1 HTTP/1.1\r\nHost: other.test\r\n\r\n", "GET /v1 HTTP/1.1\r\n\r\n",
                          "GET http://api.test/v1 HTTP/1.1\r\nHost: api.test\r\n\r\n",
                          "CONNECT other.test:443 HTTP/1.1\r\nHost: other.test\r\n\r\n",
                          "GET /v1 HTTP/1.1\r\nHost: api.test:8443\r\n\r\n"}) {
    auto r = http::parse_request_head(bad, 16384, 100, &o);
    EXPECT_EQ(r.state, http::ParseResult::State::error) << bad;
    EXPECT_EQ(r.status, 400) << bad;
  }
}

TEST(ProxyTls, CredentialAppliedInsideTheTunnelPerRequestOnKeepAlive) {
  TlsUpstream up;
  std::string cafile = up.ca_file();
  ProxyUnderTest p(up.port, cafile);
  auto a = credential(up.port);
  const std::string ph = a.placeholder;
  p.proxy->set_credentials({a});
  p.proxy->start();
  EXPECT_TRUE(p.proxy->intercepts("127.0.0.1", up.port));
  EXPECT_FALSE(p.proxy->intercepts("127.0.0.1", static_cast<uint16_t>(up.port + 1)));
  {
    Client c(p.port, up.port, p.run_ca->ca_cert());
    ASSERT_EQ(c.connect_head.rfind("HTTP/1.1 200", 0), 0u) << c.connect_head;
    ASSERT_TRUE(c.handshake_ok);
    auto r1 = c.request("GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(up.port) +
                        "\r\nAuthorization: Bearer " + ph + "\r\n\r\n");
    EXPECT_NE(r1.find("200 OK"), std::string::npos) << r1;
    // Outside the path prefix: stripped and recorded.
    auto r2 = c.request("GET /admin HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(up.port) +
                        "\r\nX-Leak: " + ph + "\r\n\r\n");
    EXPECT_NE(r2.find("200 OK"), std::string::npos) << r2;
    // A Host naming another host: 400, never forwarded.
    auto r3 = c.request("GET /v1/x HTTP/1.1\r\nHost: other.test\r\n\r\n");
    EXPECT_NE(r3.find("400"), std::string::npos) << r3;
  }
  auto evs = p.ev.wait(4);
  p.proxy->stop();
  ::unlink(cafile.c_str());
  {
    std::lock_guard lk(up.mu);
    ASSERT_EQ(up.heads.size(), 2u);
    EXPECT_NE(up.heads[0].find("Authorization: Bearer sk-the-real-secret\r\n"), std::string::npos)
        << up.heads[0];
    EXPECT_EQ(up.heads[1].find(ph), std::string::npos) << up.heads[1];
    EXPECT_EQ(up.heads[1].find("sk-the"), std::string::npos) << up.heads[1];
  }
  ASSERT_GE(evs.size(), 4u);
  EXPECT_EQ(evs[0].first, "net.connection");
  EXPECT_EQ(evs[0].second["tls"], "intercepted");
  EXPECT_EQ(evs[0].second["credential"], "api");
  EXPECT_EQ(evs[0].second["path"], "/v1/models");
  EXPECT_EQ(evs[0].second["status"], 200);
  EXPECT_EQ(evs[1].first, "net.credential");
  EXPECT_EQ(evs[1].second["action"], "stripped");
  EXPECT_EQ(evs[2].second["path"], "/admin");
  EXPECT_EQ(evs[2].second["request"], 2);
  EXPECT_FALSE(evs[2].second.contains("credential"));
  EXPECT_EQ(evs[3].second["status"], 400);
  for (const auto& [t, d] : evs) EXPECT_EQ(d.dump().find("sk-the"), std::string::npos) << d.dump();
  auto t = p.proxy->totals();
  EXPECT_EQ(t["tls"]["intercepted_connections"], 1);
  EXPECT_EQ(t["credentials"]["requests"]["api"], 1);
}

TEST(ProxyTls, ServerNameOtherThanTheConnectHostIsRefused) {
  TlsUpstream up;
  std::string cafile = up.ca_file();
  ProxyUnderTest p(up.port, cafile);
  p.proxy->set_credentials({credential(up.port)});
  p.proxy->start();
  Client c(p.port, up.port, p.run_ca->ca_cert(), "evil.test");
  EXPECT_FALSE(c.handshake_ok);
  auto evs = p.ev.wait(1);
  p.proxy->stop();
  ::unlink(cafile.c_str());
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].second["decision"], "denied");
  EXPECT_EQ(evs[0].second["reason"], "TLS server name evil.test does not match the CONNECT host 127.0.0.1");
  EXPECT_EQ(p.proxy->totals()["tls"]["refused_handshakes"], 1);
}

TEST(ProxyTls, Http2OnlyClientIsRefusedInTheHandshake) {
  TlsUpstream up;
  std::string cafile = up.ca_file();
  ProxyUnderTest p(up.port, cafile);
  p.proxy->set_credentials({credential(up.port)});
  p.proxy->start();
  Client c(p.port, up.port, p.run_ca->ca_cert(), "", {2, 'h', '2'});
  EXPECT_FALSE(c.handshake_ok);
  auto evs = p.ev.wait(1);
  p.proxy->stop();
  ::unlink(cafile.c_str());
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_NE(evs[0].second["reason"].get<std::string>().find("HTTP/2-only"), std::string::npos);
}

TEST(ProxyTls, UntrustedUpstreamIsRefusedWith502AndTheReason) {
  auto other = tls::Authority::generate("nobody trusts this");
  TlsUpstream up(other);  // its certificate is from `other`; the proxy trusts up.ca only
  std::string cafile = up.ca_file();
  ProxyUnderTest p(up.port, cafile);
  p.proxy->set_credentials({credential(up.port)});
  p.proxy->start();
  Client c(p.port, up.port, p.run_ca->ca_cert());
  EXPECT_EQ(c.connect_head.rfind("HTTP/1.1 502", 0), 0u) << c.connect_head;
  auto evs = p.ev.wait(1);
  p.proxy->stop();
  ::unlink(cafile.c_str());
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].second["status"], 502);
  EXPECT_EQ(evs[0].second["end"], "refused");
  EXPECT_NE(evs[0].second["reason"].get<std::string>().find("upstream certificate not trusted"),
            std::string::npos)
      << evs[0].second.dump();
  std::lock_guard lk(up.mu);
  EXPECT_TRUE(up.heads.empty());
}

TEST(ProxyTls, DestinationWithoutCredentialOrRulesStaysAnOpaqueTunnel) {
  TlsUpstream up;
  std::string cafile = up.ca_file();
  ProxyUnderTest p(up.port, cafile);
  p.proxy->set_credentials({credential(static_cast<uint16_t>(up.port + 1))});
  p.proxy->start();
  // The client sees the upstream's own certificate (trusting its CA).
  Client c(p.port, up.port, up.ca->ca_cert());
  ASSERT_TRUE(c.handshake_ok);
  auto r = c.request("GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
  EXPECT_NE(r.find("200 OK"), std::string::npos);
  c.ssl.reset();
  c.fd.reset();
  auto evs = p.ev.wait(1);
  p.proxy->stop();
  ::unlink(cafile.c_str());
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].second["method"], "CONNECT");
  EXPECT_FALSE(evs[0].second.contains("tls"));
  EXPECT_EQ(p.proxy->totals()["tls"]["intercepted_connections"], 0);
}
