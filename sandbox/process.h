// Turning the calling process into the container process described by an
// OCI `process` object: rlimits, user and groups, capabilities (all five
// sets, libcap), no_new_privs, seccomp, cwd, environment, and execve.
// Shared by the container init and by `exec`.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sandbox/oci.h"
#include "sandbox/seccomp.h"

namespace agentshim::process {

using json = nlohmann::json;

void apply_rlimits(const oci::Process& proc);

// The capabilities `proc` asks for (any of the five sets) that this host
// cannot grant: not in the runtime's own bounding set (`grantable`, by
// default PR_CAPBSET_READ), or above the kernel's cap_last_cap. Each as
// "CAP_X (bounding, effective)". The OCI spec: a value that cannot be mapped
// to the kernel MUST be an error, and runc refuses to create; so create and
// exec call check_capabilities() (after the policy, so a capability the
// policy drops stays a decision, not an error).
std::vector<std::string> ungrantable_capabilities(const oci::Process& proc,
                                                  const std::function<bool(int)>& grantable = {});
// Throws Error naming every ungrantable capability.
void check_capabilities(const oci::Process& proc);
// Set oom_score_adj (a lowered value needs CAP_SYS_RESOURCE; best effort
// when it is missing from the bounding set, with a warning).
void set_oom_score_adj(pid_t pid, int value);

// Look up args[0] in the container's PATH (from the process env), as seen
// from the current root. Throws Error('exec: "x": executable file not found in $PATH').
std::string resolve_executable(const oci::Process& proc);

// Everything from "drop privileges" to the point just before execve, in
// runc's order: bounding set, keepcaps + setgroups/setresgid/setresuid,
// capabilities, ambient set, no_new_privs, seccomp filters (stacked in the
// given order; loaded before dropping caps when no_new_privs is off, as runc
// does), umask, cwd. Returns the fds of seccomp user-notification listeners.
//
// The seccomp filters are compiled by prepare_seccomp() into raw BPF
// programs (PreparedSeccomp: plain data, no libseccomp state) and loaded by
// install_seccomp() with seccomp(2) calls only. The container's init gets
// them prepared by the supervisor before it forks (compiling takes a few
// milliseconds); finalize() prepares them itself when the Finalize carries
// none (exec).
struct PreparedSeccomp {
  struct Filter {
    seccomp::Program program;
    std::string kind;  // its listener (program.listener()): "exec" or "config", as in Listener
  };
  std::vector<Filter> filters;  // in load order
  // Always, loaded before `filters`: seccomp::terminal_guard() (TIOCSTI, TIOCLINUX).
  seccomp::Program terminal_guard;
  bool enosys_stub = false;     // then load the ENOSYS stub (seccomp.h) ...
  int max_nr = -1;              // ... for syscalls above this number
};
struct Finalize {
  std::vector<json> seccomp;       // OCI linux.seccomp objects to load, in order
  bool observe_exec = false;       // also load the execve-observing notify filter
  // Already compiled from `seccomp` and `observe_exec` (then those two are
  // not looked at); not owned.
  const PreparedSeccomp* prepared = nullptr;
};
struct Listener {
  std::string kind;  // "exec": the exec observer's; "config": the config's own (listenerPath)
  int fd;
};
std::vector<Listener> finalize(const oci::Process& proc, const Finalize& f);

// Compile f.seccomp (and the exec observer with f.observe_exec). Throws
// Error naming the profile's field for a bad profile.
PreparedSeccomp prepare_seccomp(const Finalize& f);
// Load the prepared filters on the calling thread (needs no_new_privs or
// CAP_SYS_ADMIN), appending the listeners' fds.
void install_seccomp(const PreparedSeccomp& p, std::vector<Listener>& listeners);

// Make the calling process the leader of a new session and process group
// (setsid), as runc does for the init and every exec'd process, terminal or
// not: the container must never share the caller's session (its controlling
// terminal: /dev/tty, TIOCSTI) or process group (kill(0, sig) would reach the
// caller's other processes). A no-op for a process that already leads its
// session (setup_console made it one to take the pty as its terminal).
// finalize() calls it first. Throws SysError.
void new_session();

// execve with the process env; never returns.
[[noreturn]] void exec(const std::string& path, const oci::Process& proc);

// Environment vector from process.env, with HOME filled in like runc.
std::vector<std::string> environment(const oci::Process& proc);

}  // namespace agentshim::process
