// /proc/<pid>/mountinfo, parsed once for everyone who reads it (the cgroup
// layout, the rootfs's parent mount). Fields with a space, tab, newline or
// backslash are \ooo-escaped by the kernel and unescaped here.
//
// libmount does the same, but linking it costs every agentshim invocation
// the loading of libmount, libblkid, libselinux and libpcre2 (about 2 ms
// measured, on calls that take 3 ms), for a 40-line format.
#pragma once

#include <string>
#include <vector>

namespace agentshim {

struct MountInfo {
  int id = 0, parent = 0;
  std::string root;         // the mount's root within its filesystem (field 4)
  std::string mount_point;  // field 5
  std::string mount_options;
  std::vector<std::string> optional;  // "shared:N", "master:N", ...
  std::string fstype, source, super_options;
};

// Lines that are not well-formed are skipped (the kernel writes them; a
// reader is not the place to fail).
std::vector<MountInfo> parse_mountinfo(const std::string& text);
// Reads and parses a mountinfo file; throws SysError when it cannot be read.
std::vector<MountInfo> read_mountinfo(const std::string& path = "/proc/self/mountinfo");
// The longest mount point that is `path` or one of its parents ("/" at worst).
// Whether a comma-separated option list (mount_options, super_options) holds
// option `o` exactly ("ro" is not "rootcontext=...").
bool has_option(const std::string& opts, const std::string& o);

std::string mount_point_of(const std::vector<MountInfo>& mounts, const std::string& path);

}  // namespace agentshim
