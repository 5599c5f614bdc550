#include <fcntl.h>
#include <sys/socket.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fd.h"
#include "common/util.h"

using namespace agentshim;

TEST(Util, ParseIntIsStrict) {
  EXPECT_EQ(parse_int("42"), 42);
  EXPECT_EQ(parse_int("-7"), -7);
  EXPECT_FALSE(parse_int(""));
  EXPECT_FALSE(parse_int("4x"));
  EXPECT_FALSE(parse_int("99999999999999999999999"));
  EXPECT_FALSE(parse_uint("-1"));
  EXPECT_EQ(parse_uint("18446744073709551615"), 18446744073709551615ULL);
}

TEST(Util, SplitJoinTrim) {
  auto v = split("a,,b", ',');
  ASSERT_EQ(v.size(), 3u);
  EXPECT_EQ(v[1], "");
  EXPECT_EQ(join(v, ":"), "a::b");
  EXPECT_EQ(trim("  x y \n"), "x y");
}

TEST(Util, ReadFileErrorNamesPath) {
  try {
    read_file("/nonexistent/agentshim-test");
    FAIL();
  } catch (const SysError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/agentshim-test"), std::string::npos);
    EXPECT_EQ(e.code(), ENOENT);
  }
}

TEST(Util, AtomicWriteAndRemoveTree) {
  char tmpl[] = "/tmp/agentshim-common-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  mkdir_p(dir + "/a/b/c");
  write_file_atomic(dir + "/a/b/c/f", "hello");
  EXPECT_EQ(read_file(dir + "/a/b/c/f"), "hello");
  EXPECT_FALSE(path_exists(dir + "/a/b/c/f.tmp"));
  remove_tree(dir);
  EXPECT_FALSE(path_exists(dir));
}

TEST(Fd, PassesDescriptorsOverUnixSocket) {
  auto sp = make_socketpair(SOCK_STREAM);
  auto p = make_pipe(O_CLOEXEC);
  int fds[1] = {p.second.get()};
  send_fds(sp.first.get(), "hi", fds, 1);
  std::vector<UniqueFd> got;
  EXPECT_EQ(recv_fds(sp.second.get(), got), "hi");
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(::write(got[0].get(), "x", 1), 1);
  char c = 0;
  ASSERT_EQ(::read(p.first.get(), &c, 1), 1);
  EXPECT_EQ(c, 'x');
}
