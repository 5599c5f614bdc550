// Request-head parser: accepted shapes, and every rejection with its status.
#include "netpolicy/http.h"

#include <gtest/gtest.h>

#include <string>

using namespace agentshim::net::http;
using State = ParseResult::State;

namespace {

ParseResult P(const std::string& s, std::size_t max = 16384, int max_headers = 100) {
  return parse_request_head(s, max, max_headers);
}

int status_of(const std::string& s) {
  auto r = P(s);
  EXPECT_EQ(r.state, State::error) << s;
  return r.status;
}

}  // namespace

TEST(HttpParse, Connect) {
  std::string s = "CONNECT Api.Example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\nTLSDATA";
  auto r = P(s);
  ASSERT_EQ(r.state, State::complete) << r.reason;
  EXPECT_TRUE(r.request.is_connect);
  EXPECT_EQ(r.request.host, "api.example.com");
  EXPECT_EQ(r.request.port, 443);
  EXPECT_EQ(r.head_len, s.size() - 7);
}

TEST(HttpParse, ConnectIpLiterals) {
  auto r = P("CONNECT [fd00::1]:8443 HTTP/1.1\r\n\r\n");
  ASSERT_EQ(r.state, State::complete);
  EXPECT_EQ(r.request.host, "fd00::1");
  EXPECT_EQ(r.request.port, 8443);
  r = P("CONNECT 10.1.2.3:22 HTTP/1.0\r\n\r\n");
  ASSERT_EQ(r.state, State::complete);
  EXPECT_EQ(r.request.host, "10.1.2.3");
  EXPECT_EQ(r.request.minor_version, 0);
}

TEST(HttpParse, ConnectBadTargets) {
  for (const char* t : {"example.com", "example.com:", "example.com:0", "example.com:65536",
                        "example.com:+80", "[fd00::1]", "fd00::1:443", "ex ample.com:443", "exa%mple.com:443",
                        "1.2.3:80", "010.1.1.1:80", "-bad.com:443", "[zz::1]:443", "user@example.com:443"}) {
    std::string s = std::string("CONNECT ") + t + " HTTP/1.1\r\n\r\n";
    EXPECT_EQ(status_of(s), 400) << t;
  }
  std::string longname(254, 'a');
  EXPECT_EQ(status_of("CONNECT " + longname + ":443 HTTP/1.1\r\n\r\n"), 400);
}

TEST(HttpParse, AbsoluteForm) {
  auto r = P("GET http://Example.com:8080/a/b?c=d HTTP/1.1\r\nHost: example.COM:8080\r\nAccept: */*\r\n\r\n");
  ASSERT_EQ(r.state, State::complete) << r.reason;
  EXPECT_FALSE(r.request.is_connect);
  EXPECT_EQ(r.request.host, "example.com");
  EXPECT_EQ(r.request.port, 8080);
  EXPECT_EQ(r.request.path, "/a/b?c=d");
  r = P("GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n");
  ASSERT_EQ(r.state, State::complete);
  EXPECT_EQ(r.request.path, "/");
  EXPECT_EQ(r.request.port, 80);
  r = P("GET http://example.com?q HTTP/1.1\r\nHost: example.com:80\r\n\r\n");
  ASSERT_EQ(r.state, State::complete);
  EXPECT_EQ(r.request.path, "/?q");
  // HTTP/1.0 without Host is fine
  r = P("GET http://example.com/ HTTP/1.0\r\n\r\n");
  ASSERT_EQ(r.state, State::complete);
}

TEST(HttpParse, HostMustAgree) {
  EXPECT_EQ(status_of("GET http://example.com/ HTTP/1.1\r\nHost: evil.com\r\n\r\n"), 400);
  EXPECT_EQ(status_of("GET http://example.com/ HTTP/1.1\r\nHost: example.com:81\r\n\r\n"), 400);
  EXPECT_EQ(status_of("GET http://example.com/ HTTP/1.1\r\n\r\n"), 400);  // missing Host in 1.1
  EXPECT_EQ(status_of("GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nHost: example.com\r\n\r\n"),
            400);
}

TEST(HttpParse, NotProxyRequests) {
  EXPECT_EQ(status_of("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"), 400);
  EXPECT_EQ(status_of("OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n"), 400);
  EXPECT_EQ(status_of("GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"), 400);
  EXPECT_EQ(status_of("GET ftp://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"), 400);
  EXPECT_EQ(status_of("GET http://u:p@example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"), 400);
  EXPECT_EQ(status_of("GET http://example.com/#frag HTTP/1.1\r\nHost: example.com\r\n\r\n"), 400);
}

TEST(HttpParse, RequestLine) {
  EXPECT_EQ(status_of("GET  http://a.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n"), 400);   // double space
  EXPECT_EQ(status_of("GET http://a.com/ x HTTP/1.1\r\nHost: a.com\r\n\r\n"), 400);  // space in target
  EXPECT_EQ(status_of("GET http://a.com/ HTTP/1.1 \r\nHost: a.com\r\n\r\n"), 400);   // trailing space
  EXPECT_EQ(status_of("GET http://a.com/ HTTP/2.0\r\nHost: a.com\r\n\r\n"), 400);    // version
  EXPECT_EQ(status_of("GET http://a.com/ http/1.1\r\nHost: a.com\r\n\r\n"), 400);
  EXPECT_EQ(status_of("GET http://a.com/ HTTP/1.10\r\nHost: a.com\r\n\r\n"), 400);
  EXPECT_EQ(status_of("G(T http://a.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n"), 400);      // method token
  EXPECT_EQ(status_of("GET http://a.com/\x7f HTTP/1.1\r\nHost: a.com\r\n\r\n"), 400);  // control in target
  EXPECT_EQ(status_of("GET http://a.com/\xc3\xa9 HTTP/1.1\r\nHost: a.com\r\n\r\n"), 400);
  EXPECT_EQ(status_of("\r\nGET http://a.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n"), 400);  // leading empty line
  EXPECT_EQ(status_of("GET\r\n\r\n"), 400);
}

TEST(HttpParse, HeaderSyntax) {
  const std::string rl = "GET http://a.com/ HTTP/1.1\r\nHost: a.com\r\n";
  EXPECT_EQ(status_of(rl + "X-A: b\r\n folded\r\n\r\n"), 400);  // obs-fold
  EXPECT_EQ(status_of(rl + "X-A: b\r\n\tfolded\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "X-A : b\r\n\r\n"), 400);  // space before colon
  EXPECT_EQ(status_of(rl + "X A: b\r\n\r\n"), 400);   // invalid name
  EXPECT_EQ(status_of(rl + ": b\r\n\r\n"), 400);      // empty name
  EXPECT_EQ(status_of(rl + "NoColon\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "X-A: b\rc\r\n\r\n"), 400);                   // bare CR
  EXPECT_EQ(status_of(rl + "X-A: b\nX-B: c\r\n\r\n"), 400);              // bare LF
  EXPECT_EQ(status_of(rl + std::string("X-A: b\0c\r\n\r\n", 12)), 400);  // NUL
  EXPECT_EQ(status_of(rl + "X-A: b\x01\r\n\r\n"), 400);
  // Bare LF line ends are rejected without waiting for a CRLFCRLF that never comes.
  EXPECT_EQ(status_of("GET http://a.com/ HTTP/1.1\nHost: a.com\n\n"), 400);
  // obs-text and tabs in values are fine
  auto r = P(rl + "X-A: \tcaf\xc3\xa9 x\t\r\n\r\n");
  ASSERT_EQ(r.state, State::complete);
  EXPECT_EQ(r.request.headers.back().value, "caf\xc3\xa9 x");
}

TEST(HttpParse, Smuggling) {
  const std::string rl = "POST http://a.com/ HTTP/1.1\r\nHost: a.com\r\n";
  EXPECT_EQ(status_of(rl + "Content-Length: 5\r\nContent-Length: 5\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "Content-Length: 5\r\nContent-Length: 6\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "Content-Length: 5, 5\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "Content-Length: +5\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "Content-Length: 0x5\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "Content-Length: 99999999999999999999\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "Transfer-Encoding: gzip\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "Transfer-Encoding: chunked, gzip\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "Transfer-Encoding: chunked, chunked\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "Transfer-Encoding: xchunked\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "Transfer-Encoding:\r\n\r\n"), 400);
  EXPECT_EQ(status_of(rl + "Transfer-Encoding: gzip, chunked\r\n\r\n"), 501);
  EXPECT_EQ(status_of("POST http://a.com/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
  EXPECT_EQ(status_of("CONNECT a.com:443 HTTP/1.1\r\nContent-Length: 3\r\n\r\n"), 400);
  EXPECT_EQ(status_of("CONNECT a.com:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
  auto r = P(rl + "Transfer-Encoding: Chunked\r\n\r\n");
  ASSERT_EQ(r.state, State::complete);
  EXPECT_EQ(r.request.body, Body::chunked);
  r = P(rl + "Content-Length: 12\r\n\r\n");
  ASSERT_EQ(r.state, State::complete);
  EXPECT_EQ(r.request.body, Body::length);
  EXPECT_EQ(r.request.content_length, 12u);
}

TEST(HttpParse, Limits) {
  std::string big = "GET http://a.com/ HTTP/1.1\r\nHost: a.com\r\nX: " + std::string(20000, 'a');
  EXPECT_EQ(P(big).state, State::error);
  EXPECT_EQ(P(big).status, 431);
  // Incomplete but under the limit: wait for more.
  EXPECT_EQ(P("GET http://a.com/ HTTP/1.1\r\nHost: a.com\r\n").state, State::incomplete);
  EXPECT_EQ(P("").state, State::incomplete);
  // A head ending exactly at the limit is accepted; one byte more is not.
  std::string head = "GET http://a.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n";
  EXPECT_EQ(P(head, head.size()).state, State::complete);
  EXPECT_EQ(P(head, head.size() - 1).status, 431);
  std::string many = "GET http://a.com/ HTTP/1.1\r\nHost: a.com\r\n";
  for (int i = 0; i < 100; ++i) many += "X-" + std::to_string(i) + ": v\r\n";
  many += "\r\n";
  EXPECT_EQ(P(many).status, 431);  // 101 fields
  EXPECT_EQ(P(many, 16384, 101).state, State::complete);
}

TEST(HttpForward, UpstreamHeadStripsHopByHop) {
  auto r =
      P("POST http://a.com:8080/x?y HTTP/1.1\r\nHost: a.com:8080\r\nConnection: keep-alive, X-Secret\r\n"
        "X-Secret: 1\r\nProxy-Connection: keep-alive\r\nKeep-Alive: 5\r\nProxy-Authorization: Basic eA==\r\n"
        "TE: trailers\r\nTrailer: X\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\nX-Keep: yes\r\n\r\n");
  ASSERT_EQ(r.state, State::complete) << r.reason;
  std::string h = upstream_head(r.request);
  EXPECT_EQ(h.rfind("POST /x?y HTTP/1.1\r\n", 0), 0u) << h;
  for (const char* gone : {"X-Secret", "Proxy-Connection", "Keep-Alive", "Proxy-Authorization",
                           "TE:", "Trailer", "Upgrade", "keep-alive", "Via"})
    EXPECT_EQ(h.find(gone), std::string::npos) << gone << " in " << h;
  EXPECT_NE(h.find("Host: a.com:8080\r\n"), std::string::npos);
  EXPECT_NE(h.find("X-Keep: yes\r\n"), std::string::npos);
  EXPECT_NE(h.find("Transfer-Encoding: chunked\r\n"), std::string::npos);
  EXPECT_NE(h.find("Connection: close\r\n\r\n"), std::string::npos);
  // HTTP/1.0 without Host: Host added from the target
  r = P("GET http://[fd00::1]:81/ HTTP/1.0\r\n\r\n");
  ASSERT_EQ(r.state, State::complete);
  EXPECT_NE(upstream_head(r.request).find("Host: [fd00::1]:81\r\n"), std::string::npos);
}

TEST(HttpForward, ErrorResponseIsOneLine) {
  auto s = error_response(403, "agentshim: denied\r\nInjected: yes");
  EXPECT_EQ(s.rfind("HTTP/1.1 403 Forbidden (agentshim: denied  Injected: yes)\r\n", 0), 0u) << s;
  EXPECT_EQ(s.find("\r\nInjected"), std::string::npos);
  EXPECT_NE(s.find("\r\nProxy-Status: agentshim; error=http_request_denied; details=\"agentshim: denied  "
                   "Injected: yes\"\r\n"),
            std::string::npos)
      << s;
  // Quotes, backslashes and non-ASCII bytes from a host name cannot break
  // the header or the status line; both stay bounded.
  auto q = error_response(502, std::string("agentshim: \"x\\y\"\xc3\xa9") + std::string(1000, 'a'));
  auto line = q.substr(0, q.find("\r\n"));
  EXPECT_LE(line.size(), 260u);
  EXPECT_EQ(line.find('\xc3'), std::string::npos);
  EXPECT_NE(q.find("error=destination_unavailable; details=\"agentshim: \\\"x\\\\y\\\"??aaa"),
            std::string::npos)
      << q;
  EXPECT_NE(s.find("Content-Length: 33\r\n"), std::string::npos) << s;
}

TEST(Chunked, ValidBodiesEndExactly) {
  ChunkedValidator v;
  std::string body = "5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
  EXPECT_EQ(v.feed(body + "NEXT"), static_cast<long long>(body.size()));
  EXPECT_TRUE(v.done());
  // Byte by byte gives the same result.
  ChunkedValidator w;
  long long total = 0;
  for (char c : body) total += w.feed(std::string(1, c));
  EXPECT_EQ(total, static_cast<long long>(body.size()));
  EXPECT_TRUE(w.done());
  ChunkedValidator z;
  EXPECT_EQ(z.feed("0\r\n\r\n"), 5);
  EXPECT_TRUE(z.done());
}

TEST(Chunked, Rejections) {
  for (const char* bad :
       {"x\r\n", "\r\n", "5\nhello\r\n", "5\r\nhello!\r\n", "5\r\nhello\n", "-1\r\n", "1234567890abcdef0\r\n",
        "0\r\n folded\r\n\r\n", "0\r\nX\n\r\n", "5 \r\nhello\r\n"}) {
    ChunkedValidator v;
    EXPECT_EQ(v.feed(bad), -1) << bad;
    EXPECT_FALSE(v.done());
    EXPECT_FALSE(v.error().empty());
  }
}

TEST(HttpParse, KeepAliveFlag) {
  EXPECT_TRUE(P("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n").request.keep_alive);
  EXPECT_FALSE(P("GET http://a/ HTTP/1.1\r\nHost: a\r\nConnection: foo, Close\r\n\r\n").request.keep_alive);
  EXPECT_FALSE(P("GET http://a/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").request.keep_alive);
  auto r = P("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n").request;
  EXPECT_EQ(upstream_head(r, true), "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
  EXPECT_EQ(upstream_head(r), "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
}

TEST(HttpResponse, Framing) {
  using RB = ResponseBody;
  auto R = [](const std::string& s, bool head = false) { return parse_response_head(s, head); };
  auto r =
      R("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\nKeep-Alive: t=5\r\n"
        "X-B: 2\r\n\r\nhello");
  ASSERT_EQ(r.state, ResponseHead::State::complete);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, RB::length);
  EXPECT_EQ(r.content_length, 5u);
  EXPECT_FALSE(r.close);
  EXPECT_EQ(r.head_len,
            std::string("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-A\r\nX-A: 1\r\n"
                        "Keep-Alive: t=5\r\nX-B: 2\r\n\r\n")
                .size());
  EXPECT_EQ(r.forward, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-B: 2\r\n");
  EXPECT_EQ(R("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n").body, RB::chunked);
  auto g = R("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
  EXPECT_EQ(g.body, RB::close);
  EXPECT_TRUE(g.close);
  EXPECT_EQ(R("HTTP/1.1 200 OK\r\n\r\n").body, RB::close);
  EXPECT_EQ(R("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).body, RB::none);
  EXPECT_EQ(R("HTTP/1.1 204 No Content\r\n\r\n").body, RB::none);
  EXPECT_EQ(R("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").body, RB::none);
  auto c = R("HTTP/1.1 100 Continue\r\n\r\n");
  EXPECT_TRUE(c.interim);
  EXPECT_EQ(c.body, RB::none);
  EXPECT_TRUE(R("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").close);
  EXPECT_FALSE(R("HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n").close);
  EXPECT_TRUE(R("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n").close);
  EXPECT_EQ(R("HTTP/1.1 200 OK\r\nContent-Le").state, ResponseHead::State::incomplete);
}

TEST(HttpResponse, AmbiguousOrMalformedIsAnError) {
  for (const char* s :
       {"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n", "HTTP/1.1 200 OK\r\nX: a\nY: b\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n", "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 099 X\r\n\r\n", "SSH-2.0-OpenSSH\r\n"}) {
    auto r = parse_response_head(s, false);
    EXPECT_EQ(r.state, ResponseHead::State::error) << s;
    EXPECT_FALSE(r.reason.empty());
  }
  EXPECT_EQ(parse_response_head(std::string(70000, 'H'), false).state, ResponseHead::State::error);
}
