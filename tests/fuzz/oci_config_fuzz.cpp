// config.json from a caller: validation, mount options, seccomp compilation,
// the policy engine on what validation accepted.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "common/error.h"
#include "sandbox/oci.h"
#include "sandbox/policy.h"
#include "sandbox/seccomp.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using json = nlohmann::json;
  json j = json::parse(std::string(reinterpret_cast<const char*>(data), size), nullptr, false);
  if (j.is_discarded()) return 0;
  try {
    agentshim::oci::validate_config(j);
  } catch (const std::exception&) {
  }
  // The typed reading: anything it cannot read is an Error naming the field
  // (any other exception escapes and fails the fuzzer).
  bool parsed = false;
  try {
    (void)agentshim::oci::parse_spec(j);
    parsed = true;
  } catch (const agentshim::Error&) {
  }
  // The policy engine decides on what parse_spec accepted: it throws nothing
  // but Error, and the enforced config it writes parses again (a throw from
  // that second parse escapes: the engine wrote a config create would refuse).
  if (parsed) {
    static const nlohmann::json pol = agentshim::policy::builtin();
    std::optional<agentshim::policy::Result> r;
    try {
      agentshim::policy::ApplyContext ctx;
      ctx.peer_namespace = nullptr;  // no /proc walk for fuzzed paths
      r = agentshim::policy::evaluate(pol, j, ctx);
    } catch (const agentshim::Error&) {
    }
    if (r) (void)agentshim::oci::parse_spec(r->config);
  }
  // Every mount also on its own (parse_spec stops at the first error).
  if (j.is_object() && j.contains("mounts") && j["mounts"].is_array())
    for (std::size_t i = 0; i < j["mounts"].size(); i++) {
      try {
        auto m = agentshim::oci::parse_mount(j["mounts"][i], i);
        (void)agentshim::oci::clean_path(m.destination);
      } catch (const std::exception&) {
      }
    }
  // linux.resources on its own (also an `update --resources` file): what it
  // accepts is written back unchanged by to_json.
  if (j.is_object()) {
    std::optional<agentshim::oci::Resources> res;
    try {
      res = agentshim::oci::parse_resources(
          j.contains("linux") && j["linux"].is_object() && j["linux"].contains("resources")
              ? j["linux"]["resources"]
              : j,
          "linux.resources");
    } catch (const agentshim::Error&) {
    }
    if (res && agentshim::oci::parse_resources(agentshim::oci::to_json(*res), "linux.resources") != *res)
      __builtin_trap();
  }
  try {
    if (j.is_object() && j.contains("linux") && j["linux"].is_object() && j["linux"].contains("seccomp"))
      (void)agentshim::seccomp::compile(j["linux"]["seccomp"], true);
  } catch (const std::exception&) {
  }
  try {
    if (j.is_array()) {
      std::vector<std::string> opts;
      for (const auto& o : j)
        if (o.is_string()) opts.push_back(o);
      (void)agentshim::oci::parse_mount_options(opts);
    }
  } catch (const std::exception&) {
  }
  return 0;
}
