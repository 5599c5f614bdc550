// Requests read inside an intercepted TLS tunnel (netpolicy/proxy_tls.cpp):
// origin-form heads for the tunnel's host, then the credential rewrite and
// the upstream head. Whatever the client sends: a complete head always has
// the tunnel's host and port and an origin-form path; the secret goes only
// where its credential may go (here: only a.test:443 under /v1/), no
// placeholder survives, and the forwarded head is one well-formed head. The
// first byte picks the tunnel host (the credential's, or another), the rest
// is also read as a TLS server name (the SNI check's normalisation).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "netpolicy/credentials.h"
#include "netpolicy/http.h"
#include "netpolicy/tls.h"

using namespace agentshim::net;

namespace {

std::vector<cred::Active> creds() {
  cred::Active a;
  a.def.name = "a";
  a.def.placeholder_env = "X";
  cred::Destination d;
  d.host = "a.test";
  d.port = 443;
  d.path_prefix = "/v1/";
  a.def.destinations.push_back(d);
  a.def.apply = {cred::Application::Kind::header, "Authorization", "Bearer {}", ""};
  a.placeholder = "agentshim-cred-PHA";
  a.secret = "SECRET-a";
  return {a};
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto cs = creds();
  if (size < 1) return 0;
  const http::Origin origin{(data[0] & 1) ? "a.test" : "b.test", 443};
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  std::string name(in.substr(0, 300));
  std::string sn = tls::normalise_server_name(name.c_str());
  if (!sn.empty() && (sn.size() > 253 || sn.find_first_of("\r\n ") != std::string::npos)) __builtin_trap();
  auto r = http::parse_request_head(in, 4096, 32, &origin);
  if (r.state != http::ParseResult::State::complete) return 0;
  http::Request req = r.request;
  if (req.host != origin.host || req.port != 443 || req.is_connect || req.path.empty() || req.path[0] != '/')
    __builtin_trap();
  auto rw = cred::rewrite(req, cs, req.host, req.port);
  if (rw.deny) {
    if (rw.reason.find("SECRET") != std::string::npos) __builtin_trap();
    return 0;
  }
  std::string head = http::upstream_head(req, true);
  if (head.find("\r\n\r\n") + 4 != head.size()) __builtin_trap();
  if (head.find("agentshim-cred-PHA") != std::string::npos) __builtin_trap();
  bool applied = std::find(rw.applied.begin(), rw.applied.end(), "a") != rw.applied.end();
  // The secret's bytes leave only where the credential was applied, beyond
  // any copy the request itself carried (the container may send any bytes).
  auto count = [](std::string_view hay, std::string_view needle) {
    std::size_t n = 0;
    for (auto at = hay.find(needle); at != std::string_view::npos; at = hay.find(needle, at + 1)) ++n;
    return n;
  };
  if (!applied && count(head, "SECRET-a") > count(in, "SECRET-a")) __builtin_trap();
  if (applied && !cred::matches(cs[0].def, req.host, req.port, r.request.method, r.request.path))
    __builtin_trap();
  return 0;
}
