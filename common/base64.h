// Base64 (RFC 4648, standard alphabet), the one implementation: the record's
// DSSE envelopes and signatures (attest/), HTTP Basic credentials
// (netpolicy/credentials.cpp).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace agentshim::base64 {

// Padded encoding.
std::string encode(std::string_view bytes);

// Strict: padded, only the alphabet, and canonical (exactly what encode()
// makes, so one value has one spelling). Throws Error("base64: ...").
std::string decode(std::string_view text);

// Lenient, for what a client sent: padding optional, unused trailing bits
// ignored. nullopt when a character is outside the alphabet (or '=' is
// anywhere but at the end).
std::optional<std::string> decode_lenient(std::string_view text);

}  // namespace agentshim::base64
