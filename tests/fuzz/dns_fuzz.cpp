// DNS stub query parser and response builder.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "netpolicy/dns.h"

using namespace agentshim::net;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto r = dns::parse_query(data, size);
  if (r.state == dns::ParseResult::State::ok) {
    if (r.query.question_end > size || r.query.question_end < 17) __builtin_trap();
    if (r.query.name.empty()) __builtin_trap();
    for (char c : r.query.name)
      if (static_cast<unsigned char>(c) < 0x21 || static_cast<unsigned char>(c) > 0x7e) __builtin_trap();
    IpAddr a4;
    a4.family = AF_INET;
    IpAddr a6;
    a6.family = AF_INET6;
    auto resp = dns::build_response(r.query, data, dns::kNoError, {a4, a6}, true);
    if (resp.size() < r.query.question_end) __builtin_trap();
  } else if (r.state == dns::ParseResult::State::error) {
    if (dns::header_response(r.query.id, r.query.flags, r.rcode).size() != 12) __builtin_trap();
  }
  return 0;
}
