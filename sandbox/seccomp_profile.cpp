// The default profile is configs/seccomp/default.json, embedded at build
// time (sandbox/embedded.h).
#include "sandbox/seccomp_profile.h"

#include "sandbox/embedded.h"

namespace agentshim::seccomp_profile {

const nlohmann::json& builtin() {
  static const nlohmann::json profile = nlohmann::json::parse(embedded::default_seccomp);
  return profile;
}

}  // namespace agentshim::seccomp_profile
