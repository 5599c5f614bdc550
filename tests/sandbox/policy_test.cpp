#include "sandbox/policy.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "common/error.h"
#include "common/util.h"
#include "sandbox/container.h"
#include "sandbox/oci.h"
#include "sandbox/seccomp_profile.h"
#include "tests/temp_dir.h"

using namespace agentshim;
using json = nlohmann::json;

namespace {
std::string error_of(const json& p) {
  try {
    policy::validate(p, "policy test.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Policy, DefaultsAreTheHardenedOnes) {
  json b = policy::builtin();
  EXPECT_EQ(b["audit"]["on_log_failure"], "stop");
  EXPECT_EQ(b["audit"]["observe_exec"], true);
  EXPECT_EQ(b["audit"]["strict"], false);
  EXPECT_EQ(policy::validate(json::object(), "x"), b);
}

TEST(Policy, OverridesAreMergedOverDefaults) {
  json p = policy::validate({{"audit", {{"key_type", "ecdsa-p256"}, {"strict", true}}}}, "x");
  EXPECT_EQ(p["audit"]["key_type"], "ecdsa-p256");
  EXPECT_EQ(p["audit"]["strict"], true);
  EXPECT_EQ(p["audit"]["on_log_failure"], "stop");
}

// policy::parse: the validated document as typed sections, what it leaves
// out (a document an older version saved) from the built-in default.
TEST(Policy, ParseTypesEverySectionWithTheBuiltInDefaults) {
  const policy::Policy b = policy::parse(policy::builtin());
  EXPECT_FALSE(b.refuse);
  EXPECT_FALSE(b.userns_auto);
  EXPECT_EQ(json(b.capabilities.allowed), policy::builtin()["capabilities"]["allowed"]);
  EXPECT_TRUE(b.capabilities.no_new_privileges);
  EXPECT_EQ(b.seccomp.profile, "builtin");
  EXPECT_TRUE(b.seccomp.loaded.is_null());
  EXPECT_TRUE(b.filesystem.readonly_root);
  EXPECT_EQ(b.filesystem.tmpfs_max_size, 64LL << 20);
  EXPECT_EQ(b.filesystem.scratch_paths, (std::vector<std::string>{"/tmp", "/var/tmp", "$HOME"}));
  EXPECT_FALSE(b.filesystem.scratch_size);  // "memory"
  EXPECT_EQ(b.namespaces.allow_join, (std::vector<std::string>{"ipc", "uts", "network"}));
  EXPECT_EQ(b.network.mode, "confined");
  EXPECT_EQ(b.network.proxy_port, 3128);
  EXPECT_EQ(b.network.limits.at("max_connections"), 64);
  EXPECT_TRUE(b.network.request_rules.empty());
  EXPECT_EQ(b.may_widen, (std::vector<std::string>{"dev.agentshim.egress.allow"}));
  EXPECT_TRUE(b.credentials.empty());
  EXPECT_EQ(b.audit.dir, "/var/lib/agentshim");
  EXPECT_EQ(b.audit.key_type, "ed25519");
  EXPECT_TRUE(b.audit.stop_on_log_failure);
  EXPECT_EQ(b.audit.max_file_bytes, 68719476736ULL);
  EXPECT_EQ(b.audit.max_event_log_bytes, 268435456ULL);

  const policy::Policy v = policy::parse(policy::validate(
      {{"mode", "refuse"},
       {"userns", "auto"},
       {"filesystem", {{"tmpfs_max_size", "1m"}, {"scratch", {{"size", "2m"}}}}},
       {"devices", {{"allowed", {{{"type", "c"}, {"major", 10}, {"minor", 229}}}}}},
       {"limits", {{"exec_time_seconds", 30}}},
       {"network",
        {{"limits", {{"max_pending", 7}}}, {"request_rules", {{{"host", "a.example"}, {"action", "deny"}}}}}},
       {"audit", {{"on_log_failure", "continue"}, {"tsa_url", "http://tsa.example"}}}},
      "x"));
  EXPECT_TRUE(v.refuse);
  EXPECT_TRUE(v.userns_auto);
  EXPECT_EQ(v.filesystem.tmpfs_max_size, 1LL << 20);
  EXPECT_EQ(v.filesystem.scratch_size, 2LL << 20);
  ASSERT_EQ(v.devices.allowed.size(), 1u);
  EXPECT_EQ(v.devices.allowed[0].major, 10);
  EXPECT_EQ(v.devices.allowed[0].minor, 229);
  EXPECT_EQ(v.exec_time_limit_s, 30);
  EXPECT_EQ(v.network.limits.at("max_pending"), 7);
  EXPECT_EQ(v.network.limits.at("max_connections"), 64);  // merged, not replaced
  EXPECT_TRUE(v.network.request_rules.covers("a.example", 443));
  EXPECT_FALSE(v.audit.stop_on_log_failure);
  EXPECT_EQ(v.audit.tsa_url, "http://tsa.example");

  // A document saved before a key existed: the key's default.
  json old = policy::builtin();
  old["namespaces"].erase("allow_host");
  old["audit"].erase("max_event_log_bytes");
  old["network"]["allow"] = {"api.example.com:443"};
  const policy::Policy o = policy::parse(old);
  EXPECT_TRUE(o.namespaces.allow_host.empty());
  EXPECT_EQ(o.audit.max_event_log_bytes, 268435456ULL);
  EXPECT_EQ(o.network.allow, (std::vector<std::string>{"api.example.com:443"}));
  EXPECT_EQ(o.doc, old);  // kept as given (saved, evaluated again by `update`)

  // Not a document validate() gives: an error, never a default.
  EXPECT_THROW(policy::parse(json::array()), Error);
  EXPECT_THROW(policy::parse({{"capabilities", {{"allowed", "CAP_KILL"}}}}), Error);
  EXPECT_THROW(policy::parse({{"filesystem", {{"tmpfs_max_size", "lots"}}}}), Error);
}

TEST(Policy, ErrorsNameTheFileAndTheKey) {
  EXPECT_NE(error_of({{"audti", json::object()}}).find("unknown policy section \"audti\""),
            std::string::npos);
  EXPECT_NE(error_of({{"audit", {{"stric", true}}}}).find("audit.stric"), std::string::npos);
  EXPECT_NE(error_of({{"audit", {{"key_type", "rsa"}}}}).find("audit.key_type"), std::string::npos);
  EXPECT_NE(error_of({{"audit", {{"on_log_failure", "ignore"}}}}).find("audit.on_log_failure"),
            std::string::npos);
  EXPECT_NE(error_of({{"audit", {{"dir", "relative/dir"}}}}).find("absolute"), std::string::npos);
  EXPECT_NE(error_of({{"audit", {{"strict", "yes"}}}}).find("true or false"), std::string::npos);
  EXPECT_NE(error_of(json::array()).find("policy test.json"), std::string::npos);
}

TEST(Policy, LoadReportsBadFiles) {
  testutil::TempDir t("policy-test");
  const std::string d = t.path;
  write_file(d + "/p.json", "{\"audit\": ");
  try {
    policy::load(d + "/p.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(d + "/p.json"), std::string::npos);
  }
  EXPECT_THROW(policy::load(d + "/missing.json"), Error);
  write_file(d + "/ok.json", R"({"audit": {"on_log_failure": "continue"}})");
  EXPECT_EQ(policy::load(d + "/ok.json")["audit"]["on_log_failure"], "continue");
}

// ---- the full document ----

TEST(Policy, DefaultJsonFileIsTheBuiltIn) {
  json file = json::parse(read_file(std::string(AGENTSHIM_SOURCE_DIR) + "/configs/policy/default.json"));
  EXPECT_EQ(file, policy::builtin());
  EXPECT_EQ(policy::validate(file, "x"), policy::builtin());
  json b = policy::builtin();
  EXPECT_EQ(b["mode"], "enforce");
  EXPECT_EQ(b["seccomp"]["profile"], "builtin");
  EXPECT_EQ(b["filesystem"]["readonly_root"], true);
  EXPECT_EQ(b["network"]["mode"], "confined");
  EXPECT_EQ(b["userns"], "off");
  // Docker's default set minus NET_RAW, MKNOD, SETFCAP, AUDIT_WRITE.
  std::set<std::string> caps;
  for (const auto& c : b["capabilities"]["allowed"]) caps.insert(c);
  EXPECT_EQ(caps, (std::set<std::string>{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID",
                                         "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
                                         "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT"}));
  // At least runc's masked and read-only paths.
  for (const char* p :
       {"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
        "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"})
    EXPECT_NE(std::find(b["filesystem"]["masked_paths"].begin(), b["filesystem"]["masked_paths"].end(), p),
              b["filesystem"]["masked_paths"].end())
        << p;
  for (const char* p : {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"})
    EXPECT_NE(
        std::find(b["filesystem"]["readonly_paths"].begin(), b["filesystem"]["readonly_paths"].end(), p),
        b["filesystem"]["readonly_paths"].end())
        << p;
}

TEST(Policy, StrictExampleIsValidAndStricter) {
  json strict = json::parse(read_file(std::string(AGENTSHIM_SOURCE_DIR) + "/configs/policy/strict.json"));
  json v = policy::validate(strict, "strict.json");
  EXPECT_EQ(v["mode"], "refuse");
  EXPECT_LT(v["capabilities"]["allowed"].size(), policy::builtin()["capabilities"]["allowed"].size());
  EXPECT_EQ(v["annotations"]["may_widen"], json::array());
}

TEST(Policy, ValidationErrorsNameTheKey) {
  auto err = [](const json& p) { return error_of(p); };
  EXPECT_EQ(err({{"capabilities", {{"allowed", {"CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_FOO"}}}}}),
            "policy test.json: capabilities.allowed[3]: unknown capability \"CAP_FOO\"");
  EXPECT_NE(err({{"capabilities", {{"alowed", json::array()}}}}).find("unknown key capabilities.alowed"),
            std::string::npos);
  EXPECT_NE(err({{"mode", "lenient"}}).find("mode: must be \"enforce\" or \"refuse\""), std::string::npos);
  EXPECT_NE(err({{"seccomp", {{"profile", "rel/p.json"}}}}).find("seccomp.profile"), std::string::npos);
  EXPECT_NE(
      err({{"seccomp", {{"stack_on_config", 1}}}}).find("seccomp.stack_on_config: must be true or false"),
      std::string::npos);
  EXPECT_NE(err({{"filesystem", {{"tmpfs_max_size", "lots"}}}}).find("filesystem.tmpfs_max_size"),
            std::string::npos);
  EXPECT_NE(err({{"filesystem", {{"masked_paths", {"/proc/kcore", "proc/keys"}}}}})
                .find("filesystem.masked_paths[1]"),
            std::string::npos);
  EXPECT_NE(err({{"namespaces", {{"allow_join", {"user"}}}}}).find("namespaces.allow_join[0]"),
            std::string::npos);
  EXPECT_NE(
      err({{"devices", {{"allowed", {{{"type", "b"}, {"major", 8}, {"minor", 0}}}}}}})
          .find("devices.allowed[0].type: block devices are not listed here; devices.allow_block_devices"),
      std::string::npos);
  EXPECT_NE(
      err({{"devices", {{"allow_block_devices", "yes"}}}}).find("devices.allow_block_devices: must be true"),
      std::string::npos);
  EXPECT_NE(err({{"namespaces", {{"allow_host", {"time"}}}}}).find("namespaces.allow_host[0]"),
            std::string::npos);
  // The host's network namespace cannot hold the internal network's proxy:
  // allow_host "network" needs network.mode passthrough, said at load.
  EXPECT_NE(err({{"namespaces", {{"allow_host", {"network"}}}}})
                .find("namespaces.allow_host: \"network\" needs network.mode \"passthrough\""),
            std::string::npos);
  EXPECT_EQ(err({{"namespaces", {{"allow_host", {"network", "pid", "user"}}}},
                 {"network", {{"mode", "passthrough"}}}}),
            "");
  // The confined network's rules must stay out of the container's reach.
  EXPECT_NE(err({{"capabilities", {{"allowed", {"CAP_NET_ADMIN"}}}}})
                .find("CAP_NET_ADMIN cannot be allowed with network.mode \"confined\""),
            std::string::npos);
  EXPECT_NE(err({{"capabilities", {{"allowed", {"CAP_NET_RAW"}}}}}).find("CAP_NET_RAW cannot be allowed"),
            std::string::npos);
  EXPECT_EQ(err({{"capabilities", {{"allowed", {"CAP_NET_RAW"}}}}, {"network", {{"mode", "internal"}}}}), "");
  EXPECT_NE(err({{"devices", {{"allowed", {{{"type", "c"}, {"major", 10}}}}}}}).find("devices.allowed[0]"),
            std::string::npos);
  EXPECT_NE(err({{"resources", {{"maximum", {{"memory", "huge"}}}}}}).find("resources.maximum.memory"),
            std::string::npos);
  EXPECT_NE(err({{"resources", {{"defaults", {{"pids", 9000}}}}}}).find("resources.defaults.pids: is above"),
            std::string::npos);
  EXPECT_NE(err({{"resources", {{"defaults", {{"cpus", "-1"}}}}}}).find("resources.defaults.cpus"),
            std::string::npos);
  EXPECT_NE(
      err({{"resources", {{"defaults", {{"swap", "1g"}}}}}}).find("unknown key resources.defaults.swap"),
      std::string::npos);
  EXPECT_NE(err({{"limits", {{"exec_time_seconds", -1}}}}).find("limits.exec_time_seconds"),
            std::string::npos);
  EXPECT_NE(err({{"network", {{"allow", {"exa mple.com"}}}}}).find("network.allow[0]"), std::string::npos);
  EXPECT_NE(err({{"network", {{"allow", {"ok.example:443", "example.com:99999"}}}}}).find("network.allow[1]"),
            std::string::npos);
  EXPECT_NE(err({{"network", {{"allow", {"10.0.0.1/8"}}}}}).find("network.allow[0]"), std::string::npos);
  // A port is optional and names compare case-insensitively (docs/NETWORK.md).
  EXPECT_NO_THROW(
      policy::validate({{"network", {{"allow", {"example.com", "Example.com:443", "*.pypi.org"}}}}}, "x"));
  EXPECT_NE(err({{"network", {{"proxy_port", 70000}}}}).find("network.proxy_port"), std::string::npos);
  EXPECT_NE(err({{"network", {{"dns", "open"}}}}).find("network.dns"), std::string::npos);
  EXPECT_NE(err({{"network", {{"limits", {{"max_conns", 3}}}}}}).find("unknown key network.limits.max_conns"),
            std::string::npos);
  EXPECT_NE(
      err({{"annotations", {{"may_widen", {"dev.agentshim.caps.add"}}}}}).find("annotations.may_widen[0]"),
      std::string::npos);
  EXPECT_NE(err({{"userns", "sometimes"}}).find("userns"), std::string::npos);
  // Valid rules of every shape.
  EXPECT_EQ(
      err({{"network",
            {{"allow", {"api.example.com:443", "*.pypi.org:443", "10.0.0.1:80", "[2001:db8::1]:443"}}}}}),
      "");
}

TEST(Policy, PartialSectionsKeepTheOtherDefaults) {
  json p = policy::validate({{"network", {{"allow", {"api.example.com:443"}}}}, {"mode", "refuse"}}, "x");
  json b = policy::builtin();
  EXPECT_EQ(p["network"]["allow"], json::array({"api.example.com:443"}));
  EXPECT_EQ(p["network"]["mode"], "confined");
  EXPECT_EQ(p["network"]["proxy_port"], 3128);
  EXPECT_EQ(p["network"]["limits"], b["network"]["limits"]);
  EXPECT_EQ(p["capabilities"], b["capabilities"]);
  EXPECT_EQ(p["mode"], "refuse");
  json r = policy::validate({{"resources", {{"maximum", {{"memory", "16g"}}}}}}, "x");
  EXPECT_EQ(r["resources"]["maximum"]["memory"], "16g");
  EXPECT_EQ(r["resources"]["maximum"]["pids"], 4096);
  EXPECT_EQ(r["resources"]["defaults"], b["resources"]["defaults"]);
}

TEST(Policy, Sizes) {
  EXPECT_EQ(policy::parse_size("64m"), 64LL << 20);
  EXPECT_EQ(policy::parse_size("1G"), 1LL << 30);
  EXPECT_EQ(policy::parse_size("512k"), 512LL << 10);
  EXPECT_EQ(policy::parse_size("65536k"), 64LL << 20);
  EXPECT_EQ(policy::parse_size("2mb"), 2LL << 20);
  EXPECT_EQ(policy::parse_size(4096), 4096);
  EXPECT_EQ(policy::parse_size("1000"), 1000);
  EXPECT_FALSE(policy::parse_size("50%"));
  EXPECT_FALSE(policy::parse_size("m"));
  EXPECT_FALSE(policy::parse_size("-1"));
  EXPECT_FALSE(policy::parse_size("99999999999999999999t"));
}

TEST(Policy, SeccompProfileFromAPathIsLoadedAndCompiled) {
  testutil::TempDir t("policy-test");
  const std::string d = t.path;
  write_file(
      d + "/prof.json",
      R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]})");
  write_file(d + "/bad.json", R"({"defaultAction": "SCMP_ACT_SOMETIMES"})");
  write_file(d + "/p.json", "{\"seccomp\": {\"profile\": \"" + d + "/prof.json\"}}");
  write_file(d + "/q.json", "{\"seccomp\": {\"profile\": \"" + d + "/bad.json\"}}");
  json p = policy::load(d + "/p.json");
  auto r = policy::evaluate(
      p, json{{"ociVersion", "1.0.2"}, {"root", {{"path", "rootfs"}}}, {"process", {{"args", {"sh"}}}}});
  EXPECT_EQ(r.extra_seccomp["syscalls"][0]["names"][0], "read");
  try {
    policy::load(d + "/q.json");
    ADD_FAILURE() << "a bad seccomp profile was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("seccomp.profile"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("SCMP_ACT_SOMETIMES"), std::string::npos) << e.what();
  }
}

// ---- enforcement ----

namespace {

// runc spec's shape (what `runc spec` writes), terminal off.
json runc_config() {
  return json::parse(R"({
    "ociVersion": "1.0.2-dev",
    "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
      "env": ["PATH=/usr/bin:/bin", "TERM=xterm"], "cwd": "/",
      "capabilities": {"bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                       "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                       "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                       "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]},
      "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
      "noNewPrivileges": true},
    "root": {"path": "rootfs", "readonly": true},
    "hostname": "runc",
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
      {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
      {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}],
    "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]},
      "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
      "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]}
  })");
}

// runc's shape already within the default policy (no CAP_AUDIT_WRITE, a
// cgroup namespace): refuse mode finds nothing to object to.
json clean_config() {
  json c = runc_config();
  for (const char* set : {"bounding", "effective", "permitted", "ambient"})
    c["process"]["capabilities"][set] = {"CAP_KILL", "CAP_NET_BIND_SERVICE"};
  c["linux"]["namespaces"].push_back({{"type", "cgroup"}});
  return c;
}

// privileged_request on the config as create reads it.
std::optional<std::string> privileged(const json& cfg) {
  return policy::privileged_request(oci::parse_spec(cfg));
}

// apply_exec on `proc` as exec reads it (oci::parse_process); what it
// decided is written back to the fields the assertions read.
json exec_apply(const policy::ExecSettings& settings, json& proc) {
  oci::Process p = oci::parse_process(proc, "exec process");
  json d = policy::apply_exec(settings, p);
  if (p.capabilities)
    for (const char* set : {"bounding", "effective", "permitted", "inheritable", "ambient"})
      proc["capabilities"][set] = *p.capabilities->set(set);
  if (p.no_new_privileges)
    proc["noNewPrivileges"] = *p.no_new_privileges;
  else
    proc.erase("noNewPrivileges");
  proc["env"] = p.env;
  return d;
}

json with_mode(json p, const std::string& mode) {
  p["mode"] = mode;
  return p;
}

// Decisions whose rule is `rule`.
std::vector<json> by_rule(const policy::Result& r, const std::string& rule) {
  std::vector<json> out;
  for (const auto& d : r.decisions)
    if (d["rule"] == rule) out.push_back(d);
  return out;
}

bool has_text(const json& decisions, const std::string& needle) {
  for (const auto& d : decisions)
    if (d["detail"].get<std::string>().find(needle) != std::string::npos) return true;
  return false;
}

std::vector<std::string> names(const json& a) {
  std::vector<std::string> out;
  for (const auto& x : a) out.push_back(x);
  return out;
}

// A directory standing in for /proc/1/ns: its files are "the host's namespaces".
struct FakeNs {
  testutil::TempDir tmp{"policy-ns"};
  std::string dir = tmp.path;
  FakeNs() {
    mkdir_p(dir + "/host");
    mkdir_p(dir + "/pod");
    for (const char* n : {"net", "pid", "ipc", "uts", "mnt", "cgroup", "user"}) {
      write_file(dir + "/host/" + n, "");
      write_file(dir + "/pod/" + n, "");
    }
  }
  policy::ApplyContext ctx() const {
    policy::ApplyContext c;
    c.host_ns_dirs = {dir + "/host"};
    c.policy_name = "policy test.json";
    return c;
  }
};

void set_ns_path(json& cfg, const std::string& type, const std::string& path) {
  for (auto& n : cfg["linux"]["namespaces"])
    if (n["type"] == type) n["path"] = path;
}

}  // namespace

TEST(PolicyApply, RuncSpecUnderTheDefaultPolicy) {
  FakeNs ns;
  json before = runc_config();
  auto r = policy::apply(policy::builtin(), before, ns.ctx());
  const json& c = r.config;
  EXPECT_TRUE(r.violations.empty());
  // cgroup namespace added
  EXPECT_TRUE(oci::has_new_namespace(c, "cgroup"));
  // AUDIT_WRITE dropped from all four sets, the rest kept
  for (const char* set : {"bounding", "effective", "permitted", "ambient"})
    EXPECT_EQ(names(c["process"]["capabilities"][set]),
              (std::vector<std::string>{"CAP_KILL", "CAP_NET_BIND_SERVICE"}))
        << set;
  auto caps = by_rule(r, "capabilities.allowed");
  ASSERT_EQ(caps.size(), 1u);
  EXPECT_EQ(caps[0]["action"], "dropped");
  EXPECT_EQ(caps[0]["path"], "process.capabilities.bounding");
  // seccomp stacked: the built-in profile
  EXPECT_EQ(r.extra_seccomp, seccomp_profile::builtin());
  // masked/readonly paths merged (caller's kept, policy's added)
  auto masked = names(c["linux"]["maskedPaths"]);
  EXPECT_EQ(std::count(masked.begin(), masked.end(), "/proc/kcore"), 1);
  EXPECT_NE(std::find(masked.begin(), masked.end(), "/sys/firmware"), masked.end());
  auto ro = names(c["linux"]["readonlyPaths"]);
  EXPECT_NE(std::find(ro.begin(), ro.end(), "/proc/sysrq-trigger"), ro.end());
  // resource defaults
  EXPECT_EQ(c["linux"]["resources"]["memory"]["limit"], 1LL << 30);
  EXPECT_EQ(c["linux"]["resources"]["pids"]["limit"], 1024);
  EXPECT_EQ(c["linux"]["resources"]["cpu"]["quota"], 200000);
  EXPECT_EQ(c["linux"]["resources"]["cpu"]["period"], 100000);
  // proxy environment
  auto env = names(c["process"]["env"]);
  for (const char* e : {"HTTP_PROXY=http://127.0.0.1:3128", "https_proxy=http://127.0.0.1:3128",
                        "NO_PROXY=localhost,127.0.0.1", "no_proxy=localhost,127.0.0.1", "TERM=xterm"})
    EXPECT_NE(std::find(env.begin(), env.end(), e), env.end()) << e;
  // /dev tmpfs (64m) is within the limit; the deny-all device rule already first
  EXPECT_TRUE(by_rule(r, "filesystem.tmpfs_max_size").empty());
  EXPECT_TRUE(by_rule(r, "devices.allowed").empty());
  EXPECT_EQ(r.network.mode, "confined");
  EXPECT_EQ(r.exec_time_limit_s, 0);
  // The caller's config object is untouched.
  EXPECT_EQ(before, runc_config());
}

TEST(PolicyApply, SpecTemplateSatisfiesTheDefaultPolicyEvenInRefuseMode) {
  FakeNs ns;
  json spec = container::default_spec(false);
  auto r = policy::evaluate(with_mode(policy::builtin(), "refuse"), spec, ns.ctx());
  EXPECT_TRUE(r.violations.empty()) << r.violations.dump(1);
  for (const auto& d : r.decisions) EXPECT_NE(d["action"], "dropped") << d.dump();
  EXPECT_TRUE(by_rule(r, "capabilities.allowed").empty());
  EXPECT_TRUE(by_rule(r, "namespaces").empty());
  EXPECT_TRUE(by_rule(r, "filesystem.masked_paths").empty());
}

TEST(PolicyApply, CapSysAdminIsDroppedWithADecision) {
  FakeNs ns;
  json cfg = clean_config();
  for (const char* set : {"bounding", "effective", "permitted", "inheritable"})
    cfg["process"]["capabilities"][set].push_back("CAP_SYS_ADMIN");
  auto r = policy::apply(policy::builtin(), cfg, ns.ctx());
  for (const char* set : {"bounding", "effective", "permitted", "inheritable", "ambient"}) {
    auto n = names(r.config["process"]["capabilities"][set]);
    EXPECT_EQ(std::find(n.begin(), n.end(), "CAP_SYS_ADMIN"), n.end()) << set;
  }
  EXPECT_TRUE(has_text(r.decisions,
                       "caller asked for CAP_SYS_ADMIN (bounding, effective, permitted, inheritable); "
                       "dropped by policy rule capabilities.allowed"))
      << r.decisions.dump(1);
  // In refuse mode it is a violation instead, and the config is rejected.
  auto rr = policy::evaluate(with_mode(policy::builtin(), "refuse"), cfg, ns.ctx());
  EXPECT_TRUE(has_text(rr.violations, "CAP_SYS_ADMIN"));
  EXPECT_THROW(policy::apply(with_mode(policy::builtin(), "refuse"), cfg, ns.ctx()), Error);
}

TEST(PolicyApply, PrivilegedShapeIsRefusedEvenInEnforceMode) {
  FakeNs ns;
  json cfg = clean_config();
  json all = json::array();
  for (int c = 0; c <= oci::last_capability(); c++) all.push_back(oci::capability_name(c));
  for (const char* set : {"bounding", "effective", "permitted"}) cfg["process"]["capabilities"][set] = all;
  cfg["linux"]["resources"]["devices"] = json::array({{{"allow", true}, {"access", "rwm"}}});
  try {
    policy::apply(policy::builtin(), cfg, ns.ctx());
    FAIL() << "privileged config accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the policy forbids privileged containers"), std::string::npos)
        << e.what();
  }
  // With a seccomp profile of its own it is not the privileged shape: caps and devices are tightened instead.
  cfg["linux"]["seccomp"] = json::parse(
      R"({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO"}]})");
  auto r = policy::apply(policy::builtin(), cfg, ns.ctx());
  EXPECT_EQ(r.config["process"]["capabilities"]["bounding"].size(),
            policy::builtin()["capabilities"]["allowed"].size());
  EXPECT_EQ(r.config["linux"]["resources"]["devices"], json::array({{{"allow", false}, {"access", "rwm"}}}));
}

// What containerd 1.6's CRI writes for `privileged: true` under a handler with
// privileged_without_host_devices = true (oci.WithPrivileged: every current
// capability, no masked/read-only paths, writable sysfs and cgroupfs, no
// seccomp, no AppArmor) — the device cgroup keeps its default deny rule.
json cri_privileged_without_host_devices() {
  json cfg = clean_config();
  json all = json::array();
  for (int c = 0; c <= oci::last_capability(); c++) all.push_back(oci::capability_name(c));
  for (const char* set : {"bounding", "effective", "permitted"}) cfg["process"]["capabilities"][set] = all;
  cfg["linux"].erase("maskedPaths");
  cfg["linux"].erase("readonlyPaths");
  cfg["mounts"].push_back({{"destination", "/sys"},
                           {"type", "sysfs"},
                           {"source", "sysfs"},
                           {"options", {"nosuid", "noexec", "nodev", "rw"}}});
  for (auto& m : cfg["mounts"])
    if (m["destination"] == "/sys/fs/cgroup") m["options"] = {"nosuid", "noexec", "nodev", "relatime", "rw"};
  return cfg;
}

TEST(PolicyPrivileged, CriPrivilegedWithoutHostDevicesIsRecognisedAndRefused) {
  FakeNs ns;
  json cfg = cri_privileged_without_host_devices();
  auto why = privileged(cfg);
  ASSERT_TRUE(why.has_value());
  EXPECT_NE(why->find("every capability"), std::string::npos) << *why;
  EXPECT_NE(why->find("a writable sysfs mount at /sys"), std::string::npos) << *why;
  EXPECT_NE(why->find("a writable cgroup mount at /sys/fs/cgroup"), std::string::npos) << *why;
  EXPECT_NE(why->find("no masked or read-only paths"), std::string::npos) << *why;
  EXPECT_EQ(why->find("every device"), std::string::npos) << *why;
  // Refused in enforce mode too (never silently run with capabilities cut).
  try {
    policy::apply(policy::builtin(), cfg, ns.ctx());
    FAIL() << "privileged config accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("refused by policy rule privileged"), std::string::npos) << e.what();
  }
}

TEST(PolicyPrivileged, EachExposureAloneIsEnough) {
  json base = cri_privileged_without_host_devices();
  base["linux"]["maskedPaths"] = {"/proc/kcore"};
  base["mounts"].erase(base["mounts"].size() - 1);  // the rw sysfs
  for (auto& m : base["mounts"])
    if (m["destination"] == "/sys/fs/cgroup") m["options"] = {"ro"};
  EXPECT_FALSE(privileged(base).has_value());
  json a = base;
  a["linux"]["resources"]["devices"].push_back({{"allow", true}, {"access", "rwm"}});
  EXPECT_TRUE(privileged(a).has_value());
  json b = base;
  b["mounts"].push_back(
      {{"destination", "/sys/"}, {"type", "bind"}, {"source", "/sys"}, {"options", {"rbind"}}});
  EXPECT_TRUE(privileged(b).has_value());
  json c = base;
  c["linux"].erase("maskedPaths");
  EXPECT_TRUE(privileged(c).has_value());
  json d = base;
  d["mounts"].push_back({{"destination", "/sys/fs/cgroup"}, {"type", "cgroup2"}, {"source", "cgroup"}});
  EXPECT_TRUE(privileged(d).has_value());
}

TEST(PolicyPrivileged, ConfinedRequestsAreNotPrivileged) {
  json cfg = cri_privileged_without_host_devices();
  // A seccomp filter with rules: not privileged (docker --cap-add ALL keeps its profile).
  json filtered = cfg;
  filtered["linux"]["seccomp"] = json::parse(
      R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]})");
  EXPECT_FALSE(privileged(filtered).has_value());
  // An allow-all filter without rules is no confinement.
  json allow_all = cfg;
  allow_all["linux"]["seccomp"] = {{"defaultAction", "SCMP_ACT_ALLOW"}};
  EXPECT_TRUE(privileged(allow_all).has_value());
  // Without every capability or CAP_SYS_ADMIN: not privileged.
  json few = cfg;
  for (const char* set : {"bounding", "effective", "permitted"})
    few["process"]["capabilities"][set] = {"CAP_KILL", "CAP_NET_ADMIN"};
  EXPECT_FALSE(privileged(few).has_value());
  // CAP_SYS_ADMIN alone with the exposures is.
  json admin = few;
  admin["process"]["capabilities"]["bounding"].push_back("CAP_SYS_ADMIN");
  auto why = privileged(admin);
  ASSERT_TRUE(why.has_value());
  EXPECT_NE(why->find("CAP_SYS_ADMIN"), std::string::npos) << *why;
  // runc's default spec is not privileged; hostile shapes do not crash it.
  EXPECT_FALSE(privileged(clean_config()).has_value());
  // Hostile shapes never reach it: the parser refuses them, naming the field.
  for (const char* text : {"null", "[]", R"({"process": 1, "linux": []})", R"({"mounts": [1, {"type": 2}]})"})
    EXPECT_THROW(privileged(json::parse(text)), Error) << text;
  // Read-only is decided on the effective flags (the last of "ro"/"rw" wins),
  // as the mounting code applies them.
  json ro_then_rw = cfg;
  for (auto& m : ro_then_rw["mounts"])
    if (m["destination"] == "/sys") m["options"] = {"ro", "rw"};
  ro_then_rw["linux"]["maskedPaths"] = {"/proc/kcore"};
  why = privileged(ro_then_rw);
  ASSERT_TRUE(why.has_value());
  EXPECT_NE(why->find("a writable sysfs mount at /sys"), std::string::npos) << *why;
}

TEST(PolicyApply, NoNewPrivsAndReadonlyRootAreForced) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["process"]["noNewPrivileges"] = false;
  cfg["root"]["readonly"] = false;
  auto r =
      policy::apply(with_mode(policy::builtin(), "refuse"), cfg, ns.ctx());  // hardening, not a violation
  EXPECT_EQ(r.config["process"]["noNewPrivileges"], true);
  EXPECT_EQ(r.config["root"]["readonly"], true);
  EXPECT_EQ(by_rule(r, "no_new_privs").at(0)["action"], "replaced");
  EXPECT_EQ(by_rule(r, "filesystem.readonly_root").at(0)["path"], "root.readonly");
  // An operator may loosen the read-only root deliberately.
  json loose = policy::validate({{"filesystem", {{"readonly_root", false}}}}, "x");
  EXPECT_EQ(policy::apply(loose, cfg, ns.ctx()).config["root"]["readonly"], false);
}

TEST(PolicyApply, SeccompStackedOrReplaced) {
  FakeNs ns;
  json cfg = clean_config();
  json own = {{"defaultAction", "SCMP_ACT_ALLOW"},
              {"syscalls", {{{"names", {"getppid"}}, {"action", "SCMP_ACT_ERRNO"}}}}};
  cfg["linux"]["seccomp"] = own;
  auto r = policy::apply(policy::builtin(), cfg, ns.ctx());
  EXPECT_EQ(r.config["linux"]["seccomp"], own);
  EXPECT_EQ(r.extra_seccomp, seccomp_profile::builtin());
  EXPECT_TRUE(has_text(r.decisions, "stacked on top of the config's own filter"));
  json p = policy::validate({{"seccomp", {{"stack_on_config", false}}}}, "x");
  auto r2 = policy::apply(p, cfg, ns.ctx());
  EXPECT_FALSE(r2.config["linux"].contains("seccomp"));
  EXPECT_EQ(r2.extra_seccomp, seccomp_profile::builtin());
  EXPECT_EQ(by_rule(r2, "seccomp.stack_on_config").at(0)["action"], "replaced");
}

namespace {
// ApplyContext::peer_namespace for tests: /proc/4242/ns/<type> names
// agentshim container "sandbox1" (init 4343), whose namespaces are files
// under `dir` (read at each call: a test may point it elsewhere); `fill`
// sets the rest of what peers::by_sentinel would read.
auto fake_peer(const std::string& dir, std::function<void(peers::Peer&)> fill) {
  return [&dir, fill = std::move(fill)](const std::string& path,
                                        const std::string& proc) -> std::optional<peers::NamespaceTarget> {
    if (path != "/proc/4242/ns/" + proc) return std::nullopt;
    peers::NamespaceTarget t;
    t.peer.id = "sandbox1";
    t.peer.sentinel = 4242;
    t.peer.init_pid = 4343;
    fill(t.peer);
    t.path = dir + "/" + proc;
    return t;
  };
}
}  // namespace

// Another agentshim container named by its --pid-file pid (a pod's sandbox,
// `docker run --network container:X`): the join goes to the same namespace
// through that container's init, and is kept — pid included — with a
// decision naming the container. A peer that is really on the host's
// namespace stays refused; a network of a different mode is handled as any
// other joined network.
TEST(PolicyApply, NamespacesOfAnotherAgentshimContainer) {
  FakeNs ns;
  auto ctx = ns.ctx();
  std::string peer_mode = "confined";
  std::string target_dir = ns.dir + "/pod";
  ctx.peer_namespace = fake_peer(target_dir, [&](peers::Peer& p) { p.network_mode = peer_mode; });
  json cfg = clean_config();
  for (const char* t : {"network", "ipc", "uts", "pid"})
    set_ns_path(cfg, t, std::string("/proc/4242/ns/") + oci::namespace_by_name(t)->proc);
  auto r = policy::apply(policy::builtin(), cfg, ctx);
  for (const char* t : {"network", "ipc", "uts", "pid"}) {
    EXPECT_FALSE(oci::has_new_namespace(r.config, t)) << t;
    EXPECT_EQ(r.peer_namespaces.at(t), "sandbox1");
    EXPECT_TRUE(r.joined_namespaces.count(t)) << t;
  }
  const oci::Spec enforced = oci::parse_spec(r.config);
  for (const auto& n : enforced.linux.namespaces) {
    if (n.type == "pid") {
      EXPECT_EQ(n.path, ns.dir + "/pod/pid");
    }
  }
  auto kept = by_rule(r, "namespaces");
  ASSERT_EQ(kept.size(), 4u) << r.decisions.dump(1);
  for (const auto& d : kept) {
    EXPECT_EQ(d["action"], "kept");
    EXPECT_NE(d["detail"].get<std::string>().find("agentshim container sandbox1"), std::string::npos);
  }
  auto on_namespaces = [](const json& ds) {
    json out = json::array();
    for (const auto& d : ds)
      if (starts_with(d["path"].get<std::string>(), "linux.namespaces")) out.push_back(d);
    return out;
  };
  EXPECT_TRUE(on_namespaces(by_rule(r, "network.mode")).empty());
  // The same in refuse mode: nothing here is beyond the policy.
  EXPECT_NO_THROW(policy::apply(with_mode(policy::builtin(), "refuse"), cfg, ctx));
  EXPECT_EQ(r.network.ns, "peer");
  EXPECT_EQ(r.network.peer, "sandbox1");
  // A peer on a network of another mode (passthrough): replaced by a new
  // namespace (joining would change this one's mediation, or the peer's),
  // refused in refuse mode.
  peer_mode = "passthrough";
  r = policy::apply(policy::builtin(), cfg, ctx);
  EXPECT_TRUE(oci::has_new_namespace(r.config, "network"));
  auto net = on_namespaces(by_rule(r, "network.mode"));
  ASSERT_EQ(net.size(), 1u);
  EXPECT_EQ(net[0]["action"], "replaced");
  EXPECT_NE(net[0]["detail"].get<std::string>().find("whose network mode is \"passthrough\""),
            std::string::npos);
  EXPECT_FALSE(r.peer_namespaces.count("network"));
  EXPECT_EQ(r.network.ns, "new");
  EXPECT_THROW(policy::apply(with_mode(policy::builtin(), "refuse"), cfg, ctx), Error);
  // A "peer" whose namespaces are the host's (a container sharing the
  // host's): the host's, refused.
  peer_mode = "confined";
  target_dir = ns.dir + "/host";
  EXPECT_THROW(policy::apply(policy::builtin(), cfg, ctx), Error);
}

TEST(PolicyApply, Namespaces) {
  FakeNs ns;
  // Joining the host's namespace: refused in both modes, naming it.
  json cfg = clean_config();
  set_ns_path(cfg, "pid", ns.dir + "/host/pid");
  try {
    policy::apply(policy::builtin(), cfg, ns.ctx());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the host's pid namespace"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("linux.namespaces[0].path"), std::string::npos) << e.what();
  }
  // A pod's network namespace: kept and confined (network.mode confined,
  // the default) ...
  cfg = clean_config();
  set_ns_path(cfg, "network", ns.dir + "/pod/net");
  auto r = policy::apply(policy::builtin(), cfg, ns.ctx());
  EXPECT_FALSE(oci::has_new_namespace(r.config, "network"));
  EXPECT_EQ(by_rule(r, "network.mode").at(0)["action"], "kept");
  EXPECT_EQ(r.network.ns, "caller");
  EXPECT_EQ(r.network.mode, "confined");
  // ... replaced by a new one with only loopback (network.mode internal) ...
  json internal = policy::validate({{"network", {{"mode", "internal"}}}}, "x");
  r = policy::apply(internal, cfg, ns.ctx());
  EXPECT_TRUE(oci::has_new_namespace(r.config, "network"));
  EXPECT_EQ(by_rule(r, "network.mode").at(0)["action"], "replaced");
  EXPECT_EQ(r.network.ns, "new");
  // ... kept with passthrough (allow_join lists network by default) ...
  json pass = policy::validate({{"network", {{"mode", "passthrough"}}}}, "x");
  r = policy::apply(pass, cfg, ns.ctx());
  EXPECT_FALSE(oci::has_new_namespace(r.config, "network"));
  EXPECT_TRUE(oci::parse_spec(r.config).has_namespace("network"));
  // ... unless allow_join leaves it out.
  json pass2 = policy::validate(
      {{"network", {{"mode", "passthrough"}}}, {"namespaces", {{"allow_join", {"ipc"}}}}}, "x");
  r = policy::apply(pass2, cfg, ns.ctx());
  EXPECT_TRUE(oci::has_new_namespace(r.config, "network"));
  EXPECT_THROW(policy::apply(with_mode(pass2, "refuse"), cfg, ns.ctx()), Error);
  // pid join: only when allow_join lists pid.
  cfg = clean_config();
  set_ns_path(cfg, "pid", ns.dir + "/pod/pid");
  r = policy::apply(policy::builtin(), cfg, ns.ctx());
  EXPECT_TRUE(oci::has_new_namespace(r.config, "pid"));
  EXPECT_EQ(by_rule(r, "namespaces.allow_join").at(0)["action"], "replaced");
  json joinpid = policy::validate({{"namespaces", {{"allow_join", {"pid"}}}}}, "x");
  EXPECT_FALSE(oci::has_new_namespace(policy::apply(joinpid, cfg, ns.ctx()).config, "pid"));
  // A missing pid/ipc/uts/network namespace is a request for the host's
  // (--pid host, --network host): refused in both modes, each one named.
  cfg = clean_config();
  cfg["linux"]["namespaces"] = json::array({{{"type", "mount"}}});
  try {
    policy::apply(policy::builtin(), cfg, ns.ctx());
    FAIL();
  } catch (const Error& e) {
    for (const char* t : {"pid", "ipc", "uts", "network"})
      EXPECT_NE(std::string(e.what()).find(std::string("no ") + t + " namespace"), std::string::npos)
          << e.what();
  }
  auto rr = policy::evaluate(with_mode(policy::builtin(), "refuse"), cfg, ns.ctx());
  EXPECT_EQ(rr.violations.size(), 5u) << rr.violations.dump(1);
  // A missing cgroup namespace (runc's spec, Docker on cgroup v1): added in
  // enforce mode, a violation in refuse mode.
  cfg = clean_config();
  json kept = json::array();
  for (const auto& n : cfg["linux"]["namespaces"])
    if (n["type"] != "cgroup") kept.push_back(n);
  cfg["linux"]["namespaces"] = kept;
  r = policy::apply(policy::builtin(), cfg, ns.ctx());
  EXPECT_TRUE(oci::has_new_namespace(r.config, "cgroup"));
  EXPECT_EQ(policy::evaluate(with_mode(policy::builtin(), "refuse"), cfg, ns.ctx()).violations.size(), 1u);
}

TEST(PolicyApply, HostNamespacesOnlyWhereAllowHostSaysSo) {
  FakeNs ns;
  // runtime-tools' linux_ns_itype, Kubernetes hostNetwork+hostPID+hostIPC:
  // no pid/ipc/uts/mount/network/cgroup namespace at all.
  json cfg = clean_config();
  cfg["linux"]["namespaces"] = json::array();
  json all =
      policy::validate({{"namespaces", {{"allow_host", {"pid", "ipc", "uts", "mount", "network", "cgroup"}}}},
                        {"network", {{"mode", "passthrough"}}}},
                       "x");
  for (const char* mode : {"enforce", "refuse"}) {
    auto r = policy::apply(with_mode(all, mode), cfg, ns.ctx());
    EXPECT_TRUE(r.config["linux"]["namespaces"].empty()) << r.config["linux"]["namespaces"].dump();
    auto kept = by_rule(r, "namespaces.allow_host");
    ASSERT_EQ(kept.size(), 6u) << r.decisions.dump(1);
    for (const auto& d : kept) EXPECT_EQ(d["action"], "kept");
    EXPECT_TRUE(has_text(r.decisions, "no network namespace: the container shares the host's"));
    EXPECT_TRUE(has_text(r.decisions, "egress is not mediated"));
    EXPECT_TRUE(has_text(r.decisions, "chrooted into the rootfs"));
  }
  // Only the named ones: the rest stay refused (and cgroup is added).
  json net = policy::validate(
      {{"namespaces", {{"allow_host", {"network"}}}}, {"network", {{"mode", "passthrough"}}}}, "x");
  cfg = clean_config();
  json kept = json::array();
  for (const auto& n : cfg["linux"]["namespaces"])
    if (n["type"] != "network") kept.push_back(n);
  cfg["linux"]["namespaces"] = kept;
  auto r = policy::apply(net, cfg, ns.ctx());
  EXPECT_FALSE(oci::parse_spec(r.config).has_namespace("network"));
  cfg["linux"]["namespaces"] = json::array({{{"type", "mount"}}});
  auto rr = policy::evaluate(net, cfg, ns.ctx());
  EXPECT_EQ(rr.violations.size(), 3u) << rr.violations.dump(1);  // pid, ipc, uts
  // A path to the host's namespace stays refused: allow_host covers a
  // namespace the config leaves out (the runtime's own), not a join.
  cfg = clean_config();
  set_ns_path(cfg, "network", ns.dir + "/host/net");
  EXPECT_EQ(policy::evaluate(net, cfg, ns.ctx()).violations.size(), 1u);
  // The default keeps refusing.
  EXPECT_TRUE(policy::builtin()["namespaces"]["allow_host"].empty());
  cfg = clean_config();
  cfg["linux"]["namespaces"] = json::array();
  EXPECT_EQ(policy::evaluate(policy::builtin(), cfg, ns.ctx()).violations.size(), 5u);
  // userns auto: allow_host "user" keeps a config without a user namespace
  // as it is; without it one is added.
  json autou = policy::validate({{"userns", "auto"}, {"namespaces", {{"allow_host", {"user"}}}}}, "x");
  r = policy::apply(autou, clean_config(), ns.ctx());
  EXPECT_FALSE(r.userns_auto);
  EXPECT_FALSE(oci::parse_spec(r.config).has_namespace("user"));
  EXPECT_EQ(by_rule(r, "namespaces.allow_host").at(0)["action"], "kept");
}

TEST(PolicyApply, Sysctls) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["linux"]["sysctl"] = {{"net.ipv4.ip_unprivileged_port_start", "0"},
                            {"kernel.shmmax", "1000000"},
                            {"fs.mqueue.msg_max", "20"}};
  EXPECT_EQ(policy::apply(policy::builtin(), cfg, ns.ctx()).config["linux"]["sysctl"],
            cfg["linux"]["sysctl"]);
  // A sysctl the container's namespaces do not isolate is refused when the
  // config is read (runc's rules and wording, oci::sysctls), before any
  // decision: `create` and `policy check` give the same error.
  cfg["linux"]["sysctl"]["kernel.core_pattern"] = "|/tmp/x";
  try {
    policy::evaluate(policy::builtin(), cfg, ns.ctx());
    FAIL() << "kernel.core_pattern accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "sysctl \"kernel.core_pattern\" is not in a separate kernel namespace");
  }
  // vm.* is never namespaced either: refused the same way on its own.
  cfg["linux"]["sysctl"] = {{"vm.overcommit_memory", "1"}};
  try {
    policy::evaluate(policy::builtin(), cfg, ns.ctx());
    FAIL() << "vm.overcommit_memory accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vm.overcommit_memory"), std::string::npos) << e.what();
  }
}

TEST(PolicyApply, TmpfsSizes) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["mounts"].push_back(
      {{"destination", "/tmp"}, {"type", "tmpfs"}, {"source", "tmpfs"}, {"options", {"nosuid"}}});
  cfg["mounts"].push_back(
      {{"destination", "/big"}, {"type", "tmpfs"}, {"source", "tmpfs"}, {"options", {"size=2g"}}});
  cfg["mounts"].push_back(
      {{"destination", "/pct"}, {"type", "tmpfs"}, {"source", "tmpfs"}, {"options", {"size=50%"}}});
  cfg["mounts"].push_back(
      {{"destination", "/ok"}, {"type", "tmpfs"}, {"source", "tmpfs"}, {"options", {"size=1m"}}});
  auto r = policy::apply(policy::builtin(), cfg, ns.ctx());
  const json& m = r.config["mounts"];
  EXPECT_EQ(m[3]["options"], json::array({"nosuid", "size=64m"}));
  EXPECT_EQ(m[4]["options"], json::array({"size=64m"}));
  EXPECT_EQ(m[5]["options"], json::array({"size=64m"}));
  EXPECT_EQ(m[6]["options"], json::array({"size=1m"}));
  EXPECT_EQ(by_rule(r, "filesystem.tmpfs_max_size").size(), 3u);
  auto rr = policy::evaluate(with_mode(policy::builtin(), "refuse"), cfg, ns.ctx());
  EXPECT_EQ(rr.violations.size(), 2u);  // the 2g and the 50% one; a missing size is simply added
}

TEST(PolicyApply, BindSources) {
  FakeNs ns;
  auto bind = [](const std::string& src) {
    json cfg = clean_config();
    cfg["mounts"].push_back(
        {{"destination", "/mnt"}, {"type", "bind"}, {"source", src}, {"options", {"rbind"}}});
    return cfg;
  };
  for (const char* bad : {"/", "/proc", "/sys/kernel", "/dev/kmsg", "/var/run/docker.sock", "/run/containerd",
                          "/run", "/var", "/boot"}) {
    auto r = policy::evaluate(policy::builtin(), bind(bad), ns.ctx());
    ASSERT_EQ(r.violations.size(), 1u) << bad;
    EXPECT_EQ(r.violations[0]["rule"], "filesystem.forbidden_sources") << bad;
    EXPECT_EQ(r.violations[0]["path"], "mounts[3].source") << bad;
  }
  EXPECT_TRUE(policy::evaluate(policy::builtin(), bind(ns.dir), ns.ctx()).violations.empty());
  // allow_bind_mounts false: dropped in enforce mode, a violation in refuse mode.
  json nobind = policy::validate({{"filesystem", {{"allow_bind_mounts", false}}}}, "x");
  auto r = policy::apply(nobind, bind(ns.dir), ns.ctx());
  EXPECT_EQ(r.config["mounts"].size(), 3u + 2u);  // + the scratch /tmp and /var/tmp (filesystem.scratch)
  EXPECT_EQ(by_rule(r, "filesystem.allow_bind_mounts").at(0)["action"], "dropped");
  EXPECT_EQ(policy::evaluate(with_mode(nobind, "refuse"), bind(ns.dir), ns.ctx()).violations.size(), 1u);
}

TEST(PolicyApply, KernelFilesystemMountsAreReadOnly) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["mounts"][2]["options"] = {"nosuid", "rw"};
  cfg["mounts"].push_back({{"destination", "/sys"}, {"type", "sysfs"}, {"source", "sysfs"}});
  auto r = policy::apply(policy::builtin(), cfg, ns.ctx());
  EXPECT_EQ(r.config["mounts"][2]["options"], json::array({"nosuid", "ro"}));
  EXPECT_EQ(r.config["mounts"][3]["options"], json::array({"ro"}));
}

// Issue 12: a typeless bind, a relative source, the runtime's own files
// and last-wins options, each read the same way by the policy and the
// mounting code (oci::Mount).
TEST(PolicyApply, TypelessBindIsSeenAsABind) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["mounts"].push_back({{"destination", "/host"}, {"source", "/"}, {"options", {"rbind"}}});
  auto r = policy::evaluate(policy::builtin(), cfg, ns.ctx());
  ASSERT_EQ(r.violations.size(), 1u);
  EXPECT_EQ(r.violations[0]["rule"], "filesystem.forbidden_sources");
  EXPECT_EQ(r.violations[0]["path"], "mounts[3].source");
  // Typeless and no bind option: not classifiable, an error naming the field.
  json bad = clean_config();
  bad["mounts"].push_back({{"destination", "/host"}, {"source", "/"}});
  try {
    (void)policy::evaluate(policy::builtin(), bad, ns.ctx());
    ADD_FAILURE() << "typeless non-bind accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mounts[3].type"), std::string::npos) << e.what();
  }
}

TEST(PolicyApply, RelativeSourcesResolveAgainstTheBundle) {
  FakeNs ns;
  auto ctx = ns.ctx();
  ctx.bundle = ns.dir + "/host";
  json cfg = clean_config();
  cfg["mounts"].push_back({{"destination", "/h"},
                           {"type", "bind"},
                           {"source", "../../../../../../../../../../../"},
                           {"options", {"rbind"}}});
  auto r = policy::evaluate(policy::builtin(), cfg, ctx);
  ASSERT_EQ(r.violations.size(), 1u);
  EXPECT_EQ(r.violations[0]["rule"], "filesystem.forbidden_sources");
  EXPECT_TRUE(has_text(r.violations, "(/)"));
  // An allowed relative source: the enforced config holds the resolved path.
  json ok = clean_config();
  ok["mounts"].push_back({{"destination", "/p"}, {"source", "../pod"}, {"options", {"bind", "ro"}}});
  auto a = policy::apply(policy::builtin(), ok, ctx);
  EXPECT_EQ(a.config["mounts"][3]["source"], ns.dir + "/pod");
  EXPECT_EQ(a.config["mounts"][3]["type"], "bind");
  ASSERT_EQ(a.mounts.size(), 4u + 2u);  // + the scratch /tmp and /var/tmp (filesystem.scratch)
  EXPECT_EQ(a.mounts[3].source_id, *oci::file_id(ns.dir + "/pod"));
}

TEST(PolicyApply, RuntimeOwnedPathsAreRefusedByIdentity) {
  FakeNs ns;
  mkdir_p(ns.dir + "/state/c1");
  mkdir_p(ns.dir + "/audit/keys");
  mkdir_p(ns.dir + "/elsewhere");
  write_file(ns.dir + "/elsewhere/host.key", "k");
  ASSERT_EQ(::symlink((ns.dir + "/state").c_str(), (ns.dir + "/alias").c_str()), 0);
  json pol = policy::validate({{"audit", {{"signing_key", ns.dir + "/elsewhere/host.key"}}}}, "x");
  auto ctx = ns.ctx();
  ctx.owned = policy::runtime_owned(policy::parse(pol), ns.dir + "/state", ns.dir + "/audit", "");
  auto bind = [](const std::string& src, const std::vector<std::string>& opts) {
    json cfg = clean_config();
    cfg["mounts"].push_back({{"destination", "/mnt"}, {"source", src}, {"options", opts}});
    return cfg;
  };
  struct Case {
    std::string src;
    std::string what;
  };
  for (const Case& c : std::vector<Case>{{ns.dir + "/state", "state root"},
                                         {ns.dir + "/alias/c1", "state root"},
                                         {ns.dir + "/alias/../audit", "audit directory"},
                                         {ns.dir + "/audit/keys", "audit directory"},
                                         {ns.dir, "state root"},  // contains them
                                         {ns.dir + "/elsewhere/host.key", "signing key"},
                                         {ns.dir + "/elsewhere", "signing key"},
                                         {"/proc/self/exe", "agentshim binary"}}) {
    auto r = policy::evaluate(policy::builtin(), bind(c.src, {"rbind", "ro"}), ctx);
    ASSERT_EQ(r.violations.size(), 1u) << c.src;
    EXPECT_EQ(r.violations[0]["path"], "mounts[3].source") << c.src;
    EXPECT_TRUE(has_text(r.violations, c.what)) << c.src << ": " << r.violations.dump();
  }
  // A sibling is fine.
  EXPECT_TRUE(policy::evaluate(policy::builtin(), bind(ns.dir + "/pod", {"rbind"}), ctx).violations.empty());
  // The runtime binary, by identity wherever it is.
  char exe[PATH_MAX] = {};
  ASSERT_GT(::readlink("/proc/self/exe", exe, sizeof exe - 1), 0);
  auto r = policy::evaluate(policy::builtin(), bind(exe, {"bind"}), ctx);
  ASSERT_EQ(r.violations.size(), 1u);
  EXPECT_EQ(r.violations[0]["rule"], "runtime_owned");
  EXPECT_TRUE(has_text(r.violations, "agentshim binary"));
}

TEST(PolicyApply, EffectiveFlagsDecideReadOnly) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["mounts"].push_back(
      {{"destination", "/sys"}, {"type", "sysfs"}, {"source", "sysfs"}, {"options", {"nosuid", "ro", "rw"}}});
  cfg["mounts"].push_back({{"destination", "/sys/fs/cgroup"},
                           {"type", "cgroup"},
                           {"source", "cgroup"},
                           {"options", {"ro", "nosuid", "rw"}}});
  auto r = policy::apply(policy::builtin(), cfg, ns.ctx());
  EXPECT_EQ(r.config["mounts"][3]["options"], json::array({"nosuid", "ro"}));
  EXPECT_EQ(r.config["mounts"][4]["options"], json::array({"nosuid", "ro"}));
  EXPECT_TRUE(r.mounts[3].readonly());
  EXPECT_TRUE(r.mounts[4].readonly());
  std::vector<json> ro;
  for (const auto& d : by_rule(r, "filesystem.readonly_paths"))
    if (starts_with(d["path"].get<std::string>(), "mounts[")) ro.push_back(d);
  ASSERT_EQ(ro.size(), 2u);
  EXPECT_EQ(ro[0]["action"], "neutralised");
  // Refuse mode: a violation naming the rule.
  auto rr = policy::evaluate(with_mode(policy::builtin(), "refuse"), cfg, ns.ctx());
  ASSERT_EQ(rr.violations.size(), 2u);
  EXPECT_EQ(rr.violations[0]["rule"], "filesystem.readonly_paths");
  EXPECT_EQ(rr.violations[0]["path"], "mounts[3].options");
  // "rw", "ro": read-only already, nothing to do.
  json fine = clean_config();
  fine["mounts"].push_back(
      {{"destination", "/sys"}, {"type", "sysfs"}, {"source", "sysfs"}, {"options", {"rw", "ro"}}});
  for (const auto& d : by_rule(policy::apply(policy::builtin(), fine, ns.ctx()), "filesystem.readonly_paths"))
    EXPECT_FALSE(starts_with(d["path"].get<std::string>(), "mounts[")) << d.dump();
}

TEST(PolicyApply, Devices) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["linux"]["devices"] = json::parse(R"([
    {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
    {"path": "/dev/sda", "type": "b", "major": 8, "minor": 0},
    {"path": "/dev/null", "type": "c", "major": 1, "minor": 3}])");
  cfg["linux"]["resources"]["devices"] = json::parse(R"([
    {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
    {"allow": true, "type": "b", "access": "rwm"},
    {"allow": false, "access": "rwm"}])");
  auto r = policy::apply(policy::builtin(), cfg, ns.ctx());
  EXPECT_EQ(r.config["linux"]["devices"],
            json::parse(R"([{"path": "/dev/null", "type": "c", "major": 1, "minor": 3}])"));
  EXPECT_EQ(r.config["linux"]["resources"]["devices"], json::parse(R"([{"allow": false, "access": "rwm"}])"));
  EXPECT_TRUE(has_text(r.decisions, "block device /dev/sda"));
  // /dev/fuse once the policy allows it; block devices never.
  json fuse =
      policy::validate({{"devices", {{"allowed", {{{"type", "c"}, {"major", 10}, {"minor", 229}}}}}}}, "x");
  r = policy::apply(fuse, cfg, ns.ctx());
  EXPECT_EQ(r.config["linux"]["devices"].size(), 2u);
  EXPECT_EQ(r.config["linux"]["devices"][0]["path"], "/dev/fuse");
  EXPECT_EQ(r.config["linux"]["resources"]["devices"][0],
            json::parse(R"({"allow": false, "access": "rwm"})"));
  EXPECT_EQ(r.config["linux"]["resources"]["devices"][1]["major"], 10);
  EXPECT_EQ(r.config["linux"]["resources"]["devices"].size(), 3u);
  EXPECT_EQ(policy::evaluate(with_mode(fuse, "refuse"), cfg, ns.ctx()).violations.size(), 2u);
  // devices.allow_block_devices: the config's block devices and the cgroup
  // rules for a block major are kept, each a decision; a rule for every
  // block device ("b *:*") is not a device the config names and stays out.
  cfg["linux"]["devices"].push_back({{"path", "/dev/test2"}, {"type", "b"}, {"major", 8}, {"minor", 666}});
  cfg["linux"]["resources"]["devices"].push_back(
      {{"allow", true}, {"type", "b"}, {"major", 8}, {"minor", 20}, {"access", "rw"}});
  json block = fuse;
  block["devices"]["allow_block_devices"] = true;
  for (const char* mode : {"enforce", "refuse"}) {
    auto rb = policy::evaluate(with_mode(block, mode), cfg, ns.ctx());
    std::vector<std::string> paths;
    for (const auto& d : rb.config["linux"]["devices"]) paths.push_back(d["path"]);
    if (std::string(mode) == "enforce") {
      EXPECT_EQ(paths, (std::vector<std::string>{"/dev/fuse", "/dev/sda", "/dev/null", "/dev/test2"}));
      json rules = rb.config["linux"]["resources"]["devices"];
      EXPECT_EQ(rules.size(), 4u) << rules.dump();  // deny-all, fuse, deny-all (caller's), b 8:20
      EXPECT_EQ(rules.back()["minor"], 20);
      EXPECT_TRUE(rb.violations.empty());
    } else {
      EXPECT_EQ(rb.violations.size(), 1u) << rb.violations.dump(1);  // "b *:* rwm"
    }
    auto kept = by_rule(rb, "devices.allow_block_devices");
    ASSERT_EQ(kept.size(), 3u) << rb.decisions.dump(1);
    for (const auto& d : kept) EXPECT_EQ(d["action"], "kept");
    EXPECT_TRUE(has_text(rb.decisions, "block device /dev/test2 (b 8:666); allowed by policy rule"));
    EXPECT_TRUE(has_text(rb.decisions, "allowing access \"rw\" to b 8:20; allowed by policy rule"));
  }
}

TEST(PolicyApply, ResourcesDefaultsAndMaximum) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["linux"]["resources"]["memory"] = {{"limit", 64LL << 30}, {"reservation", 32LL << 30}};
  cfg["linux"]["resources"]["pids"] = {{"limit", 100000}};
  cfg["linux"]["resources"]["cpu"] = {{"quota", 1600000}, {"period", 100000}};
  auto r = policy::apply(policy::builtin(), cfg, ns.ctx());
  EXPECT_EQ(r.config["linux"]["resources"]["memory"]["limit"], 8LL << 30);
  EXPECT_EQ(r.config["linux"]["resources"]["memory"]["reservation"], 8LL << 30);
  EXPECT_EQ(r.config["linux"]["resources"]["pids"]["limit"], 4096);
  EXPECT_EQ(r.config["linux"]["resources"]["cpu"]["quota"], 400000);
  EXPECT_EQ(by_rule(r, "resources.maximum.memory").at(0)["action"], "capped");
  auto rr = policy::evaluate(with_mode(policy::builtin(), "refuse"), cfg, ns.ctx());
  EXPECT_EQ(rr.violations.size(), 3u);
  // Within the maximum: left alone.
  cfg["linux"]["resources"]["memory"] = {{"limit", 2LL << 30}};
  cfg["linux"]["resources"]["pids"] = {{"limit", 10}};
  cfg["linux"]["resources"]["cpu"] = {{"quota", 50000}, {"period", 100000}};
  r = policy::apply(policy::builtin(), cfg, ns.ctx());
  EXPECT_EQ(r.config["linux"]["resources"]["memory"]["limit"], 2LL << 30);
  EXPECT_EQ(r.config["linux"]["resources"]["pids"]["limit"], 10);
  EXPECT_EQ(r.config["linux"]["resources"]["cpu"]["quota"], 50000);
  // -1 (unlimited) gets the default.
  cfg["linux"]["resources"]["pids"] = {{"limit", -1}};
  EXPECT_EQ(policy::apply(policy::builtin(), cfg, ns.ctx()).config["linux"]["resources"]["pids"]["limit"],
            1024);
}

TEST(PolicyApply, OomScoreAdjAndRlimits) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["process"]["oomScoreAdj"] = -999;
  cfg["process"]["rlimits"] = json::parse(R"([{"type": "RLIMIT_NOFILE", "hard": 16777216, "soft": 1024},
    {"type": "RLIMIT_RTPRIO", "hard": 99, "soft": 99}, {"type": "RLIMIT_CORE", "hard": 0, "soft": 0}])");
  auto r = policy::apply(policy::builtin(), cfg, ns.ctx());
  EXPECT_EQ(r.config["process"]["oomScoreAdj"], 0);
  EXPECT_EQ(r.config["process"]["rlimits"][0]["hard"], 1 << 20);
  EXPECT_EQ(r.config["process"]["rlimits"][0]["soft"], 1024);
  EXPECT_EQ(r.config["process"]["rlimits"][1]["hard"], 0);
  EXPECT_EQ(r.config["process"]["rlimits"][2], cfg["process"]["rlimits"][2]);
  EXPECT_EQ(policy::evaluate(with_mode(policy::builtin(), "refuse"), cfg, ns.ctx()).violations.size(), 3u);
}

TEST(PolicyApply, ProxyEnvironmentAndNetwork) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["process"]["env"].push_back("HTTPS_PROXY=http://evil:1");
  json p = policy::validate({{"network", {{"proxy_port", 8888}, {"allow", {"api.example.com:443"}}}},
                             {"limits", {{"exec_time_seconds", 600}}}},
                            "x");
  auto r = policy::apply(p, cfg, ns.ctx());
  auto env = names(r.config["process"]["env"]);
  EXPECT_EQ(std::count(env.begin(), env.end(), "HTTPS_PROXY=http://127.0.0.1:8888"), 1);
  EXPECT_EQ(std::count(env.begin(), env.end(), "HTTPS_PROXY=http://evil:1"), 0);
  EXPECT_TRUE(has_text(r.decisions, "caller set HTTPS_PROXY; replaced"));
  // (as `policy check --json` prints it)
  EXPECT_EQ(json(r.network),
            json::parse(
                R"({"mode": "confined", "namespace": "new", "allow": ["api.example.com:443"], "dns": "refuse",
    "proxy_port": 8888, "limits": {"max_connections": 64, "max_header_bytes": 65536, "idle_timeout_seconds": 300}})"));
  EXPECT_EQ(r.exec_time_limit_s, 600);
  // passthrough: the environment is left as given
  json pass = policy::validate({{"network", {{"mode", "passthrough"}}}}, "x");
  EXPECT_EQ(policy::apply(pass, cfg, ns.ctx()).config["process"]["env"], cfg["process"]["env"]);
}

TEST(PolicyApply, AnnotationsWidenOnlyWhenPermitted) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["annotations"] = {{"dev.agentshim.egress.allow", "api.example.com:443, *.pypi.org:443"},
                        {"org.example.other", "x"}};
  auto r = policy::apply(policy::builtin(), cfg, ns.ctx());
  EXPECT_EQ(r.network.allow, (std::vector<std::string>{"api.example.com:443", "*.pypi.org:443"}));
  EXPECT_TRUE(has_text(r.decisions, "adds the egress rule *.pypi.org:443"));
  EXPECT_FALSE(has_text(r.decisions, "org.example.other"));
  // A malformed rule (a URL) and an unknown (misspelt) agentshim annotation
  // are errors in every mode, naming what was wrong.
  cfg["annotations"] = {{"dev.agentshim.egress.allow", "api.example.com:443,https://host.example"},
                        {"dev.agentshim.egress.allowed", "x.example:443"}};
  try {
    policy::apply(policy::builtin(), cfg, ns.ctx());
    FAIL() << "enforce mode accepted bad annotations";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("\"https://host.example\" is invalid"), std::string::npos) << m;
    EXPECT_NE(m.find("dev.agentshim.egress.allowed, which is not a known agentshim annotation (known: "
                     "dev.agentshim.egress.allow, dev.agentshim.credentials)"),
              std::string::npos)
        << m;
  }
  // Not permitted by the policy: ignored (enforce) or a violation (refuse).
  json closed = policy::validate({{"annotations", {{"may_widen", json::array()}}}}, "x");
  cfg["annotations"] = {{"dev.agentshim.egress.allow", "api.example.com:443"}};
  r = policy::apply(closed, cfg, ns.ctx());
  EXPECT_TRUE(r.network.allow.empty());
  auto ig = by_rule(r, "annotations.may_widen");
  ASSERT_EQ(ig.size(), 1u);
  EXPECT_EQ(ig[0]["action"], "ignored");
  EXPECT_EQ(policy::evaluate(with_mode(closed, "refuse"), cfg, ns.ctx()).violations.size(), 1u);
}

namespace {
json credential_policy() {
  return policy::validate(
      {{"credentials",
        {{"github",
          {{"source", {{"file", "/etc/agentshim/secrets/github"}}},
           {"placeholder_env", "GITHUB_TOKEN"},
           {"destinations", {{{"host", "api.github.com"}, {"methods", {"GET"}}, {"path_prefix", "/repos/"}}}},
           {"apply", {{"header", "Authorization"}, {"format", "Bearer {}"}}}}},
         {"search",
          {{"source", {{"env", "SEARCH_KEY"}}},
           {"placeholder_env", "SEARCH_KEY"},
           {"destinations", {{{"host", "search.example"}}}},
           {"apply", {{"query", "key"}}}}}}}},
      "policy test.json");
}
}  // namespace

TEST(Policy, CredentialsSectionIsValidatedAndNormalised) {
  json p = credential_policy();
  EXPECT_EQ(p["credentials"]["github"]["destinations"][0]["port"], 443);
  EXPECT_EQ(p["credentials"]["search"]["apply"], json({{"query", "key"}}));
  EXPECT_EQ(policy::builtin()["credentials"], json::object());
  auto err = [](json creds) { return error_of({{"credentials", std::move(creds)}}); };
  EXPECT_NE(err(json::array()).find("credentials: must be an object"), std::string::npos)
      << err(json::array());
  json bad = credential_policy()["credentials"];
  bad["github"]["source"] = {{"file", "x"}};
  EXPECT_NE(err(bad).find("policy test.json: credentials.github.source.file: must be an absolute path"),
            std::string::npos)
      << err(bad);
  EXPECT_NE(err({{"GH", json::object()}}).find("not a credential name"), std::string::npos);
  // network.request_rules: normalised, and carried to the proxy only when set.
  json rr = policy::validate(
      {{"network",
        {{"request_rules", {{{"host", "Reg.example"}, {"methods", {"GET"}}, {"action", "allow"}}}}}}},
      "x");
  EXPECT_EQ(rr["network"]["request_rules"][0]["host"], "reg.example");
  EXPECT_EQ(rr["network"]["request_rules"][0]["port"], 443);
  EXPECT_NE(error_of({{"network", {{"request_rules", {{{"host", "a"}, {"action", "no"}}}}}}})
                .find("policy test.json: network.request_rules[0].action: must be"),
            std::string::npos);
}

TEST(PolicyApply, CredentialsAnnotationGivesPlaceholdersOnly) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["process"]["env"] = {"GITHUB_TOKEN=ghp_real_value_the_caller_had", "A=b"};
  cfg["annotations"] = {{"dev.agentshim.credentials", "github, search"}};
  auto r = policy::apply(credential_policy(), cfg, ns.ctx());
  ASSERT_EQ(r.network.credentials.size(), 2u);
  const network::Credential& gh = r.network.credentials[0];
  EXPECT_EQ(gh.name, "github");
  const std::string ph = gh.placeholder;
  EXPECT_EQ(ph.rfind("agentshim-cred-", 0), 0u);
  EXPECT_EQ(gh.definition.placeholder_env, "GITHUB_TOKEN");
  auto env = names(r.config["process"]["env"]);
  EXPECT_NE(std::find(env.begin(), env.end(), "GITHUB_TOKEN=" + ph), env.end());
  EXPECT_EQ(std::find(env.begin(), env.end(), "GITHUB_TOKEN=ghp_real_value_the_caller_had"), env.end());
  EXPECT_NE(std::find(env.begin(), env.end(), "A=b"), env.end());
  EXPECT_TRUE(
      has_text(r.decisions, "caller set GITHUB_TOKEN; replaced by the placeholder of credential github"));
  EXPECT_TRUE(has_text(r.decisions, "applies it on requests to api.github.com:443"));
  // A fresh placeholder per run.
  auto r2 = policy::apply(credential_policy(), cfg, ns.ctx());
  EXPECT_NE(r2.network.credentials[0].placeholder, ph);
  // exec'd processes get the same placeholders.
  const policy::ExecSettings settings = policy::exec_settings(policy::parse(credential_policy()), r);
  json proc = {{"args", {"sh"}}, {"env", {"GITHUB_TOKEN=other"}}};
  exec_apply(settings, proc);
  auto penv = names(proc["env"]);
  EXPECT_NE(std::find(penv.begin(), penv.end(), "GITHUB_TOKEN=" + ph), penv.end());
  EXPECT_EQ(std::find(penv.begin(), penv.end(), "GITHUB_TOKEN=other"), penv.end());
  // No annotation: nothing.
  cfg.erase("annotations");
  EXPECT_TRUE(policy::apply(credential_policy(), cfg, ns.ctx()).network.credentials.empty());
}

TEST(PolicyApply, UnknownCredentialIsAnErrorNamingIt) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["annotations"] = {{"dev.agentshim.credentials", "github,openai"}};
  try {
    policy::apply(credential_policy(), cfg, ns.ctx());
    FAIL() << "an unknown credential was accepted";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("credential \"openai\", which this policy does not define (defined: github, search)"),
              std::string::npos)
        << m;
  }
  // Passthrough has no proxy to apply them.
  json p = credential_policy();
  p["network"]["mode"] = "passthrough";
  p["namespaces"]["allow_host"] = {"network"};
  cfg["annotations"] = {{"dev.agentshim.credentials", "github"}};
  auto r = policy::evaluate(p, cfg, ns.ctx());
  EXPECT_TRUE(has_text(r.violations, "only an egress proxy applies: not with network.mode passthrough"));
}

// A container joining another agentshim container's network (a pod's app
// joining its sandbox) is served by that container's proxy: it gets the
// placeholder the owner holds (never a new one the proxy would not know),
// and trusts the owner's run CA; a credential the owner does not hold is
// refused with a message that says where to ask for it.
TEST(PolicyApply, CredentialsInAJoinedNetworkAreTheOwners) {
  FakeNs ns;
  auto ctx = ns.ctx();
  std::string target_dir = ns.dir + "/pod";
  std::vector<network::Credential> held = {
      {"github", "agentshim-cred-0123456789abcdef0123456789abcdef",
       net::cred::parse("github", credential_policy()["credentials"]["github"], "test"), ""}};
  std::string ca_file = "/run/agentshim/sandbox1/run-ca.pem";
  ctx.peer_namespace = fake_peer(target_dir, [&](peers::Peer& p) {
    p.network_mode = "internal";
    p.credentials = held;
    p.run_ca_file = ca_file;
  });
  json p = credential_policy();
  p["network"]["mode"] = "internal";
  json cfg = clean_config();
  set_ns_path(cfg, "network", "/proc/4242/ns/net");
  cfg["process"]["env"].push_back("GITHUB_TOKEN=mine");
  cfg["annotations"] = {{"dev.agentshim.credentials", "github"}};
  auto r = policy::apply(p, cfg, ctx);
  EXPECT_EQ(r.network.ns, "peer");
  ASSERT_EQ(r.network.credentials.size(), 1u);
  EXPECT_EQ(r.network.credentials[0].placeholder, held[0].placeholder);
  EXPECT_EQ(r.network.credentials[0].served_by, "sandbox1");
  EXPECT_EQ(r.network.peer_run_ca, ca_file);
  int tokens = 0;
  for (const auto& e : r.config["process"]["env"])
    if (e.get<std::string>().rfind("GITHUB_TOKEN=", 0) == 0) {
      ++tokens;
      EXPECT_EQ(e, "GITHUB_TOKEN=" + held[0].placeholder);
    }
  EXPECT_EQ(tokens, 1);
  EXPECT_TRUE(has_text(r.decisions, "agentshim container sandbox1's proxy applies it on requests to"));
  // exec'd processes see the same placeholder.
  const policy::ExecSettings ex = policy::exec_settings(policy::parse(p), r);
  EXPECT_NE(std::find(ex.env.begin(), ex.env.end(), "GITHUB_TOKEN=" + held[0].placeholder), ex.env.end());

  // A credential the owner does not hold.
  cfg["annotations"] = {{"dev.agentshim.credentials", "search"}};
  auto bad = policy::evaluate(p, cfg, ctx);
  EXPECT_TRUE(has_text(bad.violations,
                       "credential \"search\", which the proxy serving this container's network (agentshim "
                       "container sandbox1's) does not hold (it holds: github); ask for it on the container "
                       "that owns the network"))
      << bad.violations.dump(1);
  // An owner that holds nothing and does not intercept: nothing to trust.
  held.clear();
  ca_file.clear();
  cfg.erase("annotations");
  auto plain = policy::apply(p, cfg, ctx);
  EXPECT_TRUE(plain.network.peer_run_ca.empty());
  EXPECT_TRUE(plain.network.credentials.empty());
}

TEST(PolicyApply, RefuseModeListsEveryViolation) {
  FakeNs ns;
  json cfg = runc_config();
  cfg["process"]["capabilities"]["bounding"].push_back("CAP_SYS_ADMIN");
  cfg["mounts"].push_back(
      {{"destination", "/t"}, {"type", "tmpfs"}, {"source", "tmpfs"}, {"options", {"size=1g"}}});
  cfg["linux"]["resources"]["memory"] = {{"limit", 100LL << 30}};
  cfg["annotations"] = {{"dev.agentshim.nope", "1"}};
  set_ns_path(cfg, "uts", ns.dir + "/host/uts");
  try {
    policy::apply(with_mode(policy::builtin(), "refuse"), cfg, ns.ctx());
    FAIL() << "refuse mode accepted";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_EQ(m.rfind("policy test.json (mode refuse) refuses this config (7 violations):", 0), 0u) << m;
    for (const char* needle : {"CAP_AUDIT_WRITE", "CAP_SYS_ADMIN", "size=1g", "memory limit of 100g",
                               "dev.agentshim.nope", "the host's uts namespace", "no cgroup namespace"})
      EXPECT_NE(m.find(needle), std::string::npos) << needle << "\n" << m;
    EXPECT_EQ(std::count(m.begin(), m.end(), '\n'), 7) << m;  // one line per violation
  }
}

TEST(PolicyApply, UsernsAutoAddsAUserNamespace) {
  FakeNs ns;
  json p = policy::validate({{"userns", "auto"}}, "x");
  auto r = policy::apply(p, clean_config(), ns.ctx());
  EXPECT_TRUE(r.userns_auto);
  EXPECT_TRUE(oci::has_new_namespace(r.config, "user"));
  EXPECT_FALSE(r.config["linux"].contains("uidMappings"));  // allocated at create
  bool decided = false;
  for (const auto& d : r.decisions)
    if (d["rule"] == "userns" && d["action"] == "added") decided = true;
  EXPECT_TRUE(decided) << r.decisions.dump(1);
  EXPECT_EQ(r.summary()["userns_auto"], true);
  // Off (the default): nothing added.
  auto off = policy::apply(policy::builtin(), clean_config(), ns.ctx());
  EXPECT_FALSE(off.userns_auto);
  EXPECT_FALSE(oci::has_new_namespace(off.config, "user"));
}

TEST(PolicyApply, UsernsAutoReplacesMapsThatMakeHostRoot) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["linux"]["namespaces"].push_back({{"type", "user"}});
  cfg["linux"]["uidMappings"] = {{{"containerID", 0}, {"hostID", 0}, {"size", 65536}}};
  cfg["linux"]["gidMappings"] = {{{"containerID", 0}, {"hostID", 100000}, {"size", 65536}}};
  json p = policy::validate({{"userns", "auto"}}, "x");
  auto r = policy::apply(p, cfg, ns.ctx());
  EXPECT_TRUE(r.userns_auto);
  EXPECT_FALSE(r.config["linux"].contains("uidMappings"));
  // refuse mode: a violation naming the rule.
  json pr = policy::validate({{"userns", "auto"}, {"mode", "refuse"}}, "x");
  auto rr = policy::evaluate(pr, cfg, ns.ctx());
  ASSERT_EQ(rr.violations.size(), 1u) << rr.violations.dump(1);
  EXPECT_EQ(rr.violations[0]["rule"], "userns");
  // Maps clear of host id 0 are the caller's and kept.
  cfg["linux"]["uidMappings"] = {{{"containerID", 0}, {"hostID", 100000}, {"size", 65536}}};
  auto kept = policy::apply(p, cfg, ns.ctx());
  EXPECT_FALSE(kept.userns_auto);
  EXPECT_EQ(kept.config["linux"]["uidMappings"][0]["hostID"], 100000);
}

TEST(PolicyApply, ExecGetsTheSameCapsNoNewPrivsSeccompAndProxy) {
  FakeNs ns;
  auto r = policy::apply(policy::builtin(), clean_config(), ns.ctx());
  const policy::ExecSettings settings = policy::exec_settings(policy::parse(policy::builtin()), r);
  EXPECT_EQ(settings.extra_seccomp, seccomp_profile::builtin());
  json proc = {
      {"args", {"sh"}},
      {"env", {"HTTP_PROXY=http://elsewhere:1", "A=b"}},
      {"capabilities", {{"bounding", {"CAP_SYS_PTRACE", "CAP_KILL"}}, {"effective", {"CAP_SYS_PTRACE"}}}}};
  json d = exec_apply(settings, proc);
  EXPECT_EQ(proc["capabilities"]["bounding"], json::array({"CAP_KILL"}));
  EXPECT_EQ(proc["capabilities"]["effective"], json::array());
  EXPECT_EQ(proc["noNewPrivileges"], true);
  auto env = names(proc["env"]);
  EXPECT_NE(std::find(env.begin(), env.end(), "HTTP_PROXY=http://127.0.0.1:3128"), env.end());
  EXPECT_NE(std::find(env.begin(), env.end(), "A=b"), env.end());
  EXPECT_EQ(std::find(env.begin(), env.end(), "HTTP_PROXY=http://elsewhere:1"), env.end());
  EXPECT_TRUE(has_text(d, "CAP_SYS_PTRACE"));
}

TEST(PolicyApply, HostileFieldTypesAreErrorsNotCrashes) {
  FakeNs ns;
  std::vector<std::function<void(json&)>> mutations = {
      [](json& c) {
        c["linux"]["devices"] = {{{"path", "/dev/p"}, {"type", "p"}, {"major", "x"}}};
      },
      [](json& c) {
        c["linux"]["resources"]["devices"] = {{{"allow", "yes"}, {"access", 7}}};
      },
      [](json& c) { c["process"]["apparmorProfile"] = nullptr; },
      [](json& c) {
        c["annotations"] = {{"dev.agentshim.egress.allow", 5}};
      },
      [](json& c) {
        c["linux"]["resources"]["memory"] = {{"limit", "lots"}};
      },
      [](json& c) {
        c["linux"]["resources"]["cpu"] = {{"quota", 1}, {"period", 0}};
      },
      [](json& c) {
        c["mounts"].push_back({{"destination", "/x"}, {"type", "tmpfs"}, {"options", {"size="}}});
      },
      [](json& c) {
        c["linux"]["namespaces"].push_back({{"type", "time"}, {"path", "/nonexistent"}});
      },
  };
  for (std::size_t i = 0; i < mutations.size(); i++) {
    json cfg = clean_config();
    mutations[i](cfg);
    try {
      auto r = policy::evaluate(policy::builtin(), cfg, ns.ctx());
      EXPECT_TRUE(r.config.is_object()) << i;
    } catch (const Error&) {
      // an error about the config is fine; anything else fails the test
    }
  }
}

TEST(PolicyApply, DockersDefaultDeviceRulesPassExceptTun) {
  FakeNs ns;
  json cfg = clean_config();
  // What Docker 20.10 writes for an unprivileged container.
  cfg["linux"]["resources"]["devices"] = json::parse(R"([
    {"allow": false, "access": "rwm"},
    {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
    {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
    {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
    {"allow": true, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
    {"allow": true, "type": "c", "access": "m"},
    {"allow": true, "type": "b", "access": "m"},
    {"allow": true, "type": "c", "major": 136, "access": "rwm"},
    {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
    {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}])");
  json before = cfg["linux"]["resources"]["devices"];
  auto r = policy::evaluate(with_mode(policy::builtin(), "refuse"), cfg, ns.ctx());
  ASSERT_EQ(r.violations.size(), 1u) << r.violations.dump(1);
  EXPECT_EQ(r.violations[0]["path"], "linux.resources.devices[11]");  // /dev/net/tun
  r = policy::apply(policy::builtin(), cfg, ns.ctx());
  before.erase(11);
  EXPECT_EQ(r.config["linux"]["resources"]["devices"], before);
  // "m" alone on every device is not the privileged shape either.
  EXPECT_TRUE(by_rule(r, "privileged").empty());
}

TEST(PolicyApply, NoNewPrivilegesCanBeLeftToTheCaller) {
  FakeNs ns;
  json cfg = clean_config();
  cfg["process"]["noNewPrivileges"] = false;
  // Default: set, with a decision.
  auto r = policy::apply(policy::builtin(), cfg, ns.ctx());
  EXPECT_EQ(r.config["process"]["noNewPrivileges"], true);
  // A permissive policy keeps the caller's value, for create and exec.
  json p = policy::validate({{"capabilities", {{"no_new_privileges", false}}}}, "x");
  EXPECT_EQ(p["capabilities"]["allowed"],
            policy::builtin()["capabilities"]["allowed"]);  // merged, not replaced
  auto k = policy::apply(p, cfg, ns.ctx());
  EXPECT_EQ(k.config["process"]["noNewPrivileges"], false);
  for (const auto& d : k.decisions) EXPECT_NE(d["rule"], "no_new_privs") << d.dump();
  json proc = {{"args", {"sh"}}, {"noNewPrivileges", false}};
  exec_apply(policy::exec_settings(policy::parse(p), k), proc);
  EXPECT_EQ(proc["noNewPrivileges"], false);
  json proc2 = {{"args", {"sh"}}};
  exec_apply(policy::exec_settings(policy::parse(policy::builtin()), r), proc2);
  EXPECT_EQ(proc2["noNewPrivileges"], true);
  // A wrong type names the key.
  try {
    policy::validate({{"capabilities", {{"no_new_privileges", "no"}}}}, "policy x.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("capabilities.no_new_privileges"), std::string::npos) << e.what();
  }
}

// Every key's error names the file, the key and what was wrong (the table in
// policy.cpp replaced a hand-written chain; these are its messages).
TEST(Policy, EveryKeysErrorNamesTheKeyAndWhatWasWrong) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"mode": "x"})", "policy test.json: mode: must be \"enforce\" or \"refuse\", got \"x\""},
      {R"({"userns": 1})", "userns: must be \"off\" or \"auto\""},
      {R"({"bogus": {}})", "unknown policy section \"bogus\""},
      {R"({"capabilities": []})", "capabilities: must be an object"},
      {R"({"capabilities": {"x": 1}})", "unknown key capabilities.x"},
      {R"({"capabilities": {"allowed": "CAP_KILL"}})",
       "capabilities.allowed: must be an array of capability names"},
      {R"({"capabilities": {"allowed": ["CAP_NOPE"]}})",
       "capabilities.allowed[0]: unknown capability \"CAP_NOPE\""},
      {R"({"capabilities": {"no_new_privileges": 1}})",
       "capabilities.no_new_privileges: must be true or false"},
      {R"({"seccomp": {"profile": "rel.json"}})", "seccomp.profile: must be \"builtin\" or an absolute path"},
      {R"({"filesystem": {"masked_paths": ["rel"]}})",
       "filesystem.masked_paths[0]: must be an absolute path"},
      {R"({"filesystem": {"tmpfs_max_size": "lots"}})", "filesystem.tmpfs_max_size: must be a size such as"},
      {R"({"namespaces": {"allow_join": ["user"]}})", "namespaces.allow_join[0]: must be \"pid\" or"},
      {R"({"namespaces": {"allow_host": "pid"}})",
       "namespaces.allow_host: must be an array of namespace types"},
      {R"({"devices": {"allowed": [{"type": "b", "major": 1, "minor": 1}]}})",
       "devices.allowed[0].type: block devices are not listed here"},
      {R"({"devices": {"allowed": [{"type": "c", "major": 1}]}})",
       "devices.allowed[0]: needs \"type\", \"major\" and \"minor\""},
      {R"({"devices": {"allowed": [{"type": "c", "major": 1, "minor": 1, "x": 0}]}})",
       "unknown key devices.allowed[0].x"},
      {R"({"resources": {"defaults": 1}})",
       "resources.defaults: must be an object {\"memory\", \"pids\", \"cpus\"}"},
      {R"({"resources": {"defaults": {"memory": "1m"}}})",
       "resources.defaults.memory: must be a size of at least 4m"},
      {R"({"resources": {"maximum": {"pids": 0}}})",
       "resources.maximum.pids: must be an integer from 1 to 4194304"},
      {R"({"resources": {"maximum": {"cpus": "-1"}}})",
       "resources.maximum.cpus: must be a positive number of CPUs"},
      {R"({"resources": {"maximum": {"disk": 1}}})", "unknown key resources.maximum.disk"},
      {R"({"resources": {"defaults": {"pids": 5000}}})",
       "resources.defaults.pids: is above resources.maximum.pids"},
      {R"({"limits": {"exec_time_seconds": -1}})", "limits.exec_time_seconds: must be an integer from 0 to"},
      {R"({"network": {"mode": "open"}})",
       "network.mode: must be \"confined\" or \"internal\" or \"passthrough\", got \"open\""},
      {R"({"network": {"proxy_port": 0}})", "network.proxy_port: must be an integer from 1 to 65535"},
      {R"({"network": {"allow": [1]}})", "network.allow[0]: must be a \"host:port\" string"},
      {R"({"network": {"allow": ["a b:1"]}})", "network.allow[0]: \"a b:1\": "},
      {R"({"network": {"limits": {"max_connections": 0}}})",
       "network.limits.max_connections: must be an integer from 1"},
      {R"({"network": {"limits": {"nope": 1}}})", "unknown key network.limits.nope"},
      {R"({"annotations": {"may_widen": ["x"]}})",
       "annotations.may_widen[0]: not an annotation that can widen"},
      {R"({"audit": {"dir": "rel"}})", "audit.dir: must be an absolute path"},
      {R"({"audit": {"signing_key": 1}})", "audit.signing_key: must be a string"},
      {R"({"audit": {"tsa_url": "https://x"}})", "audit.tsa_url: must be \"\" or an http:// URL"},
      {R"({"audit": {"key_type": "rsa"}})", "audit.key_type: must be \"ed25519\" or \"ecdsa-p256\""},
      {R"({"audit": {"on_log_failure": "maybe"}})", "audit.on_log_failure: must be \"stop\" or \"continue\""},
      {R"({"audit": {"max_file_bytes": -1}})", "audit.max_file_bytes: must be a byte count (0 = no limit)"},
      {R"({"audit": {"strict": "yes"}})", "audit.strict: must be true or false"},
  };
  for (const auto& [doc, want] : cases)
    EXPECT_NE(error_of(json::parse(doc)).find(want), std::string::npos)
        << doc << "\n  gave: " << error_of(json::parse(doc)) << "\n  want: " << want;
  // Members a file leaves out keep their defaults, within a section too.
  json p = policy::validate(
      json::parse(R"({"resources": {"defaults": {"pids": 7}}, "network": {"limits": {"max_headers": 9}}})"),
      "x");
  EXPECT_EQ(p["resources"]["defaults"]["pids"], 7);
  EXPECT_EQ(p["resources"]["defaults"]["memory"], "1g");
  EXPECT_EQ(p["network"]["limits"]["max_headers"], 9);
  EXPECT_EQ(p["network"]["limits"]["max_connections"], 64);
  EXPECT_EQ(policy::validate(json::parse(R"({"capabilities": {"allowed": ["cap_kill"]}})"),
                             "x")["capabilities"]["allowed"],
            json::array({"CAP_KILL"}));
}

// A read-only root gets writable scratch tmpfs at /tmp, /var/tmp and an
// empty or missing $HOME, sized to the memory limit; a path the config
// mounts something at, above or below is left to the caller's mount; a home
// the image keeps files in is left alone, and the decision says what to do.
TEST(PolicyApply, ScratchSpaceOnAReadOnlyRoot) {
  testutil::TempDir bundle;
  mkdir_p(bundle.path + "/rootfs/root", 0700);
  mkdir_p(bundle.path + "/rootfs/home/dev", 0755);
  write_file(bundle.path + "/rootfs/home/dev/.profile", "x");
  policy::ApplyContext ctx;
  ctx.bundle = bundle.path;
  json cfg = clean_config();
  cfg["root"] = {{"path", "rootfs"}};
  cfg["linux"]["resources"] = {{"memory", {{"limit", 512LL << 20}}}};
  auto r = policy::apply(policy::builtin(), cfg, ctx);
  std::map<std::string, json> opts;
  for (const auto& m : r.config["mounts"])
    if (m["type"] == "tmpfs") opts[m["destination"].get<std::string>()] = m["options"];
  ASSERT_TRUE(opts.count("/tmp") && opts.count("/var/tmp") && opts.count("/root")) << r.config["mounts"];
  EXPECT_EQ(opts["/tmp"], json::array({"nosuid", "nodev", "size=536870912", "mode=1777"}));
  EXPECT_EQ(opts["/root"], json::array({"nosuid", "nodev", "size=536870912", "mode=0700", "uid=0", "gid=0"}));
  EXPECT_EQ(by_rule(r, "filesystem.scratch").size(), 3u);
  EXPECT_EQ(r.mounts.size(), r.config["mounts"].size());  // the normalised list has them too
  // A writable root: nothing added.
  json rw = cfg;
  json pol = policy::validate({{"filesystem", {{"readonly_root", false}}}}, "x");
  EXPECT_TRUE(by_rule(policy::apply(pol, rw, ctx), "filesystem.scratch").empty());
  // A home with the image's files stays; a config mount below /tmp keeps /tmp the caller's.
  json dev = cfg;
  dev["process"]["user"] = {{"uid", 1000}, {"gid", 1000}};
  dev["process"]["env"] = {"HOME=/home/dev"};
  dev["mounts"].push_back({{"destination", "/tmp/x"}, {"type", "tmpfs"}, {"source", "tmpfs"}});
  auto d = policy::apply(policy::builtin(), dev, ctx);
  std::set<std::string> dests;
  for (const auto& m : d.config["mounts"]) dests.insert(m["destination"].get<std::string>());
  EXPECT_TRUE(dests.count("/var/tmp"));
  EXPECT_FALSE(dests.count("/tmp"));
  EXPECT_FALSE(dests.count("/home/dev"));
  EXPECT_TRUE(has_text(by_rule(d, "filesystem.scratch"), "mount a volume there"));
  EXPECT_TRUE(has_text(by_rule(d, "filesystem.scratch"), "the config mounts /tmp/x"));
  // The image's $HOME as a symlink out of the root resolves inside it.
  testutil::TempDir b2;
  mkdir_p(b2.path + "/rootfs", 0755);
  ::symlink("/etc", (b2.path + "/rootfs/root").c_str());  // /etc of the rootfs: missing -> empty
  ctx.bundle = b2.path;
  auto s2 = policy::apply(policy::builtin(), cfg, ctx);
  std::set<std::string> d2;
  for (const auto& m : s2.config["mounts"]) d2.insert(m["destination"].get<std::string>());
  EXPECT_TRUE(d2.count("/root"));
}

// The engine decides on the caller's config as oci::parse_spec reads it and
// writes each change into the document create parses again: that document
// parses, and reads as the decisions say (the two views never drift).
TEST(PolicyApply, EnforcedConfigParsesAgainAndSaysWhatWasDecided) {
  FakeNs ns;
  const json builtin = policy::builtin();
  const json userns = policy::validate({{"userns", "auto"}}, "x");
  const json pinned = policy::validate(
      {{"filesystem", {{"readonly_root", false}}}, {"network", {{"mode", "internal"}}}}, "x");
  std::vector<std::function<void(json&)>> configs = {
      [](json&) {},
      [](json& c) {  // what Docker asks for, tightened
        c["process"]["capabilities"]["bounding"].push_back("CAP_NET_RAW");
        c["process"]["noNewPrivileges"] = false;
        c["process"]["oomScoreAdj"] = -500;
        c["process"]["rlimits"] = {{{"type", "RLIMIT_NOFILE"}, {"hard", 1ULL << 30}, {"soft", 1024}}};
        c["linux"]["resources"]["memory"] = {{"limit", 1LL << 40}, {"reservation", 1LL << 39}};
        c["linux"]["resources"]["devices"] = {{{"allow", true}, {"access", "rwm"}}};
        c["linux"]["devices"] = {{{"path", "/dev/kmsg"}, {"type", "c"}, {"major", 1}, {"minor", 11}}};
        c["linux"]["sysctl"] = {{"net.ipv4.ping_group_range", "0 2147483647"}};
        c["hooks"]["createRuntime"] = {{{"path", "/usr/bin/docker-proxy"}, {"args", {"libnetwork-setkey"}}}};
      },
      [&](json& c) {  // a joined network, a tmpfs without a size
        set_ns_path(c, "network", ns.dir + "/pod/net");
        c["mounts"].push_back({{"destination", "/scratch"}, {"type", "tmpfs"}, {"source", "tmpfs"}});
      },
  };
  std::size_t checked = 0;
  for (std::size_t i = 0; i < configs.size(); i++)
    for (const json* pol : {&builtin, &userns, &pinned}) {
      json cfg = clean_config();
      configs[i](cfg);
      policy::Result r;
      ASSERT_NO_THROW(r = policy::evaluate(*pol, cfg, ns.ctx())) << i;
      EXPECT_TRUE(r.violations.empty()) << i << r.violations.dump();
      checked++;
      oci::Spec s;
      ASSERT_NO_THROW(s = oci::parse_spec(r.config)) << i << " " << r.config.dump();
      EXPECT_EQ(s.process.no_new_privileges, true) << i;
      EXPECT_TRUE(s.process.env_value("HTTP_PROXY").rfind("http://127.0.0.1:", 0) == 0) << i;
      ASSERT_FALSE(s.linux.resources.devices.empty());
      EXPECT_TRUE(s.linux.resources.devices[0].every_device() && !s.linux.resources.devices[0].allow) << i;
      EXPECT_LE(*s.linux.resources.memory.limit, 8LL << 30) << i;  // resources.maximum.memory
      EXPECT_LE(s.linux.resources.memory.reservation.value_or(0), *s.linux.resources.memory.limit) << i;
      EXPECT_GE(s.process.oom_score_adj.value_or(0), 0) << i;
      for (const auto& rl : s.process.rlimits) EXPECT_LE(rl.hard, 1ULL << 20) << i;
      EXPECT_TRUE(s.hooks_of("createRuntime").empty() || *pol != pinned) << i;
      EXPECT_EQ(s.mounts.size(), r.mounts.size()) << i;
      for (std::size_t m = 0; m < s.mounts.size(); m++)
        EXPECT_EQ(s.mounts[m].destination, r.mounts[m].destination);
      EXPECT_TRUE(s.has_namespace("cgroup")) << i;
      if (*pol == userns) {
        EXPECT_TRUE(s.has_new_namespace("user")) << i;
        EXPECT_TRUE(s.linux.uid_mappings.empty()) << i;
        if (i == 1) {
          EXPECT_EQ(s.linux.sysctl["net.ipv4.ping_group_range"], "0 65535");
        }
      }
      if (i == 2 && *pol == pinned) {
        EXPECT_TRUE(s.has_new_namespace("network"));  // internal: the joined one is replaced
      }
    }
  EXPECT_EQ(checked, 9u);
}

// <state>/policy.json: what create saves is what exec, update and peers read.
TEST(Policy, SavedSettingsRoundTrip) {
  testutil::TempDir t("policy-test");
  policy::Saved s;
  s.exec.capabilities_allowed = {"CAP_KILL"};
  s.exec.no_new_privileges = false;
  s.exec.extra_seccomp = seccomp_profile::builtin();
  s.exec.env = {"HTTP_PROXY=http://127.0.0.1:3128"};
  s.exec.observe_exec = true;
  s.policy = policy::builtin();
  s.policy_name = "policy /etc/x.json";
  network::Credential c{"github", "agentshim-cred-00", net::cred::Credential{}, ""};
  c.definition = policy::parse(credential_policy()).credentials.at("github");
  s.served_network = network::Served{{c}, "/run/x/run-ca.pem"};
  s.write(t.path);
  const policy::Saved r = policy::Saved::read(t.path);
  EXPECT_EQ(r.exec.capabilities_allowed, s.exec.capabilities_allowed);
  EXPECT_FALSE(r.exec.no_new_privileges);
  EXPECT_EQ(r.exec.extra_seccomp, s.exec.extra_seccomp);
  EXPECT_EQ(r.exec.env, s.exec.env);
  EXPECT_TRUE(r.exec.observe_exec);
  EXPECT_EQ(r.policy, s.policy);
  EXPECT_EQ(r.policy_name, s.policy_name);
  ASSERT_TRUE(r.served_network);
  ASSERT_EQ(r.served_network->credentials.size(), 1u);
  EXPECT_EQ(r.served_network->credentials[0].placeholder, "agentshim-cred-00");
  EXPECT_EQ(r.served_network->credentials[0].definition.placeholder_env, c.definition.placeholder_env);
  EXPECT_EQ(r.served_network->run_ca_file, "/run/x/run-ca.pem");
  // A file without the optional parts; a corrupt one names the file.
  write_file(t.path + "/policy.json", R"({"capabilities_allowed": []})");
  const policy::Saved bare = policy::Saved::read(t.path);
  EXPECT_TRUE(bare.exec.no_new_privileges);
  EXPECT_FALSE(bare.exec.observe_exec);
  EXPECT_TRUE(bare.policy.is_null());
  EXPECT_FALSE(bare.served_network);
  write_file(t.path + "/policy.json", "{");
  try {
    policy::Saved::read(t.path);
    FAIL() << "a corrupt policy.json was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(t.path + "/policy.json: saved policy settings are corrupt"),
              std::string::npos)
        << e.what();
  }
}
