#include "netpolicy/dns.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "common/error.h"

namespace agentshim::net {

using Clock = std::chrono::steady_clock;

namespace dns {

namespace {

uint16_t get16(const uint8_t* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}
void put16(std::string& s, uint16_t v) {
  s.push_back(static_cast<char>(v >> 8));
  s.push_back(static_cast<char>(v & 0xff));
}
void put32(std::string& s, uint32_t v) {
  put16(s, static_cast<uint16_t>(v >> 16));
  put16(s, static_cast<uint16_t>(v & 0xffff));
}

bool ldh(uint8_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

}  // namespace

std::string qtype_name(uint16_t t) {
  switch (t) {
    case 1:
      return "A";
    case 2:
      return "NS";
    case 5:
      return "CNAME";
    case 6:
      return "SOA";
    case 12:
      return "PTR";
    case 15:
      return "MX";
    case 16:
      return "TXT";
    case 28:
      return "AAAA";
    case 33:
      return "SRV";
    case 64:
      return "SVCB";
    case 65:
      return "HTTPS";
    case 255:
      return "ANY";
    default:
      return "TYPE" + std::to_string(t);
  }
}

std::string rcode_name(int rcode) {
  switch (rcode) {
    case kNoError:
      return "NOERROR";
    case kFormErr:
      return "FORMERR";
    case kServFail:
      return "SERVFAIL";
    case kNxDomain:
      return "NXDOMAIN";
    case kNotImp:
      return "NOTIMP";
    case kRefused:
      return "REFUSED";
    default:
      return "RCODE" + std::to_string(rcode);
  }
}

ParseResult parse_query(const uint8_t* d, std::size_t len) {
  ParseResult r;
  if (len < 12) {
    r.reason = "shorter than a DNS header";
    return r;  // ignore
  }
  Query& q = r.query;
  q.id = get16(d);
  q.flags = get16(d + 2);
  if (q.flags & 0x8000) {
    r.reason = "not a query (QR set)";
    return r;
  }
  auto err = [&](int rcode, const char* why) {
    r.state = ParseResult::State::error;
    r.rcode = rcode;
    r.reason = why;
    return r;
  };
  int opcode = (q.flags >> 11) & 0xf;
  if (opcode != 0) return err(kNotImp, "opcode other than QUERY");
  if (get16(d + 4) != 1) return err(kFormErr, "question count is not 1");
  if (get16(d + 6) != 0 || get16(d + 8) != 0) return err(kFormErr, "answer or authority records in a query");
  std::size_t pos = 12, wire = 0;
  std::string name, norm;
  bool all_ldh = true;
  for (;;) {
    if (pos >= len) return err(kFormErr, "truncated question name");
    uint8_t l = d[pos++];
    ++wire;
    if (l == 0) break;
    if (l & 0xc0) return err(kFormErr, "compressed or extended label in question");
    if (pos + l > len) return err(kFormErr, "truncated question name");
    wire += l;
    if (wire > 255) return err(kFormErr, "question name longer than 255 bytes");
    if (!name.empty()) {
      name += '.';
      norm += '.';
    }
    for (std::size_t i = 0; i < l; ++i) {
      uint8_t c = d[pos + i];
      if (ldh(c)) {
        name += static_cast<char>(c);
        norm += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
      } else {
        all_ldh = false;
        if (c == '.' || c == '\\') {
          name += '\\';
          name += static_cast<char>(c);
        } else {
          char buf[5];
          std::snprintf(buf, sizeof buf, "\\%03u", static_cast<unsigned>(c));
          name += buf;
        }
      }
    }
    pos += l;
  }
  if (pos + 4 > len) return err(kFormErr, "truncated question");
  q.qtype = get16(d + pos);
  q.qclass = get16(d + pos + 2);
  q.question_end = pos + 4;
  q.name = name.empty() ? "." : name;
  if (all_ldh && !norm.empty()) {
    auto n = normalize_hostname(norm);
    if (n) q.ldh_name = *n;
  }
  r.state = ParseResult::State::ok;
  return r;
}

std::string header_response(uint16_t id, uint16_t qflags, int rcode) {
  std::string s;
  put16(s, id);
  uint16_t flags = static_cast<uint16_t>(0x8000 | (qflags & 0x7800) | (qflags & 0x0100) | (rcode & 0xf));
  put16(s, flags);
  put16(s, 0);
  put16(s, 0);
  put16(s, 0);
  put16(s, 0);
  return s;
}

std::string build_response(const Query& q, const uint8_t* msg, int rcode, const std::vector<IpAddr>& answers,
                           bool ra) {
  std::vector<const IpAddr*> use;
  for (const auto& a : answers) {
    if ((q.qtype == kTypeA && a.family == AF_INET) || (q.qtype == kTypeAAAA && a.family == AF_INET6))
      use.push_back(&a);
    if (use.size() >= 16) break;
  }
  std::string s;
  put16(s, q.id);
  uint16_t flags = static_cast<uint16_t>(0x8000 | (q.flags & 0x0100) | (ra ? 0x0080 : 0) | (rcode & 0xf));
  put16(s, flags);
  put16(s, 1);
  put16(s, static_cast<uint16_t>(use.size()));
  put16(s, 0);
  put16(s, 0);
  s.append(reinterpret_cast<const char*>(msg) + 12, q.question_end - 12);
  for (const IpAddr* a : use) {
    put16(s, 0xc00c);  // pointer to the question name
    put16(s, q.qtype);
    put16(s, 1);  // IN
    put32(s, 60);
    int n = a->family == AF_INET ? 4 : 16;
    put16(s, static_cast<uint16_t>(n));
    s.append(reinterpret_cast<const char*>(a->bytes.data()), static_cast<std::size_t>(n));
  }
  return s;
}

}  // namespace dns

DnsStub::DnsStub(UniqueFd udp_fd, UniqueFd tcp_fd, std::string mode, Allowlist allow, EventSink sink,
                 Resolver resolver)
    : udp_(std::move(udp_fd)),
      tcp_(std::move(tcp_fd)),
      mode_(std::move(mode)),
      allow_(std::move(allow)),
      sink_(std::move(sink)),
      resolver_(resolver ? std::move(resolver) : Resolver(system_resolve)) {
  if (mode_ != "refuse" && mode_ != "allowlisted")
    throw Error("dns stub: unknown mode \"" + mode_ + "\" (expected refuse or allowlisted)");
  if (!udp_) throw Error("dns stub: no UDP socket");
  for (int fd : {udp_.get(), tcp_.get()}) {
    if (fd < 0) continue;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) throw_errno("dns stub: fcntl");
  }
}

DnsStub::~DnsStub() {
  stop();
}

void DnsStub::start() {
  loop_.start([this] { loop(); });
}

void DnsStub::stop() {
  if (!loop_.stop()) return;
  flush_suppressed(true);
  udp_.reset();
  tcp_.reset();
}

json DnsStub::totals() const {
  return {{"queries", queries_.load()},     {"refused", refused_.load()},
          {"answered", answered_.load()},   {"suppressed_events", suppressed_.load()},
          {"malformed", malformed_.load()}, {"ignored", ignored_.load()}};
}

void DnsStub::flush_suppressed(bool force) {
  uint64_t k = 0;
  {
    std::lock_guard lk(ev_mu_);
    auto now = Clock::now();
    if (!force && now - window_start_ < std::chrono::seconds(1)) return;
    k = window_suppressed_;
    window_suppressed_ = 0;
    if (!force) {
      window_start_ = now;
      window_events_ = 0;
    }
  }
  if (k && sink_) {
    try {
      sink_("net.dns", json{{"kind", "suppressed"}, {"count", k}});
    } catch (...) {
    }
  }
}

void DnsStub::event(json data) {
  flush_suppressed(false);
  {
    std::lock_guard lk(ev_mu_);
    if (window_events_ >= events_per_second_) {
      ++window_suppressed_;
      ++suppressed_;
      return;
    }
    ++window_events_;
  }
  if (!sink_) return;
  try {
    sink_("net.dns", std::move(data));
  } catch (...) {
  }
}

std::string DnsStub::handle(const uint8_t* msg, std::size_t len, const char* transport,
                            uint16_t client_port) {
  auto pr = dns::parse_query(msg, len);
  if (pr.state == dns::ParseResult::State::ignore) {
    ++ignored_;
    return "";
  }
  ++queries_;
  json ev = {{"kind", "query"},
             {"transport", transport},
             {"client_port", client_port},
             {"id", pr.query.id},
             {"name", ""},
             {"qtype", ""},
             {"rcode", ""},
             {"answers", 0},
             {"rule", ""},
             {"reason", pr.reason}};
  if (pr.state == dns::ParseResult::State::error) {
    ++malformed_;
    ev["rcode"] = dns::rcode_name(pr.rcode);
    event(std::move(ev));
    return dns::header_response(pr.query.id, pr.query.flags, pr.rcode);
  }
  const auto& q = pr.query;
  ev["name"] = q.name;
  ev["qtype"] = dns::qtype_name(q.qtype);
  int rcode = dns::kRefused;
  std::vector<IpAddr> answers;
  std::string reason = "refused: this sandbox answers no DNS queries", rule;
  if (mode_ == "allowlisted") {
    if (q.qclass != 1) {
      reason = "refused: class other than IN";
    } else if (q.ldh_name.empty()) {
      reason = "refused: invalid host name";
    } else if (auto d = allow_.check_dns_name(q.ldh_name); !d.allowed) {
      reason = "refused: " + d.reason;
    } else {
      rule = d.rule;
      rcode = dns::kNoError;
      reason = d.reason;
      if (q.qtype == dns::kTypeA || q.qtype == dns::kTypeAAAA) {
        std::vector<sockaddr_storage> addrs;
        try {
          addrs = resolver_(q.ldh_name);
        } catch (...) {
        }
        for (const auto& a : addrs) {
          auto ip = ip_from_sockaddr(a);
          // Only public addresses: special ones are reachable through the proxy only by IP rules.
          if (ip && classify(*ip) == "public" &&
              std::find(answers.begin(), answers.end(), *ip) == answers.end())
            answers.push_back(*ip);
        }
        if (addrs.empty()) {
          rcode = dns::kServFail;
          reason = "resolution failed";
        }
      }
    }
  }
  auto resp = dns::build_response(q, msg, rcode, answers, mode_ == "allowlisted");
  int nans = msg ? (static_cast<uint8_t>(resp[6]) << 8 | static_cast<uint8_t>(resp[7])) : 0;
  if (rcode == dns::kRefused)
    ++refused_;
  else
    ++answered_;
  ev["rcode"] = dns::rcode_name(rcode);
  ev["answers"] = nans;
  ev["rule"] = rule;
  ev["reason"] = reason;
  event(std::move(ev));
  return resp;
}

namespace {
uint16_t port_of(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_port);
  return 0;
}
}  // namespace

void DnsStub::loop() {
  struct TcpConn {
    UniqueFd fd;
    uint16_t port = 0;
    std::string buf;
    Clock::time_point deadline;
  };
  constexpr std::size_t kMaxTcp = 32;
  std::vector<TcpConn> conns;
  std::vector<uint8_t> buf(65536);
  for (;;) {
    std::vector<pollfd> p;
    p.push_back({loop_.stop_fd(), POLLIN, 0});
    p.push_back({udp_.get(), POLLIN, 0});
    p.push_back({tcp_ ? tcp_.get() : -1, static_cast<short>(conns.size() < kMaxTcp ? POLLIN : 0), 0});
    for (auto& c : conns) p.push_back({c.fd.get(), POLLIN, 0});
    int timeout = 1000;
    auto now = Clock::now();
    for (auto& c : conns)
      timeout = std::min<int>(
          timeout,
          static_cast<int>(std::max<long long>(
              0, std::chrono::duration_cast<std::chrono::milliseconds>(c.deadline - now).count() + 1)));
    int r = ::poll(p.data(), p.size(), timeout);
    if (r < 0 && errno != EINTR) return;
    if (p[0].revents) return;
    flush_suppressed(false);
    if (p[1].revents & POLLIN) {
      for (int k = 0; k < 64; ++k) {
        sockaddr_storage from{};
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(udp_.get(), buf.data(), buf.size(), MSG_DONTWAIT,
                             reinterpret_cast<sockaddr*>(&from), &fl);
        if (n < 0) break;
        auto resp = handle(buf.data(), static_cast<std::size_t>(n), "udp", port_of(from));
        if (!resp.empty())
          sendto(udp_.get(), resp.data(), resp.size(), MSG_DONTWAIT | MSG_NOSIGNAL,
                 reinterpret_cast<sockaddr*>(&from), fl);
      }
    }
    if (p[2].revents & POLLIN) {
      sockaddr_storage from{};
      socklen_t fl = sizeof from;
      int fd = accept4(tcp_.get(), reinterpret_cast<sockaddr*>(&from), &fl, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) conns.push_back({UniqueFd(fd), port_of(from), {}, Clock::now() + std::chrono::seconds(5)});
    }
    std::vector<int> done;
    for (std::size_t i = 0; i < conns.size() && 3 + i < p.size(); ++i) {
      auto& c = conns[i];
      if (p[3 + i].revents) {
        // At most one framed message (2 + 65535 bytes) is ever buffered:
        // 32 connections hold at most 2 MiB (docs/NETWORK.md).
        std::size_t room = 2 + 65535 - std::min<std::size_t>(c.buf.size(), 2 + 65535);
        ssize_t n = room ? ::recv(c.fd.get(), buf.data(), std::min(room, buf.size()), MSG_DONTWAIT) : 0;
        if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EINTR))) {
          c.fd.reset();
          continue;
        }
        if (n > 0) c.buf.append(reinterpret_cast<char*>(buf.data()), static_cast<std::size_t>(n));
        if (c.buf.size() >= 2) {
          std::size_t want = (static_cast<uint8_t>(c.buf[0]) << 8) | static_cast<uint8_t>(c.buf[1]);
          if (c.buf.size() >= want + 2) {
            auto resp = handle(reinterpret_cast<const uint8_t*>(c.buf.data() + 2), want, "tcp", c.port);
            if (!resp.empty()) {
              std::string out;
              out.push_back(static_cast<char>(resp.size() >> 8));
              out.push_back(static_cast<char>(resp.size() & 0xff));
              out += resp;
              ::send(c.fd.get(), out.data(), out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
            }
            c.fd.reset();  // one query per connection
          }
        }
      }
      if (c.fd && Clock::now() >= c.deadline) c.fd.reset();
    }
    conns.erase(std::remove_if(conns.begin(), conns.end(), [](const TcpConn& c) { return !c.fd; }),
                conns.end());
  }
}

}  // namespace agentshim::net
