// Canonical JSON (like RFC 8785 but not it: docs/FORMATS.md says where they differ):
// object keys sorted by their UTF-8 bytes, no insignificant whitespace,
// integers, strings, booleans, null, arrays and objects only (a float is an
// error). Strings are escaped minimally: \" \\ \b \f \n \r \t, other control
// characters as \u00xx (lowercase hex); everything else is raw UTF-8.
//
// Byte strings that may not be UTF-8 (file paths, argv from a hostile
// container) are carried as "pct" strings: every byte outside printable
// ASCII 0x21..0x7e, and '%' itself, becomes %XX (uppercase hex). The
// encoding is lossless and the result is always plain ASCII.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace agentshim::attest {

using json = nlohmann::json;

// Throws agentshim::Error for floats or invalid UTF-8 inside strings.
std::string canonical(const json& v);

// The verifier's fast path: does [p, end) start with a JSON value whose
// bytes are exactly what canonical() writes for it? On true, p is advanced
// past the value. false means "not canonical" OR "a shape this scanner does
// not decide" (object keys with escapes, nesting deeper than 256): callers
// fall back to parsing and re-serialising, which gives the exact verdict.
// Never true for text that canonical(json::parse(text)) would not reproduce.
bool scan_canonical_value(const char*& p, const char* end);
// The whole of `text` is one canonical value.
bool is_canonical(std::string_view text);

std::string pct_encode(std::string_view bytes);
// Throws agentshim::Error on a malformed escape.
std::string pct_decode(std::string_view s);

// Lowercase hex <-> bytes; standard base64 (with padding): common/base64.h
// (decode is the strict one) under the record's names.
std::string base64_encode(std::string_view bytes);
// Throws agentshim::Error on invalid input.
std::string base64_decode(std::string_view s);

// RFC 3339 UTC time with nanoseconds: 2026-11-23T07:00:00.123456789Z.
std::string rfc3339_now();

}  // namespace agentshim::attest
