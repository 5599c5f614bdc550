// The decoders of the messages between agentshim's processes: the control
// socket takes a line from any local process that can reach it, and the
// setup socket's peers run agentshim code (checked anyway). Either returns a
// message that encodes back to something that decodes the same, or throws
// agentshim::Error.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/error.h"
#include "sandbox/control.h"
#include "sandbox/sync.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);
  using namespace agentshim;
  try {
    auto m = sync::decode(in);
    std::string wire = sync::encode(m);
    if (sync::encode(sync::decode(wire)) != wire) std::abort();
  } catch (const Error&) {
  } catch (const nlohmann::json::exception&) {
    // encode of a non-UTF-8 string taken from the input: not a decoder bug
  }
  try {
    auto m = control::decode(in);
    std::string wire = control::encode(m);
    if (control::encode(control::decode(wire)) != wire) std::abort();
  } catch (const Error&) {
  } catch (const nlohmann::json::exception&) {
  }
  return 0;
}
