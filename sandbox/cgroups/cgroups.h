// Control groups behind one interface, for the three layouts a host can have:
//   legacy  — every controller on its own v1 hierarchy (old distributions);
//   hybrid  — v1 controllers plus a v2 mount at /sys/fs/cgroup/unified that
//             may hold some controllers (this project's CI machines);
//   unified — one cgroup2 hierarchy (most current Kubernetes nodes).
// The layout is read from /proc/self/mountinfo and /proc/self/cgroup; tests
// build a Host from strings so that every layout is exercised over a fake
// tree. A Manager is created by the supervisor, saved into the container's
// state as JSON, and loaded again by later CLI invocations (pause, kill
// --all, update, events, delete).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <variant>
#include <vector>

#include "common/fd.h"
#include "sandbox/oci.h"

namespace agentshim::cgroups {

using json = nlohmann::json;

enum class Layout { legacy, hybrid, unified };
std::string layout_name(Layout l);

// One cgroup hierarchy mounted on the host.
struct MountPoint {
  std::string path;                      // e.g. /sys/fs/cgroup/memory
  std::string root;                      // the mount's root inside the hierarchy (mountinfo field 4)
  std::string fstype;                    // cgroup | cgroup2
  std::string options;                   // v1: the controller list as mounted ("cpu,cpuacct", "name=systemd")
  std::vector<std::string> controllers;  // v1: options split on ','; v2: cgroup.controllers
};

struct Host {
  Layout layout = Layout::legacy;
  std::vector<MountPoint> mounts;
  // The calling process's cgroup per hierarchy, keyed by the v1 option list
  // ("cpu,cpuacct") or "" for the v2 hierarchy (from /proc/self/cgroup).
  std::map<std::string, std::string> self;
  // systemd is PID 1 (sd_booted): the systemd driver asks it for a scope.
  bool systemd = false;

  static Host detect();
  // From the text of /proc/self/mountinfo and /proc/self/cgroup; cgroup2
  // controllers are read from <mount>/cgroup.controllers when it exists.
  static Host parse(const std::string& mountinfo, const std::string& proc_self_cgroup);
  const MountPoint* unified_mount() const;
};

// "slice:prefix:name" (the systemd driver's cgroupsPath form) → the cgroupfs
// path systemd would use: "/system.slice/prefix-name.scope"; slices nest by
// their dashes ("a-b.slice" → "/a.slice/a-b.slice"). Throws on a malformed path.
std::string expand_systemd_path(const std::string& cgroups_path, const std::string& id);

// The OCI device rules a container's cgroup gets: the config's
// linux.resources.devices, then the devices every container needs (as runc
// adds them), then the devices listed in linux.devices.
std::vector<oci::DeviceRule> effective_device_rules(const oci::Spec& spec);

// A v1 hierarchy as the container's rootfs sees it (for mounts of type cgroup).
struct Hierarchy {
  std::string mountpoint_name;  // "memory", "cpu,cpuacct", "unified", "" on a unified host
  std::string fstype;           // cgroup | cgroup2
  std::string options;          // controllers for a v1 mount
  std::string host_path;        // the container's cgroup directory on the host
};

// Where a process created for the container (the init, an exec'd process)
// enters the v2 hierarchy: its creator clones it there (see
// clone_parent_into); `v2` is not open when there is no v2 part or the
// creator joined it already.
struct CloneTarget {
  UniqueFd v2;         // the container's v2 directory
  std::string v2_dir;  // for messages (the fallback writes cgroup.procs through `v2`)
  bool v2_required = false;
  // A cgroup namespace the new process enters once born (not owned). With
  // cgroup2 mounted nsdelegate (systemd's default) the kernel lets a process
  // be cloned into, or moved to, a cgroup only when its own and the target
  // cgroup are both visible from its cgroup namespace: a creator that joined
  // the container's namespace first gets ENOENT. So the creator stays in
  // its own and the child enters the container's (exec, a config naming
  // an existing cgroup namespace).
  int cgroupns = -1;
};

class Manager {
 public:
  virtual ~Manager() = default;

  // Resolve cgroupsPath (absolute: from the hierarchy's root; relative: below
  // the caller's own cgroup on v1, below its parent on v2 (see
  // detail::v2_relative_base); empty: "<id>", relative; with the systemd
  // driver: "slice:prefix:name") and create the directories. With the
  // systemd driver on a host whose PID 1 is systemd (Host::systemd) and a
  // `pid` to place, the cgroup is a transient scope systemd starts with
  // `pid` in it (see systemd::create_scope); otherwise the path systemd
  // would use is managed directly.
  static std::unique_ptr<Manager> create(const std::string& cgroups_path, const std::string& id, bool systemd,
                                         pid_t pid = 0);
  static std::unique_ptr<Manager> create(const Host& host, const std::string& cgroups_path,
                                         const std::string& id, bool systemd, pid_t pid = 0);
  // From save(); never re-reads the host's layout.
  static std::unique_ptr<Manager> load(const json& saved);

  virtual json save() const = 0;
  // Move a process into the container's cgroup in every hierarchy.
  virtual void apply(pid_t pid) = 0;
  // Move the calling process, which must be single-threaded, into the
  // container's cgroup. In v1 hierarchies it writes "0" to `tasks`: a task
  // moving itself needs no global threadgroup lock, so no RCU grace period
  // (writing a pid to cgroup.procs waits for one, 6-16 ms here). The v2
  // hierarchy (the only one on a unified host, the extra one on a hybrid
  // host) has no such path: it is joined through cgroup.procs only when
  // `include_v2`; otherwise the caller is in it already or creates its
  // children there (clone3 CLONE_INTO_CGROUP, see v2_dir()).
  virtual void join_self(bool include_v2) = 0;
  // The container's cgroup v2 directory ("" when none is used): the target
  // for clone3(CLONE_INTO_CGROUP), which places a new process without a
  // migration.
  virtual std::string v2_dir() const = 0;
  // A unified (v2-only) host: the v2 hierarchy is the container's cgroup.
  virtual bool v2_only() const = 0;
  // For a single-threaded process about to clone a container process
  // (stage1, exec's intermediate): join_self() the v1 hierarchies — every
  // hierarchy when it will enter a user namespace, whose root may not write
  // the host's cgroup files — and where the v2 part is to be entered.
  CloneTarget join_for_clone(bool userns);
  // Apply OCI linux.resources (parsed and validated by oci::parse_resources).
  // Fields not given are left alone, so `update` can pass a partial
  // Resources. Errors name the field and the file.
  virtual void set(const oci::Resources& resources) = 0;
  virtual void freeze() = 0;
  virtual void thaw() = 0;
  virtual bool frozen() const = 0;
  // Every process in the container's cgroup and its descendants.
  virtual std::vector<pid_t> pids() const = 0;
  // runc's `events --stats` "data" object: cpu, memory, pids, blkio, hugetlb.
  virtual json stats() const = 0;
  virtual uint64_t oom_kill_count() const = 0;
  // Remove the container's cgroup directories (and the parents it created).
  virtual void destroy() = 0;
  virtual std::vector<Hierarchy> hierarchies() const = 0;
  virtual std::string path() const = 0;
};

// A child of the calling process's parent (CLONE_PARENT), born in the v2
// cgroup `target.v2` when open (clone3 CLONE_INTO_CGROUP: no migration, so
// no grace period). Like fork(): 0 in the child, which then enters
// `target.cgroupns` when set (throwing SysError if it cannot). When the
// kernel refuses the clone (before 5.7: ENOSYS; a cgroup it may not enter),
// the calling process joins the cgroup through `target.v2`'s cgroup.procs
// (the directory fd: the caller may be in another mount namespace by now)
// and clones plainly; that failing is an error only when
// `target.v2_required`, else a warning. For single-threaded callers (stage1,
// exec's intermediate).
pid_t clone_parent_into(const CloneTarget& target);

// `kill --all` with SIGKILL where the kernel has cgroup.kill (5.14+): every
// process in the container's v2 cgroup and below is killed by the kernel at
// once, including ones forking while a pid-by-pid loop would run. False when
// there is no v2 cgroup or no cgroup.kill (the caller falls back to the
// loop). On a unified host the sentinel is in that cgroup and dies too; the
// supervisor, told of the kill first, finishes the record (sentinel.h).
bool kill_all_via_cgroup_kill(const Manager& m);

// ---- helpers shared by the v1 and v2 managers (exposed for tests) ----
namespace detail {
// Write `value` to `dir/file`; the error names the file and the value.
void write(const std::string& dir, const std::string& file, const std::string& value);
bool exists(const std::string& dir, const std::string& file);
std::string read(const std::string& dir, const std::string& file);
// "key value" lines → map (memory.stat, cpu.stat, memory.events, ...).
std::map<std::string, uint64_t> read_flat_keyed(const std::string& dir, const std::string& file);
std::vector<pid_t> read_procs_recursive(const std::string& dir);
// Remove a cgroup directory, retrying while it is still busy.
void remove_dir(const std::string& dir);
uint64_t shares_to_weight(uint64_t shares);
// The host directory of cgroup `path` (absolute, or relative to `self_path`)
// in hierarchy `m`.
std::string host_dir(const MountPoint& m, const std::string& self_path, const std::string& path);
// Where a relative v2 cgroupsPath (and the default, the container's id) is
// resolved: the parent of the caller's own cgroup, as runc does
// (libcontainer/cgroups/fs2 defaultDirPath). The caller's cgroup holds
// processes (the caller), so the kernel would enable no controller below it;
// its parent, a service manager's slice or the root, can delegate them.
std::string v2_relative_base(const std::string& self_path);
// mkdir each missing component of `dir` below `mount`; returns those created.
std::vector<std::string> make_dirs(const std::string& mount, const std::string& dir);
// What save() writes for every version: the host's layout, the driver and
// the cgroupsPath; each manager adds its own fields.
json saved_layout(const Host& host, bool systemd, const std::string& path);
// Host's page sizes as the hugetlb controller names them ("2MB", "1GB").
std::vector<std::string> hugepage_sizes();
// One line of rdma.max: "mlx4_0 hca_handle=2 hca_object=2000" (the limits
// given); "" when the entry gives none.
std::string rdma_line(const std::string& device, const oci::Resources::Rdma& limits);
}  // namespace detail

// v2 device control: build the BPF_PROG_TYPE_CGROUP_DEVICE program that
// implements the OCI device rules (last matching rule wins; default deny).
struct BpfInsn {
  uint8_t code;
  uint8_t regs;  // dst | src << 4
  int16_t off;
  int32_t imm;
};
std::vector<BpfInsn> device_program(const std::vector<oci::DeviceRule>& rules);
// Evaluate the program for one access (for tests and for `agentshim` to
// explain a decision): type 'c' or 'b', access bits 1=mknod 2=read 4=write.
bool run_device_program(const std::vector<BpfInsn>& prog, char type, uint32_t major, uint32_t minor,
                        uint32_t access);
// Load the program and attach it to the cgroup2 directory, replacing any
// programs attached before. Throws SysError naming bpf() and the directory.
void attach_device_program(const std::string& cgroup_dir, const std::vector<BpfInsn>& prog);

// `saved` (from Manager::save) restores a manager without creating anything.
std::unique_ptr<Manager> make_v1(const Host& host, const std::string& path, bool systemd, const json* saved);
std::unique_ptr<Manager> make_v2(const Host& host, const std::string& path, bool systemd, const json* saved);

// The systemd driver's D-Bus side (sandbox/cgroups/systemd.cpp).
namespace systemd {
bool booted();
// A scope and its slice, from expand_systemd_path()'s result:
// "/a.slice/a-b.slice/p-n.scope" → {"a-b.slice", "p-n.scope"}; a unit
// directly below the root is in "-.slice".
struct Unit {
  std::string slice;
  std::string name;
};
Unit unit_of(const std::string& expanded);
// A unit property as StartTransientUnit/SetUnitProperties take it.
struct Property {
  std::string name;
  std::variant<bool, uint64_t, std::string, std::vector<uint32_t>, std::vector<uint8_t>> value;
  bool operator==(const Property&) const = default;
};
// The OCI resources systemd has properties for, as runc's systemd driver
// maps them (unified: MemoryMax, MemoryLow, MemorySwapMax, CPUWeight,
// CPUQuotaPerSecUSec + CPUQuotaPeriodUSec, AllowedCPUs/AllowedMemoryNodes,
// TasksMax; v1: MemoryLimit, CPUShares, the CPU quota, TasksMax). -1 is
// infinity (UINT64_MAX); unset or 0 fields give no property.
std::vector<Property> resource_properties(const oci::Resources& resources, bool unified);
// "0-3,6" → systemd's CPU/node bitmask (bit i of byte i/8). Throws naming
// `field` on a malformed list.
std::vector<uint8_t> cpu_mask(const std::string& list, const std::string& field);
// StartTransientUnit of the scope for `path` with `pid` in it, then the
// layout's cgroupfs manager for its directory, wrapped.
std::unique_ptr<Manager> create_scope(const Host& host, const std::string& path, const std::string& id,
                                      pid_t pid);
// A manager whose set() also sets the unit's properties and whose destroy()
// also stops the unit (Manager::load of a state naming a unit).
std::unique_ptr<Manager> wrap(std::unique_ptr<Manager> inner, const std::string& unit, bool unified);
}  // namespace systemd

}  // namespace agentshim::cgroups
