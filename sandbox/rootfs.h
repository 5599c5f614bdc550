// The container's filesystem view, built inside the init's new mount
// namespace: root propagation, the rootfs bind, every config mount (resolved
// inside the rootfs without following symlinks out of it), /dev with the
// default devices and symlinks, pivot_root (or MS_MOVE + chroot with
// --no-pivot), masked and read-only paths, the read-only root.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/fd.h"
#include "sandbox/oci.h"

namespace agentshim::rootfs {

using json = nlohmann::json;

struct CgroupMount {
  std::string name;      // "memory", "cpu,cpuacct", "unified", "" for a pure v2 host
  std::string fstype;    // cgroup | cgroup2
  std::string options;   // controller list for v1
  std::string host_path; // the container's cgroup directory on the host
};

struct Context {
  oci::Spec spec;
  std::string rootfs;               // absolute host path
  bool userns = false;              // running in a new user namespace
  bool cgroupns = false;            // running in a new cgroup namespace
  std::vector<CgroupMount> cgroups; // for mounts of type "cgroup"
  // userns "auto": the supervisor attached an idmapped copy of the rootfs
  // already (rootfs is then /proc/self/fd/N of that mount), and opened the
  // bind sources: source path -> /proc/self/fd/N. `held` keeps those fds.
  bool rootfs_attached = false;
  std::map<std::string, std::string> sources;
  std::vector<UniqueFd> held;
  // Bind source (resolved) -> the identity the policy checked. The source
  // is opened once, without following symlinks, its identity compared, and
  // the mount made from that descriptor: the file checked is the file
  // mounted. A source not listed (added by the runtime) is opened the same
  // way and not compared.
  std::map<std::string, oci::FileId> checked;
};

// Before pivot_root.
void prepare_root(const Context& ctx);
void mount_all(const Context& ctx);
void create_devices(const Context& ctx);
// Enter the rootfs. `no_pivot` uses MS_MOVE + chroot (runc --no-pivot).
void enter(const Context& ctx, bool no_pivot);
// After entering the rootfs: sysctls, masked and read-only paths, the
// read-only root (last, so earlier steps can still create mount points).
void apply_sysctls(const oci::Spec& spec);
void finish(const Context& ctx);

// Open `path` inside the tree rooted at `rootfd` (RESOLVE_IN_ROOT: ".." and
// absolute symlinks stay inside), creating missing directories, and the last
// component as a directory or a regular file. Returns an O_PATH fd.
UniqueFd open_in_root(int rootfd, const std::string& path, bool create, bool last_is_file);

// The pty: open /dev/ptmx in the current root, return the master; the slave
// becomes the caller's controlling terminal and fds 0-2. Sizes from
// process.consoleSize. Sends the master over `console_socket` (SCM_RIGHTS).
void setup_console(int console_socket, const oci::Process& proc, bool mount_dev_console);

}  // namespace agentshim::rootfs
