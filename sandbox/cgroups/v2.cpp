// cgroup v2 (unified layout): one directory, controllers enabled down the
// tree through cgroup.subtree_control, OCI resources translated to the v2
// files (cpu.weight from shares, cpu.max, memory.max/swap.max/low, io.*,
// pids.max, hugetlb.*.max), device rules as a BPF program, cgroup.freeze.
#include <unistd.h>

#include <chrono>
#include <optional>
#include <thread>
#include <tuple>

#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "sandbox/cgroups/cgroups.h"

namespace agentshim::cgroups {
namespace {

using detail::exists;
using detail::read;
using detail::write;

using R = oci::Resources;

// OCI blkio weights are 10..1000; io.weight is 1..10000.
long long io_weight(long long w) {
  return 1 + (w - 10) * 9999 / 990;
}

uint64_t read_u64(const std::string& dir, const std::string& file) {
  auto t = try_read_file(dir + "/" + file);
  if (!t) return 0;
  auto v = parse_uint(trim(*t));
  return v ? *v : 0;
}

class V2Manager final : public Manager {
 public:
  V2Manager(const Host& host, std::string path, bool systemd, const json* saved)
      : host_(host), path_(std::move(path)), systemd_(systemd) {
    const MountPoint* m = host_.unified_mount();
    if (!m) throw Error("cgroups: no cgroup2 hierarchy is mounted");
    mount_ = *m;
    auto it = host_.self.find("");
    dir_ =
        detail::host_dir(mount_, detail::v2_relative_base(it == host_.self.end() ? "/" : it->second), path_);
    if (saved) {
      // The directory as it was made (a state written by an older version
      // may have resolved a relative path differently).
      if (saved->contains("dir") && (*saved)["dir"].is_string()) dir_ = (*saved)["dir"].get<std::string>();
      created_ = saved->value("created", std::vector<std::string>{});
      return;
    }
    created_ = detail::make_dirs(mount_.path, dir_);
    enable_controllers();
  }

  json save() const override {
    json saved = detail::saved_layout(host_, systemd_, path_);
    saved["dir"] = dir_;
    saved["created"] = created_;
    return saved;
  }

  void apply(pid_t pid) override { write(dir_, "cgroup.procs", std::to_string(pid)); }
  void join_self(bool include_v2) override {
    if (include_v2) apply(::getpid());
  }
  std::string v2_dir() const override { return dir_; }
  bool v2_only() const override { return true; }

  void set(const oci::Resources& r) override {
    set_memory(r.memory);
    set_cpu(r.cpu);
    if (r.pids.limit)
      put("pids.max", *r.pids.limit > 0 ? std::to_string(*r.pids.limit) : "max",
          "linux.resources.pids.limit");
    set_io(r.block_io);
    for (const auto& h : r.hugepage_limits)
      put("hugetlb." + h.page_size + ".max", std::to_string(h.limit), "linux.resources.hugepageLimits");
    if (r.network.class_id || !r.network.priorities.empty())
      throw Error("linux.resources.network: net_cls/net_prio do not exist in cgroup v2");
    if (!r.devices.empty()) attach_device_program(dir_, device_program(r.devices));
    for (const auto& [dev, lim] : r.rdma)
      if (std::string line = detail::rdma_line(dev, lim); !line.empty())
        put("rdma.max", line, "linux.resources.rdma." + dev);
    for (const auto& [k, v] : r.unified) put(k, v, "linux.resources.unified." + k);
  }

  void freeze() override {
    put("cgroup.freeze", "1", "pause");
    for (int i = 0; i < 1000; ++i) {
      if (frozen()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    write(dir_, "cgroup.freeze", "0");
    throw Error("cgroup: freezing " + dir_ + " did not complete");
  }

  void thaw() override { put("cgroup.freeze", "0", "resume"); }

  bool frozen() const override {
    auto ev = detail::read_flat_keyed(dir_, "cgroup.events");
    if (ev.count("frozen")) return ev["frozen"] == 1;
    auto f = try_read_file(dir_ + "/cgroup.freeze");
    return f && trim(*f) == "1";
  }

  std::vector<pid_t> pids() const override { return detail::read_procs_recursive(dir_); }

  json stats() const override {
    json s = json::object();
    auto cs = detail::read_flat_keyed(dir_, "cpu.stat");
    s["cpu"] = {{"usage",
                 {{"total", cs["usage_usec"] * 1000},
                  {"percpu", json::array()},
                  {"kernel", cs["system_usec"] * 1000},
                  {"user", cs["user_usec"] * 1000}}},
                {"throttling",
                 {{"periods", cs["nr_periods"]},
                  {"throttledPeriods", cs["nr_throttled"]},
                  {"throttledTime", cs["throttled_usec"] * 1000}}}};
    auto raw = detail::read_flat_keyed(dir_, "memory.stat");
    auto ev = detail::read_flat_keyed(dir_, "memory.events");
    s["memory"] = {{"cache", raw.count("file") ? raw["file"] : 0},
                   {"usage",
                    {{"usage", read_u64(dir_, "memory.current")},
                     {"max", read_u64(dir_, "memory.peak")},
                     {"failcnt", ev["max"]},
                     {"limit", read_u64(dir_, "memory.max")}}},
                   {"swap",
                    {{"usage", read_u64(dir_, "memory.swap.current")},
                     {"max", 0},
                     {"failcnt", 0},
                     {"limit", read_u64(dir_, "memory.swap.max")}}},
                   {"kernel", {{"usage", 0}, {"max", 0}, {"failcnt", 0}, {"limit", 0}}},
                   {"kernelTCP", {{"usage", 0}, {"max", 0}, {"failcnt", 0}, {"limit", 0}}},
                   {"raw", raw}};
    s["pids"] = {{"current", read_u64(dir_, "pids.current")}, {"limit", read_u64(dir_, "pids.max")}};
    json bytes = json::array(), ios = json::array();
    if (auto t = try_read_file(dir_ + "/io.stat"))
      for (const auto& line : split(*t, '\n')) {
        auto f = split(trim(line), ' ');
        if (f.size() < 2) continue;
        auto mm = split(f[0], ':');
        if (mm.size() != 2) continue;
        auto maj = parse_uint(mm[0]), min = parse_uint(mm[1]);
        if (!maj || !min) continue;
        for (std::size_t i = 1; i < f.size(); ++i) {
          auto eq = f[i].find('=');
          if (eq == std::string::npos) continue;
          auto v = parse_uint(f[i].substr(eq + 1));
          if (!v) continue;
          std::string k = f[i].substr(0, eq);
          if (k == "rbytes")
            bytes.push_back({{"major", *maj}, {"minor", *min}, {"op", "Read"}, {"value", *v}});
          if (k == "wbytes")
            bytes.push_back({{"major", *maj}, {"minor", *min}, {"op", "Write"}, {"value", *v}});
          if (k == "rios") ios.push_back({{"major", *maj}, {"minor", *min}, {"op", "Read"}, {"value", *v}});
          if (k == "wios") ios.push_back({{"major", *maj}, {"minor", *min}, {"op", "Write"}, {"value", *v}});
        }
      }
    s["blkio"] = {{"ioServiceBytesRecursive", bytes}, {"ioServicedRecursive", ios}};
    json huge = json::object();
    for (const auto& size : detail::hugepage_sizes()) {
      if (!exists(dir_, "hugetlb." + size + ".current")) continue;
      auto hev = detail::read_flat_keyed(dir_, "hugetlb." + size + ".events");
      huge[size] = {
          {"usage", read_u64(dir_, "hugetlb." + size + ".current")}, {"max", 0}, {"failcnt", hev["max"]}};
    }
    s["hugetlb"] = huge;
    return s;
  }

  uint64_t oom_kill_count() const override {
    auto ev = detail::read_flat_keyed(dir_, "memory.events");
    return ev.count("oom_kill") ? ev["oom_kill"] : 0;
  }

  void destroy() override {
    detail::remove_dir(dir_);
    for (auto it = created_.rbegin(); it != created_.rend(); ++it) ::rmdir(it->c_str());
  }

  std::vector<Hierarchy> hierarchies() const override { return {{"", "cgroup2", "", dir_}}; }
  std::string path() const override { return path_; }

 private:
  // Write a v2 file; a missing file means the controller is not enabled here.
  void put(const std::string& file, const std::string& value, const std::string& field) {
    if (!exists(dir_, file)) {
      std::string why = "the controller is not available or not enabled for this cgroup";
      auto it = not_enabled_.find(file.substr(0, file.find('.')));
      if (it != not_enabled_.end()) why = it->second;
      throw Error(field + ": " + dir_ + "/" + file + " does not exist (" + why + ")");
    }
    write(dir_, file, value);
  }

  // Delegate the controllers the container may use down the path: each
  // ancestor's cgroup.subtree_control gets the ones its cgroup.controllers
  // offers and it has not enabled yet (a parent a manager delegated to us
  // has them already; one we may not write is left alone). A refusal
  // (EBUSY: the ancestor holds processes, "no internal processes") is kept
  // for the error of a resource that needs the controller.
  void enable_controllers() {
    static const char* wanted[] = {"cpu", "cpuset", "io", "memory", "pids", "hugetlb", "rdma", "misc"};
    std::string cur = mount_.path;
    std::vector<std::string> levels;
    for (const auto& c : split(dir_.substr(mount_.path.size()), '/'))
      if (!c.empty()) levels.push_back(c);
    for (std::size_t i = 0; i < levels.size(); ++i) {
      auto words = [&](const char* file) {
        std::vector<std::string> out;
        if (auto t = try_read_file(cur + "/" + file))
          for (const auto& w : split(trim(*t), ' '))
            if (!w.empty()) out.push_back(w);
        return out;
      };
      auto have = words("cgroup.controllers");
      auto on = words("cgroup.subtree_control");
      for (const char* w : wanted) {
        if (std::find(have.begin(), have.end(), w) == have.end()) {
          if (!not_enabled_.count(w))
            not_enabled_[w] = std::string("the ") + w + " controller is not available in " + cur;
          continue;
        }
        if (std::find(on.begin(), on.end(), w) != on.end()) continue;
        try {
          write(cur, "cgroup.subtree_control", std::string("+") + w);
        } catch (const SysError& e) {
          log::debug(e.what());
          if (!not_enabled_.count(w))
            not_enabled_[w] = std::string("enabling the ") + w + " controller in " + cur +
                              "/cgroup.subtree_control failed" +
                              (e.code() == EBUSY ? std::string(" (EBUSY: that cgroup holds processes)")
                                                 : ": " + std::string(e.what()));
        }
      }
      cur += "/" + levels[i];
    }
  }

  void set_memory(const R::Memory& m) {
    const std::optional<long long> limit = m.limit, swap = m.swap;
    if (limit) put("memory.max", *limit < 0 ? "max" : std::to_string(*limit), "linux.resources.memory.limit");
    if (swap && *swap != 0) {
      std::string v;
      if (*swap < 0) {
        v = "max";
      } else {
        if (!limit || *limit < 0)
          throw Error("linux.resources.memory.swap: on cgroup v2 a swap limit needs a memory limit too");
        if (*swap < *limit)
          throw Error("linux.resources.memory.swap (" + std::to_string(*swap) + ") is below memory.limit (" +
                      std::to_string(*limit) + "); swap is memory+swap");
        v = std::to_string(*swap - *limit);
      }
      if (exists(dir_, "memory.swap.max"))
        write(dir_, "memory.swap.max", v);
      else
        log::warn(
            "linux.resources.memory.swap: this kernel has no swap accounting (memory.swap.max); ignored");
    }
    if (m.reservation)
      put("memory.low", *m.reservation < 0 ? "max" : std::to_string(*m.reservation),
          "linux.resources.memory.reservation");
    if (m.swappiness && *m.swappiness <= 100)
      log::warn("linux.resources.memory.swappiness: cgroup v2 has no per-cgroup swappiness; ignored");
    if (m.disable_oom_killer.value_or(false))
      throw Error("linux.resources.memory.disableOOMKiller: cgroup v2 cannot disable the OOM killer");
  }

  void set_cpu(const R::Cpu& c) {
    if (c.shares.value_or(0) != 0)
      put("cpu.weight", std::to_string(detail::shares_to_weight(*c.shares)), "linux.resources.cpu.shares");
    const auto quota = c.quota;
    const auto period = c.period;
    if ((quota && *quota != 0) || (period && *period != 0)) {
      std::string cur = exists(dir_, "cpu.max") ? read(dir_, "cpu.max") : "max 100000";
      auto parts = split(cur, ' ');
      std::string q = parts.size() > 0 ? parts[0] : "max";
      std::string p = parts.size() > 1 ? parts[1] : "100000";
      if (quota && *quota != 0) q = *quota > 0 ? std::to_string(*quota) : "max";
      if (period && *period != 0) p = std::to_string(*period);
      put("cpu.max", q + " " + p, "linux.resources.cpu.quota/period");
    }
    if (c.burst) put("cpu.max.burst", std::to_string(*c.burst), "linux.resources.cpu.burst");
    if (c.idle) put("cpu.idle", std::to_string(*c.idle), "linux.resources.cpu.idle");
    if (c.realtime_runtime.value_or(0) != 0 || c.realtime_period.value_or(0) != 0)
      throw Error("linux.resources.cpu.realtimeRuntime/realtimePeriod: not supported by cgroup v2");
    if (!c.cpus.empty()) put("cpuset.cpus", c.cpus, "linux.resources.cpu.cpus");
    if (!c.mems.empty()) put("cpuset.mems", c.mems, "linux.resources.cpu.mems");
  }

  void set_io(const R::BlockIO& b) {
    auto weight_file = [&]() -> std::string {
      if (exists(dir_, "io.bfq.weight")) return "io.bfq.weight";
      if (exists(dir_, "io.weight")) return "io.weight";
      throw Error("linux.resources.blockIO.weight: neither io.weight nor io.bfq.weight exists in " + dir_);
    };
    if (b.weight.value_or(0) != 0) {
      std::string f = weight_file();
      const long long w = *b.weight;
      write(dir_, f, f == "io.weight" ? "default " + std::to_string(io_weight(w)) : std::to_string(w));
    }
    for (const auto& w : b.weight_device)
      if (w.weight) {
        std::string f = weight_file();
        const long long v = f == "io.weight" ? io_weight(*w.weight) : *w.weight;
        write(dir_, f, std::to_string(w.major) + ":" + std::to_string(w.minor) + " " + std::to_string(v));
      }
    const std::tuple<const std::vector<R::ThrottleDevice>*, const char*, const char*> throttles[] = {
        {&b.throttle_read_bps, "rbps", "throttleReadBpsDevice"},
        {&b.throttle_write_bps, "wbps", "throttleWriteBpsDevice"},
        {&b.throttle_read_iops, "riops", "throttleReadIOPSDevice"},
        {&b.throttle_write_iops, "wiops", "throttleWriteIOPSDevice"}};
    for (const auto& [list, name, key] : throttles)
      for (const auto& t : *list)
        put("io.max",
            std::to_string(t.major) + ":" + std::to_string(t.minor) + " " + name + "=" +
                (t.rate > 0 ? std::to_string(t.rate) : "max"),
            std::string("linux.resources.blockIO.") + key);
  }

  Host host_;
  std::string path_;
  bool systemd_;
  MountPoint mount_;
  std::string dir_;
  std::vector<std::string> created_;
  std::map<std::string, std::string> not_enabled_;  // controller → why it is not in our cgroup
};

}  // namespace

std::unique_ptr<Manager> make_v2(const Host& host, const std::string& path, bool systemd, const json* saved) {
  return std::make_unique<V2Manager>(host, path, systemd, saved);
}

}  // namespace agentshim::cgroups
