// The mountinfo parser and the spawn helper (common/).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include "common/mountinfo.h"
#include "common/spawn.h"

using namespace agentshim;

TEST(Mountinfo, UnescapesSpaceTabNewlineAndBackslash) {
  const std::string text =
      "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
      "36 22 0:30 / /tmp/with\\040space rw,nosuid shared:7 master:2 - tmpfs tmp\\011fs rw,size=65536k\n"
      "37 22 0:31 /sub\\134dir /a\\012b rw - cgroup cgroup rw,cpu,cpuacct\n";
  auto m = parse_mountinfo(text);
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[1].id, 36);
  EXPECT_EQ(m[1].parent, 22);
  EXPECT_EQ(m[1].mount_point, "/tmp/with space");
  EXPECT_EQ(m[1].source, "tmp\tfs");
  EXPECT_EQ(m[1].optional, (std::vector<std::string>{"shared:7", "master:2"}));
  EXPECT_EQ(m[1].super_options, "rw,size=65536k");
  EXPECT_EQ(m[2].root, "/sub\\dir");
  EXPECT_EQ(m[2].mount_point, "/a\nb");
  EXPECT_EQ(m[2].fstype, "cgroup");
}

TEST(Mountinfo, MalformedLinesAreSkipped) {
  auto m = parse_mountinfo("garbage\n1 2 3\nx y 0:1 / /m rw - tmpfs t rw\n\n5 1 0:1 / /ok rw - tmpfs t rw\n");
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].mount_point, "/ok");
  // A trailing backslash or a non-octal escape stays as it is.
  m = parse_mountinfo("5 1 0:1 / /a\\09x\\ rw - tmpfs t rw\n");
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].mount_point, "/a\\09x\\");
}

TEST(Mountinfo, MountPointOfIsTheLongestContainingMount) {
  auto m = parse_mountinfo(
      "1 0 0:1 / / rw - ext4 r rw\n"
      "2 1 0:2 / /tmp/with\\040space rw - tmpfs t rw\n"
      "3 1 0:3 / /tmp/with rw - tmpfs t rw\n");
  EXPECT_EQ(mount_point_of(m, "/tmp/with space/bundle"), "/tmp/with space");
  EXPECT_EQ(mount_point_of(m, "/tmp/with"), "/tmp/with");
  EXPECT_EQ(mount_point_of(m, "/tmp/without"), "/");
  EXPECT_FALSE(read_mountinfo().empty());
}

TEST(Spawn, FeedsStdinCapturesBothStreamsAndStatus) {
  SpawnSpec s;
  s.argv = {"sh", "-c", "read x; echo out:$x; echo err >&2; exit 3"};
  s.input = "hello\n";
  auto r = spawn_and_wait(s);
  EXPECT_FALSE(r.succeeded());
  EXPECT_EQ(r.describe(), "exit status 3");
  EXPECT_EQ(r.out, "out:hello\n");
  EXPECT_EQ(r.err, "err\n");
}

TEST(Spawn, EnvIsTheWholeEnvironmentWhenGiven) {
  SpawnSpec s;
  s.path = "/usr/bin/env";
  s.argv = {"env"};
  s.env = std::vector<std::string>{"ONLY=1"};
  auto r = spawn_and_wait(s);
  EXPECT_TRUE(r.succeeded());
  EXPECT_EQ(r.out, "ONLY=1\n");
}

TEST(Spawn, TimeoutKillsAndExecFailureIs127) {
  SpawnSpec s;
  s.argv = {"sleep", "10"};
  s.timeout_ms = 100;
  auto r = spawn_and_wait(s);
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.describe(), "timed out");
  SpawnSpec bad;
  bad.path = "/nonexistent/hook";
  bad.argv = {"hook"};
  r = spawn_and_wait(bad);
  EXPECT_TRUE(WIFEXITED(r.status));
  EXPECT_EQ(WEXITSTATUS(r.status), 127);
  EXPECT_NE(r.err.find("exec /nonexistent/hook: No such file or directory"), std::string::npos) << r.err;
}

TEST(Spawn, AProgramThatDoesNotReadStdinAndOutputBeyondTheCap) {
  SpawnSpec s;
  s.argv = {"sh", "-c", "head -c 200000 /dev/zero"};
  s.input = std::string(1 << 20, 'x');  // more than a pipe holds, never read
  s.max_output = 1000;
  auto r = spawn_and_wait(s);
  EXPECT_TRUE(r.succeeded());
  EXPECT_EQ(r.out.size(), 1000u);
}

// An option matches whole, wherever it stands in the list.
TEST(MountInfo, HasOptionMatchesWholeOptions) {
  EXPECT_TRUE(has_option("ro", "ro"));
  EXPECT_TRUE(has_option("rw,nosuid,ro", "ro"));
  EXPECT_TRUE(has_option("ro,relatime", "ro"));
  EXPECT_FALSE(has_option("rw,rootcontext=x", "ro"));
  EXPECT_FALSE(has_option("", "ro"));
  EXPECT_FALSE(has_option("rw", "r"));
}
