// network::run_ca_of_bundle and network::Options::serves_own (sandbox/network.h):
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
  auto serves_own = [](const char* mode, const char* ns) {
    network::Options o;
    o.mode = mode;
    o.ns = ns;
    return o.serves_own();
  };
  EXPECT_TRUE(serves_own("internal", "new"));
  EXPECT_TRUE(serves_own("confined", "new"));
  EXPECT_TRUE(serves_own("confined", "caller"));
  EXPECT_FALSE(serves_own("internal", "caller"));
  EXPECT_FALSE(serves_own("internal", "peer"));
  EXPECT_FALSE(serves_own("confined", "peer"));
  EXPECT_FALSE(serves_own("confined", "host"));
  EXPECT_FALSE(serves_own("passthrough", "new"));
}
