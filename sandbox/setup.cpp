#include "sandbox/setup.h"

#include "sandbox/oci.h"

namespace agentshim::setup {

json hook_state(const Setup& s, const std::string& status, pid_t pid) {
  json j = {
      {"ociVersion", oci::kOciVersion}, {"id", s.id}, {"status", status}, {"pid", pid}, {"bundle", s.bundle}};
  if (!s.spec.annotations.empty()) j["annotations"] = s.spec.annotations;
  return j;
}

}  // namespace agentshim::setup
