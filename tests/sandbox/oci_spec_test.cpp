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
  EXPECT_EQ(l.resources["pids"]["limit"], 10);
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
  EXPECT_TRUE(s.linux.resources.is_object());
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

TEST(OciSpec, ResourceLimitsAreTyped) {
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
  const auto& l = s.linux.limits;
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
  EXPECT_EQ(l.memory_limit, 1073741824);
  EXPECT_EQ(l.memory_reservation, -1);
  EXPECT_EQ(l.pids_limit, 64);
  EXPECT_EQ(l.cpu_quota, 50000);
  EXPECT_EQ(l.cpu_period, 100000u);
  // The rest stays JSON for the drivers.
  EXPECT_EQ(s.linux.resources["memory"]["swappiness"], 10);
  // Not given: nullopt, no rules.
  const auto d =
      oci::parse_spec(json::parse(R"({"ociVersion":"1.0.2","root":{"path":"r"},"process":{"args":["sh"]}})"));
  EXPECT_TRUE(d.linux.limits.devices.empty());
  EXPECT_FALSE(d.linux.limits.memory_limit);
  EXPECT_FALSE(d.linux.limits.cpu_period);
  EXPECT_FALSE(d.process.no_new_privileges);
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
