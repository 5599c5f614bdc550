// configs/ as shipped, embedded at build time (cmake/embed.cmake): the
// built-in defaults are these files, not copies of them; and the compiled
// BPF objects (cmake/embed_bin.cmake, sandbox/bpf/).
#pragma once

#include <cstddef>
#include <string_view>

namespace agentshim::embedded {

extern const std::string_view default_policy;   // configs/policy/default.json
extern const std::string_view default_seccomp;  // configs/seccomp/default.json

extern const unsigned char exec_argv_bpf_obj[];  // sandbox/bpf/exec_argv.bpf.c
extern const std::size_t exec_argv_bpf_obj_size;
extern const unsigned char dirent_bpf_obj[];  // sandbox/bpf/dirent.bpf.c
extern const std::size_t dirent_bpf_obj_size;

}  // namespace agentshim::embedded
