// Sigstore bundle v0.3 (github.com/sigstore/protobuf-specs,
// protos/sigstore_bundle.proto, in its protobuf JSON mapping) around a run's
// DSSE envelope, for key-based verification by standard tools (sigstore-js,
// sigstore-go, cosign --bundle --key):
//
//   {"dsseEnvelope": <the envelope of attestation.intoto.json>,
//    "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
//    "verificationMaterial": {"publicKey": {"hint": <keyid>},
//                             "timestampVerificationData": {"rfc3161Timestamps": []},
//                             "tlogEntries": []}}
//
// The envelope is the same JSON value as the run's attestation.intoto.json
// (protobuf JSON encodes `bytes` as standard base64, as DSSE does). See
// docs/VERIFYING.md and docs/FORMATS.md.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace agentshim::attest {

using json = nlohmann::json;

inline constexpr const char* kBundleMediaType = "application/vnd.dev.sigstore.bundle.v0.3+json";
inline constexpr const char* kBundleFile = "attestation.sigstore.json";
inline constexpr const char* kEnvelopeFile = "attestation.intoto.json";

// The bundle for `envelope` (a DSSE envelope with exactly one signature),
// the public key named by `keyid`. Throws agentshim::Error if the envelope
// is not one Sigstore can carry.
// `rfc3161` are DER TimeStampResp messages over the signature (attest/tsa.h),
// carried in verificationMaterial.timestampVerificationData.
json sigstore_bundle(const json& envelope, const std::string& keyid,
                     const std::vector<std::string>& rfc3161 = {});
// The bundle's file text (2-space indented JSON and "\n", like the envelope).
std::string bundle_text(const json& bundle);

// What is wrong with `bundle` as the Sigstore bundle of `envelope` signed by
// `keyid` (empty: nothing). Each RFC 3161 time-stamp must be a granted
// response over the SHA-256 of the envelope's signature.
std::vector<std::string> check_sigstore_bundle(const json& bundle, const json& envelope,
                                               const std::string& keyid);

}  // namespace agentshim::attest
