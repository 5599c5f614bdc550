#include "sandbox/exec_observer.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "common/util.h"
#include "tests/temp_dir.h"

using namespace agentshim;

TEST(ExecObserver, Shebang) {
  EXPECT_EQ(observer::shebang_interpreter("#!/bin/sh\necho"), "/bin/sh");
  EXPECT_EQ(observer::shebang_interpreter("#! /usr/bin/env python3\n"), "/usr/bin/env");
  EXPECT_EQ(observer::shebang_interpreter("\x7f" "ELF..."), "");
  EXPECT_EQ(observer::shebang_interpreter("#"), "");
  EXPECT_EQ(observer::shebang_interpreter(std::string("#!") + std::string(300, 'a')), "");
}

TEST(ExecObserver, ReadsBoundedStringsFromProcessMemory) {
  int mem = ::open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(mem, 0);
  static const char s[] = "/usr/bin/agent";
  bool trunc = true;
  EXPECT_EQ(observer::read_cstring(mem, reinterpret_cast<unsigned long long>(s), 4096, &trunc), s);
  EXPECT_FALSE(trunc);
  EXPECT_EQ(observer::read_cstring(mem, reinterpret_cast<unsigned long long>(s), 4, &trunc), "/usr");
  EXPECT_TRUE(trunc);
  // An unmapped address reads as empty, never crashes.
  EXPECT_EQ(observer::read_cstring(mem, 8, 100, &trunc), "");
  EXPECT_EQ(observer::read_cstring(mem, 0, 100, &trunc), "");
  ::close(mem);
}

namespace {
std::string open_error(int dirfd, const std::string& path, unsigned long long resolve) {
  std::string err;
  int fd = observer::open_regular(dirfd, path, resolve, err);
  if (fd >= 0) {
    ::close(fd);
    return "";
  }
  return err.empty() ? "(no error text)" : err;
}
}  // namespace

TEST(ExecObserver, OpensOnlyRegularFilesInsideTheRoot) {
  testutil::TempDir d("observer-open");
  write_file(d.path + "/bin", "#!/bin/sh\n", 0755);
  ASSERT_EQ(::mkfifo((d.path + "/fifo").c_str(), 0600), 0);
  ASSERT_EQ(::symlink("/fifo", (d.path + "/to-fifo").c_str()), 0);
  ASSERT_EQ(::symlink("/proc/kmsg", (d.path + "/to-kmsg").c_str()), 0);
  ASSERT_EQ(::symlink("../../../../bin", (d.path + "/up").c_str()), 0);
  mkdir_p(d.path + "/dir");
  int root = ::open(d.path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(root, 0);
  const unsigned long long in_root = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  std::string err;
  int fd = observer::open_regular(root, "/bin", in_root, err);
  ASSERT_GE(fd, 0) << err;
  char buf[16] = {};
  EXPECT_EQ(::read(fd, buf, sizeof buf), 10);  // opened for reading
  ::close(fd);
  // A symlink climbing out stays in the root (/bin of the root, not the host's).
  EXPECT_EQ(open_error(root, "/up", in_root), "");
  // A FIFO (directly or through a symlink): refused without blocking and
  // without opening it (a writer would see a reader appear).
  EXPECT_NE(open_error(root, "/fifo", in_root).find("fifo"), std::string::npos);
  EXPECT_NE(open_error(root, "/to-fifo", in_root).find("fifo"), std::string::npos);
  int w = ::open((d.path + "/fifo").c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  EXPECT_EQ(w, -1) << "someone holds the FIFO open for reading";
  EXPECT_EQ(errno, ENXIO);
  // A symlink to /proc/kmsg resolves inside the root (absent there).
  EXPECT_NE(open_error(root, "/to-kmsg", in_root).find("No such file"), std::string::npos);
  EXPECT_NE(open_error(root, "/dir", in_root).find("directory"), std::string::npos);
  ::close(root);
  // With the host's root: /proc's "regular files" and devices are refused.
  int host = ::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(host, 0);
  EXPECT_NE(open_error(host, "/proc/kmsg", in_root).find("proc"), std::string::npos);
  EXPECT_NE(open_error(host, "/proc/self/status", in_root).find("proc"), std::string::npos);
  EXPECT_NE(open_error(host, "/sys/kernel/mm/transparent_hugepage/enabled", in_root).find("sysfs"),
            std::string::npos);
  EXPECT_NE(open_error(host, "/dev/null", in_root).find("character device"), std::string::npos);
  ::close(host);
  // A descriptor's magic link: the same checks.
  std::string lerr;
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(devnull, 0);
  EXPECT_EQ(observer::open_regular_link("/proc/self/fd/" + std::to_string(devnull), lerr), -1);
  EXPECT_NE(lerr.find("character device"), std::string::npos) << lerr;
  ::close(devnull);
  int self = observer::open_regular_link("/proc/self/exe", lerr);
  EXPECT_GE(self, 0) << lerr;
  if (self >= 0) ::close(self);
}
