// The supervisor: the trusted process that stays outside the container (its
// namespaces and its cgroup) for its whole life. Forked by the sentinel (see
// sentinel.h), whose pid goes to --pid-file.
//
//   create (CLI) ── fork ──> sentinel ── fork ──> supervisor ── fork ──> stage1 ── clone(CLONE_PARENT) ──>
//   init
//
// It makes the container's cgroup, forks stage1 and answers the setup
// messages of stage1 and the init (sync.h): id maps, the idmapped rootfs,
// the runtime-side hooks. Then it reaps the init, forwards signals, serves
// the control socket (control.h), records events, enforces the time limit,
// and releases the sentinel with the container's status.
#pragma once

#include <sys/types.h>

#include "common/fd.h"
#include "sandbox/setup.h"

namespace agentshim::supervisor {

// Never returns. sentinel_sock: to the sentinel, which joins the container's
// cgroup when told.
[[noreturn]] void run(setup::Setup& s, pid_t sentinel, UniqueFd sentinel_sock);

}  // namespace agentshim::supervisor
