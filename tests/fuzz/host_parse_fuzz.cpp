// /proc/self/mountinfo and /proc/self/cgroup parsing (cgroup layout detection,
// common/mountinfo and the rootfs's parent mount lookup).
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/error.h"
#include "common/mountinfo.h"
#include "sandbox/cgroups/cgroups.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);
  auto cut = in.find('\x01');
  std::string a = in.substr(0, cut), b = cut == std::string::npos ? "" : in.substr(cut + 1);
  (void)agentshim::mount_point_of(agentshim::parse_mountinfo(a), b);
  try {
    auto h = agentshim::cgroups::Host::parse(a, b);
    (void)h.unified_mount();
  } catch (const agentshim::Error&) {
  }
  try {
    (void)agentshim::cgroups::expand_systemd_path(a, "id");
  } catch (const agentshim::Error&) {
  }
  return 0;
}
