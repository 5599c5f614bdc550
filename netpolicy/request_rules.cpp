#include "netpolicy/request_rules.h"

#include <algorithm>

#include "common/error.h"
#include "netpolicy/credentials.h"
#include "netpolicy/http.h"

namespace agentshim::net {

using json = nlohmann::json;

RequestRules RequestRules::parse(const json& rules, const std::string& where) {
  if (!rules.is_array()) throw Error(where + ": network.request_rules: must be an array of rules");
  RequestRules out;
  for (std::size_t i = 0; i < rules.size(); ++i) {
    const std::string key = "network.request_rules[" + std::to_string(i) + "]";
    const json& r = rules[i];
    if (!r.is_object() || !r.contains("action"))
      throw Error(where + ": " + key + ": must be an object with \"host\" and \"action\"");
    json dest = r;
    const json action = dest["action"];
    dest.erase("action");
    if (action != "allow" && action != "deny")
      throw Error(where + ": " + key + ".action: must be \"allow\" or \"deny\"");
    // The destination's keys and checks are a credential destination's.
    cred::Credential c;
    try {
      c = cred::parse("r",
                      {{"source", {{"env", "X"}}},
                       {"placeholder_env", "X"},
                       {"destinations", json::array({dest})},
                       {"apply", {{"header", "X"}}}},
                      "");
    } catch (const Error& e) {
      std::string m = e.what();
      auto at = m.find("credentials.r.destinations[0]");
      throw Error(where + ": " + key + (at == std::string::npos ? ": " + m : m.substr(at + 29)));
    }
    const auto& d = c.destinations[0];
    out.rules_.push_back({d.host, d.port, d.methods, d.path_prefix, action == "allow"});
  }
  return out;
}

json RequestRules::to_json() const {
  json a = json::array();
  for (const auto& r : rules_) {
    json o = {{"host", r.host},
              {"port", r.port},
              {"path_prefix", r.path_prefix},
              {"action", r.allow ? "allow" : "deny"}};
    if (!r.methods.empty()) o["methods"] = r.methods;
    a.push_back(std::move(o));
  }
  return a;
}

bool RequestRules::covers(const std::string& host, uint16_t port) const {
  return std::any_of(rules_.begin(), rules_.end(),
                     [&](const RequestRule& r) { return r.host == host && r.port == port; });
}

RequestDecision RequestRules::check(const std::string& host, uint16_t port, const std::string& method,
                                    const std::string& path) const {
  RequestDecision d;
  if (!covers(host, port)) return d;
  d.applies = true;
  if (method == "CONNECT") {
    d.allowed = false;
    d.reason = "request rules apply to this destination and the proxy cannot read a tunnel's requests";
    return d;
  }
  if (!cred::plain_path(path)) {
    // "/v1/../admin" would pass a prefix check and reach /admin.
    d.allowed = false;
    d.reason = "the path has dot segments or encoded separators and request rules apply to this destination";
    return d;
  }
  for (std::size_t i = 0; i < rules_.size(); ++i) {
    const auto& r = rules_[i];
    if (r.host != host || r.port != port) continue;
    if (!r.methods.empty() && std::find(r.methods.begin(), r.methods.end(), method) == r.methods.end())
      continue;
    if (path.compare(0, r.path_prefix.size(), r.path_prefix) != 0) continue;
    d.allowed = r.allow;
    d.rule = "network.request_rules[" + std::to_string(i) + "]";
    d.reason = (r.allow ? "allowed by " : "denied by ") + d.rule;
    return d;
  }
  d.allowed = false;
  d.reason = "no request rule for this destination allows " + method + " on this path";
  return d;
}

}  // namespace agentshim::net
