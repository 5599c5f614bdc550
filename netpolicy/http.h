// HTTP/1.1 proxy request parsing: pure functions over bytes from a hostile
// client (fuzzed by tests/fuzz/http_fuzz.cpp).
//
// Accepted: `CONNECT host:port HTTP/1.x` and absolute-form `METHOD http://host[:port]/path HTTP/1.x`.
// Rejected (status in ParseResult): origin-form or https:// targets (400), bad
// request line / version (400), header syntax errors, obs-fold, bare CR or LF
// (400), duplicate Content-Length, Content-Length with Transfer-Encoding, a
// final transfer coding that is not chunked (400), other codings (501), Host
// header disagreeing with the target (400), oversized head or too many
// header fields (431).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace agentshim::net::http {

constexpr std::size_t kMaxHostLength = 253;

struct Header {
  std::string name;   // as received (validated token)
  std::string value;  // OWS trimmed, validated field-value
};

enum class Body { none, length, chunked };

struct Request {
  std::string method;     // validated token, as received
  std::string target;     // as received
  int minor_version = 1;  // HTTP/1.<minor>
  bool is_connect = false;
  std::string host;  // normalized: lowercase name, or IP literal (IPv6 without brackets)
  uint16_t port = 0;
  std::string path;  // origin-form for absolute-form requests ("/..."), "" for CONNECT
  std::vector<Header> headers;
  Body body = Body::none;
  uint64_t content_length = 0;
  // The client may send another request on this connection: HTTP/1.1 without
  // a `close` token in Connection. HTTP/1.0 clients get one request.
  bool keep_alive = false;
};

struct ParseResult {
  enum class State { incomplete, complete, error } state = State::incomplete;
  Request request;           // valid when complete
  std::size_t head_len = 0;  // bytes of the head including the final CRLFCRLF
  int status = 0;            // HTTP status to answer with on error (400, 431, 501)
  std::string reason;        // one line, safe to show (never echoes raw input)
};

// Inside an intercepted TLS tunnel (netpolicy/tls.h) requests are
// origin-form ("GET /path HTTP/1.1") to the tunnel's host and port.
struct Origin {
  std::string host;  // normalised, as the CONNECT's
  uint16_t port = 443;
};

// Parse the request head at the start of `data`. incomplete: need more bytes
// (and data is below the size limit). Pure function.
// With `origin` (a request inside an intercepted tunnel): the target must be
// origin-form ("/..." without a fragment; CONNECT and absolute-form are
// 400), the Host header is required (HTTP/1.1) and must name the origin
// (its port defaulting to 443), and host/port are the origin's.
ParseResult parse_request_head(std::string_view data, std::size_t max_header_bytes = 16384,
                               int max_headers = 100, const Origin* origin = nullptr);

// Parse "host:port" (CONNECT authority, port required when default_port == 0)
// or "host[:port]" (absolute-form authority). host: name, IPv4, or [IPv6].
// Returns false on anything else.
bool parse_authority(std::string_view auth, uint16_t default_port, std::string& host, uint16_t& port);

// Head to send upstream for an absolute-form request: origin-form request
// line, hop-by-hop fields removed (Connection and the fields it names,
// Proxy-Connection, Keep-Alive, Proxy-Authorization, Proxy-Authenticate, TE,
// Trailer, Upgrade, Transfer-Encoding — re-added as "chunked" for a chunked
// body), Host added for HTTP/1.0 clients that sent none, `Connection: close`
// unless `persistent` (then no Connection field: HTTP/1.1 keeps the upstream
// connection open). No Via, no X-Forwarded-For.
std::string upstream_head(const Request& req, bool persistent = false);

// How a response's body is delimited (RFC 9112 section 6.3).
enum class ResponseBody { none, length, chunked, close };

struct ResponseHead {
  enum class State { incomplete, complete, error } state = State::incomplete;
  int status = 0;
  std::size_t head_len = 0;  // bytes of the head including the final CRLFCRLF
  ResponseBody body = ResponseBody::none;
  uint64_t content_length = 0;
  bool interim = false;  // 1xx other than 101: another response head follows
  bool close = false;    // the upstream will close: `Connection: close`, HTTP/1.0, or a close-delimited body
  // The head to forward: status line and fields, hop-by-hop fields
  // (Connection and the fields it names, Keep-Alive, Proxy-Connection)
  // removed, each line CRLF-terminated, without the final empty line.
  std::string forward;
  std::string reason;  // on error: one line, safe to show
};

// Parse a response head from an upstream. head_request: the request was
// HEAD (no body whatever the fields say). Ambiguous framing is an error
// (duplicate or invalid Content-Length, Transfer-Encoding with
// Content-Length), as are obs-fold, bare CR/LF and oversized heads. A
// Transfer-Encoding whose final coding is not chunked is close-delimited.
ResponseHead parse_response_head(std::string_view data, bool head_request, std::size_t max_bytes = 65536,
                                 int max_headers = 256);

// A complete short response from the proxy itself: status line, text/plain
// one-line body, Connection: close. The reason is also where clients show it
// for CONNECT (whose body most never print): in the status line's reason
// phrase ("403 Forbidden (agentshim: ...)", Python's "Tunnel connection
// failed: 403 ...") and in a Proxy-Status header (RFC 9209: error type by
// status, details = the text). The text may carry container-supplied names:
// control bytes become spaces, the reason phrase keeps printable ASCII only
// and at most 200 bytes, the details are a quoted string.
std::string error_response(int status, const std::string& text);
// RFC 9209 error type for a status the proxy itself sends.
const char* proxy_status_error(int status);
const char* status_text(int status);

// Incremental validator of a chunked request body. feed() returns how many
// of the given bytes belong to the body (the rest follow the body), or -1 on
// a framing error. done() once the last chunk and trailer section are read.
class ChunkedValidator {
 public:
  long long feed(std::string_view data);
  bool done() const { return state_ == State::done; }
  const std::string& error() const { return error_; }

 private:
  enum class State { size, ext, size_lf, data, data_cr, data_lf, trailer, trailer_lf, done, error };
  State state_ = State::size;
  uint64_t remaining_ = 0;
  int digits_ = 0;
  std::size_t line_len_ = 0;
  std::size_t trailer_bytes_ = 0;
  bool trailer_line_empty_ = true;
  std::string error_;
};

}  // namespace agentshim::net::http
