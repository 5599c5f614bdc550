#include "attest/canonical.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <vector>

#include "common/base64.h"
#include "common/error.h"

namespace agentshim::attest {
namespace {

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    int n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 1;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;
    for (int k = 1; k <= n; ++k) {
      unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += n + 1;
  }
  return true;
}

void write_string(std::string& out, const std::string& s) {
  if (!valid_utf8(s)) throw Error("canonical JSON: string is not valid UTF-8");
  out.push_back('"');
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(ch);
        }
    }
  }
  out.push_back('"');
}

void write(std::string& out, const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      out += "null";
      break;
    case json::value_t::boolean:
      out += v.get<bool>() ? "true" : "false";
      break;
    case json::value_t::number_integer:
      out += std::to_string(v.get<long long>());
      break;
    case json::value_t::number_unsigned:
      out += std::to_string(v.get<unsigned long long>());
      break;
    case json::value_t::number_float:
      throw Error("canonical JSON: floating-point numbers are not allowed");
    case json::value_t::string:
      write_string(out, v.get_ref<const std::string&>());
      break;
    case json::value_t::array: {
      out.push_back('[');
      bool first = true;
      for (const auto& e : v) {
        if (!first) out.push_back(',');
        first = false;
        write(out, e);
      }
      out.push_back(']');
      break;
    }
    case json::value_t::object: {
      std::vector<const std::string*> keys;
      keys.reserve(v.size());
      for (auto it = v.begin(); it != v.end(); ++it) keys.push_back(&it.key());
      std::sort(keys.begin(), keys.end(), [](const std::string* a, const std::string* b) { return *a < *b; });
      out.push_back('{');
      bool first = true;
      for (const auto* k : keys) {
        if (!first) out.push_back(',');
        first = false;
        write_string(out, *k);
        out.push_back(':');
        write(out, v.at(*k));
      }
      out.push_back('}');
      break;
    }
    default:
      throw Error("canonical JSON: unsupported value (binary or discarded)");
  }
}

// ---- the fast canonical scanner (see canonical.h) ----

bool scan_string(const char*& p, const char* e, bool* escaped) {
  if (p == e || *p != '"') return false;
  const char* start = ++p;
  bool esc = false;
  while (p < e) {
    unsigned char c = static_cast<unsigned char>(*p);
    if (c == '"') {
      if (!valid_utf8(std::string_view(start, static_cast<std::size_t>(p - start)))) return false;
      ++p;
      if (escaped) *escaped = esc;
      return true;
    }
    if (c < 0x20) return false;  // raw control characters are always escaped
    if (c == '\\') {
      esc = true;
      if (e - p < 2) return false;
      char n = p[1];
      if (n == '"' || n == '\\' || n == 'b' || n == 'f' || n == 'n' || n == 'r' || n == 't') {
        p += 2;
        continue;
      }
      // \u00xx, lowercase hex, only for controls without a short escape.
      if (n != 'u' || e - p < 6 || p[2] != '0' || p[3] != '0') return false;
      auto hexv = [](char h) -> int {
        if (h >= '0' && h <= '9') return h - '0';
        if (h >= 'a' && h <= 'f') return h - 'a' + 10;
        return -1;
      };
      int hi = hexv(p[4]), lo = hexv(p[5]);
      if (hi < 0 || lo < 0) return false;
      int v = hi * 16 + lo;
      if (v >= 0x20 || v == '\b' || v == '\f' || v == '\n' || v == '\r' || v == '\t') return false;
      p += 6;
      continue;
    }
    ++p;
  }
  return false;
}

bool scan_number(const char*& p, const char* e) {
  bool neg = false;
  if (p < e && *p == '-') {
    neg = true;
    ++p;
  }
  const char* d = p;
  if (p == e || *p < '0' || *p > '9') return false;
  if (*p == '0') {
    ++p;
    if (neg) return false;  // "-0" is written "0"
  } else {
    while (p < e && *p >= '0' && *p <= '9') ++p;
  }
  if (p < e && (*p == '.' || *p == 'e' || *p == 'E')) return false;  // floats are never canonical
  std::string_view digits(d, static_cast<std::size_t>(p - d));
  // Within int64 (negative) or uint64 (non-negative); otherwise a parser
  // would make it a float, which canonical() rejects.
  std::string_view lim = neg ? "9223372036854775808" : "18446744073709551615";
  if (digits.size() > lim.size() || (digits.size() == lim.size() && digits > lim)) return false;
  return true;
}

bool scan_value_at(const char*& p, const char* e, int depth) {
  if (p == e || depth > 256) return false;
  switch (*p) {
    case '"':
      return scan_string(p, e, nullptr);
    case '{': {
      ++p;
      if (p < e && *p == '}') {
        ++p;
        return true;
      }
      std::string_view prev;
      bool first = true;
      for (;;) {
        const char* k = p;
        bool esc = false;
        if (!scan_string(p, e, &esc) || esc) return false;  // escaped keys: let the slow path decide
        std::string_view key(k + 1, static_cast<std::size_t>(p - k - 2));
        if (!first && !(prev < key)) return false;  // sorted bytewise, no duplicates
        first = false;
        prev = key;
        if (p == e || *p != ':') return false;
        ++p;
        if (!scan_value_at(p, e, depth + 1)) return false;
        if (p == e) return false;
        if (*p == '}') {
          ++p;
          return true;
        }
        if (*p != ',') return false;
        ++p;
      }
    }
    case '[': {
      ++p;
      if (p < e && *p == ']') {
        ++p;
        return true;
      }
      for (;;) {
        if (!scan_value_at(p, e, depth + 1)) return false;
        if (p == e) return false;
        if (*p == ']') {
          ++p;
          return true;
        }
        if (*p != ',') return false;
        ++p;
      }
    }
    case 't':
      if (e - p >= 4 && std::string_view(p, 4) == "true") {
        p += 4;
        return true;
      }
      return false;
    case 'f':
      if (e - p >= 5 && std::string_view(p, 5) == "false") {
        p += 5;
        return true;
      }
      return false;
    case 'n':
      if (e - p >= 4 && std::string_view(p, 4) == "null") {
        p += 4;
        return true;
      }
      return false;
    default:
      return scan_number(p, e);
  }
}

}  // namespace

bool scan_canonical_value(const char*& p, const char* end) {
  const char* q = p;
  if (!scan_value_at(q, end, 0)) return false;
  p = q;
  return true;
}

bool is_canonical(std::string_view text) {
  const char* p = text.data();
  const char* e = p + text.size();
  return scan_canonical_value(p, e) && p == e;
}

std::string canonical(const json& v) {
  std::string out;
  write(out, v);
  return out;
}

std::string pct_encode(std::string_view bytes) {
  static const char* hexd = "0123456789ABCDEF";
  std::string out;
  out.reserve(bytes.size());
  for (char ch : bytes) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c >= 0x21 && c <= 0x7e && c != '%') {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(hexd[c >> 4]);
      out.push_back(hexd[c & 15]);
    }
  }
  return out;
}

std::string pct_decode(std::string_view s) {
  auto val = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size()) throw Error("pct string: truncated escape");
    int a = val(s[i + 1]), b = val(s[i + 2]);
    if (a < 0 || b < 0) throw Error("pct string: bad escape");
    out.push_back(static_cast<char>(a * 16 + b));
    i += 2;
  }
  return out;
}

std::string base64_encode(std::string_view bytes) { return base64::encode(bytes); }

std::string base64_decode(std::string_view s) { return base64::decode(s); }

std::string rfc3339_now() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm {};
  ::gmtime_r(&ts.tv_sec, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%09ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec);
  return buf;
}

}  // namespace agentshim::attest
