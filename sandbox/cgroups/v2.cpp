// cgroup v2 (unified layout): one directory, controllers enabled down the
// tree through cgroup.subtree_control, OCI resources translated to the v2
// files (cpu.weight from shares, cpu.max, memory.max/swap.max/low, io.*,
// pids.max, hugetlb.*.max), device rules as a BPF program, cgroup.freeze.
#include <unistd.h>

#include <chrono>
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

std::string i64(const json& v) {
  return std::to_string(v.get<long long>());
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

  void set(const json& r) override {
    if (!r.is_object()) throw Error("linux.resources: must be an object");
    if (r.contains("memory") && r["memory"].is_object()) set_memory(r["memory"]);
    if (r.contains("cpu") && r["cpu"].is_object()) set_cpu(r["cpu"]);
    if (r.contains("pids") && r["pids"].is_object() && r["pids"].contains("limit")) {
      long long v = r["pids"]["limit"].get<long long>();
      put("pids.max", v > 0 ? std::to_string(v) : "max", "linux.resources.pids.limit");
    }
    if (r.contains("blockIO") && r["blockIO"].is_object()) set_io(r["blockIO"]);
    if (r.contains("hugepageLimits") && r["hugepageLimits"].is_array())
      for (const auto& h : r["hugepageLimits"])
        put("hugetlb." + h.at("pageSize").get<std::string>() + ".max", i64(h.at("limit")),
            "linux.resources.hugepageLimits");
    if (r.contains("network") && r["network"].is_object() &&
        (r["network"].contains("classID") ||
         (r["network"].contains("priorities") && !r["network"]["priorities"].empty())))
      throw Error("linux.resources.network: net_cls/net_prio do not exist in cgroup v2");
    if (r.contains("devices") && r["devices"].is_array())
      attach_device_program(dir_, device_program(r["devices"]));
    if (r.contains("unified") && r["unified"].is_object())
      for (const auto& [k, v] : r["unified"].items()) {
        if (k.find('/') != std::string::npos || k.find("..") != std::string::npos)
          throw Error("linux.resources.unified: invalid file name \"" + k + "\"");
        put(k, v.is_string() ? v.get<std::string>() : v.dump(), "linux.resources.unified." + k);
      }
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

  void set_memory(const json& m) {
    std::optional<long long> limit, swap;
    if (m.contains("limit") && m["limit"].is_number_integer()) limit = m["limit"].get<long long>();
    if (m.contains("swap") && m["swap"].is_number_integer()) swap = m["swap"].get<long long>();
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
    if (m.contains("reservation") && m["reservation"].is_number_integer()) {
      long long v = m["reservation"].get<long long>();
      put("memory.low", v < 0 ? "max" : std::to_string(v), "linux.resources.memory.reservation");
    }
    if (m.contains("swappiness") && m["swappiness"].is_number_integer()) {
      long long v = m["swappiness"].get<long long>();
      if (v >= 0 && v <= 100)
        log::warn("linux.resources.memory.swappiness: cgroup v2 has no per-cgroup swappiness; ignored");
    }
    if (m.contains("disableOOMKiller") && m["disableOOMKiller"].is_boolean() &&
        m["disableOOMKiller"].get<bool>())
      throw Error("linux.resources.memory.disableOOMKiller: cgroup v2 cannot disable the OOM killer");
  }

  void set_cpu(const json& c) {
    auto num = [&](const char* k) -> std::optional<long long> {
      if (c.contains(k) && c[k].is_number_integer()) return c[k].get<long long>();
      return std::nullopt;
    };
    if (auto sh = num("shares"); sh && *sh != 0)
      put("cpu.weight", std::to_string(detail::shares_to_weight(static_cast<uint64_t>(*sh))),
          "linux.resources.cpu.shares");
    auto quota = num("quota"), period = num("period");
    if ((quota && *quota != 0) || (period && *period != 0)) {
      std::string cur = exists(dir_, "cpu.max") ? read(dir_, "cpu.max") : "max 100000";
      auto parts = split(cur, ' ');
      std::string q = parts.size() > 0 ? parts[0] : "max";
      std::string p = parts.size() > 1 ? parts[1] : "100000";
      if (quota && *quota != 0) q = *quota > 0 ? std::to_string(*quota) : "max";
      if (period && *period != 0) p = std::to_string(*period);
      put("cpu.max", q + " " + p, "linux.resources.cpu.quota/period");
    }
    if (auto b = num("burst")) put("cpu.max.burst", std::to_string(*b), "linux.resources.cpu.burst");
    if (auto i = num("idle")) put("cpu.idle", std::to_string(*i), "linux.resources.cpu.idle");
    if ((num("realtimeRuntime").value_or(0) != 0) || (num("realtimePeriod").value_or(0) != 0))
      throw Error("linux.resources.cpu.realtimeRuntime/realtimePeriod: not supported by cgroup v2");
    for (const char* k : {"cpus", "mems"})
      if (c.contains(k) && c[k].is_string() && !c[k].get<std::string>().empty())
        put(std::string("cpuset.") + k, c[k].get<std::string>(), std::string("linux.resources.cpu.") + k);
  }

  void set_io(const json& b) {
    auto weight_file = [&]() -> std::string {
      if (exists(dir_, "io.bfq.weight")) return "io.bfq.weight";
      if (exists(dir_, "io.weight")) return "io.weight";
      throw Error("linux.resources.blockIO.weight: neither io.weight nor io.bfq.weight exists in " + dir_);
    };
    if (b.contains("weight") && b["weight"].is_number_integer() && b["weight"].get<long long>() != 0) {
      std::string f = weight_file();
      long long w = b["weight"].get<long long>();
      // OCI blkio weights are 10..1000; io.weight is 1..10000.
      long long v = f == "io.weight" ? 1 + (w - 10) * 9999 / 990 : w;
      write(dir_, f, f == "io.weight" ? "default " + std::to_string(v) : std::to_string(v));
    }
    if (b.contains("weightDevice") && b["weightDevice"].is_array())
      for (const auto& w : b["weightDevice"])
        if (w.contains("weight") && w["weight"].is_number_integer()) {
          std::string f = weight_file();
          long long v = w["weight"].get<long long>();
          if (f == "io.weight") v = 1 + (v - 10) * 9999 / 990;
          write(dir_, f, i64(w.at("major")) + ":" + i64(w.at("minor")) + " " + std::to_string(v));
        }
    const std::pair<const char*, const char*> throttles[] = {{"throttleReadBpsDevice", "rbps"},
                                                             {"throttleWriteBpsDevice", "wbps"},
                                                             {"throttleReadIOPSDevice", "riops"},
                                                             {"throttleWriteIOPSDevice", "wiops"}};
    for (const auto& [key, name] : throttles) {
      if (!b.contains(key) || !b[key].is_array()) continue;
      for (const auto& t : b[key]) {
        long long rate = t.at("rate").get<long long>();
        put("io.max",
            i64(t.at("major")) + ":" + i64(t.at("minor")) + " " + name + "=" +
                (rate > 0 ? std::to_string(rate) : "max"),
            std::string("linux.resources.blockIO.") + key);
      }
    }
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
