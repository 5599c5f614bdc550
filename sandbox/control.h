// The supervisor's control socket, <root>/<id>/supervisor.sock (0600): the
// CLI commands (start, exec, kill, pause, resume, update) tell a running
// container's supervisor what they did, for the record and the time limit.
// One newline-terminated JSON message per connection, one JSON reply.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "common/fd.h"

namespace agentshim::control {

using json = nlohmann::json;

// The listening socket (non-blocking, close-on-exec), replacing a stale one.
UniqueFd listen(const std::string& path);

// Connect to a container's supervisor control socket and send one event
// (best effort: a missing or dead supervisor is logged, not fatal).
// wait_reply=false: send and return without waiting (the supervisor may be
// frozen together with a paused container; it reads the message on thaw).
// reply_timeout_s: how long to wait for the answer (0: as long as the
// supervisor lives; `start` waits so for the "before" filesystem walk).
json notify(const std::string& state_dir, const json& msg, bool wait_reply = true, int reply_timeout_s = 5);

}  // namespace agentshim::control
