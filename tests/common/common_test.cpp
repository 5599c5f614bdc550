#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <set>
#include <thread>

#include "common/error.h"
#include "common/fd.h"
#include "common/util.h"
#include "tests/temp_dir.h"

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

TEST(Util, ParentDir) {
  EXPECT_EQ(parent_dir("/a/b/c"), "/a/b");
  EXPECT_EQ(parent_dir("/a"), "/");
  EXPECT_EQ(parent_dir("a/b"), "a");
  EXPECT_EQ(parent_dir("a"), ".");
}

TEST(Util, AtomicWriteAndRemoveTree) {
  testutil::TempDir t("agentshim-common");
  const std::string dir = t.path;
  mkdir_p(dir + "/a/b/c");
  write_file_atomic(dir + "/a/b/c/f", "hello");
  EXPECT_EQ(read_file(dir + "/a/b/c/f"), "hello");
  EXPECT_FALSE(path_exists(dir + "/a/b/c/f.tmp"));
  remove_tree(dir);
  EXPECT_FALSE(path_exists(dir));
}

// Writers of one path at once (supervisors sharing the DNS stub's
// resolv.conf, the runtime digest cache): every write succeeds, the file is
// always one writer's whole content, no temporary file is left.
TEST(Util, ConcurrentAtomicWritersEachRenameAWholeFile) {
  testutil::TempDir t("agentshim-common");
  const std::string p = t.path + "/shared";
  std::atomic<int> failures{0};
  std::atomic<bool> done{false};
  std::set<std::string> contents;
  for (int k = 0; k < 4; ++k) contents.insert(std::string(100000 + k, static_cast<char>('a' + k)));
  std::thread reader([&] {
    while (!done) {
      auto s = try_read_file(p);
      if (s && !contents.count(*s)) ++failures;
    }
  });
  std::vector<std::thread> writers;
  for (int k = 0; k < 4; ++k)
    writers.emplace_back([&, k] {
      const std::string mine(100000 + k, static_cast<char>('a' + k));
      for (int i = 0; i < 200; ++i) try {
          write_file_atomic(p, mine, 0644, false);
        } catch (const std::exception&) {
          ++failures;
        }
    });
  for (auto& w : writers) w.join();
  done = true;
  reader.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_TRUE(contents.count(read_file(p)));
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(t.path)) {
    ++entries;
    EXPECT_EQ(e.path().filename(), "shared");
  }
  EXPECT_EQ(entries, 1);
}

// A temporary file left by a killed writer whose pid this process now has
// (its counter starts where ours does) is not in the way.
TEST(Util, AtomicWriteIsNotBlockedByAStaleTemporaryFile) {
  testutil::TempDir t("agentshim-common");
  const std::string p = t.path + "/f";
  for (int n = 0; n < 1000; ++n)
    write_file(p + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(n), "stale");
  write_file_atomic(p, "fresh");
  EXPECT_EQ(read_file(p), "fresh");
}

// Files made durable together: nothing is at its path before commit()
// (readers see the old content), everything is after, no .tmp is left; a
// file that cannot be written names its path and leaves the others alone.
TEST(Util, DurableFilesAppearTogetherAtCommit) {
  testutil::TempDir t("agentshim-common");
  write_file(t.path + "/log", "appended in place");
  write_file_atomic(t.path + "/b", "old");
  DurableFiles f;
  f.write(t.path + "/a", "new a", 0600);
  f.write(t.path + "/b", "new b", 0600);
  f.sync(t.path + "/log");
  EXPECT_FALSE(path_exists(t.path + "/a"));
  EXPECT_EQ(read_file(t.path + "/b"), "old");
  f.commit();
  EXPECT_EQ(read_file(t.path + "/a"), "new a");
  EXPECT_EQ(read_file(t.path + "/b"), "new b");
  EXPECT_EQ(read_file(t.path + "/log"), "appended in place");
  EXPECT_FALSE(path_exists(t.path + "/a.tmp"));
  EXPECT_FALSE(path_exists(t.path + "/b.tmp"));
  f.commit();  // nothing left: a no-op
  try {
    f.write(t.path + "/missing/c", "x");
    FAIL();
  } catch (const SysError& e) {
    EXPECT_NE(std::string(e.what()).find(t.path + "/missing/c.tmp"), std::string::npos);
  }
  EXPECT_THROW(f.sync(t.path + "/nope"), SysError);
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

TEST(Util, EscapeForTerminal) {
  EXPECT_EQ(escape_for_terminal("plain /bin/sh -c 'x'"), "plain /bin/sh -c 'x'");
  // C0 controls, DEL and the backslash itself.
  EXPECT_EQ(escape_for_terminal("\x1b[2J\x1b[1A"), "\\x1b[2J\\x1b[1A");
  EXPECT_EQ(escape_for_terminal(std::string("a\nb\tc\rd\0e\x7f", 10)), "a\\x0ab\\x09c\\x0dd\\x00e\\x7f");
  EXPECT_EQ(escape_for_terminal("C:\\x1b"), "C:\\\\x1b");
  // Valid UTF-8 stays; C1 controls (U+009B: CSI) and bidi overrides do not.
  EXPECT_EQ(escape_for_terminal("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  EXPECT_EQ(escape_for_terminal("\xc2\x9b"
                                "31m"),
            "\\u009b31m");
  EXPECT_EQ(escape_for_terminal("a\xe2\x80\xae"
                                "b"),
            "a\\u202eb");
  EXPECT_EQ(escape_for_terminal("\xe2\x81\xa6"), "\\u2066");
  // Invalid UTF-8: each bad byte on its own (lone continuation, overlong,
  // surrogate, above U+10FFFF, truncated), then the rest resumes.
  EXPECT_EQ(escape_for_terminal("\x80x"), "\\x80x");
  EXPECT_EQ(escape_for_terminal("\xc0\xaf"), "\\xc0\\xaf");
  EXPECT_EQ(escape_for_terminal("\xe0\x80\xaf"), "\\xe0\\x80\\xaf");
  EXPECT_EQ(escape_for_terminal("\xed\xa0\x80"), "\\xed\\xa0\\x80");
  EXPECT_EQ(escape_for_terminal("\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80");
  EXPECT_EQ(escape_for_terminal("\xe2\x82"), "\\xe2\\x82");
  EXPECT_EQ(escape_for_terminal("\xe2\x82z"), "\\xe2\\x82z");
  // Whatever the input, no output byte is a control byte or invalid UTF-8
  // lead: every byte of 0..255 alone.
  for (int c = 0; c < 256; c++) {
    std::string out = escape_for_terminal(std::string(1, static_cast<char>(c)));
    for (unsigned char o : out) EXPECT_TRUE(o >= 0x20 && o < 0x7f) << "byte " << c << " -> " << out;
  }
}
