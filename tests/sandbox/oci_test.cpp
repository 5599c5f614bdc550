#include "sandbox/oci.h"

#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>

#include "common/error.h"

using namespace agentshim;
using json = nlohmann::json;

namespace {
json minimal() {
  return json::parse(R"({"ociVersion":"1.0.2","root":{"path":"rootfs"},
    "process":{"args":["sh"],"cwd":"/","env":["PATH=/bin"]},
    "linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}})");
}

std::string error_of(const json& cfg) {
  try {
    oci::validate_config(cfg);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(OciConfig, MinimalIsValid) {
  EXPECT_EQ(error_of(minimal()), "");
}

TEST(OciConfig, ErrorsNameTheField) {
  auto c = minimal();
  c["process"]["args"] = json::array();
  EXPECT_NE(error_of(c).find("process.args"), std::string::npos);
  c = minimal();
  c["linux"]["namespaces"].push_back({{"type", "bogus"}});
  EXPECT_NE(error_of(c).find("unsupported namespace type \"bogus\""), std::string::npos);
  c = minimal();
  c["linux"]["namespaces"].push_back({{"type", "pid"}});
  EXPECT_NE(error_of(c).find("listed twice"), std::string::npos);
  c = minimal();
  c["mounts"] = json::array({{{"destination", "relative/path"}, {"type", "tmpfs"}}});
  EXPECT_NE(error_of(c).find("mounts[0].destination"), std::string::npos);
  c = minimal();
  c["process"]["cwd"] = "relative";
  EXPECT_NE(error_of(c).find("process.cwd"), std::string::npos);
  c = minimal();
  c["ociVersion"] = "2.0.0";
  EXPECT_NE(error_of(c).find("unsupported version"), std::string::npos);
  c = minimal();
  c.erase("root");
  EXPECT_NE(error_of(c).find("root"), std::string::npos);
  c = minimal();
  c["hooks"] = {{"prestart", {{{"path", "/bin/true"}, {"timeout", 0}}}}};
  EXPECT_NE(error_of(c).find("hooks.prestart[0].timeout"), std::string::npos);
  c = minimal();
  c["hooks"] = {{"preboot", json::array()}};
  EXPECT_NE(error_of(c).find("unknown hook kind"), std::string::npos);
  c = minimal();
  c["process"]["user"] = {{"uid", -1}};
  EXPECT_NE(error_of(c).find("process.user.uid"), std::string::npos);
  c = minimal();
  c["linux"]["devices"] = json::array({{{"path", "/dev/x"}, {"type", "q"}}});
  EXPECT_NE(error_of(c).find("linux.devices[0].type"), std::string::npos);
  c = minimal();
  c["linux"]["sysctl"] = {{"net/../../x", "1"}};
  EXPECT_NE(error_of(c).find("invalid sysctl name"), std::string::npos);
}

TEST(OciConfig, Namespaces) {
  auto c = minimal();
  c["linux"]["namespaces"].push_back({{"type", "network"}, {"path", "/proc/1/ns/net"}});
  EXPECT_TRUE(oci::has_new_namespace(c, "pid"));
  EXPECT_FALSE(oci::has_new_namespace(c, "network"));
  EXPECT_FALSE(oci::has_new_namespace(c, "uts"));
  EXPECT_EQ(oci::namespace_by_name("network")->flag, CLONE_NEWNET);
  EXPECT_FALSE(oci::namespace_by_name("net"));
}

TEST(OciConfig, MountOptions) {
  auto mo = oci::parse_mount_options({"rbind", "ro", "nosuid", "rprivate", "size=64k", "mode=755"});
  EXPECT_TRUE(mo.bind);
  EXPECT_TRUE(mo.rec);
  EXPECT_TRUE(mo.flags & MS_RDONLY);
  EXPECT_TRUE(mo.flags & MS_NOSUID);
  EXPECT_TRUE(mo.flags & MS_BIND);
  ASSERT_EQ(mo.propagation.size(), 1u);
  EXPECT_EQ(mo.propagation[0], static_cast<unsigned long>(MS_PRIVATE | MS_REC));
  EXPECT_EQ(mo.data, "size=64k,mode=755");
  auto rw = oci::parse_mount_options({"ro", "rw"});
  EXPECT_FALSE(rw.flags & MS_RDONLY);
}

TEST(OciConfig, Signals) {
  EXPECT_EQ(oci::parse_signal("SIGTERM"), SIGTERM);
  EXPECT_EQ(oci::parse_signal("term"), SIGTERM);
  EXPECT_EQ(oci::parse_signal("9"), SIGKILL);
  EXPECT_EQ(oci::parse_signal("KILL"), SIGKILL);
  EXPECT_EQ(oci::parse_signal("RTMIN+1"), SIGRTMIN + 1);
  EXPECT_THROW(oci::parse_signal("SIGFOO"), Error);
  EXPECT_THROW(oci::parse_signal("0"), Error);
  EXPECT_THROW(oci::parse_signal("999"), Error);
  EXPECT_EQ(oci::signal_name(SIGTERM), "SIGTERM");
}

TEST(OciConfig, ContainerIds) {
  EXPECT_NO_THROW(oci::validate_container_id("abc-123_x.y+z"));
  EXPECT_THROW(oci::validate_container_id(""), Error);
  EXPECT_THROW(oci::validate_container_id(".."), Error);
  EXPECT_THROW(oci::validate_container_id("a/b"), Error);
  EXPECT_THROW(oci::validate_container_id("a b"), Error);
  EXPECT_THROW(oci::validate_container_id(std::string(1025, 'a')), Error);
}

TEST(OciConfig, Capabilities) {
  EXPECT_EQ(oci::capability_from_name("CAP_SYS_ADMIN"), 21);
  EXPECT_EQ(oci::capability_from_name("CAP_NET_RAW"), 13);
  EXPECT_FALSE(oci::capability_from_name("CAP_BOGUS"));
  EXPECT_FALSE(oci::capability_from_name("sys_admin"));
  EXPECT_EQ(oci::capability_name(21), "CAP_SYS_ADMIN");
}

// linux.sysctl: runc's namespace rules and wording; the writer's list.
TEST(OciConfig, SysctlsNeedTheirNamespace) {
  auto with = [](std::vector<std::string> ns, json sysctl) {
    auto c = minimal();
    c["linux"]["namespaces"] = json::array();
    for (const auto& n : ns) c["linux"]["namespaces"].push_back({{"type", n}});
    c["linux"]["sysctl"] = sysctl;
    return c;
  };
  struct Case {
    std::vector<std::string> ns;
    std::string key, error;
  };
  const std::vector<Case> cases = {
      {{"mount"},
       "fs.mqueue.queues_max",
       "sysctl \"fs.mqueue.queues_max\" is not allowed in the hosts ipc namespace"},
      {{"mount"}, "kernel.shmmax", "is not allowed in the hosts ipc namespace"},
      {{"mount"}, "kernel.msgmnb", "is not allowed in the hosts ipc namespace"},
      {{"mount"}, "kernel.sem", "is not allowed in the hosts ipc namespace"},
      {{"ipc"}, "kernel.shm_rmid_forced", ""},
      {{"ipc"}, "fs.mqueue.msg_max", ""},
      {{"ipc"},
       "net.ipv4.ip_forward",
       "sysctl \"net.ipv4.ip_forward\" not allowed in host network namespace"},
      {{"network"}, "net.ipv4.ip_forward", ""},
      {{"network"}, "net/ipv4/conf/eth0.100/rp_filter", ""},
      {{"ipc"}, "kernel.domainname", "sysctl \"kernel.domainname\" is not in a separate kernel namespace"},
      {{"uts"}, "kernel.domainname", ""},
      {{"uts"}, "kernel.hostname", "conflicts with the OCI \"hostname\" field"},
      {{"ipc", "network", "uts"},
       "vm.swappiness",
       "sysctl \"vm.swappiness\" is not in a separate kernel namespace"},
      {{"ipc", "network", "uts"}, "kernel.shm_next_id_x", "is not in a separate kernel namespace"},
      {{"ipc", "network", "uts"}, "kernel.core_pattern", "is not in a separate kernel namespace"},
  };
  for (const auto& k : cases) {
    auto c = with(k.ns, {{k.key, "1"}});
    std::string e = error_of(c);
    if (k.error.empty())
      EXPECT_EQ(e, "") << k.key;
    else
      EXPECT_NE(e.find(k.error), std::string::npos) << k.key << ": " << e;
    // The writer refuses exactly what validation refuses (given the same
    // entries in a parsed config).
    oci::Spec spec = oci::parse_spec(with(k.ns, json::object()));
    spec.linux.sysctl = {{k.key, "1"}};
    bool threw = false;
    try {
      (void)oci::sysctls(spec, false);
    } catch (const Error&) {
      threw = true;
    }
    EXPECT_EQ(threw, !k.error.empty()) << k.key;
  }
  auto list =
      oci::sysctls(oci::parse_spec(with({"network"}, {{"net/ipv4/conf/eth0.100/rp_filter", "2"}})), false);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].key, "net.ipv4.conf.eth0/100.rp_filter");
  EXPECT_EQ(list[0].path, "/proc/sys/net/ipv4/conf/eth0.100/rp_filter");
  EXPECT_EQ(list[0].value, "2");
  for (const char* bad : {"net..x", ".net", "net.", "net/./x", "net/../x", "net.//x"})
    EXPECT_NE(error_of(with({"network"}, {{bad, "1"}})).find("invalid sysctl name"), std::string::npos)
        << bad;
}

TEST(OciConfig, SysctlInAJoinedNamespaceOfTheRuntimeIsTheHosts) {
  auto c = minimal();
  c["linux"]["namespaces"].push_back({{"type", "ipc"}, {"path", "/proc/self/ns/ipc"}});
  c["linux"]["sysctl"] = {{"kernel.msgmax", "1"}};
  EXPECT_NE(error_of(c).find("is not allowed in the hosts ipc namespace"), std::string::npos);
  // Inside the container (the writer) the joined namespace is its own.
  EXPECT_EQ(oci::sysctls(oci::parse_spec(c), false).size(), 1u);
}

TEST(OciEdit, PutMountInPlaceOrLastAndPutEnv) {
  auto cfg = json::parse(R"({"process":{"env":["A=1","SSL_CERT_FILE=/x","B=2",7]},
    "mounts":[{"destination":"/etc/resolv.conf","type":"bind","source":"/theirs"},
              {"destination":"/etc","type":"bind","source":"/etc-dir"},
              {"destination":"/etc/resolv.conf","type":"bind","source":"/again"}]})");
  json ours = oci::runtime_bind("/ours", "/etc/resolv.conf");
  // In place: the first one's place, the duplicate gone, /etc still after it.
  json a = cfg;
  EXPECT_TRUE(oci::put_mount(a, ours, oci::MountPlace::kInPlace));
  ASSERT_EQ(a["mounts"].size(), 2u);
  EXPECT_EQ(a["mounts"][0]["source"], "/ours");
  EXPECT_EQ(a["mounts"][1]["destination"], "/etc");
  // Last: every one there removed, ours after everything.
  json b = cfg;
  EXPECT_TRUE(oci::put_mount(b, ours, oci::MountPlace::kLast));
  ASSERT_EQ(b["mounts"].size(), 2u);
  EXPECT_EQ(b["mounts"][0]["destination"], "/etc");
  EXPECT_EQ(b["mounts"][1]["source"], "/ours");
  // None there (or no mounts at all): appended.
  json c = json::parse(R"({"process":{}})");
  EXPECT_FALSE(oci::put_mount(c, ours, oci::MountPlace::kInPlace));
  EXPECT_EQ(c["mounts"], json::array({ours}));
  EXPECT_EQ(ours["options"], json::array({"rbind", "ro", "nosuid", "nodev", "noexec"}));
  // env: the named ones replaced (non-strings kept), ours appended.
  auto present = oci::put_env(cfg, {"SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS"},
                              {"SSL_CERT_FILE=/ca", "NODE_EXTRA_CA_CERTS=/ca"});
  EXPECT_EQ(present, std::vector<std::string>{"SSL_CERT_FILE"});
  EXPECT_EQ(cfg["process"]["env"],
            json::parse(R"(["A=1","B=2",7,"SSL_CERT_FILE=/ca","NODE_EXTRA_CA_CERTS=/ca"])"));
  EXPECT_TRUE(oci::put_env(c, {"X"}, {"X=1"}).empty());
  EXPECT_EQ(c["process"]["env"], json::array({"X=1"}));
}
