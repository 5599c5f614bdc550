#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "sandbox/exec_observer.h"

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
