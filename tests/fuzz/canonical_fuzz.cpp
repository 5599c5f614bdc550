// Canonical JSON, pct and base64 codecs on arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <string>

#include "attest/canonical.h"
#include "common/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);
  using agentshim::attest::json;
  json j = json::parse(in, nullptr, false);
  if (!j.is_discarded()) {
    try {
      std::string c = agentshim::attest::canonical(j);
      // Canonical form is a fixed point.
      if (agentshim::attest::canonical(json::parse(c)) != c) __builtin_trap();
    } catch (const agentshim::Error&) {
    }
  }
  // The verifier's fast scanner never accepts what the slow path (parse,
  // re-serialise, compare bytes) would reject, and accepts what it writes.
  bool fast = agentshim::attest::is_canonical(in);
  if (fast) {
    if (j.is_discarded()) __builtin_trap();
    std::string c;
    try {
      c = agentshim::attest::canonical(j);
    } catch (const agentshim::Error&) {
      __builtin_trap();
    }
    if (c != in) __builtin_trap();
  }
  if (!j.is_discarded()) {
    try {
      std::string c = agentshim::attest::canonical(j);
      // Only escaped object keys and very deep nesting may defer to the slow path.
      if (c == in && !fast && c.find('\\') == std::string::npos && c.size() < 256) __builtin_trap();
    } catch (const agentshim::Error&) {
    }
  }
  std::string enc = agentshim::attest::pct_encode(in);
  if (agentshim::attest::pct_decode(enc) != in) __builtin_trap();
  try {
    agentshim::attest::pct_decode(in);
  } catch (const agentshim::Error&) {
  }
  try {
    agentshim::attest::base64_decode(in);
  } catch (const agentshim::Error&) {
  }
  if (agentshim::attest::base64_decode(agentshim::attest::base64_encode(in)) != in) __builtin_trap();
  return 0;
}
