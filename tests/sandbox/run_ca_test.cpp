// network::run_ca_of_bundle and network::serves_own_network (sandbox/network.h):
// a container joining another's network trusts the owner's run CA, taken
// from the owner's bundle file after the marker line.
#include <gtest/gtest.h>

#include "sandbox/network.h"

using namespace agentshim;

namespace {
const std::string kCa = "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n";
const std::string kImage = "-----BEGIN CERTIFICATE-----\nSU1H\n-----END CERTIFICATE-----\n";
}  // namespace

TEST(RunCa, TheCertificateAfterTheMarker) {
  EXPECT_EQ(network::run_ca_of_bundle(kImage + network::kRunCaMarker + kCa), kCa);
  EXPECT_EQ(network::run_ca_of_bundle(std::string(network::kRunCaMarker) + kCa), kCa);
  // Without a trailing newline the certificate is still whole.
  EXPECT_EQ(network::run_ca_of_bundle(std::string(network::kRunCaMarker) + kCa.substr(0, kCa.size() - 1)),
            kCa);
}

TEST(RunCa, NothingElseCounts) {
  EXPECT_EQ(network::run_ca_of_bundle(""), "");                              // not written yet
  EXPECT_EQ(network::run_ca_of_bundle(kImage), "");                          // no marker
  EXPECT_EQ(network::run_ca_of_bundle(kImage + network::kRunCaMarker), "");  // marker, no certificate
  EXPECT_EQ(network::run_ca_of_bundle(kImage + network::kRunCaMarker + "junk\n" + kCa), "");
  EXPECT_EQ(network::run_ca_of_bundle(kImage + network::kRunCaMarker + kCa + kImage), "");  // two
  EXPECT_EQ(network::run_ca_of_bundle(kImage + network::kRunCaMarker + "-----BEGIN CERTIFICATE-----\nQUJD\n"),
            "");
}

TEST(RunCa, WhoServesItsOwnNetwork) {
  using json = nlohmann::json;
  EXPECT_TRUE(network::serves_own_network({{"mode", "internal"}, {"namespace", "new"}}));
  EXPECT_TRUE(network::serves_own_network({{"mode", "confined"}, {"namespace", "caller"}}));
  EXPECT_FALSE(network::serves_own_network({{"mode", "internal"}, {"namespace", "caller"}}));
  EXPECT_FALSE(network::serves_own_network({{"mode", "internal"}, {"namespace", "peer"}}));
  EXPECT_FALSE(network::serves_own_network({{"mode", "passthrough"}, {"namespace", "new"}}));
  EXPECT_FALSE(network::serves_own_network(json()));
}
