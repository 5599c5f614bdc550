#include "sandbox/hooks.h"

#include <unistd.h>

#include <vector>

#include "common/error.h"
#include "common/log.h"
#include "common/spawn.h"
#include "common/util.h"

namespace agentshim::hooks {
namespace {

void run_one(const oci::Hook& h, const std::string& kind, std::size_t idx, const std::string& state) {
  SpawnSpec s;
  s.path = h.path;
  s.argv = h.args;
  if (s.argv.empty()) s.argv.push_back(s.path);
  // As runc: a hook without `env` gets the runtime's own environment; an
  // `env` (even empty) is the whole environment.
  if (h.env) s.env = *h.env;
  if (h.timeout) s.timeout_ms = *h.timeout * 1000;
  s.input = state;
  const std::string what = kind + " hook #" + std::to_string(idx) + " (" + s.path + ")";
  SpawnResult r = spawn_and_wait(s);
  if (r.timed_out) throw Error(what + ": timed out after " + std::to_string(s.timeout_ms / 1000) + "s");
  if (r.succeeded()) return;
  throw Error(what + ": " + r.describe() + ", stdout: " + trim(r.out) + ", stderr: " + trim(r.err));
}

}  // namespace

void run(const oci::Spec& spec, const std::string& kind, const json& state) {
  const auto& hooks = spec.hooks_of(kind);
  if (hooks.empty()) return;
  std::string s = state.dump();
  std::size_t i = 0;
  for (const auto& h : hooks) run_one(h, kind, i++, s);
}

std::size_t run_all(const oci::Spec& spec, const std::string& kind, const json& state) {
  const auto& hooks = spec.hooks_of(kind);
  if (hooks.empty()) return 0;
  std::string s = state.dump();
  std::size_t i = 0, failed = 0;
  for (const auto& h : hooks) {
    try {
      run_one(h, kind, i++, s);
    } catch (const std::exception& e) {
      // A warning where the operator sees it: stderr, and --log when given.
      failed++;
      const std::string msg =
          std::string(e.what()) + " (continuing: " + kind + " hook failures are warnings)";
      log::warn(msg);
      std::string line = "agentshim: warning: " + msg + "\n";
      ssize_t r = ::write(2, line.data(), line.size());
      (void)r;
    }
  }
  return failed;
}

}  // namespace agentshim::hooks
