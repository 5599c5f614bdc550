// stage1: forked by the supervisor, already in the container's v1 cgroups.
// It joins or creates the namespaces (the user namespace first, so the
// others are owned by it; the supervisor writes its id maps), clones the
// init as the supervisor's child (CLONE_PARENT) born in the container's v2
// cgroup, reports the init's pid and exits.
//
// `exec` takes the same path into a running container (as runc's
// setnsProcess and initProcess share one parent, youki's tenant builder its
// intermediate and init processes): its intermediate process enters the
// init's namespaces with enter_namespaces() and clones the exec'd process,
// which ends as the init does (init::become_process).
#pragma once

#include <functional>
#include <map>
#include <string>

#include "common/fd.h"
#include "sandbox/cgroups/cgroups.h"
#include "sandbox/setup.h"

namespace agentshim::stage1 {

// The namespaces a process is to be in: joined (a descriptor by type,
// "user", "network", ...) and created (CLONE_NEW* flags).
struct Namespaces {
  std::map<std::string, UniqueFd> join;
  int create = 0;
};

// Enter `ns` from the calling (single-threaded) process, in runc's order:
// the user namespace first (joined, or created; then `new_userns` runs, for
// the supervisor to write its id maps) and root in it, then ipc, uts,
// network, pid, time, mount, and the namespaces to create. The cgroup
// namespace is left to the child, once it is in the container's cgroup: a
// joined one through cg.cgroupns (the descriptor stays in `ns`), a new one
// is returned true (the child unshares it). Throws SysError naming the
// namespace.
bool enter_namespaces(Namespaces& ns, cgroups::CloneTarget& cg, const std::function<void()>& new_userns);

// Never returns (in stage1: _exit(0) once the init is reported, 1 on error;
// in the cloned child: init::run).
[[noreturn]] void run(setup::Setup& s, int sock, cgroups::CloneTarget& cg);

}  // namespace agentshim::stage1
