// The container init: cloned by stage1 as the supervisor's child, inside the
// container's namespaces and cgroups. It sets up the rootfs (asking the
// supervisor for the idmapped rootfs and the runtime hooks over the setup
// socket), drops privileges, loads seccomp, reports "ready", blocks on
// exec.fifo until `start`, and execs the container's process. Everything
// here runs agentshim's code; after the execve nothing in the container can
// reach the setup socket (close-on-exec).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "sandbox/oci.h"
#include "sandbox/process.h"
#include "sandbox/setup.h"

namespace agentshim::init {

// The end every container process shares, the init's and each `exec`'d
// one's (see stage1.h): rlimits, the executable looked up in the process's
// PATH, descriptors beyond stdio and `preserve_fds` marked close-on-exec,
// privileges dropped and seccomp loaded (process::finalize), the seccomp
// listeners handed over (`hand_over` gets them all, possibly none; they are
// closed afterwards). Returns the executable's path for process::exec.
std::string become_process(const oci::Process& p, const process::Finalize& fin, int preserve_fds,
                           const std::function<void(const std::vector<process::Listener>&)>& hand_over);

// Never returns: execs the container's process or exits 127 after sending
// an error message on sock.
[[noreturn]] void run(setup::Setup& s, int sock);

}  // namespace agentshim::init
