// Credential header rewriting over a request head from a hostile client:
// whatever the head holds, the secret goes only to the credential's
// destination, no placeholder survives in a forwarded head, and the head
// stays one well-formed head.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "netpolicy/credentials.h"
#include "netpolicy/http.h"

using namespace agentshim::net;

namespace {

std::vector<cred::Active> creds() {
  std::vector<cred::Active> v;
  auto mk = [&](const char* name, const char* host, const char* ph, cred::Application ap) {
    cred::Active a;
    a.def.name = name;
    a.def.placeholder_env = "X";
    cred::Destination d;
    d.host = host;
    d.port = 80;
    d.path_prefix = "/api/";
    a.def.destinations.push_back(d);
    a.def.apply = ap;
    a.placeholder = ph;
    a.secret = std::string("SECRET-") + name;
    v.push_back(std::move(a));
  };
  cred::Application bearer{cred::Application::Kind::header, "Authorization", "Bearer {}", ""};
  cred::Application query{cred::Application::Kind::query, "key", "{}", ""};
  cred::Application basic{cred::Application::Kind::basic, "Authorization", "{}", "u"};
  mk("a", "a.test", "PHA", bearer);
  mk("q", "q.test", "PHQ", query);
  mk("b", "b.test", "PHB", basic);
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto cs = creds();
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto r = http::parse_request_head(in, 4096, 32);
  if (r.state != http::ParseResult::State::complete) return 0;
  http::Request req = r.request;
  auto rw = cred::rewrite(req, cs, req.host, req.port);
  if (rw.deny) {
    if (rw.reason.empty() || rw.reason.find("SECRET") != std::string::npos) __builtin_trap();
    return 0;
  }
  std::string head = http::upstream_head(req, true);
  if (head.find("\r\n\r\n") + 4 != head.size()) __builtin_trap();
  for (const auto& a : cs) {
    bool applied = std::find(rw.applied.begin(), rw.applied.end(), a.def.name) != rw.applied.end();
    bool here = cred::matches(a.def, r.request.host, r.request.port, r.request.method, r.request.path);
    if (applied && !here) __builtin_trap();
    if (head.find(a.placeholder) != std::string::npos) __builtin_trap();
    // A secret the client did not itself send appears only where applied.
    if (!applied && in.find(a.secret) == std::string_view::npos && head.find(a.secret) != std::string::npos)
      __builtin_trap();
  }
  return 0;
}
