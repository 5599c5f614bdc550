// The policy file: one JSON document deciding the sandbox and the record.
// This is the loader and validator; the sections it knows so far:
//
//   {"audit": {"dir": "/var/lib/agentshim",          // where records go (--audit-dir wins)
//              "signing_key": "/etc/agentshim/key.pem", // "" = host key, created on first use
//              "key_type": "ed25519" | "ecdsa-p256",     // for the host key
//              "strict": false,                          // true: no filesystem hash cache
//              "on_log_failure": "stop" | "continue",    // the event log cannot be written
//              "observe_exec": true}}                    // record every execve (seccomp notify)
//
// Unknown keys are errors (a typo must not silently weaken the policy).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace agentshim::policy {

using json = nlohmann::json;

// The built-in default, as a document (also in configs/policy/default.json).
json builtin();
// Load `path` ("" = /etc/agentshim/policy.json when it exists, else the
// built-in default), fill in defaults, validate. Errors name the file and key.
json load(const std::string& path);
// Validate a policy document (defaults filled in); throws agentshim::Error.
json validate(const json& p, const std::string& where);

}  // namespace agentshim::policy
