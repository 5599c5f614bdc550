// agentshim's default seccomp profile (configs/seccomp/default.json, built
// into the binary): deny by default with EPERM, Docker's allowlist minus what
// an agent has no need for, ENOSYS for newer syscalls so libc falls back,
// x86_64 only (the i386 and x32 ABIs hit libseccomp's bad-architecture action
// and the thread is killed). docs/POLICY.md explains every choice.
#pragma once

#include <nlohmann/json.hpp>

namespace agentshim::seccomp_profile {

// The built-in profile as an OCI linux.seccomp object.
const nlohmann::json& builtin();

}  // namespace agentshim::seccomp_profile
