// RFC 3161 time-stamp requests (RFC 3161 §3.4, HTTP transport) to a
// configurable time-stamping authority (policy audit.tsa_url), for the
// Sigstore bundle's verificationMaterial.timestampVerificationData: the
// message imprint is the SHA-256 of the DSSE signature bytes, as Sigstore
// verifiers expect, and the bundle carries the DER TimeStampResp.
#pragma once

#include <string>
#include <string_view>

namespace agentshim::attest {

// Ask the TSA at `url` (http://host[:port][/path]; no TLS: the response is
// signed by the TSA) for a time-stamp over SHA-256(`signature`), with a
// fresh nonce and the TSA's certificate requested. Returns the DER
// TimeStampResp after checking that it grants the request and answers it
// (version, imprint, nonce). Throws agentshim::Error naming the URL and
// what failed (connect, HTTP status, malformed or refused response,
// timeout after `timeout_ms` in all).
std::string rfc3161_timestamp(const std::string& url, std::string_view signature, int timeout_ms = 10000);

// The DER TimeStampResp's time (RFC 3339, UTC) after checking that it is a
// granted response whose imprint is SHA-256(`signature`); throws otherwise.
// (The TSA's signature is checked by verifiers against their trusted TSA
// certificates; see docs/VERIFYING.md.)
std::string rfc3161_check(std::string_view response_der, std::string_view signature);

}  // namespace agentshim::attest
