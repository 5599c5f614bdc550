// Proxy request-head parser, chunked body validator and authority parser.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "netpolicy/http.h"

using namespace agentshim::net::http;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto r = parse_request_head(in, 4096, 32);
  if (r.state == ParseResult::State::complete) {
    if (r.head_len > in.size() || r.head_len > 4096) __builtin_trap();
    if (r.request.host.empty() || r.request.host.size() > kMaxHostLength) __builtin_trap();
    std::string head = upstream_head(r.request);
    if (head.find("\r\n\r\n") + 4 != head.size()) __builtin_trap();  // exactly one end of head
    ChunkedValidator v;
    long long k = v.feed(in.substr(r.head_len));
    if (k > static_cast<long long>(in.size() - r.head_len)) __builtin_trap();
  } else if (r.state == ParseResult::State::error) {
    if (r.status < 400 || r.status > 599 || r.reason.empty()) __builtin_trap();
    std::string resp = error_response(r.status, r.reason);
    if (resp.find("\r\n\r\n") + 4 + r.reason.size() + 1 != resp.size()) __builtin_trap();
  }
  for (bool head_req : {false, true}) {
    auto rh = parse_response_head(in, head_req, 4096, 32);
    if (rh.state == ResponseHead::State::complete) {
      if (rh.head_len > in.size() || rh.head_len > 4096) __builtin_trap();
      if (rh.status < 100 || rh.status > 999) __builtin_trap();
      // The forwarded head: the status line as received, CRLF-terminated lines, no empty line.
      if (rh.forward.compare(0, 12, in.substr(0, 12)) != 0 || rh.forward.size() < 14 ||
          rh.forward.compare(rh.forward.size() - 2, 2, "\r\n") != 0 ||
          rh.forward.find("\r\n\r\n") != std::string::npos)
        __builtin_trap();
      if (head_req && rh.body != ResponseBody::none && rh.status != 101) __builtin_trap();
      if (rh.body == ResponseBody::close && !rh.close) __builtin_trap();
    } else if (rh.state == ResponseHead::State::error && rh.reason.empty()) {
      __builtin_trap();
    }
  }
  std::string host;
  uint16_t port = 0;
  if (parse_authority(in.substr(0, 300), 0, host, port) && port == 0) __builtin_trap();
  // The chunked validator alone, fed in two pieces.
  ChunkedValidator a;
  long long k1 = a.feed(in.substr(0, size / 2));
  if (k1 >= 0 && !a.done()) a.feed(in.substr(size / 2));
  return 0;
}
