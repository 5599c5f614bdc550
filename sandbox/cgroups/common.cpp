// Layout detection, path resolution, the systemd path form, the default
// device rules, and the small file helpers both managers use.
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/fd.h"
#include "common/log.h"
#include "common/mountinfo.h"
#include "common/util.h"
#include "sandbox/cgroups/cgroups.h"
#include "sandbox/oci.h"

namespace agentshim::cgroups {

bool kill_all_via_cgroup_kill(const Manager& m) {
  const std::string dir = m.v2_dir();
  if (dir.empty() || !detail::exists(dir, "cgroup.kill")) return false;
  detail::write(dir, "cgroup.kill", "1");
  return true;
}

std::string layout_name(Layout l) {
  switch (l) {
    case Layout::legacy:
      return "legacy";
    case Layout::hybrid:
      return "hybrid";
    case Layout::unified:
      return "unified";
  }
  return "unknown";
}

namespace {
bool is_v1_controller_option(const std::string& o) {
  static const std::set<std::string> non_controllers = {
      "rw",     "ro",       "relatime",   "noatime",
      "nosuid", "nodev",    "noexec",     "clone_children",
      "xattr",  "noprefix", "nsdelegate", "memory_recursiveprot"};
  if (non_controllers.count(o)) return false;
  if (starts_with(o, "release_agent=")) return false;
  return true;
}
}  // namespace

Host Host::parse(const std::string& mountinfo, const std::string& proc_self_cgroup) {
  Host h;
  std::string line;
  bool have_v1 = false;
  for (const auto& mi : parse_mountinfo(mountinfo)) {
    const std::string& fstype = mi.fstype;
    if (fstype != "cgroup" && fstype != "cgroup2") continue;
    MountPoint m;
    m.root = mi.root;
    m.path = mi.mount_point;
    m.fstype = fstype;
    if (fstype == "cgroup") {
      std::vector<std::string> ctrls;
      for (const auto& o : split(mi.super_options, ','))
        if (is_v1_controller_option(o)) ctrls.push_back(o);
      if (ctrls.empty()) continue;
      // The same hierarchy mounted twice (bind mounts): keep the first.
      bool dup = false;
      for (const auto& e : h.mounts)
        if (e.fstype == "cgroup" && e.controllers == ctrls) dup = true;
      if (dup) continue;
      m.options = join(ctrls, ",");
      m.controllers = ctrls;
      have_v1 = true;
    } else {
      bool dup = false;
      for (const auto& e : h.mounts)
        if (e.fstype == "cgroup2") dup = true;
      if (dup) continue;
      if (auto c = try_read_file(m.path + "/cgroup.controllers")) {
        for (const auto& w : split(trim(*c), ' '))
          if (!w.empty()) m.controllers.push_back(w);
      }
    }
    h.mounts.push_back(std::move(m));
  }
  bool have_v2 = h.unified_mount() != nullptr;
  if (!have_v1 && !have_v2)
    throw Error("cgroups: no cgroup or cgroup2 file system is mounted (read /proc/self/mountinfo)");
  h.layout = !have_v1 ? Layout::unified : (have_v2 ? Layout::hybrid : Layout::legacy);

  std::istringstream cin(proc_self_cgroup);
  while (std::getline(cin, line)) {
    // hierarchy-ID:controller-list:cgroup-path
    auto a = line.find(':');
    if (a == std::string::npos) continue;
    auto b = line.find(':', a + 1);
    if (b == std::string::npos) continue;
    std::string ctrls = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    h.self[ctrls] = path;
  }
  return h;
}

Host Host::detect() {
  Host h = parse(read_file("/proc/self/mountinfo"), read_file("/proc/self/cgroup"));
  h.systemd = cgroups::systemd::booted();
  return h;
}

const MountPoint* Host::unified_mount() const {
  for (const auto& m : mounts)
    if (m.fstype == "cgroup2") return &m;
  return nullptr;
}

std::string expand_systemd_path(const std::string& cgroups_path, const std::string& id) {
  std::string slice = "system.slice", prefix = "agentshim", name = id;
  if (!cgroups_path.empty()) {
    auto parts = split(cgroups_path, ':');
    if (parts.size() != 3)
      throw Error("linux.cgroupsPath \"" + cgroups_path +
                  "\": expected \"slice:prefix:name\" for the systemd cgroup driver");
    if (!parts[0].empty()) slice = parts[0];
    prefix = parts[1];
    name = parts[2];
  }
  if (slice.find('/') != std::string::npos || slice.size() < 6 || slice.substr(slice.size() - 6) != ".slice")
    throw Error("linux.cgroupsPath \"" + cgroups_path + "\": invalid slice name \"" + slice + "\"");
  if (name.empty() || name.find('/') != std::string::npos || prefix.find('/') != std::string::npos)
    throw Error("linux.cgroupsPath \"" + cgroups_path + "\": invalid unit name");
  std::string path;
  if (slice != "-.slice") {
    std::string base = slice.substr(0, slice.size() - 6);
    if (base.empty() || base.front() == '-' || base.back() == '-' || base.find("--") != std::string::npos)
      throw Error("linux.cgroupsPath \"" + cgroups_path + "\": invalid slice name \"" + slice + "\"");
    std::string acc;
    for (const auto& piece : split(base, '-')) {
      acc += acc.empty() ? piece : "-" + piece;
      path += "/" + acc + ".slice";
    }
  }
  std::string unit;
  if (name.size() > 6 && name.substr(name.size() - 6) == ".slice")
    unit = name;
  else
    unit = (prefix.empty() ? "" : prefix + "-") + name + ".scope";
  return path + "/" + unit;
}

namespace detail {
std::string rdma_line(const std::string& device, const oci::Resources::Rdma& limits) {
  if (!limits.hca_handles && !limits.hca_objects) return "";
  std::string line = device;
  if (limits.hca_handles) line += " hca_handle=" + std::to_string(*limits.hca_handles);
  if (limits.hca_objects) line += " hca_object=" + std::to_string(*limits.hca_objects);
  return line;
}
}  // namespace detail

std::vector<oci::DeviceRule> effective_device_rules(const oci::Spec& spec) {
  std::vector<oci::DeviceRule> rules = spec.linux.resources.devices;
  auto allow = [&](char type, std::int64_t major, std::int64_t minor, const char* access) {
    rules.push_back(oci::DeviceRule{true, type, major, minor, access});
  };
  allow('c', -1, -1, "m");
  allow('b', -1, -1, "m");
  allow('c', 1, 3, "rwm");     // null
  allow('c', 1, 8, "rwm");     // random
  allow('c', 1, 7, "rwm");     // full
  allow('c', 5, 0, "rwm");     // tty
  allow('c', 1, 5, "rwm");     // zero
  allow('c', 1, 9, "rwm");     // urandom
  allow('c', 136, -1, "rwm");  // pts/*
  allow('c', 5, 2, "rwm");     // ptmx
  // linux.devices: b stays b, u (unbuffered character) is c, p (a FIFO) has
  // no device number.
  for (const auto& d : spec.linux.devices)
    if (d.type == 'c' || d.type == 'u' || d.type == 'b')
      allow(d.type == 'b' ? 'b' : 'c', d.major, d.minor, "rwm");
  return rules;
}

namespace {
// clone3(2)'s argument (declared here: <linux/sched.h> clashes with glibc's
// <sched.h>).
struct CloneArgs {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size,
      cgroup;
};
constexpr uint64_t kCloneIntoCgroup = 0x200000000ULL;
}  // namespace

CloneTarget Manager::join_for_clone(bool userns) {
  join_self(userns);
  CloneTarget t;
  t.v2_dir = v2_dir();
  t.v2_required = v2_only();
  if (!userns && !t.v2_dir.empty()) {
    t.v2.reset(::open(t.v2_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!t.v2) throw_errno("open cgroup " + t.v2_dir);
  }
  return t;
}

pid_t clone_parent_into(const CloneTarget& target) {
  pid_t pid = -1;
  bool cloned = false;
  if (target.v2) {
    CloneArgs a{};
    a.flags = CLONE_PARENT | kCloneIntoCgroup;  // exit_signal 0: CLONE_PARENT inherits ours
    a.cgroup = static_cast<uint64_t>(target.v2.get());
    long r = ::syscall(SYS_clone3, &a, sizeof a);
    if (r >= 0) {
      pid = static_cast<pid_t>(r);
      cloned = true;
    } else {
      int err = errno;
      std::string me = std::to_string(::getpid());
      UniqueFd procs(::openat(target.v2.get(), "cgroup.procs", O_WRONLY | O_CLOEXEC));
      int werr = 0;
      if (!procs)
        werr = errno;
      else if (::write(procs.get(), me.data(), me.size()) < 0)
        werr = errno;
      if (werr) {
        std::string msg = "cgroup: join " + target.v2_dir + "/cgroup.procs: " + std::strerror(werr) +
                          " (clone3 into the cgroup: " + std::strerror(err) + ")";
        if (target.v2_required) throw Error(msg);
        log::warn(msg);
      }
    }
  }
  if (!cloned) pid = static_cast<pid_t>(::syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0));
  if (pid == 0 && target.cgroupns >= 0 && ::setns(target.cgroupns, CLONE_NEWCGROUP) < 0)
    throw_errno("setns into the container's cgroup namespace");
  return pid;
}

namespace detail {

void write(const std::string& dir, const std::string& file, const std::string& value) {
  std::string p = dir + "/" + file;
  UniqueFd fd(::open(p.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) throw_errno("cgroup: open " + p);
  ssize_t n;
  do {
    n = ::write(fd.get(), value.data(), value.size());
  } while (n < 0 && errno == EINTR);
  if (n < 0) throw_errno("cgroup: write \"" + value + "\" to " + p);
}

bool exists(const std::string& dir, const std::string& file) {
  return ::access((dir + "/" + file).c_str(), F_OK) == 0;
}

std::string read(const std::string& dir, const std::string& file) {
  return trim(read_file(dir + "/" + file));
}

std::map<std::string, uint64_t> read_flat_keyed(const std::string& dir, const std::string& file) {
  std::map<std::string, uint64_t> out;
  auto text = try_read_file(dir + "/" + file);
  if (!text) return out;
  for (const auto& line : split(*text, '\n')) {
    auto sp = line.find(' ');
    if (sp == std::string::npos) continue;
    if (auto v = parse_uint(trim(line.substr(sp + 1)))) out[line.substr(0, sp)] = *v;
  }
  return out;
}

std::vector<pid_t> read_procs_recursive(const std::string& dir) {
  std::vector<pid_t> out;
  if (auto text = try_read_file(dir + "/cgroup.procs"))
    for (const auto& l : split(*text, '\n'))
      if (auto v = parse_int(trim(l)); v && *v > 0) out.push_back(static_cast<pid_t>(*v));
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (auto* e = ::readdir(d)) {
    if (e->d_type != DT_DIR) continue;
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    auto sub = read_procs_recursive(dir + "/" + n);
    out.insert(out.end(), sub.begin(), sub.end());
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

void remove_dir(const std::string& dir) {
  // Children first (a container may have made sub-cgroups), then the leaf.
  if (DIR* d = ::opendir(dir.c_str())) {
    std::vector<std::string> subs;
    while (auto* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (e->d_type == DT_DIR && n != "." && n != "..") subs.push_back(dir + "/" + n);
    }
    ::closedir(d);
    for (const auto& s : subs) remove_dir(s);
  }
  for (int attempt = 0;; ++attempt) {
    if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) return;
    if (errno != EBUSY || attempt >= 100) throw_errno("cgroup: rmdir " + dir);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::string host_dir(const MountPoint& m, const std::string& self_path, const std::string& path) {
  std::string full = path;
  if (full.empty() || full.front() != '/') full = (self_path.empty() ? "/" : self_path) + "/" + full;
  if (m.root != "/" && starts_with(full, m.root) &&
      (full.size() == m.root.size() || full[m.root.size()] == '/'))
    full = full.substr(m.root.size());
  std::string out = m.path;
  for (const auto& c : split(full, '/')) {
    if (c.empty() || c == ".") continue;
    out += "/" + c;
  }
  return out;
}

std::string v2_relative_base(const std::string& self_path) {
  std::string s = self_path;
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  auto slash = s.rfind('/');
  if (slash == std::string::npos || slash == 0) return "/";
  return s.substr(0, slash);
}

std::vector<std::string> make_dirs(const std::string& mount, const std::string& dir) {
  std::vector<std::string> created;
  if (!starts_with(dir, mount)) throw Error("cgroup: " + dir + " is not below " + mount);
  std::string cur = mount;
  for (const auto& c : split(dir.substr(mount.size()), '/')) {
    if (c.empty()) continue;
    cur += "/" + c;
    if (::mkdir(cur.c_str(), 0755) == 0)
      created.push_back(cur);
    else if (errno != EEXIST)
      throw_errno("cgroup: mkdir " + cur);
  }
  return created;
}

uint64_t shares_to_weight(uint64_t shares) {
  if (shares == 0) return 0;
  if (shares < 2) shares = 2;
  if (shares > 262144) shares = 262144;
  return 1 + ((shares - 2) * 9999) / 262142;
}

json saved_layout(const Host& host, bool systemd, const std::string& path) {
  json mounts = json::array();
  for (const auto& m : host.mounts)
    mounts.push_back({{"path", m.path},
                      {"root", m.root},
                      {"fstype", m.fstype},
                      {"options", m.options},
                      {"controllers", m.controllers}});
  return {{"version", 1},
          {"driver", systemd ? "systemd" : "cgroupfs"},
          {"layout", layout_name(host.layout)},
          {"path", path},
          {"mounts", mounts},
          {"self", host.self}};
}

std::vector<std::string> hugepage_sizes() {
  std::vector<std::string> out;
  DIR* d = ::opendir("/sys/kernel/mm/hugepages");
  if (!d) return out;
  while (auto* e = ::readdir(d)) {
    std::string n = e->d_name;  // hugepages-2048kB
    if (!starts_with(n, "hugepages-") || n.size() < 13) continue;
    auto kb = parse_uint(n.substr(10, n.size() - 12));
    if (!kb) continue;
    unsigned long long v = *kb;
    const char* units[] = {"KB", "MB", "GB", "TB"};
    int u = 0;
    while (v >= 1024 && v % 1024 == 0 && u < 3) {
      v /= 1024;
      ++u;
    }
    out.push_back(std::to_string(v) + units[u]);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace detail

std::unique_ptr<Manager> Manager::create(const std::string& cgroups_path, const std::string& id, bool systemd,
                                         pid_t pid) {
  return create(Host::detect(), cgroups_path, id, systemd, pid);
}

std::unique_ptr<Manager> Manager::create(const Host& host, const std::string& cgroups_path,
                                         const std::string& id, bool systemd, pid_t pid) {
  std::string path;
  if (systemd) {
    path = expand_systemd_path(cgroups_path, id);
  } else {
    path = cgroups_path.empty() ? id : cgroups_path;
    if (path.find(':') != std::string::npos && path.front() != '/')
      throw Error("linux.cgroupsPath \"" + cgroups_path +
                  "\" looks like a systemd \"slice:prefix:name\" path; pass --systemd-cgroup to use it");
    for (const auto& c : split(path, '/'))
      if (c == "..") throw Error("linux.cgroupsPath \"" + cgroups_path + "\" must not contain \"..\"");
  }
  if (systemd && host.systemd && pid > 0) return cgroups::systemd::create_scope(host, path, id, pid);
  if (systemd) log::debug("cgroups: systemd is not PID 1 here: " + path + " is managed as a cgroupfs path");
  if (host.layout == Layout::unified) return make_v2(host, path, systemd, nullptr);
  return make_v1(host, path, systemd, nullptr);
}

std::unique_ptr<Manager> Manager::load(const json& saved) {
  if (!saved.is_object() || !saved.contains("layout") || !saved.contains("mounts"))
    throw Error("container state: malformed cgroup record");
  Host h;
  std::string layout = saved["layout"];
  h.layout = layout == "unified" ? Layout::unified : layout == "hybrid" ? Layout::hybrid : Layout::legacy;
  for (const auto& m : saved["mounts"]) {
    MountPoint mp;
    mp.path = m.at("path");
    mp.root = m.at("root");
    mp.fstype = m.at("fstype");
    mp.options = m.value("options", "");
    mp.controllers = m.value("controllers", std::vector<std::string>{});
    h.mounts.push_back(mp);
  }
  h.self = saved.value("self", std::map<std::string, std::string>{});
  std::string path = saved.at("path");
  bool systemd = saved.value("driver", "cgroupfs") == "systemd";
  std::unique_ptr<Manager> m =
      h.layout == Layout::unified ? make_v2(h, path, systemd, &saved) : make_v1(h, path, systemd, &saved);
  if (saved.contains("systemd_unit") && saved["systemd_unit"].is_string())
    return cgroups::systemd::wrap(std::move(m), saved["systemd_unit"].get<std::string>(),
                                  h.layout == Layout::unified);
  return m;
}

}  // namespace agentshim::cgroups
