// The sentinel: the process `create` forks, whose pid goes to --pid-file.
// It forks the supervisor, joins the container's cgroup when the supervisor
// has made it (so a client reading stats and OOM events through that pid
// finds the container's), enters the container's namespaces once the init
// has made them (so nsenter, CNI and `podman top` through that pid find the
// container's; see peers.h), stays single-threaded and tiny, forwards every
// signal it gets to the supervisor, and exits with the container's status
// (128+N for signal N). The supervisor is its only child; when the sentinel
// dies first it kills the container (PDEATHSIG kSentinelLostSignal) and
// finishes the record.
#pragma once

#include <signal.h>

#include "sandbox/setup.h"

namespace agentshim::sentinel {

// The supervisor tells the sentinel the container's status with this
// signal (sigqueue, the status as its value) once the exit is recorded.
const int kReleaseSignal = SIGRTMAX;
// The supervisor's parent-death signal: when the sentinel dies before it
// released it (killed by a client, or by the container's OOM killer: the
// sentinel is in the container's memory cgroup), the supervisor kills the
// container, as the sentinel's death always meant, and still finishes the
// record, saying so ("run.sentinel_lost"). During setup, before the
// supervisor handles it, its default action ends the supervisor.
const int kSentinelLostSignal = SIGRTMAX - 1;

// Never returns. The supervisor reports {"type":"created",...} or an error
// on s.cli_sock (see sync.h).
[[noreturn]] void run(setup::Setup s);

}  // namespace agentshim::sentinel
