// oci::parse_spec: the config read once into typed structs, and the
// questions the runtime asks of it.
#include <gtest/gtest.h>

#include "common/error.h"
#include "sandbox/oci.h"

using namespace agentshim;
using json = nlohmann::json;

namespace {
json full() {
  return json::parse(R"({
    "ociVersion": "1.0.2", "hostname": "box", "domainname": "example",
    "root": {"path": "rootfs", "readonly": true},
    "process": {"terminal": true, "consoleSize": {"height": 24, "width": 80},
      "user": {"uid": 1000, "gid": 100, "umask": 18, "additionalGids": [5, 6]},
      "args": ["sh", "-c", "true"], "env": ["PATH=/bin:/usr/bin", "A=b=c"], "cwd": "/work",
      "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_KILL"]},
      "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
      "noNewPrivileges": true, "oomScoreAdj": 10, "apparmorProfile": "p", "selinuxLabel": "l"},
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
               {"destination": "/data", "source": "/srv", "options": ["rbind", "ro"]}],
    "hooks": {"prestart": [{"path": "/bin/hook", "args": ["hook", "x"], "timeout": 3}],
              "poststop": [{"path": "/bin/stop", "env": []}]},
    "annotations": {"a": "b"},
    "linux": {
      "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"},
                     {"type": "user"}, {"type": "ipc"}],
      "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
      "gidMappings": [{"containerID": 1, "hostID": 200001, "size": 10}],
      "cgroupsPath": "/x/y", "resources": {"pids": {"limit": 10}},
      "seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/l.sock", "listenerMetadata": "m"},
      "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"],
      "sysctl": {"kernel.shmmax": "1"}, "rootfsPropagation": "rslave",
      "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 384}]}})");
}
}  // namespace

TEST(OciSpec, ReadsEveryPart) {
  const auto s = oci::parse_spec(full());
  EXPECT_EQ(s.oci_version, "1.0.2");
  EXPECT_EQ(s.root.path, "rootfs");
  EXPECT_TRUE(s.root.readonly);
  EXPECT_EQ(s.hostname, "box");
  EXPECT_EQ(s.domainname, "example");
  const auto& p = s.process;
  EXPECT_TRUE(p.terminal);
  ASSERT_TRUE(p.console_size);
  EXPECT_EQ(p.console_size->height, 24u);
  EXPECT_EQ(p.console_size->width, 80u);
  ASSERT_TRUE(p.user);
  EXPECT_EQ(p.uid(), 1000u);
  EXPECT_EQ(p.user->gid, 100u);
  EXPECT_EQ(p.user->umask, 18u);
  EXPECT_EQ(*p.user->additional_gids, (std::vector<std::uint32_t>{5, 6}));
  EXPECT_EQ(p.args, (std::vector<std::string>{"sh", "-c", "true"}));
  EXPECT_EQ(p.env_value("PATH"), "/bin:/usr/bin");
  EXPECT_EQ(p.env_value("A"), "b=c");
  EXPECT_EQ(p.env_value("P"), "");
  EXPECT_EQ(p.cwd_or_root(), "/work");
  ASSERT_TRUE(p.capabilities);
  EXPECT_EQ(p.capabilities->bounding, std::vector<std::string>{"CAP_CHOWN"});
  EXPECT_EQ(*p.capabilities->set("effective"), std::vector<std::string>{"CAP_KILL"});
  EXPECT_TRUE(p.capabilities->set("ambient")->empty());
  EXPECT_EQ(p.capabilities->set("bogus"), nullptr);
  ASSERT_EQ(p.rlimits.size(), 1u);
  EXPECT_EQ(p.rlimits[0].type, "RLIMIT_NOFILE");
  EXPECT_EQ(p.rlimits[0].hard, 1024u);
  EXPECT_EQ(p.rlimits[0].soft, 512u);
  EXPECT_EQ(p.no_new_privileges, true);
  EXPECT_EQ(p.oom_score_adj, 10);
  EXPECT_EQ(p.apparmor_profile, "p");
  EXPECT_EQ(p.selinux_label, "l");

  ASSERT_EQ(s.mounts.size(), 2u);
  EXPECT_FALSE(s.mounts[0].is_bind());
  EXPECT_TRUE(s.mounts[1].is_bind());
  EXPECT_TRUE(s.mounts[1].readonly());
  EXPECT_TRUE(s.has_bind_mount());

  ASSERT_EQ(s.hooks_of("prestart").size(), 1u);
  EXPECT_EQ(s.hooks_of("prestart")[0].path, "/bin/hook");
  EXPECT_EQ(s.hooks_of("prestart")[0].args, (std::vector<std::string>{"hook", "x"}));
  EXPECT_EQ(s.hooks_of("prestart")[0].timeout, 3);
  EXPECT_FALSE(s.hooks_of("prestart")[0].env);  // the runtime's environment
  ASSERT_EQ(s.hooks_of("poststop").size(), 1u);
  ASSERT_TRUE(s.hooks_of("poststop")[0].env);  // given, empty: an empty environment
  EXPECT_TRUE(s.hooks_of("poststop")[0].env->empty());
  EXPECT_TRUE(s.hooks_of("poststart").empty());
  EXPECT_EQ(s.annotations, json({{"a", "b"}}));

  const auto& l = s.linux;
  EXPECT_TRUE(s.has_new_namespace("pid"));
  EXPECT_TRUE(s.has_namespace("network"));
  EXPECT_FALSE(s.has_new_namespace("network"));
  EXPECT_FALSE(s.has_namespace("uts"));
  EXPECT_EQ(s.new_namespaces().size(), 4u);
  ASSERT_EQ(s.joined_namespaces().size(), 1u);
  EXPECT_EQ(s.joined_namespaces()[0].path, "/proc/1/ns/net");
  ASSERT_EQ(l.uid_mappings.size(), 1u);
  EXPECT_EQ(l.uid_mappings[0].host_id, 100000u);
  auto ru = oci::root_ids(l.uid_mappings);
  ASSERT_TRUE(ru);
  EXPECT_EQ(ru->host, 100000u);
  EXPECT_EQ(ru->size, 65536u);
  EXPECT_FALSE(oci::root_ids(l.gid_mappings));  // container id 0 is not mapped
  EXPECT_EQ(l.cgroups_path, "/x/y");
  EXPECT_EQ(l.resources.pids.limit, 10);
  ASSERT_NE(s.seccomp(), nullptr);
  EXPECT_EQ(l.listener_path(), "/run/l.sock");
  EXPECT_EQ(l.listener_metadata(), "m");
  EXPECT_EQ(l.masked_paths, std::vector<std::string>{"/proc/kcore"});
  EXPECT_EQ(l.readonly_paths, std::vector<std::string>{"/proc/sys"});
  EXPECT_EQ(l.rootfs_propagation, "rslave");
  ASSERT_EQ(oci::sysctls(s, false).size(), 1u);
  EXPECT_EQ(oci::sysctls(s, false)[0].path, "/proc/sys/kernel/shmmax");
  ASSERT_EQ(l.devices.size(), 1u);
  EXPECT_EQ(l.devices[0].type, 'c');
  EXPECT_EQ(l.devices[0].major, 10);
  EXPECT_EQ(l.devices[0].minor, 229);
  EXPECT_EQ(l.devices[0].file_mode, 0600u);
  EXPECT_EQ(l.devices[0].uid, 0u);
  EXPECT_EQ(s.raw, full());
}

TEST(OciSpec, DefaultsWhenAbsent) {
  const auto s = oci::parse_spec(json::parse(
      R"({"ociVersion":"1.0.2","root":{"path":"r"},"process":{"args":["sh"]},"hooks":{"prestart":null}})"));
  EXPECT_FALSE(s.root.readonly);
  EXPECT_FALSE(s.process.user);
  EXPECT_EQ(s.process.uid(), 0u);
  EXPECT_EQ(s.process.cwd_or_root(), "/");
  EXPECT_FALSE(s.process.capabilities);
  EXPECT_FALSE(s.process.oom_score_adj);
  EXPECT_EQ(s.seccomp(), nullptr);
  EXPECT_EQ(s.linux.listener_path(), "");
  EXPECT_TRUE(s.linux.namespaces.empty());
  EXPECT_EQ(s.linux.resources, oci::Resources{});
  EXPECT_TRUE(s.mounts.empty());
  EXPECT_TRUE(s.hooks_of("prestart").empty());
  EXPECT_TRUE(s.annotations.is_object());
}

TEST(OciSpec, ErrorsNameTheField) {
  auto bad = [](const std::function<void(json&)>& edit) {
    json c = full();
    edit(c);
    try {
      (void)oci::parse_spec(c);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(bad([](json& c) { c["process"]["user"]["uid"] = "x"; }).find("process.user.uid"),
            std::string::npos);
  EXPECT_NE(bad([](json& c) { c["hooks"]["prestart"][0]["timeout"] = 0; }).find("hooks.prestart[0].timeout"),
            std::string::npos);
  EXPECT_NE(bad([](json& c) { c["linux"]["devices"][0]["type"] = "x"; }).find("linux.devices[0].type"),
            std::string::npos);
  EXPECT_NE(bad([](json& c) { c["mounts"][1].erase("options"); }).find("mounts[1].type"), std::string::npos);
  EXPECT_NE(
      bad([](json& c) { c["linux"]["sysctl"]["kernel.shmmax"] = 1; }).find("linux.sysctl.kernel.shmmax"),
      std::string::npos);
}

TEST(OciSpec, ProcessAlone) {
  auto p = oci::parse_process(json::parse(R"({"args":["ls"],"user":{"uid":5,"gid":6}})"), "exec process");
  EXPECT_EQ(oci::to_json(*p.user), json({{"uid", 5}, {"gid", 6}}));
  try {
    (void)oci::parse_process(json::parse(R"({"args":[]})"), "exec process");
    FAIL() << "empty args accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("exec process.args"), std::string::npos);
  }
}

TEST(OciSpec, ResourcesAreTyped) {
  json c = full();
  c["linux"]["resources"] = json::parse(R"({
    "devices": [{"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rw"},
                {"allow": true, "type": "b", "major": -1, "access": ""},
                {"type": "c", "access": "m"}],
    "memory": {"limit": 1073741824, "reservation": -1, "swappiness": 10},
    "pids": {"limit": 64},
    "cpu": {"quota": 50000, "period": 100000, "shares": 1024}})");
  const auto s = oci::parse_spec(c);
  const auto& l = s.linux.resources;
  ASSERT_EQ(l.devices.size(), 4u);
  // Read as the cgroup drivers apply them: no type is every device, no
  // major/minor (or a negative one) is any, an empty access is rwm, no
  // "allow" is a deny.
  EXPECT_FALSE(l.devices[0].allow);
  EXPECT_TRUE(l.devices[0].every_device());
  EXPECT_EQ(l.devices[0].access, "rwm");
  EXPECT_EQ(l.devices[1].type, 'c');
  EXPECT_EQ(l.devices[1].major, 10);
  EXPECT_EQ(l.devices[1].minor, 200);
  EXPECT_FALSE(l.devices[1].every_device());
  EXPECT_TRUE(l.devices[1].reads_or_writes());
  EXPECT_EQ(l.devices[2].major, -1);
  EXPECT_EQ(l.devices[2].minor, -1);
  EXPECT_EQ(l.devices[2].access, "rwm");
  EXPECT_FALSE(l.devices[3].allow);
  EXPECT_TRUE(l.devices[3].mknod_only());
  EXPECT_FALSE(l.devices[3].reads_or_writes());
  EXPECT_EQ(oci::to_json(l.devices[0]), (json{{"allow", false}, {"type", "a"}, {"access", "rwm"}}));
  EXPECT_EQ(oci::to_json(l.devices[1]),
            (json{{"allow", true}, {"type", "c"}, {"major", 10}, {"minor", 200}, {"access", "rw"}}));
  EXPECT_EQ(l.memory.limit, 1073741824);
  EXPECT_EQ(l.memory.reservation, -1);
  EXPECT_EQ(l.pids.limit, 64);
  EXPECT_EQ(l.cpu.quota, 50000);
  EXPECT_EQ(l.cpu.period, 100000u);
  EXPECT_EQ(l.memory.swappiness, 10u);
  EXPECT_EQ(l.cpu.shares, 1024u);
  EXPECT_FALSE(l.memory.swap);
  // Not given: nullopt, no rules.
  const auto d =
      oci::parse_spec(json::parse(R"({"ociVersion":"1.0.2","root":{"path":"r"},"process":{"args":["sh"]}})"));
  EXPECT_TRUE(d.linux.resources.devices.empty());
  EXPECT_FALSE(d.linux.resources.memory.limit);
  EXPECT_FALSE(d.linux.resources.cpu.period);
  EXPECT_FALSE(d.process.no_new_privileges);
}

// Every group of linux.resources is read, and to_json gives back what was
// given (the enforced config and `update` are written with it).
TEST(OciSpec, EveryResourceGroupRoundTrips) {
  const json given = json::parse(R"({
    "devices": [{"allow": false, "type": "a", "access": "rwm"}],
    "memory": {"limit": 1048576, "reservation": 524288, "swap": 2097152, "kernel": 0, "kernelTCP": 4096,
               "swappiness": 60, "disableOOMKiller": false, "useHierarchy": true, "checkBeforeUpdate": true},
    "cpu": {"shares": 512, "quota": -1, "burst": 1000, "period": 200000, "realtimeRuntime": 950,
            "realtimePeriod": 1000, "cpus": "0-1", "mems": "0", "idle": 1},
    "pids": {"limit": -1},
    "blockIO": {"weight": 500, "leafWeight": 300,
                "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                "throttleWriteBpsDevice": [{"major": 8, "minor": 16, "rate": 2}],
                "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 3}],
                "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 0}]},
    "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
    "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]},
    "rdma": {"mlx5_0": {"hcaHandles": 3, "hcaObjects": 10000}},
    "unified": {"memory.high": "1073741824", "io.max": "8:0 rbps=1"}})");
  const oci::Resources r = oci::parse_resources(given, "linux.resources");
  EXPECT_EQ(r.memory.kernel_tcp, 4096);
  EXPECT_EQ(r.memory.check_before_update, true);
  EXPECT_EQ(r.cpu.quota, -1);
  EXPECT_EQ(r.cpu.cpus, "0-1");
  EXPECT_EQ(r.pids.limit, -1);
  EXPECT_EQ(r.block_io.weight, 500);
  ASSERT_EQ(r.block_io.weight_device.size(), 1u);
  EXPECT_EQ(r.block_io.weight_device[0].weight, 100);
  EXPECT_FALSE(r.block_io.weight_device[0].leaf_weight);
  ASSERT_EQ(r.block_io.throttle_write_bps.size(), 1u);
  EXPECT_EQ(r.block_io.throttle_write_bps[0].minor, 16);
  ASSERT_EQ(r.hugepage_limits.size(), 1u);
  EXPECT_EQ(r.hugepage_limits[0].page_size, "2MB");
  EXPECT_EQ(r.network.class_id, 1048577u);
  ASSERT_EQ(r.network.priorities.size(), 1u);
  EXPECT_EQ(r.network.priorities[0].name, "eth0");
  EXPECT_EQ(r.rdma.at("mlx5_0").hca_objects, 10000u);
  EXPECT_EQ(r.unified.at("io.max"), "8:0 rbps=1");
  EXPECT_EQ(oci::to_json(r), given);
  EXPECT_EQ(oci::parse_resources(oci::to_json(r), "x"), r);
  // Nothing given, nothing written.
  EXPECT_EQ(oci::to_json(oci::Resources{}), json::object());
}

// runc's update: what the update gives replaces the container's value (a
// list as a whole, a map key by key); everything else stays.
TEST(OciSpec, ResourcesUpdateMergesAPartialSet) {
  auto parsed = [](const char* text) { return oci::parse_resources(json::parse(text), "linux.resources"); };
  oci::Resources r = parsed(R"({
    "devices": [{"allow": false, "access": "rwm"}],
    "memory": {"limit": 1048576, "reservation": 524288},
    "cpu": {"quota": 50000, "period": 100000, "cpus": "0"},
    "pids": {"limit": 64},
    "blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1}]},
    "unified": {"memory.high": "1", "pids.max": "64"}})");
  const oci::Resources before = r;
  r.update(oci::Resources{});
  EXPECT_EQ(r, before);
  r.update(parsed(R"({
    "memory": {"limit": 2097152},
    "cpu": {"quota": -1, "mems": "0-1"},
    "blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 16, "rate": 2}]},
    "unified": {"memory.high": "2"}})"));
  EXPECT_EQ(r.memory.limit, 2097152);
  EXPECT_EQ(r.memory.reservation, 524288);  // not given: kept
  EXPECT_EQ(r.cpu.quota, -1);
  EXPECT_EQ(r.cpu.period, 100000u);
  EXPECT_EQ(r.cpu.cpus, "0");
  EXPECT_EQ(r.cpu.mems, "0-1");
  EXPECT_EQ(r.pids.limit, 64);
  EXPECT_EQ(r.devices, before.devices);
  ASSERT_EQ(r.block_io.throttle_read_bps.size(), 1u);  // the list replaced
  EXPECT_EQ(r.block_io.throttle_read_bps[0].minor, 16);
  EXPECT_EQ(r.unified.at("memory.high"), "2");
  EXPECT_EQ(r.unified.at("pids.max"), "64");  // key by key
  // An update that gives a field as null leaves it (null is "not given").
  r.update(parsed(R"({"pids": {"limit": null}, "memory": null})"));
  EXPECT_EQ(r.pids.limit, 64);
  EXPECT_EQ(r.memory.limit, 2097152);
}

TEST(OciSpec, ResourceLimitErrorsNameTheField) {
  auto error_of = [](const json& resources) {
    json c = full();
    c["linux"]["resources"] = resources;
    try {
      (void)oci::parse_spec(c);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(error_of(json::parse(R"({"devices": {}})")),
            "config.json: linux.resources.devices: expected array");
  EXPECT_EQ(error_of(json::parse(R"({"devices": [1]})")),
            "config.json: linux.resources.devices[0]: expected object");
  EXPECT_EQ(error_of(json::parse(R"({"devices": [{"allow": "yes"}]})")),
            "config.json: linux.resources.devices[0].allow: expected boolean, got string");
  EXPECT_EQ(error_of(json::parse(R"({"devices": [{"allow": true, "type": "x"}]})")),
            "config.json: linux.resources.devices[0].type: must be a, c or b, got \"x\"");
  EXPECT_EQ(error_of(json::parse(R"({"devices": [{"allow": true, "major": "1"}]})")),
            "config.json: linux.resources.devices[0].major: expected integer, got string");
  EXPECT_EQ(error_of(json::parse(R"({"devices": [{"allow": true, "access": "rwx"}]})")),
            "config.json: linux.resources.devices[0].access: \"rwx\" is not a subset of rwm");
  EXPECT_EQ(error_of(json::parse(R"({"memory": {"limit": "lots"}})")),
            "config.json: linux.resources.memory.limit: expected integer, got string");
  EXPECT_EQ(error_of(json::parse(R"({"memory": 5})")),
            "config.json: linux.resources.memory: expected object, got number");
  EXPECT_EQ(error_of(json::parse(R"({"pids": {"limit": 1.5}})")),
            "config.json: linux.resources.pids.limit: expected integer, got number");
  EXPECT_EQ(error_of(json::parse(R"({"cpu": {"period": -1}})")),
            "config.json: linux.resources.cpu.period: expected integer, got number");
  EXPECT_EQ(error_of(json::parse(R"({"devices": null, "memory": {"limit": null}})")), "");
  // Every group, each field by its spec type.
  EXPECT_EQ(error_of(json::parse(R"({"memory": {"swappiness": -1}})")),
            "config.json: linux.resources.memory.swappiness: expected integer, got number");
  EXPECT_EQ(error_of(json::parse(R"({"memory": {"disableOOMKiller": 1}})")),
            "config.json: linux.resources.memory.disableOOMKiller: expected boolean, got number");
  EXPECT_EQ(error_of(json::parse(R"({"cpu": {"cpus": 3}})")),
            "config.json: linux.resources.cpu.cpus: expected string, got number");
  EXPECT_EQ(error_of(json::parse(R"({"cpu": {"shares": "1024"}})")),
            "config.json: linux.resources.cpu.shares: expected integer, got string");
  EXPECT_EQ(error_of(json::parse(R"({"blockIO": {"weight": 70000}})")),
            "config.json: linux.resources.blockIO.weight: 70000 is above 65535");
  EXPECT_EQ(error_of(json::parse(R"({"blockIO": {"weightDevice": [{"minor": 0, "weight": 10}]}})")),
            "config.json: linux.resources.blockIO.weightDevice[0].major: required field missing");
  EXPECT_EQ(error_of(json::parse(R"({"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0}]}})")),
            "config.json: linux.resources.blockIO.throttleReadBpsDevice[0].rate: required field missing");
  EXPECT_EQ(error_of(json::parse(R"({"blockIO": {"throttleWriteIOPSDevice": {}}})")),
            "config.json: linux.resources.blockIO.throttleWriteIOPSDevice: expected array");
  EXPECT_EQ(error_of(json::parse(R"({"hugepageLimits": [{"pageSize": 2, "limit": 1}]})")),
            "config.json: linux.resources.hugepageLimits[0].pageSize: expected string, got number");
  EXPECT_EQ(error_of(json::parse(R"({"hugepageLimits": [{"pageSize": "2MB"}]})")),
            "config.json: linux.resources.hugepageLimits[0].limit: required field missing");
  EXPECT_EQ(error_of(json::parse(R"({"network": {"classID": 4294967296}})")),
            "config.json: linux.resources.network.classID: 4294967296 is above 4294967295");
  EXPECT_EQ(error_of(json::parse(R"({"network": {"priorities": [{"name": "eth0"}]}})")),
            "config.json: linux.resources.network.priorities[0].priority: required field missing");
  EXPECT_EQ(error_of(json::parse(R"({"rdma": {"mlx 0": {"hcaHandles": 1}}})")),
            "config.json: linux.resources.rdma: invalid device name \"mlx 0\"");
  EXPECT_EQ(error_of(json::parse(R"({"rdma": {"mlx5_0": {"hcaObjects": "many"}}})")),
            "config.json: linux.resources.rdma.mlx5_0.hcaObjects: expected integer, got string");
  EXPECT_EQ(error_of(json::parse(R"({"unified": {"../memory.max": "1"}})")),
            "config.json: linux.resources.unified: invalid file name \"../memory.max\"");
  EXPECT_EQ(error_of(json::parse(R"({"unified": {"memory.max": 1}})")),
            "config.json: linux.resources.unified.memory.max: expected string, got number");
  EXPECT_EQ(error_of(json::parse(R"([])")), "config.json: linux.resources: expected object, got array");
}

TEST(OciSpec, SeccompUnconfined) {
  auto with = [](const json& sc) {
    json c = full();
    if (sc.is_null())
      c["linux"].erase("seccomp");
    else
      c["linux"]["seccomp"] = sc;
    return oci::parse_spec(c).linux.seccomp_unconfined();
  };
  EXPECT_TRUE(with(nullptr));
  EXPECT_TRUE(with({{"defaultAction", "SCMP_ACT_ALLOW"}}));
  EXPECT_TRUE(with({{"defaultAction", "SCMP_ACT_ALLOW"}, {"syscalls", json::array()}}));
  EXPECT_FALSE(with({{"defaultAction", "SCMP_ACT_ERRNO"}}));
  EXPECT_FALSE(with(json::parse(
      R"({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["ptrace"], "action": "SCMP_ACT_ERRNO"}]})")));
  EXPECT_FALSE(with(json::object()));  // no defaultAction: not "allow everything"
}

TEST(OciSpec, NoNewPrivilegesKeepsWhetherItWasGiven) {
  EXPECT_EQ(
      oci::parse_process(json::parse(R"({"args":["sh"],"noNewPrivileges":false})"), "p").no_new_privileges,
      false);
  EXPECT_EQ(
      oci::parse_process(json::parse(R"({"args":["sh"],"noNewPrivileges":true})"), "p").no_new_privileges,
      true);
  EXPECT_FALSE(
      oci::parse_process(json::parse(R"({"args":["sh"],"noNewPrivileges":null})"), "p").no_new_privileges);
}
