// escape_for_terminal (what `runs show` prints of a container's bytes) on
// arbitrary bytes: the output never holds a C0 control byte or DEL, is valid
// UTF-8, holds no C1 control or bidi override, and is a fixed point only
// modulo backslashes (escaping it again changes nothing but doubles them).
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/util.h"

namespace {
bool valid_and_printable(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return false;
    if (c < 0x80) {
      i++;
      continue;
    }
    std::size_t len = c >= 0xf5 ? 0 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
    if (!len || i + len > s.size()) return false;
    uint32_t cp = c & (0x7f >> len);
    for (std::size_t k = 1; k < len; k++) {
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min[len] || cp <= 0x9f || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return false;
    if ((cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069)) return false;
    i += len;
  }
  return true;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);
  std::string out = agentshim::escape_for_terminal(in);
  if (!valid_and_printable(out)) __builtin_trap();
  // Printable valid input without backslashes passes unchanged.
  if (valid_and_printable(in) && in.find('\\') == std::string::npos && out != in) __builtin_trap();
  return 0;
}
