// stage1: forked by the supervisor, already in the container's v1 cgroups.
// It joins or creates the namespaces (the user namespace first, so the
// others are owned by it; the supervisor writes its id maps), clones the
// init as the supervisor's child (CLONE_PARENT) born in the container's v2
// cgroup, reports the init's pid and exits.
#pragma once

#include "sandbox/cgroups/cgroups.h"
#include "sandbox/setup.h"

namespace agentshim::stage1 {

// Never returns (in stage1: _exit(0) once the init is reported, 1 on error;
// in the cloned child: init::run).
[[noreturn]] void run(setup::Setup& s, int sock, cgroups::CloneTarget& cg);

}  // namespace agentshim::stage1
