// The systemd cgroup driver's pure parts: the scope and slice a cgroupsPath
// names, the OCI resources as unit properties (runc's mapping), the CPU
// mask, the state round trip that keeps the unit, and the fallback on a host
// without systemd as PID 1 (a fake v2 tree). The D-Bus side runs in the
// systemd guest (integration/test_cgroups.py, make test-guest).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <limits>

#include "common/error.h"
#include "sandbox/cgroups/cgroups.h"
#include "tests/temp_dir.h"

using namespace agentshim;
using namespace agentshim::cgroups;
using json = nlohmann::json;

namespace {

constexpr uint64_t kInf = std::numeric_limits<uint64_t>::max();

const systemd::Property* find(const std::vector<systemd::Property>& ps, const std::string& name) {
  for (const auto& p : ps)
    if (p.name == name) return &p;
  return nullptr;
}

uint64_t u64(const std::vector<systemd::Property>& ps, const std::string& name) {
  auto* p = find(ps, name);
  if (!p) ADD_FAILURE() << name << " missing";
  return p ? std::get<uint64_t>(p->value) : 0;
}

// The unit properties of linux.resources as the config gives it.
std::vector<systemd::Property> properties(const json& resources, bool unified) {
  return systemd::resource_properties(oci::parse_resources(resources, "linux.resources"), unified);
}

TEST(CgroupsSystemd, UnitAndSliceFromTheExpandedPath) {
  auto u = systemd::unit_of(expand_systemd_path("system.slice:cri-containerd:abc", "x"));
  EXPECT_EQ(u.slice, "system.slice");
  EXPECT_EQ(u.name, "cri-containerd-abc.scope");
  // Nested slices: the scope's parent is the innermost one.
  u = systemd::unit_of(expand_systemd_path("kubepods-besteffort-pod1.slice:cri-containerd:c1", "x"));
  EXPECT_EQ(u.slice, "kubepods-besteffort-pod1.slice");
  EXPECT_EQ(u.name, "cri-containerd-c1.scope");
  // The root slice; the default prefix and name.
  u = systemd::unit_of(expand_systemd_path("-.slice:p:n", "x"));
  EXPECT_EQ(u.slice, "-.slice");
  EXPECT_EQ(u.name, "p-n.scope");
  u = systemd::unit_of(expand_systemd_path("", "id1"));
  EXPECT_EQ(u.slice, "system.slice");
  EXPECT_EQ(u.name, "agentshim-id1.scope");
  EXPECT_THROW(systemd::unit_of(""), Error);
}

TEST(CgroupsSystemd, ResourcesAsRuncMapsThemOnV2) {
  json r = {{"memory", {{"limit", 100 << 20}, {"reservation", 10 << 20}, {"swap", 150 << 20}}},
            {"cpu", {{"shares", 1024}, {"quota", 50000}, {"period", 100000}, {"cpus", "0-1,3"}}},
            {"pids", {{"limit", 42}}}};
  auto ps = properties(r, true);
  EXPECT_EQ(u64(ps, "MemoryMax"), uint64_t(100 << 20));
  EXPECT_EQ(u64(ps, "MemoryLow"), uint64_t(10 << 20));
  EXPECT_EQ(u64(ps, "MemorySwapMax"), uint64_t(50 << 20));  // OCI swap is memory+swap
  EXPECT_EQ(u64(ps, "CPUWeight"), detail::shares_to_weight(1024));
  EXPECT_EQ(u64(ps, "CPUQuotaPerSecUSec"), 500000u);
  EXPECT_EQ(u64(ps, "CPUQuotaPeriodUSec"), 100000u);
  EXPECT_EQ(u64(ps, "TasksMax"), 42u);
  ASSERT_NE(find(ps, "AllowedCPUs"), nullptr);
  EXPECT_EQ(std::get<std::vector<uint8_t>>(find(ps, "AllowedCPUs")->value), std::vector<uint8_t>{0x0b});
  EXPECT_EQ(find(ps, "MemoryLimit"), nullptr);
  EXPECT_EQ(find(ps, "CPUShares"), nullptr);
}

TEST(CgroupsSystemd, UnlimitedIsInfinityAndUnsetGivesNothing) {
  auto ps = properties(
      {{"memory", {{"limit", -1}, {"swap", -1}}}, {"cpu", {{"quota", -1}}}, {"pids", {{"limit", -1}}}}, true);
  EXPECT_EQ(u64(ps, "MemoryMax"), kInf);
  EXPECT_EQ(u64(ps, "MemorySwapMax"), kInf);
  EXPECT_EQ(u64(ps, "CPUQuotaPerSecUSec"), kInf);
  EXPECT_EQ(u64(ps, "TasksMax"), kInf);
  EXPECT_TRUE(properties(json::object(), true).empty());
  EXPECT_TRUE(properties({{"pids", {{"limit", 0}}}, {"cpu", {{"shares", 0}}}}, true).empty());
  // A partial update (runc update --pids-limit) sets only its property.
  ps = properties({{"pids", {{"limit", 13}}}}, true);
  ASSERT_EQ(ps.size(), 1u);
  EXPECT_EQ(u64(ps, "TasksMax"), 13u);
}

TEST(CgroupsSystemd, QuotaRoundsUpToSystemdsTenMillisecondSteps) {
  // 33333 / 100000 → 333330 us/s → 340000 (systemd would round down).
  auto ps = properties({{"cpu", {{"quota", 33333}, {"period", 100000}}}}, true);
  EXPECT_EQ(u64(ps, "CPUQuotaPerSecUSec"), 340000u);
  // No period: the kernel's default 100 ms.
  ps = properties({{"cpu", {{"quota", 20000}}}}, true);
  EXPECT_EQ(u64(ps, "CPUQuotaPerSecUSec"), 200000u);
  EXPECT_EQ(find(ps, "CPUQuotaPeriodUSec"), nullptr);
}

TEST(CgroupsSystemd, V1NamesOnALegacyOrHybridHost) {
  auto ps = properties({{"memory", {{"limit", 1 << 20}, {"reservation", 1}, {"swap", 3 << 20}}},
                        {"cpu", {{"shares", 512}, {"cpus", "0"}}}},
                       false);
  EXPECT_EQ(u64(ps, "MemoryLimit"), uint64_t(1 << 20));
  EXPECT_EQ(u64(ps, "CPUShares"), 512u);
  EXPECT_EQ(find(ps, "MemoryMax"), nullptr);
  EXPECT_EQ(find(ps, "MemoryLow"), nullptr);
  EXPECT_EQ(find(ps, "MemorySwapMax"), nullptr);
  EXPECT_EQ(find(ps, "AllowedCPUs"), nullptr);
}

TEST(CgroupsSystemd, CpuMask) {
  EXPECT_EQ(systemd::cpu_mask("0", "f"), std::vector<uint8_t>{1});
  EXPECT_EQ(systemd::cpu_mask("9", "f"), (std::vector<uint8_t>{0, 2}));
  EXPECT_EQ(systemd::cpu_mask("0-7, 8", "f"), (std::vector<uint8_t>{0xff, 1}));
  for (const char* bad : {"", "a", "3-1", "1-", "-1", "1,,2", "8192", "0-99999999999999999999"})
    EXPECT_THROW(systemd::cpu_mask(bad, "linux.resources.cpu.cpus"), Error) << bad;
}

// A host without systemd as PID 1 (these CI machines): the path systemd
// would use is created and managed directly; the state names no unit.
TEST(CgroupsSystemd, WithoutSystemdThePathIsManagedDirectly) {
  testutil::TempDir t;
  std::string root = t.path + "/cg";
  ASSERT_EQ(::mkdir(root.c_str(), 0755), 0);
  std::ofstream(root + "/cgroup.controllers") << "cpu memory pids\n";
  std::ofstream(root + "/cgroup.subtree_control") << "";
  std::string mountinfo = "30 20 0:26 / " + root + " rw - cgroup2 cgroup2 rw,nsdelegate\n";
  Host h = Host::parse(mountinfo, "0::/\n");
  EXPECT_FALSE(h.systemd);
  auto m = Manager::create(h, "system.slice:life:c1", "c1", true, ::getpid());
  EXPECT_EQ(m->v2_dir(), root + "/system.slice/life-c1.scope");
  json saved = m->save();
  EXPECT_EQ(saved["driver"], "systemd");
  EXPECT_FALSE(saved.contains("systemd_unit"));
  m->destroy();
  EXPECT_NE(::access((root + "/system.slice").c_str(), F_OK), 0);
}

// A state naming a unit loads as the systemd manager (set/destroy talk to
// systemd); everything else is the layout's manager, unchanged.
TEST(CgroupsSystemd, StateKeepsTheUnit) {
  testutil::TempDir t;
  std::string root = t.path + "/cg";
  ASSERT_EQ(::mkdir(root.c_str(), 0755), 0);
  std::string mountinfo = "30 20 0:26 / " + root + " rw - cgroup2 cgroup2 rw\n";
  Host h = Host::parse(mountinfo, "0::/\n");
  auto inner = make_v2(h, "/system.slice/p-n.scope", true, nullptr);
  auto m = systemd::wrap(std::move(inner), "p-n.scope", true);
  json saved = m->save();
  EXPECT_EQ(saved["systemd_unit"], "p-n.scope");
  auto back = Manager::load(saved);
  EXPECT_EQ(back->save(), saved);
  EXPECT_EQ(back->v2_dir(), root + "/system.slice/p-n.scope");
  EXPECT_TRUE(back->v2_only());
}

}  // namespace
