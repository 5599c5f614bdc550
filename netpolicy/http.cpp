#include "netpolicy/http.h"

#include <algorithm>

#include "netpolicy/allowlist.h"

namespace agentshim::net::http {

namespace {

bool is_tchar(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '!':
    case '#':
    case '$':
    case '%':
    case '&':
    case '\'':
    case '*':
    case '+':
    case '-':
    case '.':
    case '^':
    case '_':
    case '`':
    case '|':
    case '~':
      return true;
    default:
      return false;
  }
}

bool is_token(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (!is_tchar(c)) return false;
  return true;
}

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return r;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && lower(a) == lower(b);
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Comma-separated list elements, OWS trimmed, empty elements dropped, lowercased.
std::vector<std::string> list_tokens(std::string_view v) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= v.size()) {
    auto comma = v.find(',', start);
    auto part =
        trim_ows(v.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
    if (!part.empty()) out.push_back(lower(part));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return out;
}

bool parse_port(std::string_view s, uint16_t& port) {
  if (s.empty() || s.size() > 5) return false;
  unsigned v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v < 1 || v > 65535) return false;
  port = static_cast<uint16_t>(v);
  return true;
}

ParseResult fail(int status, std::string reason) {
  ParseResult r;
  r.state = ParseResult::State::error;
  r.status = status;
  r.reason = std::move(reason);
  return r;
}

const std::vector<std::string_view> kHopByHop = {
    "connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate",
    "te",         "trailer",          "upgrade",    "transfer-encoding"};

}  // namespace

bool parse_authority(std::string_view auth, uint16_t default_port, std::string& host, uint16_t& port) {
  if (auth.empty() || auth.size() > kMaxHostLength + 8) return false;
  std::string_view h, p;
  bool have_port = false;
  if (auth.front() == '[') {
    auto close = auth.find(']');
    if (close == std::string_view::npos) return false;
    h = auth.substr(1, close - 1);
    auto rest = auth.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return false;
      p = rest.substr(1);
      have_port = true;
    }
    auto ip = parse_ip(std::string(h));
    if (!ip || ip->family != AF_INET6) return false;
    host = ip_to_string(*ip);
  } else {
    if (std::count(auth.begin(), auth.end(), ':') > 1) return false;
    auto colon = auth.find(':');
    h = auth.substr(0, colon);
    if (colon != std::string_view::npos) {
      p = auth.substr(colon + 1);
      have_port = true;
    }
    if (h.size() > kMaxHostLength) return false;
    std::string hs(h);
    if (auto ip = parse_ip(hs)) {
      host = ip_to_string(*ip);
    } else if (auto n = normalize_hostname(hs)) {
      host = *n;
    } else {
      return false;
    }
  }
  if (have_port) return parse_port(p, port);
  if (default_port == 0) return false;
  port = default_port;
  return true;
}

ParseResult parse_request_head(std::string_view data, std::size_t max_header_bytes, int max_headers,
                               const Origin* origin) {
  std::size_t limit = std::min(data.size(), max_header_bytes);
  auto end = data.substr(0, limit).find("\r\n\r\n");
  if (end == std::string_view::npos) {
    // Reject early what can never become valid, so a broken client is not left waiting.
    for (std::size_t i = 0; i < limit; ++i) {
      if (data[i] == '\n' && (i == 0 || data[i - 1] != '\r')) return fail(400, "bare LF in request head");
      if (data[i] == '\r' && i + 1 < limit && data[i + 1] != '\n')
        return fail(400, "bare CR in request head");
      if (data[i] == '\0') return fail(400, "NUL in request head");
    }
    if (data.size() >= max_header_bytes) return fail(431, "request head too large");
    return {};
  }
  std::string_view head = data.substr(0, end + 2);  // every line ends with CRLF
  std::vector<std::string_view> lines;
  std::size_t pos = 0;
  while (pos < head.size()) {
    auto crlf = head.find("\r\n", pos);
    auto line = head.substr(pos, crlf - pos);
    for (char c : line) {
      if (c == '\r') return fail(400, "bare CR in request head");
      if (c == '\n') return fail(400, "bare LF in request head");
    }
    lines.push_back(line);
    pos = crlf + 2;
  }
  if (lines.empty() || lines[0].empty()) return fail(400, "empty request line");
  if (static_cast<long long>(lines.size()) - 1 > max_headers) return fail(431, "too many header fields");

  ParseResult res;
  Request& req = res.request;
  // Request line: method SP request-target SP HTTP-version, single spaces.
  std::string_view rl = lines[0];
  auto sp1 = rl.find(' ');
  if (sp1 == std::string_view::npos) return fail(400, "malformed request line");
  auto sp2 = rl.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || rl.find(' ', sp2 + 1) != std::string_view::npos)
    return fail(400, "malformed request line");
  auto method = rl.substr(0, sp1), target = rl.substr(sp1 + 1, sp2 - sp1 - 1), version = rl.substr(sp2 + 1);
  if (!is_token(method) || method.size() > 32) return fail(400, "invalid method");
  if (target.empty() || target.size() > 8192) return fail(400, "invalid request target");
  for (unsigned char c : target)
    if (c <= 0x20 || c >= 0x7f) return fail(400, "invalid character in request target");
  if (version == "HTTP/1.1")
    req.minor_version = 1;
  else if (version == "HTTP/1.0")
    req.minor_version = 0;
  else
    return fail(400, "unsupported HTTP version");
  req.method = std::string(method);
  req.target = std::string(target);

  // Header fields.
  for (std::size_t i = 1; i < lines.size(); ++i) {
    auto line = lines[i];
    if (line.empty()) return fail(400, "malformed header section");
    if (line.front() == ' ' || line.front() == '\t') return fail(400, "obsolete line folding in header");
    auto colon = line.find(':');
    if (colon == std::string_view::npos) return fail(400, "header line without ':'");
    auto name = line.substr(0, colon);
    if (!is_token(name) || name.size() > 256) return fail(400, "invalid header name");
    auto value = trim_ows(line.substr(colon + 1));
    for (unsigned char c : value)
      if ((c < 0x20 && c != '\t') || c == 0x7f) return fail(400, "invalid character in header value");
    req.headers.push_back({std::string(name), std::string(value)});
  }

  // Framing: Content-Length / Transfer-Encoding (request smuggling shapes are errors).
  int cl_count = 0, host_count = 0;
  std::string cl_value, host_value;
  std::vector<std::string> codings;
  bool have_te = false;
  for (const auto& h : req.headers) {
    if (iequals(h.name, "content-length")) {
      ++cl_count;
      cl_value = h.value;
    } else if (iequals(h.name, "transfer-encoding")) {
      have_te = true;
      for (auto& t : list_tokens(h.value)) codings.push_back(std::move(t));
    } else if (iequals(h.name, "host")) {
      ++host_count;
      host_value = h.value;
    }
  }
  if (cl_count > 1) return fail(400, "duplicate Content-Length");
  if (cl_count == 1) {
    if (cl_value.empty() || cl_value.size() > 18) return fail(400, "invalid Content-Length");
    for (char c : cl_value)
      if (c < '0' || c > '9') return fail(400, "invalid Content-Length");
    req.content_length = std::stoull(cl_value);
    req.body = req.content_length ? Body::length : Body::none;
  }
  if (have_te) {
    if (cl_count) return fail(400, "Transfer-Encoding together with Content-Length");
    if (req.minor_version == 0) return fail(400, "Transfer-Encoding in an HTTP/1.0 request");
    if (codings.empty() || codings.back() != "chunked")
      return fail(400, "final transfer coding is not chunked");
    if (codings.size() > 1) {
      for (std::size_t i = 0; i + 1 < codings.size(); ++i)
        if (codings[i] == "chunked") return fail(400, "chunked applied more than once");
      return fail(501, "transfer codings other than chunked are not supported");
    }
    req.body = Body::chunked;
  }
  if (host_count > 1) return fail(400, "duplicate Host header");

  if (origin) {
    if (method == "CONNECT") return fail(400, "CONNECT inside an intercepted TLS tunnel");
    if (target.front() != '/')
      return fail(400, "request target inside a TLS tunnel must be origin-form (/path)");
    if (target.find('#') != std::string_view::npos) return fail(400, "fragment in request target");
    req.host = origin->host;
    req.port = origin->port;
    req.path = std::string(target);
    if (host_count == 0 && req.minor_version == 1) return fail(400, "missing Host header");
    if (host_count == 1) {
      std::string hh;
      uint16_t hp = 0;
      if (!parse_authority(host_value, 443, hh, hp) || hh != req.host || hp != req.port)
        return fail(400, "Host header does not match the TLS tunnel's host");
    }
  } else if (method == "CONNECT") {
    req.is_connect = true;
    if (!parse_authority(target, 0, req.host, req.port)) return fail(400, "CONNECT target must be host:port");
    if (req.body != Body::none || have_te) return fail(400, "CONNECT request with a body");
  } else {
    constexpr std::string_view kHttp = "http://";
    if (target.size() >= 8 && iequals(target.substr(0, 8), "https://"))
      return fail(400, "https:// targets must use CONNECT");
    if (target.size() < kHttp.size() || !iequals(target.substr(0, kHttp.size()), kHttp))
      return fail(400, "not a proxy request (absolute-form http:// target or CONNECT expected)");
    auto rest = target.substr(kHttp.size());
    if (rest.find('#') != std::string_view::npos) return fail(400, "fragment in request target");
    auto auth_end = rest.find_first_of("/?");
    auto auth = rest.substr(0, auth_end);
    if (auth.find('@') != std::string_view::npos) return fail(400, "userinfo in request target");
    if (!parse_authority(auth, 80, req.host, req.port)) return fail(400, "invalid host in request target");
    std::string path(auth_end == std::string_view::npos ? std::string_view() : rest.substr(auth_end));
    if (path.empty())
      path = "/";
    else if (path.front() == '?')
      path = "/" + path;
    req.path = std::move(path);
    if (host_count == 0 && req.minor_version == 1) return fail(400, "missing Host header");
    if (host_count == 1) {
      std::string hh;
      uint16_t hp = 0;
      if (!parse_authority(host_value, 80, hh, hp) || hh != req.host || hp != req.port)
        return fail(400, "Host header does not match the request target");
    }
  }
  if (req.minor_version == 1) {
    req.keep_alive = true;
    for (const auto& h : req.headers)
      if (iequals(h.name, "connection"))
        for (auto& t : list_tokens(h.value))
          if (t == "close") req.keep_alive = false;
  }
  res.state = ParseResult::State::complete;
  res.head_len = end + 4;
  return res;
}

std::string upstream_head(const Request& req, bool persistent) {
  std::vector<std::string> listed;
  bool have_host = false;
  for (const auto& h : req.headers)
    if (iequals(h.name, "connection"))
      for (auto& t : list_tokens(h.value)) listed.push_back(std::move(t));
  std::string out = req.method + " " + req.path + " HTTP/1.1\r\n";
  for (const auto& h : req.headers) {
    std::string n = lower(h.name);
    if (std::find(kHopByHop.begin(), kHopByHop.end(), n) != kHopByHop.end()) continue;
    if (std::find(listed.begin(), listed.end(), n) != listed.end()) continue;
    if (n == "host") have_host = true;
    out += h.name;
    out += ": ";
    out += h.value;
    out += "\r\n";
  }
  if (!have_host) {
    std::string h = req.host.find(':') != std::string::npos ? "[" + req.host + "]" : req.host;
    if (req.port != 80) h += ":" + std::to_string(req.port);
    out += "Host: " + h + "\r\n";
  }
  if (req.body == Body::chunked) out += "Transfer-Encoding: chunked\r\n";
  out += persistent ? "\r\n" : "Connection: close\r\n\r\n";
  return out;
}

ResponseHead parse_response_head(std::string_view data, bool head_request, std::size_t max_bytes,
                                 int max_headers) {
  ResponseHead r;
  auto bad = [&](std::string why) {
    r = ResponseHead();
    r.state = ResponseHead::State::error;
    r.reason = std::move(why);
    return r;
  };
  std::size_t limit = std::min(data.size(), max_bytes);
  auto end = data.substr(0, limit).find("\r\n\r\n");
  if (end == std::string_view::npos) {
    if (data.size() >= max_bytes) return bad("response head too large");
    // Fail early on what can never become a response, so no one waits for it.
    if (data.size() >= 5 && data.substr(0, 5) != "HTTP/") return bad("not an HTTP/1.x response");
    return r;
  }
  std::string_view head = data.substr(0, end + 2);
  std::vector<std::string_view> lines;
  for (std::size_t pos = 0; pos < head.size();) {
    auto crlf = head.find("\r\n", pos);
    auto line = head.substr(pos, crlf - pos);
    for (char c : line)
      if (c == '\r' || c == '\n') return bad("bare CR or LF in response head");
    lines.push_back(line);
    pos = crlf + 2;
  }
  if (static_cast<long long>(lines.size()) - 1 > max_headers) return bad("too many response header fields");
  // Status line: HTTP/1.x SP 3DIGIT SP reason (reason may be empty).
  std::string_view sl = lines[0];
  if (sl.size() < 12 || (sl.substr(0, 9) != "HTTP/1.1 " && sl.substr(0, 9) != "HTTP/1.0 ") ||
      (sl.size() > 12 && sl[12] != ' '))
    return bad("malformed status line");
  bool http10 = sl[7] == '0';
  int status = 0;
  for (int i = 9; i < 12; ++i) {
    if (sl[i] < '0' || sl[i] > '9') return bad("malformed status line");
    status = status * 10 + (sl[i] - '0');
  }
  if (status < 100) return bad("malformed status line");
  for (unsigned char c : sl)
    if ((c < 0x20 && c != '\t') || c == 0x7f) return bad("invalid character in status line");
  std::vector<Header> headers;
  for (std::size_t i = 1; i < lines.size(); ++i) {
    auto line = lines[i];
    if (line.empty()) return bad("malformed response header section");
    if (line.front() == ' ' || line.front() == '\t') return bad("obsolete line folding in response");
    auto colon = line.find(':');
    if (colon == std::string_view::npos) return bad("response header line without ':'");
    auto name = line.substr(0, colon);
    if (!is_token(name)) return bad("invalid response header name");
    auto value = trim_ows(line.substr(colon + 1));
    for (unsigned char c : value)
      if ((c < 0x20 && c != '\t') || c == 0x7f) return bad("invalid character in response header value");
    headers.push_back({std::string(name), std::string(value)});
  }
  int cl_count = 0;
  std::string cl_value;
  bool have_te = false, close = http10, keep_alive_token = false;
  std::vector<std::string> codings, listed;
  for (const auto& h : headers) {
    if (iequals(h.name, "content-length")) {
      ++cl_count;
      cl_value = h.value;
    } else if (iequals(h.name, "transfer-encoding")) {
      have_te = true;
      for (auto& t : list_tokens(h.value)) codings.push_back(std::move(t));
    } else if (iequals(h.name, "connection")) {
      for (auto& t : list_tokens(h.value)) {
        if (t == "close") close = true;
        if (t == "keep-alive") keep_alive_token = true;
        listed.push_back(std::move(t));
      }
    }
  }
  if (http10 && keep_alive_token) close = false;
  if (cl_count > 1) return bad("duplicate Content-Length in response");
  if (cl_count && have_te) return bad("Transfer-Encoding together with Content-Length in response");
  r.status = status;
  r.interim = status < 200 && status != 101;
  if (cl_count) {
    if (cl_value.empty() || cl_value.size() > 18) return bad("invalid Content-Length in response");
    for (char c : cl_value)
      if (c < '0' || c > '9') return bad("invalid Content-Length in response");
    r.content_length = std::stoull(cl_value);
  }
  if (head_request || status < 200 || status == 204 || status == 304) {
    r.body = ResponseBody::none;
    if (status == 101) {  // the proxy never asks for an upgrade: whatever follows is opaque
      r.body = ResponseBody::close;
      r.interim = false;
    }
  } else if (have_te) {
    r.body = !codings.empty() && codings.back() == "chunked" ? ResponseBody::chunked : ResponseBody::close;
  } else if (cl_count) {
    r.body = r.content_length ? ResponseBody::length : ResponseBody::none;
  } else {
    r.body = ResponseBody::close;
  }
  if (r.body == ResponseBody::close) close = true;
  r.close = close;
  r.forward = std::string(lines[0]) + "\r\n";
  for (const auto& h : headers) {
    std::string n = lower(h.name);
    if (n == "connection" || n == "keep-alive" || n == "proxy-connection") continue;
    if (std::find(listed.begin(), listed.end(), n) != listed.end() && n != "content-length" &&
        n != "transfer-encoding")
      continue;
    r.forward += h.name;
    r.forward += ": ";
    r.forward += h.value;
    r.forward += "\r\n";
  }
  r.head_len = end + 4;
  r.state = ResponseHead::State::complete;
  return r;
}

const char* status_text(int status) {
  switch (status) {
    case 200:
      return "Connection established";
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 408:
      return "Request Timeout";
    case 431:
      return "Request Header Fields Too Large";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Error";
  }
}

const char* proxy_status_error(int status) {
  switch (status) {
    case 400:
      return "http_request_error";
    case 403:
      return "http_request_denied";
    case 408:
      return "http_request_error";
    case 502:
      return "destination_unavailable";
    case 503:
      return "proxy_internal_error";
    case 504:
      return "connection_timeout";
    default:
      return "proxy_internal_error";
  }
}

std::string error_response(int status, const std::string& text) {
  std::string body = text;
  for (char& c : body)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  // Reason phrase: printable ASCII only (obs-text is allowed by RFC 9112
  // but some clients choke on it), bounded.
  std::string why = body.rfind("agentshim: ", 0) == 0 ? body.substr(11) : body;
  std::string phrase;
  for (char c : why) {
    if (phrase.size() >= 200) break;
    auto u = static_cast<unsigned char>(c);
    phrase += (u >= 0x20 && u < 0x7f) ? c : '?';
  }
  std::string details;
  for (char c : body) {
    if (details.size() >= 400) break;
    if (c == '"' || c == '\\') details += '\\';
    auto u = static_cast<unsigned char>(c);
    details += (u >= 0x20 && u < 0x7f) ? c : '?';
  }
  body += "\n";
  return "HTTP/1.1 " + std::to_string(status) + " " + status_text(status) + " (agentshim: " + phrase + ")" +
         "\r\nProxy-Status: agentshim; error=" + proxy_status_error(status) + "; details=\"" + details +
         "\"" + "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nConnection: close\r\n\r\n" + body;
}

long long ChunkedValidator::feed(std::string_view d) {
  std::size_t i = 0;
  auto err = [&](const char* why) {
    state_ = State::error;
    error_ = why;
    return -1LL;
  };
  while (i < d.size()) {
    unsigned char c = static_cast<unsigned char>(d[i]);
    switch (state_) {
      case State::done:
        return static_cast<long long>(i);
      case State::error:
        return -1;
      case State::size: {
        int v = -1;
        if (c >= '0' && c <= '9')
          v = c - '0';
        else if (c >= 'a' && c <= 'f')
          v = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
          v = c - 'A' + 10;
        if (v >= 0) {
          if (++digits_ > 15) return err("chunk size too large");
          remaining_ = remaining_ * 16 + static_cast<uint64_t>(v);
        } else if (digits_ && c == ';') {
          state_ = State::ext;
        } else if (digits_ && c == '\r') {
          state_ = State::size_lf;
        } else {
          return err("invalid chunk size line");
        }
        ++i;
        break;
      }
      case State::ext:
        if (c == '\r')
          state_ = State::size_lf;
        else if (c == '\n' || (c < 0x20 && c != '\t') || c == 0x7f)
          return err("invalid chunk extension");
        else if (++line_len_ > 4096)
          return err("chunk extension too long");
        ++i;
        break;
      case State::size_lf:
        if (c != '\n') return err("bare CR in chunk size line");
        state_ = remaining_ ? State::data : State::trailer;
        trailer_line_empty_ = true;
        ++i;
        break;
      case State::data: {
        uint64_t n = std::min<uint64_t>(remaining_, d.size() - i);
        remaining_ -= n;
        i += n;
        if (!remaining_) state_ = State::data_cr;
        break;
      }
      case State::data_cr:
        if (c != '\r') return err("chunk data longer than its size");
        state_ = State::data_lf;
        ++i;
        break;
      case State::data_lf:
        if (c != '\n') return err("bare CR after chunk data");
        state_ = State::size;
        digits_ = 0;
        line_len_ = 0;
        remaining_ = 0;
        ++i;
        break;
      case State::trailer:
        if (c == '\r') {
          state_ = State::trailer_lf;
        } else if (c == '\n' || (c < 0x20 && c != '\t') || c == 0x7f) {
          return err("invalid character in trailer");
        } else {
          if (trailer_line_empty_ && (c == ' ' || c == '\t')) return err("obsolete line folding in trailer");
          trailer_line_empty_ = false;
          if (++trailer_bytes_ > 16384) return err("trailer section too large");
        }
        ++i;
        break;
      case State::trailer_lf:
        if (c != '\n') return err("bare CR in trailer");
        ++i;
        if (trailer_line_empty_) {
          state_ = State::done;
          return static_cast<long long>(i);
        }
        trailer_line_empty_ = true;
        state_ = State::trailer;
        break;
    }
  }
  return state_ == State::error ? -1 : static_cast<long long>(i);
}

}  // namespace agentshim::net::http
