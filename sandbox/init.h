// The container init: cloned by stage1 as the supervisor's child, inside the
// container's namespaces and cgroups. It sets up the rootfs (asking the
// supervisor for the idmapped rootfs and the runtime hooks over the setup
// socket), drops privileges, loads seccomp, reports "ready", blocks on
// exec.fifo until `start`, and execs the container's process. Everything
// here runs agentshim's code; after the execve nothing in the container can
// reach the setup socket (close-on-exec).
#pragma once

#include "sandbox/setup.h"

namespace agentshim::init {

// Never returns: execs the container's process or exits 127 after sending
// an error message on sock.
[[noreturn]] void run(setup::Setup& s, int sock);

}  // namespace agentshim::init
