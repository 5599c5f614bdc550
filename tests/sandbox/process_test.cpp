#include "sandbox/process.h"

#include <gtest/gtest.h>
#include <linux/capability.h>
#include <sys/prctl.h>

#include <set>

#include "common/error.h"
#include "sandbox/oci.h"

using namespace agentshim;
using json = nlohmann::json;

namespace {
json proc_with(const std::vector<std::string>& caps, bool ambient = false) {
  json p = {{"capabilities", {{"bounding", caps}, {"effective", caps}, {"permitted", caps}}}};
  if (ambient) p["capabilities"]["ambient"] = caps;
  return p;
}
}  // namespace

// runtime-tools' process_capabilities on a host whose bounding set lacks
// CAP_SYS_RESOURCE: each capability the host cannot grant is named once,
// with the sets that ask for it.
TEST(ProcessCapabilities, UngrantableOnesAreNamed) {
  auto host = [](int c) { return c != CAP_SYS_RESOURCE; };
  json p = proc_with({"CAP_CHOWN", "CAP_SYS_RESOURCE", "CAP_KILL"});
  p["capabilities"]["inheritable"] = {"CAP_SYS_RESOURCE"};
  EXPECT_EQ(process::ungrantable_capabilities(p, host),
            (std::vector<std::string>{"CAP_SYS_RESOURCE (bounding, effective, permitted, inheritable)"}));
  EXPECT_TRUE(process::ungrantable_capabilities(proc_with({"CAP_CHOWN", "CAP_KILL"}), host).empty());
  EXPECT_TRUE(process::ungrantable_capabilities(json::object(), host).empty());
  EXPECT_TRUE(process::ungrantable_capabilities({{"capabilities", nullptr}}, host).empty());
  auto none = [](int) { return false; };
  EXPECT_EQ(process::ungrantable_capabilities(proc_with({"CAP_KILL", "CAP_CHOWN"}, true), none),
            (std::vector<std::string>{"CAP_KILL (bounding, effective, permitted, ambient)",
                                      "CAP_CHOWN (bounding, effective, permitted, ambient)"}));
}

// Docker's and Kubernetes' (containerd's) default capability sets, and
// runc's spec: grantable wherever the runtime runs with a bounding set that
// holds them (every host Docker supports). The check uses this process's own
// bounding set, so the test skips what this host lacks instead of failing.
TEST(ProcessCapabilities, DockerAndKubernetesDefaultsPassOnThisHost) {
  const std::vector<std::string> docker = {
      "CAP_CHOWN",   "CAP_DAC_OVERRIDE", "CAP_FSETID",           "CAP_FOWNER",
      "CAP_MKNOD",   "CAP_NET_RAW",      "CAP_SETGID",           "CAP_SETUID",
      "CAP_SETFCAP", "CAP_SETPCAP",      "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
      "CAP_KILL",    "CAP_AUDIT_WRITE"};
  for (const auto& c : docker) {
    auto v = oci::capability_from_name(c);
    ASSERT_TRUE(v) << c;
    if (prctl(PR_CAPBSET_READ, *v, 0, 0, 0) != 1) GTEST_SKIP() << c << " is not in this host's bounding set";
  }
  EXPECT_TRUE(process::ungrantable_capabilities(proc_with(docker)).empty());
  EXPECT_NO_THROW(process::check_capabilities(proc_with(docker)));
}

TEST(ProcessCapabilities, CheckThrowsNamingThem) {
  // Whatever this host's bounding set, a capability above the kernel's
  // cap_last_cap cannot be granted; use the host's own answer for one it lacks.
  int missing = -1;
  for (int c = 0; c <= CAP_LAST_CAP; c++)
    if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) != 1) missing = c;
  if (missing < 0) GTEST_SKIP() << "this host's bounding set is full";
  json p = proc_with({"CAP_KILL"});
  p["capabilities"]["effective"].push_back(oci::capability_name(missing));
  try {
    process::check_capabilities(p);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("this host cannot grant " + oci::capability_name(missing) + " (effective)"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("bounding set"), std::string::npos) << m;
  }
}
