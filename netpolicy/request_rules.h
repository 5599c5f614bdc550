// Request-level rules: allow or deny a request by method and path prefix,
// per destination (policy network.request_rules, docs/NETWORK.md). Checked by
// the proxy on every request it reads (plain HTTP, each request of a
// keep-alive connection). A destination with rules admits only what a rule
// allows: the first rule whose methods and path prefix match decides, and a
// request no rule matches is denied. A CONNECT to such a destination is
// intercepted when the proxy has TLS (netpolicy/tls.h: its requests are
// checked one by one), denied otherwise (check() says so for "CONNECT").
// Destinations without rules are unaffected.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace agentshim::net {

struct RequestRule {
  std::string host;  // normalised like the allowlist: lowercase name or IP literal
  uint16_t port = 443;
  std::vector<std::string> methods;  // empty: any
  std::string path_prefix = "/";
  bool allow = true;
};

struct RequestDecision {
  bool applies = false;  // the destination has rules
  bool allowed = true;
  std::string rule;    // "network.request_rules[i]" or ""
  std::string reason;  // one line
};

class RequestRules {
 public:
  // [{"host", "port" (443), "methods", "path_prefix" ("/"), "action": "allow"|"deny"}];
  // throws agentshim::Error naming `where` and the key.
  static RequestRules parse(const nlohmann::json& rules, const std::string& where);
  nlohmann::json to_json() const;
  bool empty() const { return rules_.empty(); }
  bool covers(const std::string& host, uint16_t port) const;
  // method "CONNECT": denied wherever rules apply.
  RequestDecision check(const std::string& host, uint16_t port, const std::string& method,
                        const std::string& path) const;

 private:
  std::vector<RequestRule> rules_;
};

}  // namespace agentshim::net
