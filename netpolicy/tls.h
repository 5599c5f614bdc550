// TLS interception for the egress proxy (docs/CREDENTIALS.md, "TLS").
//
// Only destinations that have a credential or request rules are
// intercepted; every other CONNECT stays an opaque tunnel. For those, the
// proxy terminates the container's TLS with a leaf certificate for the
// CONNECT host issued by a per-run certificate authority (Authority: its key
// is generated in the supervisor's memory and never written anywhere), and
// opens its own TLS connection upstream, verified against the host's trust
// store (name checked, TLS 1.2 or later, no fallback to plain). ALPN: only
// http/1.1 is offered and accepted; a client offering only h2 is refused
// during the handshake (no_application_protocol).
//
// The ClientHello is parsed by OpenSSL; what this code reads of it is the
// server name (compared with the CONNECT host: a different name ends the
// handshake with unrecognized_name, and the certificate is always for the
// CONNECT host, never for a name the client asked for) and the ALPN list.
//
// Pump relays between TLS connections and plain sockets (one end of a
// socketpair each), so the proxy's HTTP exchange code reads and writes the
// decrypted streams exactly as it does plain HTTP.
#pragma once

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace agentshim::net::tls {

using Clock = std::chrono::steady_clock;

struct SslFree {
  void operator()(SSL* s) const { SSL_free(s); }
};
using SslPtr = std::unique_ptr<SSL, SslFree>;
struct CtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using CtxPtr = std::unique_ptr<SSL_CTX, CtxFree>;
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

// The per-run certificate authority: an EC P-256 key made in this process's
// memory, a self-signed CA certificate (valid from an hour ago for 30 days,
// path length 0), one leaf key, and the leaf certificates issued so far
// (one per name, cached for the run; at most kMaxLeaves, then the cache
// starts over). Thread-safe.
class Authority {
 public:
  static constexpr std::size_t kMaxLeaves = 4096;
  // label: shown in the CA's subject (e.g. the container id), at most 40 bytes used.
  static std::shared_ptr<Authority> generate(const std::string& label);
  // The CA certificate, PEM (public: what the container trusts).
  std::string ca_pem() const;
  // The certificate for `host` (a normalised name or IP literal): subject
  // CN and subjectAltName DNS or IP, serverAuth, valid within the CA's
  // validity. Issued on first use.
  std::shared_ptr<X509> leaf(const std::string& host);
  EVP_PKEY* leaf_key() const { return leaf_key_.get(); }
  X509* ca_cert() const { return ca_.get(); }
  std::size_t issued() const;

 private:
  Authority() = default;
  PkeyPtr ca_key_, leaf_key_;
  X509Ptr ca_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<X509>> leaves_;
  std::size_t issued_ = 0;
};

struct Handshake {
  SslPtr ssl;            // set on success
  std::string error;     // one line on failure (never container bytes beyond a bounded, printable name)
  bool refused = false;  // the peer asked for something the policy refuses (SNI mismatch, no http/1.1)
};

// The proxy's two TLS contexts: serving the container with the run's
// certificates, and connecting upstream verified against a trust store.
class Interceptor {
 public:
  // upstream_ca_file: "" = the host's default trust store
  // (SSL_CTX_set_default_verify_paths: /etc/ssl/certs); otherwise a PEM file
  // that REPLACES it (the test-only knob, docs/CREDENTIALS.md).
  Interceptor(std::shared_ptr<Authority> ca, const std::string& upstream_ca_file);
  Authority& authority() const { return *ca_; }
  // TLS server handshake on the container's connection `fd` (non-blocking)
  // for `host` (the CONNECT host), until `deadline` or stop_fd is readable.
  Handshake accept(int fd, const std::string& host, int stop_fd, Clock::time_point deadline) const;
  // TLS client handshake to the upstream `host` on `fd`: SNI (names only),
  // the certificate verified against the trust store and `host`.
  Handshake connect(int fd, const std::string& host, int stop_fd, Clock::time_point deadline) const;

 private:
  std::shared_ptr<Authority> ca_;
  CtxPtr server_, client_;
};

// One TLS connection and the plain socket it is relayed to.
struct PumpSide {
  SslPtr ssl;
  int net = -1;    // the TLS connection's socket (non-blocking)
  int plain = -1;  // the socketpair end (non-blocking)
};

// Relay both sides (TLS <-> plain) until every direction ended, one failed,
// nothing moved for idle_ms, or stop_fd is readable. Ends by shutting the
// plain sockets down (the reader on their other ends sees EOF). Returns the
// end ("closed", "idle-timeout", "stopped", "error: ...").
std::string pump(std::vector<PumpSide>& sides, int stop_fd, int idle_ms);

// Server name from a client, normalised for comparison (lowercase, one
// trailing dot removed); "" when it is not a valid host name.
std::string normalise_server_name(const char* name);

}  // namespace agentshim::net::tls
