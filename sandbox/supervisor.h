// The supervisor: the trusted process that stays outside the container for
// its whole life. Forked by `create`; its pid goes to --pid-file.
//
//   create (CLI) ── fork ──> supervisor ── fork ──> stage1 ── clone(CLONE_PARENT) ──> init
//
// stage1 joins/creates the namespaces (user first, so the others are owned
// by it) and clones the init as the supervisor's child, then exits. The init
// builds the rootfs, reports "ready" and blocks on exec.fifo until `start`.
// The supervisor runs the runtime-side hooks, reaps the init, forwards
// signals, serves the control socket, records events, and exits with the
// container's status (128+N for signal N).
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/fd.h"
#include "sandbox/oci.h"
#include "sandbox/process.h"

namespace agentshim::supervisor {

using json = nlohmann::json;

struct Setup {
  std::string id;
  std::string bundle;
  std::string rootfs;
  std::string state_dir;
  std::string run_id;
  std::string audit_dir;
  std::string created;  // RFC 3339, as in state
  json config;          // enforced config
  json caller_config;   // as given
  // Bind sources of the enforced config (resolved) -> the identity the
  // policy checked; the init verifies it mounts that same file.
  std::map<std::string, oci::FileId> checked_sources;
  // Namespace type -> identity the policy checked for a joined path.
  std::map<std::string, oci::FileId> checked_namespaces;
  json policy;          // policy::Result summary (decisions, extra seccomp, egress)
  json extra_seccomp;   // agentshim's profile, stacked on the config's
  bool observe_exec = false;
  // config linux.seccomp + extra_seccomp (+ the exec observer), compiled by
  // the supervisor before it forks stage1; the init only loads it.
  std::optional<process::PreparedSeccomp> prepared_seccomp;
  bool attach_rootfs = false;  // userns "auto": the supervisor attaches a copy of the rootfs for the init
  bool idmap_rootfs = false;   // ... idmapped (when its filesystem allows)
  bool systemd_cgroup = false;
  bool no_pivot = false;
  bool no_new_keyring = false;
  int preserve_fds = 0;
  bool init_unshare_cgroupns = false;  // set by stage1 for the init (see stage1_main)
  std::vector<std::string> extra_env;  // LISTEN_FDS etc.
  UniqueFd cli_sock;                   // to the CLI that forked us
  UniqueFd console_sock;               // -1 unless terminal
  UniqueFd exec_fifo;                  // O_PATH
  UniqueFd state_dirfd;                // O_PATH of state_dir: the init opens exec.fifo through it
};

// Never returns. Reports {"type":"created","init_pid":N,"init_start":S,
// "cgroup":{...}} or {"type":"error","msg":...} on cli_sock.
[[noreturn]] void main(Setup s);

// Connect to a container's supervisor control socket and send one event
// (best effort: a missing or dead supervisor is logged, not fatal).
// wait_reply=false: send and return without waiting (the supervisor may be
// frozen together with a paused container; it reads the message on thaw).
// reply_timeout_s: how long to wait for the answer (0: as long as the
// supervisor lives; `start` waits so for the "before" filesystem walk).
json notify(const std::string& state_dir, const json& msg, bool wait_reply = true, int reply_timeout_s = 5);

}  // namespace agentshim::supervisor
