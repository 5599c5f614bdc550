// The systemd cgroup driver (--systemd-cgroup, containerd's SystemdCgroup =
// true): on a host whose PID 1 is systemd the container's cgroup is a
// transient scope unit that systemd creates and owns, as runc's systemd
// driver makes it: StartTransientUnit over D-Bus (sd-bus from libsystemd)
// with Slice=, Delegate=yes, the accounting switches and PIDs= holding the
// first process of the container's cgroup (the sentinel; runc names its
// init there), the OCI limits as unit properties (SetUnitProperties, so
// `systemctl show` and systemd's own bookkeeping agree with the files), and
// StopUnit/ResetFailedUnit on delete. The files themselves are then written
// by the cgroupfs manager of the host's layout (systemd's properties cover
// only part of the OCI resources; runc does the same), which also does
// everything else (freezer, stats, OOM, devices).
//
// On a host without systemd as PID 1 (the hybrid CI machines) there is no
// D-Bus API to ask: "slice:prefix:name" is mapped to the cgroupfs path
// systemd would use and the directories are managed directly (see
// Manager::create).
#include <sys/stat.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <type_traits>
#include <variant>

#include "common/dynlib.h"
#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "sandbox/cgroups/cgroups.h"

namespace agentshim::cgroups {

namespace systemd {

namespace {
constexpr uint64_t kInfinity = std::numeric_limits<uint64_t>::max();
}  // namespace

bool booted() {
  // sd_booted(3): systemd creates this directory early at boot.
  struct stat st {};
  return ::lstat("/run/systemd/system", &st) == 0 && S_ISDIR(st.st_mode);
}

Unit unit_of(const std::string& expanded) {
  auto parts = split(expanded, '/');
  std::vector<std::string> comps;
  for (auto& p : parts)
    if (!p.empty()) comps.push_back(p);
  if (comps.empty()) throw Error("systemd: empty cgroup path");
  Unit u;
  u.name = comps.back();
  u.slice = comps.size() >= 2 ? comps[comps.size() - 2] : "-.slice";
  return u;
}

std::vector<uint8_t> cpu_mask(const std::string& list, const std::string& field) {
  // "0-3,6" → bit i of byte i/8 (systemd's AllowedCPUs= wire form).
  constexpr unsigned long long kMax = 8192;  // CONFIG_NR_CPUS's ceiling
  std::vector<uint8_t> mask;
  auto bad = [&]() { return Error(field + ": invalid CPU/node list \"" + list + "\""); };
  for (const auto& raw : split(list, ',')) {
    std::string item = trim(raw);
    if (item.empty()) throw bad();
    auto dash = item.find('-');
    auto lo = parse_uint(item.substr(0, dash));
    auto hi = dash == std::string::npos ? lo : parse_uint(item.substr(dash + 1));
    if (!lo || !hi || *lo > *hi || *hi >= kMax) throw bad();
    if (mask.size() <= *hi / 8) mask.resize(*hi / 8 + 1, 0);
    for (auto i = *lo; i <= *hi; ++i) mask[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
  }
  return mask;
}

std::vector<Property> resource_properties(const oci::Resources& r, bool unified) {
  std::vector<Property> out;
  const oci::Resources::Memory& m = r.memory;
  const auto limit = m.limit;
  if (limit && *limit != 0)
    out.push_back({unified ? "MemoryMax" : "MemoryLimit", *limit < 0 ? kInfinity : uint64_t(*limit)});
  if (auto res = m.reservation; unified && res && *res != 0)
    out.push_back({"MemoryLow", *res < 0 ? kInfinity : uint64_t(*res)});
  // OCI's swap is memory+swap; systemd's MemorySwapMax= is swap alone.
  if (auto swap = m.swap; unified && swap && *swap != 0) {
    if (*swap < 0)
      out.push_back({"MemorySwapMax", kInfinity});
    else if (limit && *limit > 0 && *swap >= *limit)
      out.push_back({"MemorySwapMax", uint64_t(*swap - *limit)});
  }
  const oci::Resources::Cpu& c = r.cpu;
  if (auto sh = c.shares; sh && *sh > 0) {
    if (unified)
      out.push_back({"CPUWeight", detail::shares_to_weight(*sh)});
    else
      out.push_back({"CPUShares", *sh});
  }
  const uint64_t period = c.period.value_or(0);
  if (period > 0) out.push_back({"CPUQuotaPeriodUSec", period});
  if (auto quota = c.quota; quota && *quota != 0) {
    uint64_t per_sec = kInfinity;
    if (*quota > 0) {
      uint64_t p = period > 0 ? period : 100000;
      per_sec = uint64_t(*quota) * 1000000 / p;
      // systemd keeps CPUQuotaPerSecUSec= in whole 10 ms steps (and
      // would write cpu.max rounded down): round up, as runc does.
      if (per_sec % 10000 != 0) per_sec = (per_sec / 10000 + 1) * 10000;
    }
    out.push_back({"CPUQuotaPerSecUSec", per_sec});
  }
  if (unified) {
    if (!c.cpus.empty()) out.push_back({"AllowedCPUs", cpu_mask(c.cpus, "linux.resources.cpu.cpus")});
    if (!c.mems.empty()) out.push_back({"AllowedMemoryNodes", cpu_mask(c.mems, "linux.resources.cpu.mems")});
  }
  if (auto l = r.pids.limit; l && *l != 0) out.push_back({"TasksMax", *l < 0 ? kInfinity : uint64_t(*l)});
  return out;
}

namespace {

// libsystemd is loaded the first time the systemd driver is used
// (common/dynlib.h): linked, it (and liblzma, libzstd, liblz4, libgcrypt,
// libcap) would be mapped by every agentshim command, about 1 ms more per
// exec (measured).
struct SdBus {
  decltype(&::sd_bus_call) sd_bus_call = nullptr;
  decltype(&::sd_bus_call_method) sd_bus_call_method = nullptr;
  decltype(&::sd_bus_error_free) sd_bus_error_free = nullptr;
  decltype(&::sd_bus_error_is_set) sd_bus_error_is_set = nullptr;
  decltype(&::sd_bus_flush_close_unref) sd_bus_flush_close_unref = nullptr;
  decltype(&::sd_bus_match_signal) sd_bus_match_signal = nullptr;
  decltype(&::sd_bus_message_append) sd_bus_message_append = nullptr;
  decltype(&::sd_bus_message_append_array) sd_bus_message_append_array = nullptr;
  decltype(&::sd_bus_message_close_container) sd_bus_message_close_container = nullptr;
  decltype(&::sd_bus_message_new_method_call) sd_bus_message_new_method_call = nullptr;
  decltype(&::sd_bus_message_open_container) sd_bus_message_open_container = nullptr;
  decltype(&::sd_bus_message_read) sd_bus_message_read = nullptr;
  decltype(&::sd_bus_message_unref) sd_bus_message_unref = nullptr;
  decltype(&::sd_bus_new) sd_bus_new = nullptr;
  decltype(&::sd_bus_open_system) sd_bus_open_system = nullptr;
  decltype(&::sd_bus_process) sd_bus_process = nullptr;
  decltype(&::sd_bus_set_address) sd_bus_set_address = nullptr;
  decltype(&::sd_bus_slot_unref) sd_bus_slot_unref = nullptr;
  decltype(&::sd_bus_start) sd_bus_start = nullptr;
  decltype(&::sd_bus_wait) sd_bus_wait = nullptr;
};

void fill(dynlib::Library& lib, SdBus& b) {
  lib.get(b.sd_bus_call, "sd_bus_call");
  lib.get(b.sd_bus_call_method, "sd_bus_call_method");
  lib.get(b.sd_bus_error_free, "sd_bus_error_free");
  lib.get(b.sd_bus_error_is_set, "sd_bus_error_is_set");
  lib.get(b.sd_bus_flush_close_unref, "sd_bus_flush_close_unref");
  lib.get(b.sd_bus_match_signal, "sd_bus_match_signal");
  lib.get(b.sd_bus_message_append, "sd_bus_message_append");
  lib.get(b.sd_bus_message_append_array, "sd_bus_message_append_array");
  lib.get(b.sd_bus_message_close_container, "sd_bus_message_close_container");
  lib.get(b.sd_bus_message_new_method_call, "sd_bus_message_new_method_call");
  lib.get(b.sd_bus_message_open_container, "sd_bus_message_open_container");
  lib.get(b.sd_bus_message_read, "sd_bus_message_read");
  lib.get(b.sd_bus_message_unref, "sd_bus_message_unref");
  lib.get(b.sd_bus_new, "sd_bus_new");
  lib.get(b.sd_bus_open_system, "sd_bus_open_system");
  lib.get(b.sd_bus_process, "sd_bus_process");
  lib.get(b.sd_bus_set_address, "sd_bus_set_address");
  lib.get(b.sd_bus_slot_unref, "sd_bus_slot_unref");
  lib.get(b.sd_bus_start, "sd_bus_start");
  lib.get(b.sd_bus_wait, "sd_bus_wait");
}

const SdBus& sdb() {
  return dynlib::load_once<SdBus>("libsystemd.so.0", "the systemd cgroup driver", fill);
}

// ---- sd-bus plumbing (RAII wrappers, typed appends) ----
struct BusUnref {
  void operator()(sd_bus* b) const { sdb().sd_bus_flush_close_unref(b); }
};
struct MsgUnref {
  void operator()(sd_bus_message* m) const { sdb().sd_bus_message_unref(m); }
};
struct SlotUnref {
  void operator()(sd_bus_slot* s) const { sdb().sd_bus_slot_unref(s); }
};
using Bus = std::unique_ptr<sd_bus, BusUnref>;
using Msg = std::unique_ptr<sd_bus_message, MsgUnref>;
using Slot = std::unique_ptr<sd_bus_slot, SlotUnref>;

struct BusError {
  sd_bus_error e = SD_BUS_ERROR_NULL;
  ~BusError() { sdb().sd_bus_error_free(&e); }
  std::string text(int r) const {
    if (sdb().sd_bus_error_is_set(&e)) return std::string(e.message ? e.message : "") + " (" + e.name + ")";
    return std::strerror(-r);
  }
};

constexpr const char* kDest = "org.freedesktop.systemd1";
constexpr const char* kPath = "/org/freedesktop/systemd1";
constexpr const char* kIface = "org.freedesktop.systemd1.Manager";

void check(int r, const std::string& what) {
  if (r < 0) throw SysError(what, -r);
}

// Root talks to systemd's private socket (no dbus-daemon needed, as
// systemctl does); the system bus otherwise.
Bus connect() {
  sd_bus* raw = nullptr;
  if (::geteuid() == 0 && ::access("/run/systemd/private", F_OK) == 0) {
    if (sdb().sd_bus_new(&raw) >= 0) {
      Bus b(raw);
      if (sdb().sd_bus_set_address(b.get(), "unix:path=/run/systemd/private") >= 0 &&
          sdb().sd_bus_start(b.get()) >= 0)
        return b;
    }
  }
  raw = nullptr;
  int r = sdb().sd_bus_open_system(&raw);
  if (r < 0) throw SysError("systemd: connect to /run/systemd/private or the system bus", -r);
  return Bus(raw);
}

void append_property(sd_bus_message* m, const Property& p) {
  std::string ctx = "systemd: property " + p.name;
  check(sdb().sd_bus_message_open_container(m, 'r', "sv"), ctx);
  check(sdb().sd_bus_message_append(m, "s", p.name.c_str()), ctx);
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) {
          check(sdb().sd_bus_message_append(m, "v", "b", int(v)), ctx);
        } else if constexpr (std::is_same_v<T, uint64_t>) {
          check(sdb().sd_bus_message_append(m, "v", "t", v), ctx);
        } else if constexpr (std::is_same_v<T, std::string>) {
          check(sdb().sd_bus_message_append(m, "v", "s", v.c_str()), ctx);
        } else if constexpr (std::is_same_v<T, std::vector<uint32_t>>) {
          check(sdb().sd_bus_message_open_container(m, 'v', "au"), ctx);
          check(sdb().sd_bus_message_append_array(m, 'u', v.data(), v.size() * sizeof(uint32_t)), ctx);
          check(sdb().sd_bus_message_close_container(m), ctx);
        } else {
          check(sdb().sd_bus_message_open_container(m, 'v', "ay"), ctx);
          check(sdb().sd_bus_message_append_array(m, 'y', v.data(), v.size()), ctx);
          check(sdb().sd_bus_message_close_container(m), ctx);
        }
      },
      p.value);
  check(sdb().sd_bus_message_close_container(m), ctx);
}

void append_properties(sd_bus_message* m, const std::vector<Property>& props) {
  check(sdb().sd_bus_message_open_container(m, 'a', "(sv)"), "systemd: properties");
  for (const auto& p : props) append_property(m, p);
  check(sdb().sd_bus_message_close_container(m), "systemd: properties");
}

// A job systemd runs for us: wait for its JobRemoved signal (subscribed
// before the call, so it cannot be missed) and return its result ("done",
// "failed", "timeout", ...).
struct JobWait {
  std::string job;
  std::string result;
  bool done = false;
  Slot slot;

  explicit JobWait(sd_bus* bus) {
    sd_bus_slot* s = nullptr;
    // No sender in the match: a direct connection (the private socket) has no
    // bus names, so its messages carry none (systemctl matches the same way).
    check(
        sdb().sd_bus_match_signal(bus, &s, nullptr, kPath, kIface, "JobRemoved", &JobWait::on_removed, this),
        "systemd: subscribe to JobRemoved");
    slot.reset(s);
    // Direct connections get signals only once subscribed.
    BusError err;
    sdb().sd_bus_call_method(bus, kDest, kPath, kIface, "Subscribe", &err.e, nullptr, "");
  }

  static int on_removed(sd_bus_message* m, void* data, sd_bus_error*) {
    auto* self = static_cast<JobWait*>(data);
    uint32_t id = 0;
    const char *job = nullptr, *unit = nullptr, *result = nullptr;
    if (sdb().sd_bus_message_read(m, "uoss", &id, &job, &unit, &result) < 0) return 0;
    if (!self->job.empty() && job && self->job == job) {
      self->result = result ? result : "";
      self->done = true;
    }
    return 0;
  }

  std::string wait(sd_bus* bus, const std::string& what) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!done) {
      int r = sdb().sd_bus_process(bus, nullptr);
      check(r, "systemd: " + what + ": read from the bus");
      if (r > 0) continue;
      auto left = deadline - std::chrono::steady_clock::now();
      if (left <= std::chrono::seconds(0))
        throw Error("systemd: " + what + ": job " + job + " did not finish within 30 s");
      r = sdb().sd_bus_wait(bus,
                            uint64_t(std::chrono::duration_cast<std::chrono::microseconds>(left).count()));
      check(r, "systemd: " + what + ": wait on the bus");
    }
    return result;
  }
};

// Call a Manager method that returns a job ("o") and wait for the job.
// Returns the D-Bus error name on a refusal (nothing thrown), "" when the job
// ran; throws when the job's result is not "done".
std::string run_job(sd_bus* bus, Msg msg, const std::string& what) {
  JobWait w(bus);
  BusError err;
  sd_bus_message* reply = nullptr;
  int r = sdb().sd_bus_call(bus, msg.get(), 0, &err.e, &reply);
  Msg rep(reply);
  if (r < 0) {
    if (sdb().sd_bus_error_is_set(&err.e)) return err.e.name;
    throw SysError("systemd: " + what, -r);
  }
  const char* job = nullptr;
  check(sdb().sd_bus_message_read(rep.get(), "o", &job), "systemd: " + what + ": reply");
  w.job = job;
  std::string result = w.wait(bus, what);
  if (result != "done") throw Error("systemd: " + what + ": the job ended \"" + result + "\"");
  return "";
}

Msg method(sd_bus* bus, const char* name) {
  sd_bus_message* m = nullptr;
  check(sdb().sd_bus_message_new_method_call(bus, &m, kDest, kPath, kIface, name),
        std::string("systemd: ") + name);
  return Msg(m);
}

void reset_failed(sd_bus* bus, const std::string& unit) {
  BusError err;
  sdb().sd_bus_call_method(bus, kDest, kPath, kIface, "ResetFailedUnit", &err.e, nullptr, "s", unit.c_str());
}

void start_scope(const Unit& u, const std::string& id, pid_t pid) {
  Bus bus = connect();
  std::vector<Property> props = {
      {"Description", std::string("agentshim container ") + id},
      {"Slice", u.slice},
      {"Delegate", true},
      {"DefaultDependencies", false},
      {"MemoryAccounting", true},
      {"CPUAccounting", true},
      {"IOAccounting", true},
      {"TasksAccounting", true},
      {"PIDs", std::vector<uint32_t>{uint32_t(pid)}},
  };
  std::string what = "StartTransientUnit " + u.name;
  for (int attempt = 0;; ++attempt) {
    Msg m = method(bus.get(), "StartTransientUnit");
    check(sdb().sd_bus_message_append(m.get(), "ss", u.name.c_str(), "fail"), "systemd: " + what);
    append_properties(m.get(), props);
    check(sdb().sd_bus_message_append(m.get(), "a(sa(sv))", 0), "systemd: " + what);
    std::string refused = run_job(bus.get(), std::move(m), what);
    if (refused.empty()) return;
    // A failed unit of the same name (a container of this name that died
    // badly) is reset and the start retried once, as runc does.
    if (refused == "org.freedesktop.systemd1.UnitExists" && attempt == 0) {
      reset_failed(bus.get(), u.name);
      continue;
    }
    throw Error("systemd: " + what + ": refused (" + refused + ")");
  }
}

void set_properties(const std::string& unit, const std::vector<Property>& props) {
  Bus bus = connect();
  Msg m = method(bus.get(), "SetUnitProperties");
  std::string what = "SetUnitProperties " + unit;
  check(sdb().sd_bus_message_append(m.get(), "sb", unit.c_str(), 1), "systemd: " + what);
  append_properties(m.get(), props);
  BusError err;
  int r = sdb().sd_bus_call(bus.get(), m.get(), 0, &err.e, nullptr);
  if (r < 0) {
    std::string names;
    for (const auto& p : props) names += (names.empty() ? "" : ", ") + p.name;
    throw Error("systemd: " + what + " (" + names + "): " + err.text(r));
  }
}

void stop_unit(const std::string& unit) {
  Bus bus = connect();
  Msg m = method(bus.get(), "StopUnit");
  check(sdb().sd_bus_message_append(m.get(), "ss", unit.c_str(), "replace"), "systemd: StopUnit " + unit);
  std::string refused = run_job(bus.get(), std::move(m), "StopUnit " + unit);
  // Gone already (systemd stops a scope whose processes have all exited).
  if (!refused.empty() && refused != "org.freedesktop.systemd1.NoSuchUnit")
    throw Error("systemd: StopUnit " + unit + ": refused (" + refused + ")");
  reset_failed(bus.get(), unit);
}

// The container's cgroup as a systemd scope; the files through the layout's
// cgroupfs manager (`inner`), which was made for the scope's directory.
class SystemdManager final : public Manager {
 public:
  SystemdManager(std::unique_ptr<Manager> inner, std::string unit, bool unified)
      : inner_(std::move(inner)), unit_(std::move(unit)), unified_(unified) {}

  json save() const override {
    json s = inner_->save();
    s["systemd_unit"] = unit_;
    return s;
  }
  void apply(pid_t pid) override { inner_->apply(pid); }
  void join_self(bool include_v2) override { inner_->join_self(include_v2); }
  std::string v2_dir() const override { return inner_->v2_dir(); }
  bool v2_only() const override { return inner_->v2_only(); }
  void set(const oci::Resources& resources) override {
    // systemd first (its idea of the unit's limits), then the files: the
    // properties cover only part of the OCI resources, and systemd rounds
    // some (CPUQuotaPerSecUSec) where the file takes the exact value.
    auto props = resource_properties(resources, unified_);
    if (!props.empty()) set_properties(unit_, props);
    inner_->set(resources);
  }
  void freeze() override { inner_->freeze(); }
  void thaw() override { inner_->thaw(); }
  bool frozen() const override { return inner_->frozen(); }
  std::vector<pid_t> pids() const override { return inner_->pids(); }
  json stats() const override { return inner_->stats(); }
  uint64_t oom_kill_count() const override { return inner_->oom_kill_count(); }
  void destroy() override {
    // Sub-cgroups the container made go first (systemd would not remove
    // a delegated subtree's children itself), then the unit.
    std::string err;
    try {
      inner_->destroy();
    } catch (const std::exception& e) {
      err = e.what();
    }
    stop_unit(unit_);
    if (!err.empty()) {
      // After the stop the directory may be gone; retry once.
      try {
        inner_->destroy();
      } catch (const std::exception& e) {
        throw Error(err);
      }
    }
  }
  std::vector<Hierarchy> hierarchies() const override { return inner_->hierarchies(); }
  std::string path() const override { return inner_->path(); }

 private:
  std::unique_ptr<Manager> inner_;
  std::string unit_;
  bool unified_;
};

}  // namespace

std::unique_ptr<Manager> wrap(std::unique_ptr<Manager> inner, const std::string& unit, bool unified) {
  return std::make_unique<SystemdManager>(std::move(inner), unit, unified);
}

std::unique_ptr<Manager> create_scope(const Host& host, const std::string& path, const std::string& id,
                                      pid_t pid) {
  Unit u = unit_of(path);
  start_scope(u, id, pid);
  bool unified = host.layout == Layout::unified;
  // Should this fail, the scope holds only the sentinel, which exits with
  // the failed create: systemd then stops and removes the empty scope.
  std::unique_ptr<Manager> inner =
      unified ? make_v2(host, path, true, nullptr) : make_v1(host, path, true, nullptr);
  return wrap(std::move(inner), u.name, unified);
}

}  // namespace systemd

}  // namespace agentshim::cgroups
