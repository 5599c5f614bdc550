// The state store under --root: one directory per container
// (<root>/<id>/state.json, exec.fifo, supervisor.sock, lock), and the status
// computed from the live processes the way runc does.
#pragma once

#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/fd.h"
#include "sandbox/oci.h"

namespace agentshim::state {

using json = nlohmann::json;

struct ContainerState {
  std::string id;
  std::string bundle;
  std::string rootfs;
  std::string created;                // RFC 3339
  std::string owner;                  // "" as runc for root
  pid_t init_pid = 0;                 // host pid of the container init
  unsigned long long init_start = 0;  // /proc/<pid>/stat starttime, guards pid reuse
  // The sentinel: the pid --pid-file names, parent of the supervisor (see
  // sentinel.h). Stored as "sentinel_pid"/"sentinel_start"; states written
  // before the rename said "supervisor_pid"/"supervisor_start".
  pid_t sentinel_pid = 0;
  unsigned long long sentinel_start = 0;
  std::string run_id;  // audit record of this run
  std::string audit_dir;
  json config;  // the enforced config, as a document (digests, `state`)
  // The same, parsed once on load (oci::parse_spec): what the commands read.
  // A stored config that no longer parses leaves `spec` empty and says why
  // in `spec_error` (`delete` and `state` still work; `exec` refuses).
  oci::Spec spec;
  std::string spec_error;
  json cgroup;  // cgroups::Manager::save()
  json annotations = json::object();

  json to_json() const;
  static ContainerState from_json(const json& j);
};

// Container directory helpers.
std::string container_dir(const std::string& root, const std::string& id);
std::string exec_fifo_path(const std::string& root, const std::string& id);
std::string control_socket_path(const std::string& root, const std::string& id);
// The same, from the container's directory (container_dir(root, id)).
std::string control_socket_in(const std::string& state_dir);

// A unix socket path holds at most 107 bytes: a --root too long for
// control_socket_path(root, <64-hex id>) is reached through a short alias
// (/run/agentshim.r/<8 hex>, a symlink to its realpath). Returns the root to use.
std::string usable_root(const std::string& root);

// An exclusive flock on <root>/<id>/lock, serialising CLI invocations that
// change the same container. Released on destruction.
class Lock {
 public:
  Lock(const std::string& root, const std::string& id);
  ~Lock() = default;
  // A forked child shares the lock's open file description; it must drop
  // its copy or the lock outlives the parent.
  void drop_in_child() { fd_.reset(); }

 private:
  UniqueFd fd_;
};

// Throws Error("container does not exist: <id>") when missing.
ContainerState load(const std::string& root, const std::string& id);
void save(const std::string& root, const ContainerState& st);
std::vector<std::string> list_ids(const std::string& root);

// /proc/<pid>/stat field 22, or 0 when the process is gone.
unsigned long long process_start_time(pid_t pid);
// True when pid is alive (not a zombie) and its start time matches.
bool process_alive(pid_t pid, unsigned long long start);

// created | running | paused | stopped, from the live processes.
std::string status(const std::string& root, const ContainerState& st);

// The `state`/`list --format json` object, as runc prints it.
json oci_state(const ContainerState& st, const std::string& status);

}  // namespace agentshim::state
