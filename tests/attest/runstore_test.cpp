// RunStore: the only code that builds run paths.
#include "attest/runstore.h"

#include <gtest/gtest.h>

#include "common/util.h"
#include "tests/temp_dir.h"

using namespace agentshim;

TEST(RunStore, PathsAndDefault) {
  EXPECT_EQ(attest::RunStore("").audit_dir(), "/var/lib/agentshim");
  attest::RunStore s("/x/audit");
  EXPECT_EQ(s.runs_dir(), "/x/audit/runs");
  EXPECT_EQ(s.run_dir("r1"), "/x/audit/runs/r1");
  EXPECT_EQ(s.keys_dir(), "/x/audit/keys");
}

TEST(RunStore, ListsFindsAndNamesTheContainer) {
  testutil::TempDir d;
  attest::RunStore s(d.path);
  EXPECT_TRUE(s.run_ids().empty());
  mkdir_p(s.run_dir("20260101T000000Z-b"), 0700);
  mkdir_p(s.run_dir("20260101T000000Z-a"), 0700);
  mkdir_p(s.run_dir("20260102T000000Z-c"), 0700);
  write_file(s.run_dir("20260101T000000Z-a") + "/session.json", R"({"container_id": "c1"})", 0600);
  write_file(s.run_dir("20260101T000000Z-b") + "/events.ndjson",
             "{\"type\":\"run.created\",\"data\":{\"container_id\":\"c1\"}}\n{}\n", 0600);
  write_file(s.run_dir("20260102T000000Z-c") + "/session.json", "not json", 0600);
  EXPECT_EQ(s.run_ids(),
            (std::vector<std::string>{"20260101T000000Z-a", "20260101T000000Z-b", "20260102T000000Z-c"}));
  EXPECT_EQ(s.container_of("20260101T000000Z-a"), "c1");
  EXPECT_EQ(s.container_of("20260101T000000Z-b"), "c1");
  EXPECT_EQ(s.container_of("20260102T000000Z-c"), "");
  EXPECT_EQ(s.latest_run_of("c1"), "20260101T000000Z-b");
  EXPECT_FALSE(s.latest_run_of("c2"));
  EXPECT_TRUE(s.has("20260101T000000Z-a"));
  for (const char* bad : {"", ".", "..", "../runs/20260101T000000Z-a", "nope"})
    EXPECT_FALSE(s.has(bad)) << bad;
}
