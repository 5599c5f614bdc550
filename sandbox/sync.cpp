#include "sandbox/sync.h"

#include "common/error.h"

namespace agentshim::sync {

void send(int sock, const json& msg, const std::vector<int>& fds) {
  send_fds(sock, msg.dump(), fds.data(), static_cast<int>(fds.size()));
}

std::optional<json> recv(int sock, std::vector<UniqueFd>* fds) {
  std::vector<UniqueFd> got;
  std::string payload = recv_fds(sock, got, 65536);
  if (payload.empty()) return std::nullopt;
  if (fds) *fds = std::move(got);
  try {
    return json::parse(payload);
  } catch (const json::exception& e) {
    throw Error(std::string("malformed sync message: ") + e.what());
  }
}

json expect(int sock, const std::string& expected, const std::string& eof_msg, std::vector<UniqueFd>* fds) {
  auto m = recv(sock, fds);
  if (!m) throw Error(eof_msg);
  std::string type = m->value("type", "");
  if (type == "error") throw Error(m->value("msg", "unknown error"));
  if (type != expected) throw Error("unexpected sync message \"" + type + "\" (expected \"" + expected + "\")");
  return *m;
}

}  // namespace agentshim::sync
