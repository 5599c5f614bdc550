// Other agentshim containers on this host, found by the pid clients know
// them by.
//
// Every client derives a container's namespaces from the pid in
// --pid-file: containerd's CRI joins /proc/<sandbox pid>/ns/{net,ipc,uts,pid}
// for a pod's containers, Docker's `--network/--ipc/--pid container:X` and
// Podman's pods do the same. That pid is agentshim's sentinel (sentinel.h),
// which enters the container's user, mount, network, ipc, uts and cgroup
// namespaces before `create` returns, so /proc/<pid>/ns/<type> is the
// container's for those types. Its pid namespace cannot be entered (a
// process never changes its own), so a path naming a sentinel is resolved
// here to the same namespace seen through the container's init.
//
// A host-wide index, /run/agentshim.pids/<sentinel pid> -> the container's
// state directory, written by `create` and removed by `delete`, names the
// sentinels; an entry counts only when the state there says so and both
// processes are the ones the state recorded (start times), so a stale entry
// or a recycled pid never redirects anything.
#pragma once

#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/network.h"

namespace agentshim::peers {

// /run/agentshim.pids, or $AGENTSHIM_PIDS_DIR (tests).
std::string index_dir();

// Records that `sentinel` is the pid-file pid of container `id` under `root`.
void record(pid_t sentinel, const std::string& root, const std::string& id);
// Drops the entry for `sentinel` if it names container `id` under `root`.
void forget(pid_t sentinel, const std::string& root, const std::string& id);

struct Peer {
  std::string id;
  std::string root;
  pid_t sentinel = 0;
  pid_t init_pid = 0;
  std::string network_mode;  // the network mode its policy decided ("internal", "passthrough", ...)
  // What its own proxy serves (create saves it as policy.json
  // "served_network"; empty when its network is not its own): the
  // credentials it holds (placeholders, never a secret) and the bundle file holding its run's CA ("" without
  // TLS interception). A container joining its network gets these placeholders and trusts that CA
  // (docs/CREDENTIALS.md "Pods").
  std::vector<network::Credential> credentials;
  std::string run_ca_file;
};

// The running agentshim container whose sentinel is `pid`, if any.
std::optional<Peer> by_sentinel(pid_t pid);

// Every running agentshim container in the index (entries that do not
// check out, as by_sentinel, are left out).
std::vector<Peer> all();

// A namespace path as clients write it, resolved.
struct NamespaceTarget {
  Peer peer;
  std::string path;  // /proc/<init pid>/ns/<proc name>: the same namespace through the container's init
};
// For a path /proc/<pid>/ns/<proc_name> whose pid is a running agentshim
// container's sentinel: that container and the path of its namespace
// through its init. nullopt for every other path (a path that merely looks
// like one is checked like any other by the caller). For the types the
// sentinel has entered, the namespace must already be the init's (a
// sentinel that did not enter is not trusted to name the container).
std::optional<NamespaceTarget> resolve_namespace_path(const std::string& path, const std::string& proc_name);

}  // namespace agentshim::peers
