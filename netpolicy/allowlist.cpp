#include "netpolicy/allowlist.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "common/util.h"

namespace agentshim::net {

namespace {

bool all_digits(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

// First `prefix` bits of a and b equal?
bool prefix_match(const uint8_t* a, const uint8_t* b, int prefix) {
  int full = prefix / 8, rest = prefix % 8;
  if (std::memcmp(a, b, full) != 0) return false;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[full] & mask) == (b[full] & mask);
}

bool in4(const IpAddr& ip, uint8_t a, uint8_t b, uint8_t c, uint8_t d, int prefix) {
  uint8_t net[4] = {a, b, c, d};
  return prefix_match(ip.bytes.data(), net, prefix);
}

bool in6(const IpAddr& ip, const char* net, int prefix) {
  uint8_t n[16];
  inet_pton(AF_INET6, net, n);
  return prefix_match(ip.bytes.data(), n, prefix);
}

IpAddr v4(const uint8_t* p) {
  IpAddr r;
  r.family = AF_INET;
  std::memcpy(r.bytes.data(), p, 4);
  return r;
}

// The IPv4 address an IPv6 address embeds, for the forms whose traffic ends
// up at that IPv4 address.
std::optional<IpAddr> embedded_v4(const IpAddr& ip) {
  if (ip.family != AF_INET6) return std::nullopt;
  const uint8_t* b = ip.bytes.data();
  if (in6(ip, "::ffff:0:0", 96)) return v4(b + 12);                 // v4-mapped
  if (in6(ip, "::", 96) && !in6(ip, "::", 127)) return v4(b + 12);  // v4-compatible (not :: / ::1)
  if (in6(ip, "64:ff9b::", 96)) return v4(b + 12);                  // NAT64 well-known prefix
  if (in6(ip, "2002::", 16)) return v4(b + 2);                      // 6to4
  return std::nullopt;
}

std::string classify4(const IpAddr& ip) {
  if (in4(ip, 255, 255, 255, 255, 32)) return "broadcast";
  if (in4(ip, 0, 0, 0, 0, 8)) return "unspecified";
  if (in4(ip, 127, 0, 0, 0, 8)) return "loopback";
  if (in4(ip, 10, 0, 0, 0, 8) || in4(ip, 172, 16, 0, 0, 12) || in4(ip, 192, 168, 0, 0, 16)) return "private";
  if (in4(ip, 100, 64, 0, 0, 10)) return "cgnat";
  if (in4(ip, 169, 254, 0, 0, 16)) return "link-local";
  if (in4(ip, 224, 0, 0, 0, 4)) return "multicast";
  if (in4(ip, 240, 0, 0, 0, 4) || in4(ip, 192, 0, 0, 0, 24)) return "reserved";
  return "public";
}

}  // namespace

std::optional<IpAddr> parse_ip(const std::string& s) {
  if (s.empty() || s.size() > 45) return std::nullopt;
  IpAddr r;
  if (s.find(':') == std::string::npos) {
    // inet_pton(AF_INET) accepts only full dotted-quad decimal; refuse leading zeros too
    // (other tools read them as octal).
    for (const auto& part : split(s, '.'))
      if (part.size() > 1 && part[0] == '0') return std::nullopt;
    if (inet_pton(AF_INET, s.c_str(), r.bytes.data()) != 1) return std::nullopt;
    r.family = AF_INET;
    return r;
  }
  if (s.find('%') != std::string::npos) return std::nullopt;
  if (inet_pton(AF_INET6, s.c_str(), r.bytes.data()) != 1) return std::nullopt;
  r.family = AF_INET6;
  return r;
}

std::optional<IpAddr> ip_from_sockaddr(const sockaddr_storage& ss) {
  IpAddr r;
  if (ss.ss_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    r.family = AF_INET;
    std::memcpy(r.bytes.data(), &sin->sin_addr, 4);
    return r;
  }
  if (ss.ss_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    r.family = AF_INET6;
    std::memcpy(r.bytes.data(), &sin6->sin6_addr, 16);
    return r;
  }
  return std::nullopt;
}

sockaddr_storage to_sockaddr(const IpAddr& ip, uint16_t port) {
  sockaddr_storage ss{};
  if (ip.family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    std::memcpy(&sin->sin_addr, ip.bytes.data(), 4);
  } else if (ip.family == AF_INET6) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    std::memcpy(&sin6->sin6_addr, ip.bytes.data(), 16);
  }
  return ss;
}

std::string ip_to_string(const IpAddr& ip) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ip.family != AF_INET && ip.family != AF_INET6) return "";
  if (!inet_ntop(ip.family, ip.bytes.data(), buf, sizeof buf)) return "";
  return buf;
}

std::string classify(const IpAddr& ip) {
  if (ip.family == AF_INET) return classify4(ip);
  if (ip.family != AF_INET6) return "unspecified";
  if (in6(ip, "::", 128)) return "unspecified";
  if (in6(ip, "::1", 128)) return "loopback";
  if (auto e = embedded_v4(ip)) return classify4(*e);
  if (in6(ip, "64:ff9b:1::", 48)) return "reserved";  // local-use NAT64
  if (in6(ip, "100::", 64)) return "reserved";        // discard-only
  if (in6(ip, "2001::", 32)) return "teredo";         // obfuscated embedded IPv4
  if (in6(ip, "fc00::", 7)) return "unique-local";
  if (in6(ip, "fe80::", 10)) return "link-local";
  if (in6(ip, "fec0::", 10)) return "site-local";
  if (in6(ip, "ff00::", 8)) return "multicast";
  if (in6(ip, "::", 8)) return "reserved";  // the rest of ::/8
  return "public";
}

std::string classify(const sockaddr_storage& ss) {
  auto ip = ip_from_sockaddr(ss);
  return ip ? classify(*ip) : "unspecified";
}

std::optional<std::string> normalize_hostname(const std::string& in) {
  std::string s = in;
  if (!s.empty() && s.back() == '.') s.pop_back();
  if (s.empty() || s.size() > 253) return std::nullopt;
  for (char& c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u >= 'A' && u <= 'Z')
      c = static_cast<char>(u - 'A' + 'a');
    else if (!((u >= 'a' && u <= 'z') || (u >= '0' && u <= '9') || u == '-' || u == '_' || u == '.'))
      return std::nullopt;
  }
  auto labels = split(s, '.');
  for (const auto& l : labels) {
    if (l.empty() || l.size() > 63) return std::nullopt;
    if (l.front() == '-' || l.back() == '-') return std::nullopt;
  }
  // A numeric last label means an IP-ish literal ("1.2.3", "1.2.3.04"), never a name.
  if (all_digits(labels.back())) return std::nullopt;
  return s;
}

Allowlist::Rule Allowlist::parse_rule(const std::string& text, const std::string& where) {
  auto bad = [&](const std::string& why) -> Error {
    return Error(where + ": invalid egress allow rule \"" + text + "\": " + why);
  };
  if (text.empty()) throw bad("empty");
  if (text.size() > 300) throw bad("too long");
  Rule r;
  r.text = text;
  std::string host = text, port;
  if (text[0] == '[') {
    auto close = text.find(']');
    if (close == std::string::npos) throw bad("missing ']'");
    host = text.substr(1, close - 1);
    std::string rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') throw bad("expected ':port' after ']'");
      port = rest.substr(1);
      if (port.empty()) throw bad("empty port");
    }
    if (host.find(':') == std::string::npos) throw bad("brackets are for IPv6 addresses");
  } else if (std::count(text.begin(), text.end(), ':') == 1) {
    auto c = text.find(':');
    host = text.substr(0, c);
    port = text.substr(c + 1);
    if (port.empty()) throw bad("empty port");
  }
  if (!port.empty()) {
    auto p = parse_uint(port);
    if (!all_digits(port) || !p || *p < 1 || *p > 65535) throw bad("port must be 1-65535");
    r.port = static_cast<uint16_t>(*p);
  }
  if (host.empty()) throw bad("empty host");
  // CIDR / literal
  std::string addr = host;
  int prefix = -1;
  if (auto slash = host.find('/'); slash != std::string::npos) {
    addr = host.substr(0, slash);
    std::string pl = host.substr(slash + 1);
    auto p = parse_uint(pl);
    if (!all_digits(pl) || !p) throw bad("bad prefix length");
    prefix = static_cast<int>(std::min<unsigned long long>(*p, 1000));
  }
  if (auto ip = parse_ip(addr)) {
    int max = ip->family == AF_INET ? 32 : 128;
    if (prefix < 0) prefix = max;
    if (prefix > max) throw bad("prefix length out of range");
    // host bits must be zero: "10.0.0.1/8" is almost certainly a typo
    IpAddr masked{};
    masked.family = ip->family;
    for (int i = 0; i < max / 8; ++i) {
      int bits = std::max(0, std::min(8, prefix - i * 8));
      masked.bytes[i] = static_cast<uint8_t>(ip->bytes[i] & (bits ? (0xff << (8 - bits)) : 0));
    }
    if (!(masked == *ip)) throw bad("address has bits set beyond the prefix length");
    r.kind = Kind::cidr;
    r.net = *ip;
    r.prefix = prefix;
    return r;
  }
  if (prefix >= 0) throw bad("prefix length on something that is not an IP address");
  if (host.find(':') != std::string::npos) throw bad("IPv6 address with a port needs brackets: [addr]:port");
  if (starts_with(host, "*.")) {
    auto n = normalize_hostname(host.substr(2));
    if (!n)
      throw bad("invalid wildcard suffix (letters, digits, '-', '_' and '.' only; IDNA must be encoded)");
    r.kind = Kind::wildcard;
    r.name = *n;
    return r;
  }
  if (host.find('*') != std::string::npos) throw bad("'*' is only allowed as a leading '*.' label");
  auto n = normalize_hostname(host);
  if (!n) throw bad("invalid host name (letters, digits, '-', '_' and '.' only; IDNA must be encoded)");
  r.kind = Kind::exact;
  r.name = *n;
  return r;
}

Allowlist Allowlist::parse(const std::vector<std::string>& rules, const std::string& where) {
  Allowlist a;
  for (const auto& t : rules) a.rules_.push_back(parse_rule(t, where));
  return a;
}

std::vector<std::string> Allowlist::rules() const {
  std::vector<std::string> out;
  for (const auto& r : rules_) out.push_back(r.text);
  return out;
}

const Allowlist::Rule* Allowlist::match_ip(const IpAddr& ip0, uint16_t port) const {
  // A v4-mapped address is the IPv4 address it maps; rules for it apply.
  IpAddr ip = ip0;
  if (ip.family == AF_INET6 && in6(ip, "::ffff:0:0", 96)) ip = v4(ip0.bytes.data() + 12);
  for (const auto& r : rules_) {
    if (r.kind != Kind::cidr || r.net.family != ip.family) continue;
    if (r.port != 0 && r.port != port) continue;
    if (prefix_match(ip.bytes.data(), r.net.bytes.data(), r.prefix)) return &r;
  }
  return nullptr;
}

Allowlist::Decision Allowlist::check_name(const std::string& host, uint16_t port) const {
  Decision d;
  if (auto ip = parse_ip(host)) {
    if (const Rule* r = match_ip(*ip, port)) return {true, r->text, "matched rule " + r->text};
    d.reason = "no allowlist rule matches (IP literals need an IP or CIDR rule)";
    return d;
  }
  auto n = normalize_hostname(host);
  if (!n) {
    d.reason = "invalid host name";
    return d;
  }
  for (const auto& r : rules_) {
    if (r.port != 0 && r.port != port) continue;
    if (r.kind == Kind::exact && r.name == *n) return {true, r.text, "matched rule " + r.text};
    if (r.kind == Kind::wildcard && n->size() > r.name.size() + 1 &&
        n->compare(n->size() - r.name.size(), r.name.size(), r.name) == 0 &&
        (*n)[n->size() - r.name.size() - 1] == '.')
      return {true, r.text, "matched rule " + r.text};
  }
  d.reason = "no allowlist rule matches";
  return d;
}

Allowlist::Decision Allowlist::check_address(const std::string& host, uint16_t port,
                                             const sockaddr_storage& addr) const {
  Decision d = check_name(host, port);
  if (!d.allowed) return d;
  auto ip = ip_from_sockaddr(addr);
  if (!ip) return {false, "", "resolved to a non-IP address"};
  std::string cls = classify(*ip);
  if (cls == "public") return d;
  if (const Rule* r = match_ip(*ip, port))
    return {true, r->text, "matched rule " + r->text + " (" + cls + ")"};
  return {false, d.rule,
          "address " + ip_to_string(*ip) + " is " + cls + "; only an IP or CIDR rule can allow it"};
}

Allowlist::Decision Allowlist::check_dns_name(const std::string& host) const {
  auto n = normalize_hostname(host);
  if (!n) return {false, "", "invalid host name"};
  for (const auto& r : rules_) {
    if (r.kind == Kind::exact && r.name == *n) return {true, r.text, "matched rule " + r.text};
    if (r.kind == Kind::wildcard && n->size() > r.name.size() + 1 &&
        n->compare(n->size() - r.name.size(), r.name.size(), r.name) == 0 &&
        (*n)[n->size() - r.name.size() - 1] == '.')
      return {true, r.text, "matched rule " + r.text};
  }
  return {false, "", "no allowlist rule matches"};
}

}  // namespace agentshim::net
