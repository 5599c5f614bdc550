// The runc command contract as a library: every operation the CLI offers,
// on containers kept in the state store under --root. The CLI (shim/) only
// parses flags and prints; all behaviour lives here.
#pragma once

#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/network.h"
namespace agentshim::oci {
struct Resources;
}

namespace agentshim::container {

using json = nlohmann::json;

struct Global {
  std::string root = "/run/agentshim";
  std::string audit_dir;    // empty: policy's audit.dir or /var/lib/agentshim
  std::string policy_path;  // empty: /etc/agentshim/policy.json or built-in
  std::string signing_key;  // --signing-key: overrides the policy's audit.signing_key
  std::string key_type;     // --key-type: overrides the policy's audit.key_type
  bool systemd_cgroup = false;
  bool debug = false;
  std::string log_file;
  bool log_json = false;
};

struct CreateOptions {
  std::string id;
  std::string bundle;  // default: cwd
  std::string pid_file;
  std::string console_socket;
  bool no_pivot = false;
  bool no_new_keyring = false;
  int preserve_fds = 0;
  // Internal: an already-connected console socket (run -t without
  // --console-socket relays the pty itself).
  int console_fd = -1;
};

// create: returns once the container is created (init waiting on exec.fifo).
void create(const Global& g, const CreateOptions& o);
// start: releases the exec fifo, runs poststart hooks.
void start(const Global& g, const std::string& id);
// run: create + start; unless detach, waits and returns the container's exit
// status (128+N for signal N).
int run(const Global& g, const CreateOptions& o, bool detach, bool keep);

json state(const Global& g, const std::string& id);
std::vector<json> list(const Global& g);
void kill(const Global& g, const std::string& id, int sig, bool all);
void remove(const Global& g, const std::string& id, bool force);
void pause(const Global& g, const std::string& id);
void resume(const Global& g, const std::string& id);
// runc's update: the fields `resources` gives (the rest unset) are applied
// to the container's cgroup and merged into its saved config.
void update(const Global& g, const std::string& id, const oci::Resources& resources);
std::vector<pid_t> pids(const Global& g, const std::string& id);
json stats(const Global& g, const std::string& id);
// events: prints JSON lines to stdout until the container stops (or once
// with stats_once).
void events(const Global& g, const std::string& id, bool stats_once, int interval_ms);

struct ExecOptions {
  std::string id;
  json process;  // OCI process object (from --process or built from args)
  bool detach = false;
  std::string pid_file;
  std::string console_socket;
  int preserve_fds = 0;
};
// Builds an OCI process for `exec ARGS`: the container's process with args,
// cwd, env, user and tty replaced as given.
json exec_process_from_args(const Global& g, const std::string& id, const std::vector<std::string>& args,
                            const std::string& cwd, const std::vector<std::string>& env,
                            const std::string& user, bool tty,
                            const std::vector<std::string>& additional_gids,
                            const std::vector<std::string>& caps, bool no_new_privs);
int exec(const Global& g, const ExecOptions& o);

// With the policy's mediated network (mode "internal" or "confined"):
// writes the shared /run/agentshim.dns/resolv.conf (the DNS stub), adds or
// replaces the read-only bind of it at /etc/resolv.conf in cfg's mounts,
// creates that mountpoint beneath ROOTFS when missing (the init may be
// unable to: a user namespace's root cannot write a root-owned /etc), and
// records the decision. NET is the policy's decided network ({"mode",
// "namespace"}): the stub serves a namespace of the container's own, a
// confined caller's (a pod's) and another agentshim container's (a pod's
// sandbox). No-op otherwise, or when ROOTFS has no real /etc directory.
// Used by create(); public for tests.
void point_resolver_at_stub(json& cfg, const network::Options& net, json& decisions,
                            const std::string& rootfs);

// `spec`: the hardened default config.json.
json default_spec(bool rootless);
// `features`.
json features();

}  // namespace agentshim::container
