#include "attest/sign.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "attest/canonical.h"
#include "attest/hash.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/util.h"

namespace agentshim::attest {
namespace {

std::string ossl_error() {
  unsigned long e = ERR_get_error();
  if (!e) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

EVP_PKEY* pk(void* p) {
  return static_cast<EVP_PKEY*>(p);
}

struct Bio {
  BIO* b;
  Bio() : b(BIO_new(BIO_s_mem())) {
    if (!b) throw Error("OpenSSL: BIO_new failed");
  }
  explicit Bio(std::string_view data) : b(BIO_new_mem_buf(data.data(), static_cast<int>(data.size()))) {
    if (!b) throw Error("OpenSSL: BIO_new_mem_buf failed");
  }
  ~Bio() { BIO_free(b); }
  std::string str() const {
    char* p = nullptr;
    long n = BIO_get_mem_data(b, &p);
    return std::string(p, static_cast<std::size_t>(n));
  }
};

EVP_PKEY* parse_public(const std::string& pem) {
  Bio bio(pem);
  EVP_PKEY* k = PEM_read_bio_PUBKEY(bio.b, nullptr, nullptr, nullptr);
  if (!k) throw Error("public key: not a PEM SubjectPublicKeyInfo (" + ossl_error() + ")");
  return k;
}

std::string algo(EVP_PKEY* k) {
  int id = EVP_PKEY_get_base_id(k);
  if (id == EVP_PKEY_ED25519) return "ed25519";
  if (id == EVP_PKEY_EC) {
    char group[64] = {};
    size_t len = 0;
    if (EVP_PKEY_get_utf8_string_param(k, "group", group, sizeof group, &len) == 1 &&
        std::string(group) == "prime256v1")
      return "ecdsa-p256-sha256";
    throw Error("key: only the P-256 curve is supported for ECDSA");
  }
  throw Error("key: unsupported key type (Ed25519 or ECDSA P-256 expected)");
}

std::string spki_der(EVP_PKEY* k) {
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(k, &der);
  if (n <= 0) throw Error("key: cannot encode the public key (" + ossl_error() + ")");
  std::string out(reinterpret_cast<char*>(der), static_cast<std::size_t>(n));
  OPENSSL_free(der);
  return out;
}

}  // namespace

KeyType parse_key_type(const std::string& s) {
  if (s == "ed25519") return KeyType::ed25519;
  if (s == "ecdsa-p256" || s == "ecdsa" || s == "p256") return KeyType::ecdsa_p256;
  throw Error("key type \"" + s + "\": expected ed25519 or ecdsa-p256");
}

const char* key_type_name(KeyType t) {
  return t == KeyType::ed25519 ? "ed25519" : "ecdsa-p256";
}

std::string dsse_pae(std::string_view type, std::string_view payload) {
  std::string out = "DSSEv1 ";
  out += std::to_string(type.size());
  out += ' ';
  out += type;
  out += ' ';
  out += std::to_string(payload.size());
  out += ' ';
  out += payload;
  return out;
}

PrivateKey::~PrivateKey() {
  if (pkey_) EVP_PKEY_free(pk(pkey_));
}
PrivateKey::PrivateKey(PrivateKey&& o) noexcept : pkey_(o.pkey_) {
  o.pkey_ = nullptr;
}
PrivateKey& PrivateKey::operator=(PrivateKey&& o) noexcept {
  if (this != &o) {
    if (pkey_) EVP_PKEY_free(pk(pkey_));
    pkey_ = o.pkey_;
    o.pkey_ = nullptr;
  }
  return *this;
}

PrivateKey PrivateKey::generate(KeyType t) {
  EVP_PKEY* k = t == KeyType::ed25519 ? EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519")
                                      : EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  if (!k) throw Error("key generation failed (" + ossl_error() + ")");
  return PrivateKey(k);
}

PrivateKey PrivateKey::load(const std::string& path) {
  std::string pem = read_file_limited(path, 64 * 1024);
  EVP_PKEY* k = nullptr;
  {
    Bio bio(pem);
    k = PEM_read_bio_PrivateKey(bio.b, nullptr, nullptr, nullptr);
  }
  OPENSSL_cleanse(pem.data(), pem.size());
  if (!k) throw Error("signing key " + path + ": not a PKCS#8 PEM private key (" + ossl_error() + ")");
  PrivateKey key(k);
  (void)algo(k);
  return key;
}

void PrivateKey::save(const std::string& path) const {
  // Two supervisors creating their first runs at once both make the
  // host key. Creators of a key are serialised on its directory's lock; the
  // second one then finds the key and fails with EEXIST (never overwrites).
  // Processes that only read (without the lock) must never see half a key
  // or a private key without its public key: each file is written whole
  // under a temporary name and renamed, the public key first.
  const std::string dir = parent_dir(path);
  UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d) throw_errno("open key directory " + dir);
  while (::flock(d.get(), LOCK_EX) < 0)
    if (errno != EINTR) throw_errno("lock key directory " + dir);
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) throw_errno("create key file " + path, EEXIST);
  if (errno != ENOENT) throw_errno("stat " + path);

  Bio bio;
  if (PEM_write_bio_PrivateKey(bio.b, pk(pkey_), nullptr, nullptr, 0, nullptr, nullptr) != 1)
    throw Error("key: cannot encode the private key (" + ossl_error() + ")");
  std::string pem = bio.str();
  try {
    write_file_atomic(path + ".pub", public_pem(), 0644);
    write_file_atomic(path, pem, 0600);  // (its temporary file: O_EXCL, 0600)
  } catch (...) {
    OPENSSL_cleanse(pem.data(), pem.size());
    throw;
  }
  OPENSSL_cleanse(pem.data(), pem.size());
  if (::fsync(d.get()) < 0) throw_errno("fsync " + dir);
}

std::string PrivateKey::sign(std::string_view msg) const {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (!ctx) throw Error("OpenSSL: EVP_MD_CTX_new failed");
  bool ed = EVP_PKEY_get_base_id(pk(pkey_)) == EVP_PKEY_ED25519;
  std::string sig;
  size_t len = 0;
  bool ok =
      EVP_DigestSignInit(ctx, nullptr, ed ? nullptr : EVP_sha256(), nullptr, pk(pkey_)) == 1 &&
      EVP_DigestSign(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(msg.data()), msg.size()) == 1;
  if (ok) {
    sig.resize(len);
    ok = EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len,
                        reinterpret_cast<const unsigned char*>(msg.data()), msg.size()) == 1;
    sig.resize(len);
  }
  EVP_MD_CTX_free(ctx);
  if (!ok) throw Error("signing failed (" + ossl_error() + ")");
  return sig;
}

std::string PrivateKey::public_pem() const {
  Bio bio;
  if (PEM_write_bio_PUBKEY(bio.b, pk(pkey_)) != 1) throw Error("key: cannot encode the public key");
  return bio.str();
}

std::string PrivateKey::keyid() const {
  return hex(sha256(spki_der(pk(pkey_))));
}
std::string PrivateKey::algorithm() const {
  return algo(pk(pkey_));
}
KeyType PrivateKey::type() const {
  return algo(pk(pkey_)) == "ed25519" ? KeyType::ed25519 : KeyType::ecdsa_p256;
}

PrivateKey load_signing_key(const std::string& path, KeyType expected) {
  PrivateKey key = PrivateKey::load(path);
  if (key.type() != expected)
    throw Error("signing key " + path + " is an " + key_type_name(key.type()) +
                " key, but the key type asked for is " + key_type_name(expected) +
                " (--key-type or the policy's audit.key_type); give a key of that type or " +
                "set the key type to " + key_type_name(key.type()));
  return key;
}

bool verify_signature(const std::string& public_pem, std::string_view msg, std::string_view sig) {
  EVP_PKEY* k = parse_public(public_pem);
  bool ed = EVP_PKEY_get_base_id(k) == EVP_PKEY_ED25519;
  try {
    (void)algo(k);
  } catch (...) {
    EVP_PKEY_free(k);
    throw;
  }
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = ctx && EVP_DigestVerifyInit(ctx, nullptr, ed ? nullptr : EVP_sha256(), nullptr, k) == 1 &&
            EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                             reinterpret_cast<const unsigned char*>(msg.data()), msg.size()) == 1;
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(k);
  ERR_clear_error();
  return ok;
}

std::string keyid_of(const std::string& public_pem) {
  EVP_PKEY* k = parse_public(public_pem);
  std::string id;
  try {
    id = hex(sha256(spki_der(k)));
  } catch (...) {
    EVP_PKEY_free(k);
    throw;
  }
  EVP_PKEY_free(k);
  return id;
}

json dsse_sign(const std::string& payload_type, const std::string& payload, const PrivateKey& key) {
  std::string sig = key.sign(dsse_pae(payload_type, payload));
  return json{{"payload", base64_encode(payload)},
              {"payloadType", payload_type},
              {"signatures", json::array({json{{"keyid", key.keyid()}, {"sig", base64_encode(sig)}}})}};
}

std::string host_public_key_path(const std::string& audit_dir) {
  return audit_dir + "/keys/signing.pem.pub";
}

std::string ensure_host_key(const std::string& audit_dir, KeyType t, bool* created) {
  std::string dir = audit_dir + "/keys";
  mkdir_p(dir, 0700);
  std::string path = dir + "/signing.pem";
  if (created) *created = false;
  if (::access(path.c_str(), F_OK) == 0) return path;
  auto key = PrivateKey::generate(t);
  try {
    key.save(path);
    if (created) *created = true;
  } catch (const SysError& e) {
    if (e.code() != EEXIST) throw;  // another supervisor made it first
  }
  return path;
}

}  // namespace agentshim::attest
