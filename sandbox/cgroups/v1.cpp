// cgroup v1 (legacy and hybrid layouts): one directory per hierarchy, the
// v1 file interface for every controller, the freezer for pause/resume. In a
// hybrid layout the container also gets a directory on the v2 mount, so
// controllers that live there (hugetlb on this project's CI machines) and
// unified resources apply too.
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <thread>

#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "sandbox/cgroups/cgroups.h"

namespace agentshim::cgroups {
namespace {

using detail::exists;
using detail::read;
using detail::write;

struct Dir {
  MountPoint m;
  std::string dir;
  bool has(const std::string& c) const {
    for (const auto& x : m.controllers)
      if (x == c) return true;
    return false;
  }
};

uint64_t read_u64(const std::string& dir, const std::string& file) {
  auto t = try_read_file(dir + "/" + file);
  if (!t) return 0;
  auto v = parse_uint(trim(*t));
  return v ? *v : 0;
}

// "c 1:3 rwm", "a *:* m": a devices.allow/deny line.
std::string device_rule(const oci::DeviceRule& r) {
  auto num = [](std::int64_t v) { return v < 0 ? std::string("*") : std::to_string(v); };
  return std::string(1, r.type) + " " + num(r.major) + ":" + num(r.minor) + " " + r.access;
}

using R = oci::Resources;

class V1Manager final : public Manager {
 public:
  V1Manager(const Host& host, std::string path, bool systemd, const json* saved)
      : host_(host), path_(std::move(path)), systemd_(systemd) {
    for (const auto& m : host_.mounts) {
      auto it = host_.self.find(m.fstype == "cgroup2" ? "" : m.options);
      std::string self = it == host_.self.end() ? "/" : it->second;
      Dir d{m, detail::host_dir(m, self, path_)};
      if (m.fstype == "cgroup2")
        unified_ = d;
      else
        dirs_.push_back(d);
    }
    if (saved) {
      created_ = saved->value("created", std::vector<std::string>{});
      if (!saved->value("unified_ok", false)) unified_.reset();
      return;
    }
    try {
      for (const auto& d : dirs_) {
        auto made = detail::make_dirs(d.m.path, d.dir);
        if (d.has("cpuset")) init_cpuset(d);
        created_.insert(created_.end(), made.begin(), made.end());
      }
    } catch (...) {
      destroy_dirs();
      throw;
    }
    if (unified_) {
      try {
        auto made = detail::make_dirs(unified_->m.path, unified_->dir);
        created_.insert(created_.end(), made.begin(), made.end());
        // Controllers are NOT enabled on the v2 side of a hybrid host: doing
        // so pins them to v2 host-wide (a v1 mount of hugetlb, which crun
        // needs, would then fail). Whatever the host already enabled applies.
      } catch (const std::exception& e) {
        log::warn(std::string("cgroup: the v2 part of the hybrid layout is not used: ") + e.what());
        unified_.reset();
      }
    }
  }

  json save() const override {
    json saved = detail::saved_layout(host_, systemd_, path_);
    saved["unified_ok"] = unified_.has_value();
    saved["created"] = created_;
    return saved;
  }

  void join_self(bool include_v2) override {
    for (const auto& d : dirs_) {
      try {
        write(d.dir, "tasks", "0");
      } catch (const SysError& e) {
        if (starts_with(d.m.options, "name=")) {
          log::warn(e.what());
          continue;
        }
        throw;
      }
    }
    if (include_v2 && unified_) {
      try {
        write(unified_->dir, "cgroup.procs", std::to_string(::getpid()));
      } catch (const SysError& e) {
        log::warn(e.what());
      }
    }
  }

  std::string v2_dir() const override { return unified_ ? unified_->dir : ""; }
  bool v2_only() const override { return false; }

  void apply(pid_t pid) override {
    std::string p = std::to_string(pid);
    for (const auto& d : dirs_) {
      try {
        write(d.dir, "cgroup.procs", p);
      } catch (const SysError& e) {
        // Named hierarchies (name=systemd) are bookkeeping only.
        if (starts_with(d.m.options, "name=")) {
          log::warn(e.what());
          continue;
        }
        throw;
      }
    }
    if (unified_) {
      try {
        write(unified_->dir, "cgroup.procs", p);
      } catch (const SysError& e) {
        log::warn(e.what());
      }
    }
  }

  void set(const oci::Resources& r) override {
    if (r.memory != R::Memory{}) set_memory(r.memory);
    set_cpu(r.cpu);
    if (r.pids.limit) {
      const Dir& d = need("pids", "linux.resources.pids");
      write(d.dir, "pids.max", *r.pids.limit > 0 ? std::to_string(*r.pids.limit) : "max");
    }
    set_blkio(r.block_io);
    set_hugetlb(r.hugepage_limits);
    set_network(r.network);
    if (!r.devices.empty()) set_devices(r.devices);
    set_rdma(r.rdma);
    if (!r.unified.empty()) {
      if (!unified_)
        throw Error("linux.resources.unified: this host has no cgroup v2 hierarchy (cgroup v1 layout)");
      for (const auto& [k, v] : r.unified) {
        if (!exists(unified_->dir, k))
          throw Error("linux.resources.unified." + k + ": no such file in the v2 part of this hybrid host (" +
                      unified_->dir + ")");
        write(unified_->dir, k, v);
      }
    }
  }

  void freeze() override {
    const Dir& d = need("freezer", "pause");
    for (int i = 0; i < 1000; ++i) {
      if (i % 50 == 0) write(d.dir, "freezer.state", "FROZEN");
      if (read(d.dir, "freezer.state") == "FROZEN") return;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    write(d.dir, "freezer.state", "THAWED");
    throw Error("cgroup: freezing " + d.dir + " did not complete (a process is stuck in the kernel?)");
  }

  void thaw() override {
    const Dir& d = need("freezer", "resume");
    write(d.dir, "freezer.state", "THAWED");
  }

  bool frozen() const override {
    const Dir* d = find("freezer");
    if (!d) return false;
    auto s = try_read_file(d->dir + "/freezer.state");
    return s && trim(*s) == "FROZEN";
  }

  std::vector<pid_t> pids() const override {
    for (const char* c : {"freezer", "pids", "memory", "cpu"})
      if (const Dir* d = find(c)) return detail::read_procs_recursive(d->dir);
    if (!dirs_.empty()) return detail::read_procs_recursive(dirs_.front().dir);
    return {};
  }

  json stats() const override {
    json s = json::object();
    json cpu = {{"usage", {{"total", 0}, {"percpu", json::array()}, {"kernel", 0}, {"user", 0}}},
                {"throttling", {{"periods", 0}, {"throttledPeriods", 0}, {"throttledTime", 0}}}};
    if (const Dir* d = find("cpuacct")) {
      cpu["usage"]["total"] = read_u64(d->dir, "cpuacct.usage");
      if (auto t = try_read_file(d->dir + "/cpuacct.usage_percpu"))
        for (const auto& w : split(trim(*t), ' '))
          if (auto v = parse_uint(w)) cpu["usage"]["percpu"].push_back(*v);
      auto st = detail::read_flat_keyed(d->dir, "cpuacct.stat");
      long hz = ::sysconf(_SC_CLK_TCK);
      if (hz <= 0) hz = 100;
      cpu["usage"]["user"] = st["user"] * (1000000000ULL / static_cast<uint64_t>(hz));
      cpu["usage"]["kernel"] = st["system"] * (1000000000ULL / static_cast<uint64_t>(hz));
    }
    if (const Dir* d = find("cpu")) {
      auto st = detail::read_flat_keyed(d->dir, "cpu.stat");
      cpu["throttling"] = {{"periods", st["nr_periods"]},
                           {"throttledPeriods", st["nr_throttled"]},
                           {"throttledTime", st["throttled_time"]}};
    }
    s["cpu"] = cpu;
    json mem = json::object();
    if (const Dir* d = find("memory")) {
      auto raw = detail::read_flat_keyed(d->dir, "memory.stat");
      auto entry = [&](const std::string& prefix) {
        return json{{"usage", read_u64(d->dir, prefix + "usage_in_bytes")},
                    {"max", read_u64(d->dir, prefix + "max_usage_in_bytes")},
                    {"failcnt", read_u64(d->dir, prefix + "failcnt")},
                    {"limit", read_u64(d->dir, prefix + "limit_in_bytes")}};
      };
      mem = {{"cache", raw.count("cache") ? raw["cache"] : 0},
             {"usage", entry("memory.")},
             {"swap", entry("memory.memsw.")},
             {"kernel", entry("memory.kmem.")},
             {"kernelTCP", entry("memory.kmem.tcp.")},
             {"raw", raw}};
    }
    s["memory"] = mem;
    json pids = {{"current", 0}, {"limit", 0}};
    if (const Dir* d = find("pids")) {
      pids["current"] = read_u64(d->dir, "pids.current");
      pids["limit"] = read_u64(d->dir, "pids.max");  // "max" reads as 0: unlimited
    }
    s["pids"] = pids;
    json blkio = json::object();
    if (const Dir* d = find("blkio")) {
      auto entries = [&](const std::string& file) {
        json arr = json::array();
        auto t = try_read_file(d->dir + "/" + file);
        if (!t) return arr;
        for (const auto& line : split(*t, '\n')) {
          auto f = split(trim(line), ' ');
          if (f.size() != 3) continue;
          auto mm = split(f[0], ':');
          if (mm.size() != 2) continue;
          auto maj = parse_uint(mm[0]), min = parse_uint(mm[1]), val = parse_uint(f[2]);
          if (!maj || !min || !val) continue;
          arr.push_back({{"major", *maj}, {"minor", *min}, {"op", f[1]}, {"value", *val}});
        }
        return arr;
      };
      blkio = {{"ioServiceBytesRecursive", entries("blkio.throttle.io_service_bytes_recursive")},
               {"ioServicedRecursive", entries("blkio.throttle.io_serviced_recursive")}};
    }
    s["blkio"] = blkio;
    json huge = json::object();
    const Dir* hd = find("hugetlb");
    std::optional<std::string> hdir = hd ? std::optional<std::string>(hd->dir) : std::nullopt;
    for (const auto& size : detail::hugepage_sizes()) {
      if (hdir) {
        huge[size] = {{"usage", read_u64(*hdir, "hugetlb." + size + ".usage_in_bytes")},
                      {"max", read_u64(*hdir, "hugetlb." + size + ".max_usage_in_bytes")},
                      {"failcnt", read_u64(*hdir, "hugetlb." + size + ".failcnt")}};
      } else if (unified_ && exists(unified_->dir, "hugetlb." + size + ".current")) {
        auto ev = detail::read_flat_keyed(unified_->dir, "hugetlb." + size + ".events");
        huge[size] = {{"usage", read_u64(unified_->dir, "hugetlb." + size + ".current")},
                      {"max", 0},
                      {"failcnt", ev["max"]}};
      }
    }
    s["hugetlb"] = huge;
    return s;
  }

  uint64_t oom_kill_count() const override {
    const Dir* d = find("memory");
    if (!d) return 0;
    auto m = detail::read_flat_keyed(d->dir, "memory.oom_control");
    return m.count("oom_kill") ? m["oom_kill"] : 0;
  }

  void destroy() override { destroy_dirs(); }

  std::vector<Hierarchy> hierarchies() const override {
    std::vector<Hierarchy> out;
    for (const auto& d : dirs_) {
      std::string name = d.m.path.substr(d.m.path.rfind('/') + 1);
      out.push_back({name, "cgroup", d.m.options, d.dir});
    }
    if (unified_) out.push_back({"unified", "cgroup2", "", unified_->dir});
    return out;
  }

  std::string path() const override { return path_; }

 private:
  const Dir* find(const std::string& c) const {
    for (const auto& d : dirs_)
      if (d.has(c)) return &d;
    return nullptr;
  }
  const Dir& need(const std::string& c, const std::string& what) const {
    const Dir* d = find(c);
    if (!d) throw Error(what + ": the " + c + " cgroup controller is not mounted on this host");
    return *d;
  }

  // Every level from the hierarchy's root down to the leaf, not only the
  // directories made now: one that already existed (left behind by a run that
  // died between mkdir and the copy) may still have empty cpuset.cpus/mems,
  // and no process can join such a cgroup. Like runc's cpusetEnsureParent.
  void init_cpuset(const Dir& d) {
    std::string dir = d.m.path;
    for (const auto& c : split(d.dir.substr(d.m.path.size()), '/')) {
      if (c.empty()) continue;
      std::string parent = dir;
      dir += "/" + c;
      for (const char* f : {"cpuset.cpus", "cpuset.mems"}) {
        if (!exists(dir, f)) continue;
        if (read(dir, f).empty()) write(dir, f, read(parent, f));
      }
    }
  }

  void set_memory(const R::Memory& m) {
    const Dir& d = need("memory", "linux.resources.memory");
    // (Plain values and flags, not std::optional: GCC 12 reports a false
    // -Wmaybe-uninitialized on the optionals' payloads here.)
    const bool has_limit = m.limit.has_value();
    const long long limit = m.limit.value_or(0);
    bool has_swap = m.swap.has_value();
    const long long swap = m.swap.value_or(0);
    bool memsw = exists(d.dir, "memory.memsw.limit_in_bytes");
    if (has_swap && !memsw) {
      if (swap != -1 && (!has_limit || swap != limit))
        log::warn(
            "linux.resources.memory.swap: this kernel has no swap accounting (memory.memsw.*); ignored");
      has_swap = false;
    }
    if (has_limit && has_swap) {
      // memsw must stay >= limit at every step: order the two writes.
      long long cur_sw = static_cast<long long>(read_u64(d.dir, "memory.memsw.limit_in_bytes"));
      bool raise = swap == -1 || (limit != -1 && swap > cur_sw) || limit == -1;
      if (raise) {
        write(d.dir, "memory.memsw.limit_in_bytes", std::to_string(swap));
        write(d.dir, "memory.limit_in_bytes", std::to_string(limit));
      } else {
        write(d.dir, "memory.limit_in_bytes", std::to_string(limit));
        write(d.dir, "memory.memsw.limit_in_bytes", std::to_string(swap));
      }
    } else if (has_limit) {
      write(d.dir, "memory.limit_in_bytes", std::to_string(limit));
    } else if (has_swap) {
      write(d.dir, "memory.memsw.limit_in_bytes", std::to_string(swap));
    }
    if (m.reservation) write(d.dir, "memory.soft_limit_in_bytes", std::to_string(*m.reservation));
    if (m.kernel.value_or(0) != 0)
      log::warn("linux.resources.memory.kernel: kernel memory limits are deprecated by the kernel; ignored");
    if (m.kernel_tcp.value_or(0) != 0)
      write(d.dir, "memory.kmem.tcp.limit_in_bytes", std::to_string(*m.kernel_tcp));
    if (m.swappiness) {
      if (*m.swappiness > 100)
        throw Error("linux.resources.memory.swappiness: " + std::to_string(*m.swappiness) + " is above 100");
      write(d.dir, "memory.swappiness", std::to_string(*m.swappiness));
    }
    if (m.disable_oom_killer.value_or(false)) write(d.dir, "memory.oom_control", "1");
    if (m.use_hierarchy) write(d.dir, "memory.use_hierarchy", *m.use_hierarchy ? "1" : "0");
  }

  void set_cpu(const R::Cpu& c) {
    const auto shares = c.shares, period = c.period, burst = c.burst, rt_p = c.realtime_period;
    const auto quota = c.quota, rt_rt = c.realtime_runtime, idle = c.idle;
    if (shares || quota || period || burst || rt_rt || rt_p || idle) {
      const Dir& d = need("cpu", "linux.resources.cpu");
      if (shares && *shares != 0) {
        write(d.dir, "cpu.shares", std::to_string(*shares));
        auto got = parse_uint(read(d.dir, "cpu.shares"));
        if (got && *got != *shares)
          throw Error("linux.resources.cpu.shares: " + std::to_string(*shares) +
                      " is out of the kernel's range (it set " + std::to_string(*got) + ")");
      }
      if (period && *period != 0) write(d.dir, "cpu.cfs_period_us", std::to_string(*period));
      if (quota && *quota != 0) write(d.dir, "cpu.cfs_quota_us", std::to_string(*quota));
      if (burst) {
        if (!exists(d.dir, "cpu.cfs_burst_us"))
          throw Error("linux.resources.cpu.burst: this kernel has no cpu.cfs_burst_us");
        write(d.dir, "cpu.cfs_burst_us", std::to_string(*burst));
      }
      if (rt_p && *rt_p != 0) write(d.dir, "cpu.rt_period_us", std::to_string(*rt_p));
      if (rt_rt && *rt_rt != 0) write(d.dir, "cpu.rt_runtime_us", std::to_string(*rt_rt));
      if (idle && exists(d.dir, "cpu.idle")) write(d.dir, "cpu.idle", std::to_string(*idle));
    }
    for (const auto& [k, v] :
         {std::pair<const char*, const std::string*>{"cpus", &c.cpus}, {"mems", &c.mems}}) {
      if (v->empty()) continue;
      const Dir& d = need("cpuset", std::string("linux.resources.cpu.") + k);
      write(d.dir, std::string("cpuset.") + k, *v);
    }
  }

  void set_blkio(const R::BlockIO& b) {
    const Dir* d = find("blkio");
    auto need_b = [&]() -> const Dir& { return need("blkio", "linux.resources.blockIO"); };
    auto weight_file = [&](const Dir& dd) -> std::string {
      if (exists(dd.dir, "blkio.weight")) return "blkio.weight";
      if (exists(dd.dir, "blkio.bfq.weight")) return "blkio.bfq.weight";
      throw Error(
          "linux.resources.blockIO.weight: this host's blkio controller has neither blkio.weight nor "
          "blkio.bfq.weight (no CFQ/BFQ I/O scheduler)");
    };
    if (b.weight.value_or(0) != 0) {
      const Dir& dd = need_b();
      write(dd.dir, weight_file(dd), std::to_string(*b.weight));
    }
    if (b.leaf_weight.value_or(0) != 0) {
      const Dir& dd = need_b();
      if (!exists(dd.dir, "blkio.leaf_weight"))
        throw Error("linux.resources.blockIO.leafWeight: this host has no blkio.leaf_weight");
      write(dd.dir, "blkio.leaf_weight", std::to_string(*b.leaf_weight));
    }
    for (const auto& w : b.weight_device) {
      const Dir& dd = need_b();
      std::string dev = std::to_string(w.major) + ":" + std::to_string(w.minor);
      if (w.weight)
        write(dd.dir, weight_file(dd) == "blkio.weight" ? "blkio.weight_device" : "blkio.bfq.weight_device",
              dev + " " + std::to_string(*w.weight));
      if (w.leaf_weight)
        write(dd.dir, "blkio.leaf_weight_device", dev + " " + std::to_string(*w.leaf_weight));
    }
    const std::pair<const std::vector<R::ThrottleDevice>*, const char*> throttles[] = {
        {&b.throttle_read_bps, "blkio.throttle.read_bps_device"},
        {&b.throttle_write_bps, "blkio.throttle.write_bps_device"},
        {&b.throttle_read_iops, "blkio.throttle.read_iops_device"},
        {&b.throttle_write_iops, "blkio.throttle.write_iops_device"}};
    for (const auto& [list, file] : throttles)
      for (const auto& t : *list) {
        const Dir& dd = d ? *d : need_b();
        write(dd.dir, file,
              std::to_string(t.major) + ":" + std::to_string(t.minor) + " " + std::to_string(t.rate));
      }
  }

  void set_hugetlb(const std::vector<R::HugepageLimit>& limits) {
    for (const auto& h : limits) {
      const std::string& size = h.page_size;
      std::string file;
      if (const Dir* d = find("hugetlb")) {
        file = "hugetlb." + size + ".limit_in_bytes";
        if (!exists(d->dir, file))
          throw Error("linux.resources.hugepageLimits: page size \"" + size +
                      "\" is not supported by this host");
        write(d->dir, file, std::to_string(h.limit));
      } else if (unified_ && exists(unified_->dir, "hugetlb." + size + ".max")) {
        write(unified_->dir, "hugetlb." + size + ".max", std::to_string(h.limit));
      } else {
        throw Error("linux.resources.hugepageLimits: no hugetlb controller for page size \"" + size +
                    "\" on this host");
      }
    }
  }

  void set_network(const R::Network& n) {
    if (n.class_id) {
      const Dir& d = need("net_cls", "linux.resources.network.classID");
      write(d.dir, "net_cls.classid", std::to_string(*n.class_id));
    }
    if (!n.priorities.empty()) {
      const Dir& d = need("net_prio", "linux.resources.network.priorities");
      for (const auto& p : n.priorities)
        write(d.dir, "net_prio.ifpriomap", p.name + " " + std::to_string(p.priority));
    }
  }

  void set_devices(const std::vector<oci::DeviceRule>& rules) {
    const Dir& d = need("devices", "linux.resources.devices");
    for (const auto& r : rules) write(d.dir, r.allow ? "devices.allow" : "devices.deny", device_rule(r));
  }

  // The rdma controller: a v1 hierarchy, or the v2 part of a hybrid host.
  void set_rdma(const std::map<std::string, R::Rdma>& rdma) {
    for (const auto& [dev, lim] : rdma) {
      const std::string line = detail::rdma_line(dev, lim);
      if (line.empty()) continue;
      if (const Dir* d = find("rdma"))
        write(d->dir, "rdma.max", line);
      else if (unified_ && exists(unified_->dir, "rdma.max"))
        write(unified_->dir, "rdma.max", line);
      else
        throw Error("linux.resources.rdma: the rdma cgroup controller is not available on this host");
    }
  }

  void destroy_dirs() {
    std::vector<std::string> errors;
    auto rm = [&](const std::string& dir) {
      try {
        detail::remove_dir(dir);
      } catch (const std::exception& e) {
        errors.push_back(e.what());
      }
    };
    for (const auto& d : dirs_) rm(d.dir);
    if (unified_) rm(unified_->dir);
    // Parents this container created, deepest first; shared ones stay.
    for (auto it = created_.rbegin(); it != created_.rend(); ++it)
      if (::rmdir(it->c_str()) < 0 && errno != ENOENT && errno != EBUSY && errno != ENOTEMPTY)
        errors.push_back("cgroup: rmdir " + *it + ": " + std::strerror(errno));
    if (!errors.empty()) throw Error(agentshim::join(errors, "; "));
  }

  Host host_;
  std::string path_;
  bool systemd_;
  std::vector<Dir> dirs_;
  std::optional<Dir> unified_;
  std::vector<std::string> created_;
};

}  // namespace

std::unique_ptr<Manager> make_v1(const Host& host, const std::string& path, bool systemd, const json* saved) {
  return std::make_unique<V1Manager>(host, path, systemd, saved);
}

}  // namespace agentshim::cgroups
