// point_resolver_at_stub(): the internal-only network's /etc/resolv.conf bind,
// and its mountpoint made by the runtime (an init in a user namespace whose
// root is an unprivileged host uid cannot create it in a root-owned /etc:
// runtime-tools' linux_uid_mappings and linux_ns_nopath failed create with
// "create etc/resolv.conf inside the rootfs: Permission denied").
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "common/error.h"
#include "common/util.h"
#include "sandbox/container.h"
#include "tests/temp_dir.h"

using namespace agentshim;
using json = nlohmann::json;

namespace {

struct TempDir : testutil::TempDir {
  TempDir() : testutil::TempDir("agentshim-resolvtest") {}
};

bool lexists(const std::string& p) {
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0;
}
bool is_regular(const std::string& p) {
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

json config_with_netns() {
  return json::parse(R"({"mounts": [], "linux": {"namespaces": [{"type": "network"}, {"type": "mount"}]}})");
}
// The network policy::apply decides for an internal network of the container's own.
network::Options with_mode(const char* mode) {
  network::Options o;
  o.mode = mode;
  o.ns = "new";
  return o;
}
const network::Options kInternal = with_mode("internal");

}  // namespace

TEST(ResolverStub, CreatesTheMountpointAndTheBind) {
  TempDir root;
  ASSERT_EQ(::mkdir((root.path + "/etc").c_str(), 0755), 0);
  json cfg = config_with_netns(), decisions = json::array();
  container::point_resolver_at_stub(cfg, kInternal, decisions, root.path);
  EXPECT_TRUE(is_regular(root.path + "/etc/resolv.conf"));
  EXPECT_TRUE(is_regular("/run/agentshim.dns/resolv.conf"));  // one shared, world-readable file
  ASSERT_EQ(cfg["mounts"].size(), 1u);
  EXPECT_EQ(cfg["mounts"][0]["destination"], "/etc/resolv.conf");
  EXPECT_EQ(cfg["mounts"][0]["source"], "/run/agentshim.dns/resolv.conf");
  ASSERT_EQ(decisions.size(), 1u);
  EXPECT_EQ(decisions[0]["action"], "added");
}

TEST(ResolverStub, KeepsAnExistingFile) {
  TempDir root;
  ASSERT_EQ(::mkdir((root.path + "/etc").c_str(), 0755), 0);
  { std::ofstream(root.path + "/etc/resolv.conf") << "nameserver 192.0.2.1\n"; }
  json cfg = config_with_netns(), decisions = json::array();
  container::point_resolver_at_stub(cfg, kInternal, decisions, root.path);
  std::ifstream in(root.path + "/etc/resolv.conf");
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "nameserver 192.0.2.1");  // the file under the mount is untouched
  EXPECT_EQ(cfg["mounts"].size(), 1u);
}

TEST(ResolverStub, NeverCreatesOutsideTheRootfs) {
  TempDir root, outside;
  ASSERT_EQ(::mkdir((root.path + "/etc").c_str(), 0755), 0);
  // A dangling absolute symlink: resolved beneath the rootfs, never on the host.
  const std::string target = outside.path + "/pwned";
  ASSERT_EQ(::symlink(target.c_str(), (root.path + "/etc/resolv.conf").c_str()), 0);
  json cfg = config_with_netns(), decisions = json::array();
  EXPECT_NO_THROW(container::point_resolver_at_stub(cfg, kInternal, decisions, root.path));
  EXPECT_FALSE(lexists(target));
  EXPECT_EQ(cfg["mounts"].size(), 1u);  // the init reports whatever the mount meets
}

TEST(ResolverStub, NothingWithoutInternalNetworkOrEtc) {
  TempDir root;
  json cfg = config_with_netns(), decisions = json::array();
  container::point_resolver_at_stub(cfg, kInternal, decisions, root.path);  // no /etc
  EXPECT_TRUE(cfg["mounts"].empty());
  ASSERT_EQ(::mkdir((root.path + "/etc").c_str(), 0755), 0);
  container::point_resolver_at_stub(cfg, with_mode("passthrough"), decisions, root.path);
  EXPECT_TRUE(cfg["mounts"].empty());
  EXPECT_FALSE(lexists(root.path + "/etc/resolv.conf"));
  EXPECT_TRUE(decisions.empty());
}
