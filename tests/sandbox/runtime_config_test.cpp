#include "sandbox/runtime_config.h"

#include <gtest/gtest.h>

#include "common/error.h"

using namespace agentshim;
namespace rc = agentshim::runtime_config;

TEST(RuntimeConfig, TheNameInvokedChoosesTheFile) {
  auto a = rc::lookup_for("/usr/local/bin/agentshim", "/etc/agentshim");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->path, "/etc/agentshim/agentshim.json");
  EXPECT_FALSE(a->required);
  auto s = rc::lookup_for("/usr/local/bin/agentshim-strict", "/etc/agentshim");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->path, "/etc/agentshim/strict.json");
  EXPECT_TRUE(s->required);
  EXPECT_FALSE(rc::lookup_for("runc", "/etc/agentshim"));
  EXPECT_FALSE(rc::lookup_for("agentshim-", "/etc/agentshim"));
  // A handler name cannot point at a policy file.
  EXPECT_THROW(rc::lookup_for("agentshim-policy", "/etc/agentshim"), Error);
  EXPECT_THROW(rc::lookup_for("agentshim-policy.strict", "/etc/agentshim"), Error);
}

TEST(RuntimeConfig, ParsesTheSchema) {
  auto c =
      rc::parse(R"({"policy": "/etc/agentshim/policy.strict.json", "audit_dir": "/var/lib/agentshim/strict",
                        "root": "/run/agentshim", "systemd_cgroup": true, "comment": "x",
                        "signing_key": "/etc/agentshim/k.pem", "key_type": "ecdsa-p256"})",
                "/x.json");
  EXPECT_EQ(c.policy, "/etc/agentshim/policy.strict.json");
  EXPECT_EQ(c.audit_dir, "/var/lib/agentshim/strict");
  EXPECT_EQ(c.root, "/run/agentshim");
  EXPECT_EQ(c.systemd_cgroup, true);
  EXPECT_EQ(c.signing_key, "/etc/agentshim/k.pem");
  EXPECT_EQ(c.key_type, "ecdsa-p256");
  auto e = rc::parse("{}", "/x.json");
  EXPECT_FALSE(e.policy);
  EXPECT_FALSE(e.root);
}

TEST(RuntimeConfig, RejectsWhatItCannotUse) {
  for (const char* bad : {"[]", "{", R"({"polcy": "/p"})", R"({"policy": "relative.json"})",
                          R"({"policy": 1})", R"({"audit_dir": ""})", R"({"systemd_cgroup": "yes"})",
                          R"({"key_type": "rsa"})", R"({"signing_key": "k.pem"})"}) {
    try {
      rc::parse(bad, "/etc/agentshim/strict.json");
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("/etc/agentshim/strict.json"), std::string::npos) << e.what();
    }
  }
}
