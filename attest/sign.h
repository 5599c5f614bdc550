// Keys and DSSE signatures (OpenSSL): Ed25519 (default) and ECDSA P-256
// with SHA-256, keys as PKCS#8 PEM. The key id is the lowercase hex SHA-256
// of the public key's DER SubjectPublicKeyInfo.
//
// DSSE (github.com/secure-systems-lab/dsse, protocol v1):
//   PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body
// with LEN as ASCII decimal; the signature is over PAE; the envelope is
//   {"payload": b64(body), "payloadType": type,
//    "signatures": [{"keyid": id, "sig": b64(signature)}]}
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace agentshim::attest {

using json = nlohmann::json;

enum class KeyType { ed25519, ecdsa_p256 };
KeyType parse_key_type(const std::string& s);  // "ed25519" | "ecdsa-p256"
const char* key_type_name(KeyType t);          // "ed25519" | "ecdsa-p256"

std::string dsse_pae(std::string_view payload_type, std::string_view payload);

class PrivateKey {
 public:
  ~PrivateKey();
  PrivateKey(PrivateKey&&) noexcept;
  PrivateKey& operator=(PrivateKey&&) noexcept;
  PrivateKey(const PrivateKey&) = delete;
  PrivateKey& operator=(const PrivateKey&) = delete;

  static PrivateKey generate(KeyType t);
  // Reads a PKCS#8 PEM file; the buffer is wiped after parsing.
  static PrivateKey load(const std::string& path);
  // Writes the key (0600) and its public key (path + ".pub", 0644), each
  // whole (temporary name, renamed), the public key first; never overwrites
  // (SysError EEXIST); concurrent creators are serialised on the directory.
  void save(const std::string& path) const;

  std::string sign(std::string_view msg) const;
  std::string public_pem() const;
  std::string keyid() const;
  std::string algorithm() const;  // "ed25519" | "ecdsa-p256-sha256"
  KeyType type() const;

 private:
  explicit PrivateKey(void* pkey) : pkey_(pkey) {}
  void* pkey_ = nullptr;  // EVP_PKEY*, freed (and zeroised by OpenSSL) on destruction
};

// Verify `sig` over `msg` with a PEM public key; false on any mismatch,
// throws agentshim::Error if the PEM cannot be parsed.
bool verify_signature(const std::string& public_pem, std::string_view msg, std::string_view sig);
std::string keyid_of(const std::string& public_pem);

// Load the signing key at `path` and check that it is of type `expected`:
// a key of the other type is an error naming both (never silently used).
PrivateKey load_signing_key(const std::string& path, KeyType expected);

json dsse_sign(const std::string& payload_type, const std::string& payload, const PrivateKey& key);

// The host's signing key under <audit-dir>/keys/, created on first use.
// Returns the key path; `created` tells whether it was just made.
std::string ensure_host_key(const std::string& audit_dir, KeyType t, bool* created);
std::string host_public_key_path(const std::string& audit_dir);

}  // namespace agentshim::attest
