// What the exec observer reads from a hostile process: a binary's first bytes
// (shebang line) and NUL-terminated strings from its memory.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "sandbox/exec_observer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);
  std::string interp = agentshim::observer::shebang_interpreter(in);
  if (interp.size() > in.size()) __builtin_trap();
  int fd = ::memfd_create("mem", MFD_CLOEXEC);
  if (fd < 0) return 0;
  if (size && ::write(fd, data, size) != static_cast<ssize_t>(size)) {
    ::close(fd);
    return 0;
  }
  bool trunc = false;
  std::string s = agentshim::observer::read_cstring(fd, 0, 64, &trunc);
  if (s.size() > 64) __builtin_trap();
  ::close(fd);
  return 0;
}
