// DNS stub: query parser, responses, and the stub on real loopback UDP/TCP sockets.
#include "netpolicy/dns.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/error.h"

using namespace agentshim;
using namespace agentshim::net;

namespace {

std::string query(uint16_t id, const std::vector<std::string>& labels, uint16_t qtype,
                  uint16_t flags = 0x0100, uint16_t qd = 1) {
  std::string s;
  auto p16 = [&](uint16_t v) {
    s.push_back(static_cast<char>(v >> 8));
    s.push_back(static_cast<char>(v & 0xff));
  };
  p16(id);
  p16(flags);
  p16(qd);
  p16(0);
  p16(0);
  p16(0);
  for (const auto& l : labels) {
    s.push_back(static_cast<char>(l.size()));
    s += l;
  }
  s.push_back(0);
  p16(qtype);
  p16(1);
  return s;
}

dns::ParseResult parse(const std::string& s) {
  return dns::parse_query(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

int rcode(const std::string& resp) {
  return resp.size() >= 4 ? resp[3] & 0xf : -1;
}
int ancount(const std::string& resp) {
  return resp.size() >= 8 ? (static_cast<uint8_t>(resp[6]) << 8) | static_cast<uint8_t>(resp[7]) : -1;
}

struct Events {
  std::mutex mu;
  std::vector<json> list;
  EventSink sink() {
    return [this](const std::string& t, json d) {
      EXPECT_EQ(t, "net.dns");
      std::lock_guard lk(mu);
      list.push_back(std::move(d));
    };
  }
};

}  // namespace

TEST(DnsParse, Query) {
  auto r = parse(query(0x1234, {"Api", "Example", "com"}, 28));
  ASSERT_EQ(r.state, dns::ParseResult::State::ok) << r.reason;
  EXPECT_EQ(r.query.id, 0x1234);
  EXPECT_EQ(r.query.name, "Api.Example.com");
  EXPECT_EQ(r.query.ldh_name, "api.example.com");
  EXPECT_EQ(r.query.qtype, 28);
  EXPECT_EQ(dns::qtype_name(r.query.qtype), "AAAA");
  EXPECT_EQ(dns::qtype_name(99), "TYPE99");
}

TEST(DnsParse, ExfiltrationShapedNamesAreEscaped) {
  auto r = parse(query(1, {std::string("a.b\\c\x01\xff", 7), "x"}, 16));
  ASSERT_EQ(r.state, dns::ParseResult::State::ok);
  EXPECT_EQ(r.query.name, "a\\.b\\\\c\\001\\255.x");
  EXPECT_EQ(r.query.ldh_name, "");
  EXPECT_EQ(parse(query(1, {}, 1)).query.name, ".");
}

TEST(DnsParse, Malformed) {
  using S = dns::ParseResult::State;
  EXPECT_EQ(parse("short").state, S::ignore);
  EXPECT_EQ(parse(query(1, {"a"}, 1, 0x8100)).state, S::ignore);  // a response
  auto r = parse(query(1, {"a"}, 1, 0x2800));                     // opcode 5 (UPDATE)
  EXPECT_EQ(r.state, S::error);
  EXPECT_EQ(r.rcode, dns::kNotImp);
  EXPECT_EQ(parse(query(1, {"a"}, 1, 0x0100, 2)).rcode, dns::kFormErr);
  std::string q = query(1, {"abc"}, 1);
  EXPECT_EQ(parse(q.substr(0, q.size() - 1)).rcode, dns::kFormErr);  // truncated
  EXPECT_EQ(parse(q.substr(0, 14)).rcode, dns::kFormErr);
  std::string ptr = q;
  ptr[12] = static_cast<char>(0xc0);  // compression pointer in the question
  EXPECT_EQ(parse(ptr).rcode, dns::kFormErr);
  std::vector<std::string> labels(5, std::string(63, 'a'));
  EXPECT_EQ(parse(query(1, labels, 1)).rcode, dns::kFormErr);  // > 255 bytes
  std::string an = q;
  an[7] = 1;  // ancount 1
  EXPECT_EQ(parse(an).rcode, dns::kFormErr);
}

TEST(DnsStubHandle, RefuseModeRefusesAndRecords) {
  Events ev;
  auto sp = make_socketpair(SOCK_DGRAM);
  DnsStub stub(std::move(sp.first), {}, "refuse", Allowlist::parse({"api.example.com"}, "t"), ev.sink());
  std::string q = query(7, {"api", "example", "com"}, 1);
  auto resp = stub.handle(reinterpret_cast<const uint8_t*>(q.data()), q.size(), "udp", 5353);
  ASSERT_GE(resp.size(), 12u);
  EXPECT_EQ(resp.substr(0, 2), q.substr(0, 2));  // id
  EXPECT_TRUE(resp[2] & 0x80);                   // QR
  EXPECT_EQ(rcode(resp), dns::kRefused);
  EXPECT_EQ(ancount(resp), 0);
  EXPECT_EQ(resp.substr(12), q.substr(12));  // question echoed
  ASSERT_EQ(ev.list.size(), 1u);
  auto& e = ev.list[0];
  EXPECT_EQ(e["kind"], "query");
  EXPECT_EQ(e["name"], "api.example.com");
  EXPECT_EQ(e["qtype"], "A");
  EXPECT_EQ(e["rcode"], "REFUSED");
  EXPECT_EQ(e["client_port"], 5353);
  EXPECT_EQ(e["transport"], "udp");
  for (auto& [k, v] : e.items()) EXPECT_TRUE(v.is_string() || v.is_number_integer()) << k;
  EXPECT_EQ(stub.totals()["refused"], 1);
  EXPECT_THROW(DnsStub(make_socketpair(SOCK_DGRAM).first, {}, "forward", Allowlist{}, ev.sink()), Error);
}

TEST(DnsStubHandle, AllowlistedModeAnswersOnlyAdmittedNamesWithPublicAddresses) {
  Events ev;
  auto sp = make_socketpair(SOCK_DGRAM);
  int calls = 0;
  Resolver r = [&](const std::string& h) {
    ++calls;
    std::vector<sockaddr_storage> out;
    if (h == "api.example.com")
      for (const char* ip : {"198.18.0.2", "10.0.0.1", "2606:4700::1", "198.18.0.3"})
        out.push_back(to_sockaddr(*parse_ip(ip), 0));
    return out;
  };
  DnsStub stub(std::move(sp.first), {}, "allowlisted",
               Allowlist::parse({"api.example.com:443", "*.gone.test"}, "t"), ev.sink(), r);
  auto ask = [&](const std::string& q) {
    return stub.handle(reinterpret_cast<const uint8_t*>(q.data()), q.size(), "udp", 1);
  };
  auto a = ask(query(1, {"API", "example", "com"}, dns::kTypeA));
  EXPECT_EQ(rcode(a), dns::kNoError);
  ASSERT_EQ(ancount(a), 2);  // the private address is not handed out
  std::size_t qlen = query(1, {"API", "example", "com"}, 1).size();
  EXPECT_EQ(a.size(), qlen + 2 * 16);
  EXPECT_EQ(a.substr(qlen + 12, 4), std::string("\xc6\x12\x00\x02", 4));
  auto aaaa = ask(query(2, {"api", "example", "com"}, dns::kTypeAAAA));
  EXPECT_EQ(ancount(aaaa), 1);
  auto txt = ask(query(3, {"api", "example", "com"}, 16));
  EXPECT_EQ(rcode(txt), dns::kNoError);
  EXPECT_EQ(ancount(txt), 0);
  EXPECT_EQ(rcode(ask(query(4, {"evil", "com"}, 1))), dns::kRefused);
  EXPECT_EQ(rcode(ask(query(5, {"x", "gone", "test"}, 1))), dns::kServFail);
  EXPECT_EQ(calls, 3);  // refused names never resolved; TXT not resolved
  EXPECT_EQ(ev.list[0]["rule"], "api.example.com:443");
  EXPECT_EQ(ev.list[0]["answers"], 2);
  EXPECT_EQ(stub.totals()["answered"], 4);
  EXPECT_EQ(stub.totals()["refused"], 1);
}

TEST(DnsStubHandle, EventsAreRateLimitedWithASummary) {
  Events ev;
  auto sp = make_socketpair(SOCK_DGRAM);
  DnsStub stub(std::move(sp.first), {}, "refuse", Allowlist{}, ev.sink());
  stub.set_events_per_second(10);
  std::string q = query(1, {"x", "test"}, 1);
  for (int i = 0; i < 100; ++i)
    EXPECT_EQ(rcode(stub.handle(reinterpret_cast<const uint8_t*>(q.data()), q.size(), "udp", 1)),
              dns::kRefused);
  EXPECT_EQ(ev.list.size(), 10u);
  EXPECT_EQ(stub.totals()["queries"], 100);
  EXPECT_EQ(stub.totals()["suppressed_events"], 90);
  stub.stop();
  ASSERT_EQ(ev.list.size(), 11u);
  EXPECT_EQ(ev.list.back()["kind"], "suppressed");
  EXPECT_EQ(ev.list.back()["count"], 90);
}

TEST(DnsStubLoop, UdpAndTcpOnLoopback) {
  UniqueFd u(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  UniqueFd t(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(u.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t l = sizeof a;
  getsockname(u.get(), reinterpret_cast<sockaddr*>(&a), &l);
  sockaddr_in ta{};  // TCP on a port of its own (the UDP port may be taken over TCP)
  ta.sin_family = AF_INET;
  ta.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(t.get(), reinterpret_cast<sockaddr*>(&ta), sizeof ta), 0);
  l = sizeof ta;
  getsockname(t.get(), reinterpret_cast<sockaddr*>(&ta), &l);
  ASSERT_EQ(::listen(t.get(), 16), 0);
  Events ev;
  DnsStub stub(std::move(u), std::move(t), "refuse", Allowlist{}, ev.sink());
  stub.start();
  // UDP
  UniqueFd c(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  timeval tv{5, 0};
  setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ASSERT_EQ(::connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  std::string q = query(0xbeef, {"exfil-c2VjcmV0", "attacker", "test"}, 16);
  ASSERT_EQ(::send(c.get(), q.data(), q.size(), 0), static_cast<ssize_t>(q.size()));
  ASSERT_EQ(::send(c.get(), "junk", 4, 0), 4);  // ignored, no answer, loop keeps going
  char buf[1024];
  ssize_t n = ::recv(c.get(), buf, sizeof buf, 0);
  ASSERT_GT(n, 12);
  std::string resp(buf, static_cast<std::size_t>(n));
  EXPECT_EQ(rcode(resp), dns::kRefused);
  EXPECT_EQ(resp.substr(0, 2), "\xbe\xef");
  // TCP (length-prefixed), sent in two pieces
  UniqueFd tc(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  setsockopt(tc.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ASSERT_EQ(::connect(tc.get(), reinterpret_cast<sockaddr*>(&ta), sizeof ta), 0);
  std::string tq = query(9, {"x", "test"}, 1);
  std::string framed = std::string(1, '\0') + std::string(1, static_cast<char>(tq.size())) + tq;
  ASSERT_EQ(::send(tc.get(), framed.data(), 5, 0), 5);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_EQ(::send(tc.get(), framed.data() + 5, framed.size() - 5, 0),
            static_cast<ssize_t>(framed.size() - 5));
  std::string tr;
  while ((n = ::recv(tc.get(), buf, sizeof buf, 0)) > 0) tr.append(buf, static_cast<std::size_t>(n));
  ASSERT_GE(tr.size(), 14u);
  EXPECT_EQ(static_cast<std::size_t>((static_cast<uint8_t>(tr[0]) << 8) | static_cast<uint8_t>(tr[1])),
            tr.size() - 2);
  EXPECT_EQ(rcode(tr.substr(2)), dns::kRefused);
  auto t0 = std::chrono::steady_clock::now();
  stub.stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
  ASSERT_EQ(ev.list.size(), 2u);
  EXPECT_EQ(ev.list[0]["name"], "exfil-c2VjcmV0.attacker.test");
  EXPECT_EQ(ev.list[0]["qtype"], "TXT");
  EXPECT_EQ(ev.list[1]["transport"], "tcp");
  EXPECT_EQ(stub.totals()["ignored"], 1);
}
