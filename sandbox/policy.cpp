#include "sandbox/policy.h"

#include <set>

#include "common/error.h"
#include "common/util.h"

namespace agentshim::policy {

json builtin() {
  return json{{"audit",
               {{"dir", "/var/lib/agentshim"},
                {"signing_key", ""},
                {"key_type", "ed25519"},
                {"strict", false},
                {"on_log_failure", "stop"},
                {"observe_exec", true}}}};
}

json validate(const json& p, const std::string& where) {
  if (!p.is_object()) throw Error(where + ": a policy must be a JSON object");
  json out = builtin();
  static const std::set<std::string> sections = {"audit"};
  for (const auto& [k, v] : p.items())
    if (!sections.count(k)) throw Error(where + ": unknown policy section \"" + k + "\"");
  if (p.contains("audit")) {
    const json& a = p["audit"];
    if (!a.is_object()) throw Error(where + ": audit must be an object");
    for (const auto& [k, v] : a.items()) {
      std::string key = where + ": audit." + k;
      if (k == "dir" || k == "signing_key") {
        if (!v.is_string()) throw Error(key + " must be a string");
        if (!v.get<std::string>().empty() && v.get<std::string>()[0] != '/') throw Error(key + " must be an absolute path");
      } else if (k == "key_type") {
        if (!v.is_string() || (v != "ed25519" && v != "ecdsa-p256"))
          throw Error(key + " must be \"ed25519\" or \"ecdsa-p256\"");
      } else if (k == "strict" || k == "observe_exec") {
        if (!v.is_boolean()) throw Error(key + " must be true or false");
      } else if (k == "on_log_failure") {
        if (!v.is_string() || (v != "stop" && v != "continue")) throw Error(key + " must be \"stop\" or \"continue\"");
      } else {
        throw Error(where + ": unknown key audit." + k);
      }
      out["audit"][k] = v;
    }
  }
  return out;
}

json load(const std::string& path) {
  std::string p = path;
  if (p.empty()) {
    if (!path_exists("/etc/agentshim/policy.json")) return builtin();
    p = "/etc/agentshim/policy.json";
  }
  std::string text = read_file_limited(p, 4 << 20);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error("policy " + p + ": not valid JSON (" + e.what() + ")");
  }
  return validate(j, "policy " + p);
}

}  // namespace agentshim::policy
