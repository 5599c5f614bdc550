#include "attest/bundle.h"

#include "attest/canonical.h"
#include "attest/tsa.h"
#include "common/error.h"

namespace agentshim::attest {

json sigstore_bundle(const json& envelope, const std::string& keyid,
                     const std::vector<std::string>& rfc3161) {
  if (!envelope.is_object() || !envelope.contains("payload") || !envelope.contains("payloadType") ||
      !envelope.contains("signatures") || !envelope["signatures"].is_array())
    throw Error("sigstore bundle: not a DSSE envelope");
  // Sigstore verifiers (sigstore-js, sigstore-go) accept exactly one signature.
  if (envelope["signatures"].size() != 1)
    throw Error("sigstore bundle: the envelope has " + std::to_string(envelope["signatures"].size()) +
                " signatures; a Sigstore bundle carries exactly one");
  if (keyid.empty()) throw Error("sigstore bundle: no key id");
  json ts = json::array();
  for (const auto& der : rfc3161) ts.push_back(json{{"signedTimestamp", base64_encode(der)}});
  return json{{"mediaType", kBundleMediaType},
              {"verificationMaterial",
               {{"publicKey", {{"hint", keyid}}},
                {"tlogEntries", json::array()},
                {"timestampVerificationData", {{"rfc3161Timestamps", ts}}}}},
              {"dsseEnvelope", envelope}};
}

std::string bundle_text(const json& bundle) {
  return bundle.dump(2) + "\n";
}

std::vector<std::string> check_sigstore_bundle(const json& b, const json& envelope,
                                               const std::string& keyid) {
  std::vector<std::string> p;
  if (!b.is_object()) return {"sigstore bundle: not a JSON object"};
  if (b.value("mediaType", "") != kBundleMediaType)
    p.push_back(std::string("sigstore bundle: mediaType is not ") + kBundleMediaType);
  const json vm = b.value("verificationMaterial", json());
  if (!vm.is_object() || !vm.contains("publicKey") || !vm["publicKey"].is_object())
    p.push_back("sigstore bundle: verificationMaterial.publicKey is missing");
  else if (vm["publicKey"].value("hint", "") != keyid)
    p.push_back("sigstore bundle: verificationMaterial.publicKey.hint is not the signer's keyid");
  if (!b.contains("dsseEnvelope") || b["dsseEnvelope"] != envelope)
    p.push_back("sigstore bundle: dsseEnvelope is not the envelope of " + std::string(kEnvelopeFile));
  if (vm.is_object() && vm.contains("timestampVerificationData")) {
    try {
      std::string sig = base64_decode(envelope.at("signatures").at(0).at("sig").get<std::string>());
      for (const auto& t : vm["timestampVerificationData"].value("rfc3161Timestamps", json::array()))
        rfc3161_check(base64_decode(t.at("signedTimestamp").get<std::string>()), sig);
    } catch (const std::exception& e) {
      p.push_back(std::string("sigstore bundle: timestampVerificationData: ") + e.what());
    }
  }
  return p;
}

}  // namespace agentshim::attest
