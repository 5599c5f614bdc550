// Egress allowlist: which host names / addresses / ports the proxy may reach,
// and the classification of special (non-public) address ranges.
//
// Rules, as written in the policy or the dev.agentshim.egress.allow annotation:
//   "api.example.com"        exact name, any port
//   "api.example.com:443"    exact name, one port
//   "*.pypi.org:443"         names strictly below pypi.org (not pypi.org itself)
//   "10.1.2.3:8080"          IPv4 literal
//   "[fd00::1]:443", "fd00::1"            IPv6 literal (brackets required with a port)
//   "192.0.2.0/24:443", "[fd00::/8]:443", "fd00::/8"   CIDR
// Names are compared case-insensitively, a trailing dot is ignored, IDNA is not
// decoded (non-ASCII is invalid).
//
// A name rule never admits a special address (loopback, private, link-local,
// ...); only an IP literal or CIDR rule that covers the address does.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace agentshim::net {

// An IPv4 or IPv6 address in a comparable form.
struct IpAddr {
  int family = 0;                   // AF_INET or AF_INET6
  std::array<uint8_t, 16> bytes{};  // first 4 used for AF_INET
  bool operator==(const IpAddr&) const = default;
};

// Strict literal parsing: dotted-quad IPv4 (no octal/short forms) or IPv6
// (without brackets, without zone id). nullopt when not a literal.
std::optional<IpAddr> parse_ip(const std::string& s);
std::optional<IpAddr> ip_from_sockaddr(const sockaddr_storage& ss);
sockaddr_storage to_sockaddr(const IpAddr& ip, uint16_t port);
// "1.2.3.4" / "fd00::1" (no brackets).
std::string ip_to_string(const IpAddr& ip);

// "public" or the special range's name: "loopback", "private", "cgnat",
// "link-local", "multicast", "unspecified", "broadcast", "reserved",
// "unique-local", "site-local", "teredo". IPv6 addresses embedding an IPv4
// one (v4-mapped, v4-compatible, NAT64 64:ff9b::/96, 6to4 2002::/16) are
// judged by the embedded IPv4 address.
std::string classify(const sockaddr_storage&);
std::string classify(const IpAddr&);

// Host name syntax (LDH labels, '_' tolerated, <= 253 chars, no empty label).
// Returns the normalized (lowercase, no trailing dot) name, or nullopt.
std::optional<std::string> normalize_hostname(const std::string& s);

class Allowlist {
 public:
  // Throws Error naming `where` and the offending rule.
  static Allowlist parse(const std::vector<std::string>& rules, const std::string& where);

  struct Decision {
    bool allowed = false;
    std::string rule;    // the rule text that decided ("" if none)
    std::string reason;  // one line
  };
  // Before resolution. `host` may be a name or an IP literal (IPv6 without brackets).
  Decision check_name(const std::string& host, uint16_t port) const;
  // After resolution: check_name, then special ranges refused unless an IP or
  // CIDR rule covers the address (and port).
  Decision check_address(const std::string& host, uint16_t port, const sockaddr_storage& addr) const;
  // For the DNS stub: is there a name rule admitting `host` on some port?
  Decision check_dns_name(const std::string& host) const;
  std::vector<std::string> rules() const;
  bool empty() const { return rules_.empty(); }

 private:
  enum class Kind { exact, wildcard, cidr };
  struct Rule {
    std::string text;
    Kind kind = Kind::exact;
    std::string name;  // exact name, or the suffix for a wildcard (without "*.")
    IpAddr net;        // cidr (a literal is a /32 or /128)
    int prefix = 0;
    uint16_t port = 0;  // 0 = any
  };
  static Rule parse_rule(const std::string& text, const std::string& where);
  const Rule* match_ip(const IpAddr& ip, uint16_t port) const;
  std::vector<Rule> rules_;
};

}  // namespace agentshim::net
