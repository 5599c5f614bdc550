// config.json from a caller: validation, mount options, seccomp compilation.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/error.h"
#include "sandbox/oci.h"
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
  try {
    (void)agentshim::oci::parse_spec(j);
  } catch (const agentshim::Error&) {
  }
  try {
    // The one reading of mounts the policy and the mounting code share;
    // every mount also on its own (validate_config stops at the first error).
    (void)agentshim::oci::mounts(j);
  } catch (const std::exception&) {
  }
  if (j.is_object() && j.contains("mounts") && j["mounts"].is_array())
    for (std::size_t i = 0; i < j["mounts"].size(); i++) {
      try {
        auto m = agentshim::oci::parse_mount(j["mounts"][i], i);
        (void)agentshim::oci::clean_path(m.destination);
      } catch (const std::exception&) {
      }
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
