#include <gtest/gtest.h>
#include <unistd.h>

#include "common/error.h"
#include "common/util.h"
#include "sandbox/policy.h"

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

TEST(Policy, ErrorsNameTheFileAndTheKey) {
  EXPECT_NE(error_of({{"audti", json::object()}}).find("unknown policy section \"audti\""), std::string::npos);
  EXPECT_NE(error_of({{"audit", {{"stric", true}}}}).find("audit.stric"), std::string::npos);
  EXPECT_NE(error_of({{"audit", {{"key_type", "rsa"}}}}).find("audit.key_type"), std::string::npos);
  EXPECT_NE(error_of({{"audit", {{"on_log_failure", "ignore"}}}}).find("audit.on_log_failure"), std::string::npos);
  EXPECT_NE(error_of({{"audit", {{"dir", "relative/dir"}}}}).find("absolute"), std::string::npos);
  EXPECT_NE(error_of({{"audit", {{"strict", "yes"}}}}).find("true or false"), std::string::npos);
  EXPECT_NE(error_of(json::array()).find("policy test.json"), std::string::npos);
}

TEST(Policy, LoadReportsBadFiles) {
  char t[] = "/tmp/policy-test-XXXXXX";
  std::string d = ::mkdtemp(t);
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
  remove_tree(d);
}
