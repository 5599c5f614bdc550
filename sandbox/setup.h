// What `create` hands down the process chain it starts (see
// docs/ARCHITECTURE.md, "Process model", and sandbox/sync.h for the messages
// these processes exchange):
//
//   create (CLI) ── fork ──> sentinel ── fork ──> supervisor ── fork ──> stage1 ── clone(CLONE_PARENT) ──>
//   init
//
// Each stage takes the Setup by reference from its parent's memory (fork),
// uses what concerns it and closes the descriptors it does not keep.
#pragma once

#include <sys/types.h>

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/fd.h"
#include "sandbox/oci.h"
#include "sandbox/policy.h"
#include "sandbox/process.h"
#include "sandbox/rootfs.h"

namespace agentshim::setup {

using json = nlohmann::json;

struct Setup {
  std::string id;
  std::string bundle;
  std::string rootfs;
  std::string state_dir;
  std::string run_id;
  std::string audit_dir;
  std::string created;  // RFC 3339, as in state
  json config;          // enforced config, as a document (digests, state)
  oci::Spec spec;       // the same, parsed once: what every stage reads
  json caller_config;   // as given
  // Bind sources of the enforced config (resolved) -> the identity the
  // policy checked; the init verifies it mounts that same file.
  std::map<std::string, oci::FileId> checked_sources;
  // Namespace type -> identity the policy checked for a joined path.
  std::map<std::string, oci::FileId> checked_namespaces;
  policy::Enforced policy;  // what the policy decided for the supervisor (record, network, limits, exec)
  // The container's cgroup mounts, filled by the supervisor for the init.
  std::vector<rootfs::CgroupMount> cgroup_mounts;
  json extra_seccomp;  // agentshim's profile, stacked on the config's
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
  bool init_unshare_cgroupns = false;  // set by stage1 for the init (see stage1::run)
  std::vector<std::string> extra_env;  // LISTEN_FDS etc.
  UniqueFd cli_sock;                   // to the CLI that forked the sentinel
  UniqueFd console_sock;               // -1 unless terminal
  UniqueFd exec_fifo;                  // O_PATH
  UniqueFd state_dirfd;                // O_PATH of state_dir: the init opens exec.fifo through it
};

// The OCI state hooks and seccomp listeners receive.
json hook_state(const Setup& s, const std::string& status, pid_t pid);

}  // namespace agentshim::setup
