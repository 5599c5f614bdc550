// configs/ as shipped, embedded at build time (cmake/embed.cmake): the
// built-in defaults are these files, not copies of them.
#pragma once

#include <string_view>

namespace agentshim::embedded {

extern const std::string_view default_policy;   // configs/policy/default.json
extern const std::string_view default_seccomp;  // configs/seccomp/default.json

}  // namespace agentshim::embedded
