// The Kubernetes identity in the record (issue 14 item 5): what the CRI
// annotations name lands in the signed predicate and session.json, and
// nothing else does.
#include <gtest/gtest.h>

#include "attest/record.h"
#include "tests/attest/run_fixture.h"

using namespace agentshim;
using json = nlohmann::json;

namespace {
const json kCri = {{"io.kubernetes.cri.sandbox-namespace", "team-a"},
                   {"io.kubernetes.cri.sandbox-name", "agent-7"},
                   {"io.kubernetes.cri.sandbox-uid", "0b5e3c1a-7d2f-4f5e-9c1b-2a3d4e5f6a7b"},
                   {"io.kubernetes.cri.sandbox-id", std::string(64, 'a')},
                   {"io.kubernetes.cri.container-name", "app"},
                   {"io.kubernetes.cri.container-type", "container"},
                   {"io.kubernetes.cri.image-name", "busybox"},
                   {"dev.agentshim.egress.allow", "x"}};
}  // namespace

TEST(KubernetesIdentity, FromTheCriAnnotations) {
  json k = attest::kubernetes_identity(kCri);
  EXPECT_EQ(k, (json{{"namespace", "team-a"},
                     {"pod_name", "agent-7"},
                     {"pod_uid", "0b5e3c1a-7d2f-4f5e-9c1b-2a3d4e5f6a7b"},
                     {"sandbox_id", std::string(64, 'a')},
                     {"container_name", "app"},
                     {"container_type", "container"}}));
  // Not a CRI run: null.
  EXPECT_TRUE(attest::kubernetes_identity(json::object()).is_null());
  EXPECT_TRUE(attest::kubernetes_identity(json{{"org.opencontainers.image.ref.name", "x"}}).is_null());
  EXPECT_TRUE(attest::kubernetes_identity(json::array()).is_null());
  EXPECT_TRUE(attest::kubernetes_identity(nullptr).is_null());
}

TEST(KubernetesIdentity, HostileValuesAreLeftOut) {
  json a = kCri;
  a["io.kubernetes.cri.sandbox-name"] = "evil\x1b]0;owned\x07";
  a["io.kubernetes.cri.container-name"] = std::string(254, 'x');
  a["io.kubernetes.cri.sandbox-uid"] = 42;
  a["io.kubernetes.cri.container-type"] = "";
  json k = attest::kubernetes_identity(a);
  EXPECT_FALSE(k.contains("pod_name"));
  EXPECT_FALSE(k.contains("container_name"));
  EXPECT_FALSE(k.contains("pod_uid"));
  EXPECT_FALSE(k.contains("container_type"));
  EXPECT_EQ(k["namespace"], "team-a");
  a["io.kubernetes.cri.container-name"] = std::string(253, 'x');
  EXPECT_EQ(attest::kubernetes_identity(a)["container_name"], std::string(253, 'x'));
}

TEST(KubernetesIdentity, SignedInThePredicateAndInSessionJson) {
  testutil::TempDir t;
  const json k = attest::kubernetes_identity(kCri);
  std::string rd = testutil::make_run(t.path, attest::KeyType::ed25519, "", k);
  auto v = attest::verify_run(rd, {});
  EXPECT_TRUE(v.verified()) << (v.mismatches.empty() ? "" : v.mismatches[0]);
  EXPECT_EQ(testutil::statement_of(rd)["predicate"]["kubernetes"], k);
  EXPECT_EQ(json::parse(read_file(rd + "/session.json"))["kubernetes"], k);
  EXPECT_EQ(attest::run_account(rd)["kubernetes"], k);
  // A run that is not a CRI run has no member at all.
  testutil::TempDir u;
  std::string plain = testutil::make_run(u.path, attest::KeyType::ed25519);
  EXPECT_FALSE(testutil::statement_of(plain)["predicate"].contains("kubernetes"));
  EXPECT_FALSE(json::parse(read_file(plain + "/session.json")).contains("kubernetes"));
}
