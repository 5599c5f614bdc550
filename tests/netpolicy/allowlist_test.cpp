// Allowlist rules and special-range classification tables.
#include "netpolicy/allowlist.h"

#include <gtest/gtest.h>

#include "common/error.h"

using namespace agentshim;
using namespace agentshim::net;

namespace {

sockaddr_storage A(const std::string& ip) {
  auto p = parse_ip(ip);
  EXPECT_TRUE(p) << ip;
  return to_sockaddr(*p, 0);
}

}  // namespace

TEST(Classify, Table) {
  struct {
    const char* ip;
    const char* cls;
  } cases[] = {
      {"8.8.8.8", "public"},
      {"198.18.0.2", "public"},  // benchmarking range: used by tests as the "internet"
      {"192.0.2.1", "public"},
      {"127.0.0.1", "loopback"},
      {"127.255.255.254", "loopback"},
      {"10.0.0.1", "private"},
      {"172.16.0.1", "private"},
      {"172.31.255.255", "private"},
      {"172.32.0.1", "public"},
      {"192.168.1.1", "private"},
      {"100.64.0.1", "cgnat"},
      {"100.127.255.255", "cgnat"},
      {"100.128.0.1", "public"},
      {"169.254.169.254", "link-local"},
      {"224.0.0.1", "multicast"},
      {"239.255.255.250", "multicast"},
      {"0.0.0.0", "unspecified"},
      {"0.1.2.3", "unspecified"},
      {"255.255.255.255", "broadcast"},
      {"240.0.0.1", "reserved"},
      {"192.0.0.8", "reserved"},
      {"::", "unspecified"},
      {"::1", "loopback"},
      {"2606:4700::1111", "public"},
      {"fe80::1", "link-local"},
      {"febf::1", "link-local"},
      {"fc00::1", "unique-local"},
      {"fd12:3456::1", "unique-local"},
      {"ff02::1", "multicast"},
      {"fec0::1", "site-local"},
      {"::ffff:127.0.0.1", "loopback"},
      {"::ffff:169.254.169.254", "link-local"},
      {"::ffff:10.1.1.1", "private"},
      {"::ffff:8.8.8.8", "public"},
      {"::127.0.0.1", "loopback"},           // v4-compatible
      {"64:ff9b::a9fe:a9fe", "link-local"},  // NAT64 of 169.254.169.254
      {"64:ff9b::808:808", "public"},
      {"2002:7f00:1::1", "loopback"},  // 6to4 of 127.0.0.1
      {"2002:0808:0808::1", "public"},
      {"2001::1", "teredo"},
      {"64:ff9b:1::1", "reserved"},
  };
  for (const auto& c : cases) EXPECT_EQ(classify(A(c.ip)), c.cls) << c.ip;
}

TEST(ParseIp, Strict) {
  EXPECT_TRUE(parse_ip("1.2.3.4"));
  EXPECT_FALSE(parse_ip("1.2.3"));
  EXPECT_FALSE(parse_ip("01.2.3.4"));
  EXPECT_FALSE(parse_ip("1.2.3.4.5"));
  EXPECT_FALSE(parse_ip("0x7f.0.0.1"));
  EXPECT_FALSE(parse_ip("2130706433"));
  EXPECT_FALSE(parse_ip("fe80::1%eth0"));
  EXPECT_FALSE(parse_ip("[::1]"));
  EXPECT_TRUE(parse_ip("::ffff:1.2.3.4"));
}

TEST(Allowlist, InvalidRulesNameTheRuleAndWhere) {
  for (const char* bad : {"",
                          "*",
                          "*.",
                          "a.*.com",
                          "ex ample.com",
                          "exämple.com",
                          "example.com:0",
                          "example.com:70000",
                          "example.com:",
                          "example.com:http",

                          "[fd00::1",
                          "[fd00::1]443",
                          "[example.com]:1",
                          "10.0.0.0/33",
                          "10.0.0.1/8",
                          "10.0.0.0/x",
                          "example.com/8",
                          "1.2.3",
                          "-a.com",
                          "a..com",
                          "[fd00::1]:",
                          "a.com:443:1",
                          "::/200"}) {
    try {
      Allowlist::parse({"ok.com", bad}, "policy network.allow");
      ADD_FAILURE() << "accepted: " << bad;
    } catch (const Error& e) {
      std::string m = e.what();
      EXPECT_NE(m.find("policy network.allow"), std::string::npos) << m;
      EXPECT_NE(m.find(std::string("\"") + bad + "\""), std::string::npos) << m;
    }
  }
}

TEST(Allowlist, NamesPortsWildcards) {
  auto a = Allowlist::parse({"api.example.com", "Pypi.ORG:443", "*.pythonhosted.org:443", "x.test."}, "t");
  EXPECT_EQ(a.rules().size(), 4u);
  struct {
    const char* host;
    int port;
    bool ok;
    const char* rule;
  } cases[] = {
      {"api.example.com", 443, true, "api.example.com"},
      {"api.example.com", 8080, true, "api.example.com"},
      {"API.Example.COM.", 1, true, "api.example.com"},
      {"example.com", 443, false, ""},
      {"sub.api.example.com", 443, false, ""},
      {"pypi.org", 443, true, "Pypi.ORG:443"},
      {"pypi.org", 80, false, ""},
      {"files.pythonhosted.org", 443, true, "*.pythonhosted.org:443"},
      {"a.b.pythonhosted.org", 443, true, "*.pythonhosted.org:443"},
      {"pythonhosted.org", 443, false, ""},      // not the suffix itself
      {"evilpythonhosted.org", 443, false, ""},  // label boundary
      {"files.pythonhosted.org", 80, false, ""},
      {"x.test", 80, true, "x.test."},
      {"bad host", 80, false, ""},
      {"", 80, false, ""},
  };
  for (const auto& c : cases) {
    auto d = a.check_name(c.host, static_cast<uint16_t>(c.port));
    EXPECT_EQ(d.allowed, c.ok) << c.host << ":" << c.port;
    EXPECT_EQ(d.rule, c.rule) << c.host;
    EXPECT_FALSE(d.reason.empty());
    EXPECT_EQ(d.reason.find('\n'), std::string::npos);
  }
  EXPECT_EQ(a.check_name("example.com", 443).reason, "no allowlist rule matches");
}

TEST(Allowlist, IpRulesAndCidr) {
  auto a = Allowlist::parse(
      {"10.1.2.3:8080", "192.0.2.0/24:443", "[fd00::1]:443", "fd00:1::/32", "127.0.0.1"}, "t");
  EXPECT_TRUE(a.check_name("10.1.2.3", 8080).allowed);
  EXPECT_FALSE(a.check_name("10.1.2.3", 80).allowed);
  EXPECT_FALSE(a.check_name("10.1.2.4", 8080).allowed);
  EXPECT_TRUE(a.check_name("192.0.2.77", 443).allowed);
  EXPECT_FALSE(a.check_name("192.0.3.1", 443).allowed);
  EXPECT_TRUE(a.check_name("fd00::1", 443).allowed);
  EXPECT_FALSE(a.check_name("fd00::2", 443).allowed);
  EXPECT_TRUE(a.check_name("fd00:1:ffff::9", 1).allowed);
  EXPECT_TRUE(a.check_name("127.0.0.1", 9).allowed);
  // IP rules do not admit names
  EXPECT_FALSE(a.check_name("localhost", 9).allowed);
  // An IP rule covers the special address it names (check_address)
  EXPECT_TRUE(a.check_address("10.1.2.3", 8080, A("10.1.2.3")).allowed);
  EXPECT_TRUE(a.check_address("127.0.0.1", 80, A("::ffff:127.0.0.1")).allowed);  // mapped = the v4 address
}

TEST(Allowlist, NameRuleNeverUnlocksSpecialAddresses) {
  auto a = Allowlist::parse({"*.internal.test", "metadata.test", "ok.test"}, "t");
  for (const char* ip :
       {"127.0.0.1", "10.0.0.5", "172.20.1.1", "192.168.0.1", "100.64.1.1", "169.254.169.254", "224.0.0.1",
        "0.0.0.0", "255.255.255.255", "::1", "fe80::1", "fd00::1", "ff02::1", "::", "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe", "2002:a00:1::1", "::ffff:10.0.0.1"}) {
    auto d = a.check_address("metadata.test", 80, A(ip));
    EXPECT_FALSE(d.allowed) << ip;
    EXPECT_NE(d.reason.find("only an IP or CIDR rule"), std::string::npos) << d.reason;
    EXPECT_FALSE(a.check_address("x.internal.test", 443, A(ip)).allowed) << ip;
  }
  EXPECT_TRUE(a.check_address("ok.test", 443, A("198.18.0.2")).allowed);
  EXPECT_TRUE(a.check_address("ok.test", 443, A("2606:4700::1")).allowed);
  // Unlocked by an explicit IP/CIDR rule (port-aware)
  auto b = Allowlist::parse({"metadata.test", "169.254.169.254:80", "10.0.0.0/8"}, "t");
  auto d = b.check_address("metadata.test", 80, A("169.254.169.254"));
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.rule, "169.254.169.254:80");
  EXPECT_FALSE(b.check_address("metadata.test", 81, A("169.254.169.254")).allowed);
  EXPECT_TRUE(b.check_address("metadata.test", 5, A("10.9.9.9")).allowed);
  EXPECT_FALSE(b.check_address("metadata.test", 5, A("192.168.1.1")).allowed);
  // The name still has to be admitted first.
  EXPECT_FALSE(b.check_address("other.test", 80, A("169.254.169.254")).allowed);
}

TEST(Allowlist, DnsNameIgnoresPort) {
  auto a = Allowlist::parse({"api.example.com:443", "*.x.test", "10.0.0.1"}, "t");
  EXPECT_TRUE(a.check_dns_name("API.example.com.").allowed);
  EXPECT_TRUE(a.check_dns_name("a.x.test").allowed);
  EXPECT_FALSE(a.check_dns_name("x.test").allowed);
  EXPECT_FALSE(a.check_dns_name("10.0.0.1").allowed);
}
