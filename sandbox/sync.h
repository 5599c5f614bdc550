// Messages between the CLI, the supervisor and the container init: one JSON
// object per SOCK_SEQPACKET datagram, with optional fds (SCM_RIGHTS).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "common/fd.h"

namespace agentshim::sync {

using json = nlohmann::json;

void send(int sock, const json& msg, const std::vector<int>& fds = {});
// nullopt on EOF (peer gone). Throws on malformed messages.
std::optional<json> recv(int sock, std::vector<UniqueFd>* fds = nullptr);
// recv and require {"type": expected}; an {"type":"error","msg":...} from the
// peer is rethrown as Error(msg); EOF throws Error(eof_msg).
json expect(int sock, const std::string& expected, const std::string& eof_msg,
            std::vector<UniqueFd>* fds = nullptr);

}  // namespace agentshim::sync
