// The sentinel: the process `create` forks, whose pid goes to --pid-file.
// It forks the supervisor, joins the container's cgroup when the supervisor
// has made it (so a client reading stats and OOM events through that pid
// finds the container's), enters the container's namespaces once the init
// has made them (so nsenter, CNI and `podman top` through that pid find the
// container's; see peers.h), stays single-threaded and tiny, forwards every
// signal it gets to the supervisor, and exits with the container's status
// (128+N for signal N). The supervisor is its only child and dies with it
// (PDEATHSIG), taking the container with it.
#pragma once

#include <signal.h>

#include "sandbox/setup.h"

namespace agentshim::sentinel {

// The supervisor tells the sentinel the container's status with this
// signal (sigqueue, the status as its value) once the exit is recorded.
const int kReleaseSignal = SIGRTMAX;

// Never returns. The supervisor reports {"type":"created",...} or an error
// on s.cli_sock (see sync.h).
[[noreturn]] void run(setup::Setup s);

}  // namespace agentshim::sentinel
