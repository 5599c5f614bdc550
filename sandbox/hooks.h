// OCI lifecycle hooks: prestart, createRuntime, createContainer,
// startContainer, poststart, poststop. Each hook is exec'd (no shell) with
// the container state JSON on stdin; `timeout` (seconds) is enforced by
// killing the hook; stdout/stderr are captured for the error message.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "sandbox/oci.h"

namespace agentshim::hooks {

using json = nlohmann::json;

// Run every hook of `kind` in order; throws Error
// ("<kind> hook #<n> (<path>): exit status 1, stderr: ...") on the first
// failure or timeout.
void run(const oci::Spec& spec, const std::string& kind, const json& state);

// Run every hook of `kind`, each even after one failed (the spec's rule for
// poststop: "log a warning ... the remaining hooks and lifecycle continue");
// each failure is a warning on stderr and in --log. Returns how many failed.
std::size_t run_all(const oci::Spec& spec, const std::string& kind, const json& state);

}  // namespace agentshim::hooks
