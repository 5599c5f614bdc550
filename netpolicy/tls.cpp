#include "netpolicy/tls.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "netpolicy/allowlist.h"

namespace agentshim::net::tls {

namespace {

constexpr std::size_t kMaxBuffered = 256 * 1024;  // per direction of a pump side
constexpr std::string_view kHttp11 = "http/1.1";

std::string openssl_error(const std::string& what) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (!e) return what;
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return what + ": " + buf;
}

[[noreturn]] void fail(const std::string& what) {
  throw Error("tls: " + openssl_error(what));
}

PkeyPtr new_ec_key() {
  PkeyPtr k(EVP_EC_gen("P-256"));
  if (!k) fail("EC key generation");
  return k;
}

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct ExtFree {
  void operator()(X509_EXTENSION* e) const { X509_EXTENSION_free(e); }
};

void add_ext(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  std::unique_ptr<X509_EXTENSION, ExtFree> ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (!ext || !X509_add_ext(cert, ext.get(), -1))
    fail(std::string("certificate extension ") + OBJ_nid2sn(nid));
}

void random_serial(X509* cert) {
  unsigned char b[16];
  if (RAND_bytes(b, sizeof b) != 1) fail("RAND_bytes");
  b[0] &= 0x7f;  // positive
  b[0] |= 0x01;  // and never zero
  BIGNUM* bn = BN_bin2bn(b, sizeof b, nullptr);
  if (!bn) fail("BN_bin2bn");
  ASN1_INTEGER* s = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
  BN_free(bn);
  if (!s) fail("serial number");
}

void set_name(X509_NAME* n, const std::string& cn) {
  if (!X509_NAME_add_entry_by_txt(n, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("agentshim"),
                                  -1, -1, 0))
    fail("subject");
  if (!cn.empty() &&
      !X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()),
                                  -1, -1, 0))
    fail("subject CN");
}

// Server name callback: a name different from the CONNECT host ends the handshake.
struct AcceptState {
  std::string host;
  std::string error;
  bool refused = false;
};
int g_state_index = -1;
std::once_flag g_state_once;

AcceptState* state_of(SSL* s) {
  return static_cast<AcceptState*>(SSL_get_ex_data(s, g_state_index));
}

int on_server_name(SSL* s, int* alert, void*) {
  AcceptState* st = state_of(s);
  if (!st) return SSL_TLSEXT_ERR_ALERT_FATAL;
  const char* sn = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);
  if (!sn) return SSL_TLSEXT_ERR_OK;  // no SNI: the certificate is the CONNECT host's anyway
  std::string name = normalise_server_name(sn);
  if (name == st->host) return SSL_TLSEXT_ERR_OK;
  std::string shown = name.empty() ? std::string("(not a host name)") : name;
  st->error = "TLS server name " + shown + " does not match the CONNECT host " + st->host;
  st->refused = true;
  *alert = SSL_AD_UNRECOGNIZED_NAME;
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

int on_alpn(SSL* s, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
            unsigned int inlen, void*) {
  for (unsigned i = 0; i < inlen;) {
    unsigned len = in[i];
    if (i + 1 + len > inlen) break;
    if (std::string_view(reinterpret_cast<const char*>(in + i + 1), len) == kHttp11) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(len);
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + len;
  }
  if (AcceptState* st = state_of(s)) {
    st->error = "the client offered ALPN without http/1.1 (an HTTP/2-only client); the proxy speaks HTTP/1.1";
    st->refused = true;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

// Drive a handshake on a non-blocking socket until done, deadline or stop.
bool handshake(SSL* ssl, int fd, int stop_fd, Clock::time_point deadline, std::string& error) {
  for (;;) {
    ERR_clear_error();
    int r = SSL_do_handshake(ssl);
    if (r == 1) return true;
    int e = SSL_get_error(ssl, r);
    short ev = e == SSL_ERROR_WANT_READ ? POLLIN : e == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
    if (!ev) {
      if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
        error = "the connection closed during the TLS handshake";
      else
        error = openssl_error("TLS handshake failed");
      return false;
    }
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (ms <= 0) {
      error = "TLS handshake timed out";
      return false;
    }
    pollfd p[2] = {{fd, ev, 0}, {stop_fd, POLLIN, 0}};
    int n = ::poll(p, 2, static_cast<int>(std::min<long long>(ms + 1, 1 << 30)));
    if (n < 0 && errno != EINTR) {
      error = std::string("poll: ") + strerror(errno);
      return false;
    }
    if (p[1].revents) {
      error = "proxy stopped";
      return false;
    }
  }
}

}  // namespace

std::string normalise_server_name(const char* name) {
  if (!name) return "";
  std::string s(name, strnlen(name, 300));
  if (s.size() > 254) return "";
  if (!s.empty() && s.back() == '.') s.pop_back();
  if (auto n = normalize_hostname(s)) return *n;
  if (auto ip = parse_ip(s)) return ip_to_string(*ip);
  return "";
}

std::shared_ptr<Authority> Authority::generate(const std::string& label) {
  std::shared_ptr<Authority> a(new Authority());
  a->ca_key_ = new_ec_key();
  a->leaf_key_ = new_ec_key();
  a->ca_.reset(X509_new());
  X509* c = a->ca_.get();
  if (!c || !X509_set_version(c, 2)) fail("X509_new");
  random_serial(c);
  X509_gmtime_adj(X509_getm_notBefore(c), -3600);
  X509_gmtime_adj(X509_getm_notAfter(c), 30L * 24 * 3600);
  std::string cn = "agentshim run CA " + label.substr(0, 40);
  set_name(X509_get_subject_name(c), cn);
  if (!X509_set_issuer_name(c, X509_get_subject_name(c))) fail("issuer");
  if (!X509_set_pubkey(c, a->ca_key_.get())) fail("public key");
  add_ext(c, c, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
  add_ext(c, c, NID_key_usage, "critical,keyCertSign,cRLSign");
  add_ext(c, c, NID_subject_key_identifier, "hash");
  if (!X509_sign(c, a->ca_key_.get(), EVP_sha256())) fail("signing the CA certificate");
  return a;
}

std::string Authority::ca_pem() const {
  std::unique_ptr<BIO, BioFree> b(BIO_new(BIO_s_mem()));
  if (!b || !PEM_write_bio_X509(b.get(), ca_.get())) fail("PEM_write_bio_X509");
  char* p = nullptr;
  long n = BIO_get_mem_data(b.get(), &p);
  return std::string(p, static_cast<std::size_t>(n));
}

std::size_t Authority::issued() const {
  std::lock_guard lk(mu_);
  return issued_;
}

std::shared_ptr<X509> Authority::leaf(const std::string& host) {
  {
    std::lock_guard lk(mu_);
    if (auto it = leaves_.find(host); it != leaves_.end()) return it->second;
  }
  auto ip = parse_ip(host);
  if (!ip && !normalize_hostname(host)) throw Error("tls: no certificate for an invalid host name");
  X509Ptr cert(X509_new());
  X509* c = cert.get();
  if (!c || !X509_set_version(c, 2)) fail("X509_new");
  random_serial(c);
  X509_gmtime_adj(X509_getm_notBefore(c), -3600);
  X509_gmtime_adj(X509_getm_notAfter(c), 7L * 24 * 3600);
  set_name(X509_get_subject_name(c), host.size() <= 64 ? host : std::string());
  if (!X509_set_issuer_name(c, X509_get_subject_name(ca_.get()))) fail("issuer");
  if (!X509_set_pubkey(c, leaf_key_.get())) fail("public key");
  std::string san = (ip ? "IP:" : "DNS:") + host;
  add_ext(c, ca_.get(), NID_subject_alt_name, san.c_str());
  add_ext(c, ca_.get(), NID_basic_constraints, "critical,CA:FALSE");
  add_ext(c, ca_.get(), NID_key_usage, "critical,digitalSignature");
  add_ext(c, ca_.get(), NID_ext_key_usage, "serverAuth");
  add_ext(c, ca_.get(), NID_authority_key_identifier, "keyid:always");
  if (!X509_sign(c, ca_key_.get(), EVP_sha256())) fail("signing a leaf certificate");
  std::shared_ptr<X509> shared(cert.release(), X509_free);
  std::lock_guard lk(mu_);
  if (leaves_.size() >= kMaxLeaves) leaves_.clear();
  auto [it, inserted] = leaves_.emplace(host, shared);
  if (inserted) ++issued_;
  return it->second;
}

Interceptor::Interceptor(std::shared_ptr<Authority> ca, const std::string& upstream_ca_file)
    : ca_(std::move(ca)) {
  std::call_once(g_state_once,
                 [] { g_state_index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr); });
  if (g_state_index < 0) fail("SSL_get_ex_new_index");
  server_.reset(SSL_CTX_new(TLS_server_method()));
  if (!server_) fail("SSL_CTX_new (server)");
  SSL_CTX* s = server_.get();
  SSL_CTX_set_min_proto_version(s, TLS1_2_VERSION);
  SSL_CTX_set_options(s, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET);
  SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode(s, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_tlsext_servername_callback(s, on_server_name);
  SSL_CTX_set_alpn_select_cb(s, on_alpn, nullptr);

  client_.reset(SSL_CTX_new(TLS_client_method()));
  if (!client_) fail("SSL_CTX_new (client)");
  SSL_CTX* c = client_.get();
  SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
  if (upstream_ca_file.empty()) {
    if (SSL_CTX_set_default_verify_paths(c) != 1) fail("loading the host's trust store");
  } else if (SSL_CTX_load_verify_locations(c, upstream_ca_file.c_str(), nullptr) != 1) {
    fail("loading the upstream trust store " + upstream_ca_file);
  }
  static const unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  if (SSL_CTX_set_alpn_protos(c, alpn, sizeof alpn) != 0) fail("ALPN");
}

Handshake Interceptor::accept(int fd, const std::string& host, int stop_fd,
                              Clock::time_point deadline) const {
  Handshake h;
  std::shared_ptr<X509> cert;
  try {
    cert = ca_->leaf(host);
  } catch (const std::exception& e) {
    h.error = e.what();
    return h;
  }
  SslPtr ssl(SSL_new(server_.get()));
  if (!ssl) {
    h.error = openssl_error("SSL_new");
    return h;
  }
  AcceptState st{host, {}, false};
  SSL_set_ex_data(ssl.get(), g_state_index, &st);
  if (SSL_use_certificate(ssl.get(), cert.get()) != 1 ||
      SSL_use_PrivateKey(ssl.get(), ca_->leaf_key()) != 1 ||
      SSL_add1_chain_cert(ssl.get(), ca_->ca_cert()) != 1 || SSL_set_fd(ssl.get(), fd) != 1) {
    h.error = openssl_error("preparing the TLS server");
    return h;
  }
  SSL_set_accept_state(ssl.get());
  std::string err;
  bool ok = handshake(ssl.get(), fd, stop_fd, deadline, err);
  SSL_set_ex_data(ssl.get(), g_state_index, nullptr);
  if (!ok) {
    h.refused = st.refused;
    h.error = st.error.empty() ? "client TLS: " + err : st.error;
    return h;
  }
  h.ssl = std::move(ssl);
  return h;
}

Handshake Interceptor::connect(int fd, const std::string& host, int stop_fd,
                               Clock::time_point deadline) const {
  Handshake h;
  SslPtr ssl(SSL_new(client_.get()));
  if (!ssl) {
    h.error = openssl_error("SSL_new");
    return h;
  }
  bool is_ip = parse_ip(host).has_value();
  X509_VERIFY_PARAM* vp = SSL_get0_param(ssl.get());
  X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, host.c_str())
                 : X509_VERIFY_PARAM_set1_host(vp, host.c_str(), host.size());
  if (ok != 1 || (!is_ip && SSL_set_tlsext_host_name(ssl.get(), host.c_str()) != 1) ||
      SSL_set_fd(ssl.get(), fd) != 1) {
    h.error = openssl_error("preparing the upstream TLS client");
    return h;
  }
  SSL_set_connect_state(ssl.get());
  std::string err;
  if (!handshake(ssl.get(), fd, stop_fd, deadline, err)) {
    long v = SSL_get_verify_result(ssl.get());
    if (v != X509_V_OK)
      h.error = std::string("upstream certificate not trusted: ") + X509_verify_cert_error_string(v);
    else
      h.error = "upstream " + err;
    h.refused = true;
    return h;
  }
  // SSL_VERIFY_PEER already failed the handshake on a bad certificate; check
  // again that there was one and that it verified (never weaker).
  X509* peer = SSL_get0_peer_certificate(ssl.get());
  if (!peer || SSL_get_verify_result(ssl.get()) != X509_V_OK) {
    h.error = "upstream certificate not verified";
    h.refused = true;
    return h;
  }
  h.ssl = std::move(ssl);
  return h;
}

namespace {

struct SideState {
  PumpSide* s = nullptr;
  std::string to_plain, to_tls;
  bool tls_in_done = false, plain_in_done = false, tls_out_closed = false, plain_out_closed = false;
  bool want_write = false;
  std::string error;

  bool done() const {
    // The plain side (the proxy's exchange code) closing ends the side once
    // close_notify went out: nothing the TLS peer still sends has a reader.
    return !error.empty() || (plain_in_done && tls_out_closed);
  }

  // Move what can move now without blocking; true if anything did.
  bool step(char* buf, std::size_t cap) {
    bool progress = false;
    want_write = false;
    SSL* ssl = s->ssl.get();
    while (!tls_in_done && to_plain.size() < kMaxBuffered) {
      ERR_clear_error();
      int n = SSL_read(ssl, buf, static_cast<int>(cap));
      if (n > 0) {
        to_plain.append(buf, static_cast<std::size_t>(n));
        progress = true;
        continue;
      }
      int e = SSL_get_error(ssl, n);
      if (e == SSL_ERROR_WANT_READ) break;
      if (e == SSL_ERROR_WANT_WRITE) {
        want_write = true;
        break;
      }
      // close_notify, or the peer closed without one: the stream ends here
      // (the HTTP framing above decides whether what came was complete).
      tls_in_done = true;
      progress = true;
    }
    while (!to_plain.empty()) {
      ssize_t n = ::send(s->plain, to_plain.data(), to_plain.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        to_plain.erase(0, static_cast<std::size_t>(n));
        progress = true;
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
      error = "plain side closed";
      return true;
    }
    if (tls_in_done && to_plain.empty() && !plain_out_closed) {
      ::shutdown(s->plain, SHUT_WR);
      plain_out_closed = true;
      progress = true;
    }
    while (!plain_in_done && to_tls.size() < kMaxBuffered) {
      ssize_t n = ::recv(s->plain, buf, cap, MSG_DONTWAIT);
      if (n > 0) {
        to_tls.append(buf, static_cast<std::size_t>(n));
        progress = true;
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
      plain_in_done = true;  // EOF (or reset): nothing more to send
      progress = true;
    }
    while (!to_tls.empty() && !tls_out_closed) {
      ERR_clear_error();
      int n = SSL_write(ssl, to_tls.data(), static_cast<int>(std::min<std::size_t>(to_tls.size(), 16384)));
      if (n > 0) {
        to_tls.erase(0, static_cast<std::size_t>(n));
        progress = true;
        continue;
      }
      int e = SSL_get_error(ssl, n);
      if (e == SSL_ERROR_WANT_WRITE) {
        want_write = true;
        break;
      }
      if (e == SSL_ERROR_WANT_READ) break;
      error = openssl_error("TLS write failed");
      return true;
    }
    if (plain_in_done && to_tls.empty() && !tls_out_closed) {
      ERR_clear_error();
      SSL_shutdown(ssl);  // close_notify; the peer's is not waited for
      ::shutdown(s->net, SHUT_WR);
      tls_out_closed = true;
      progress = true;
    }
    return progress;
  }
};

}  // namespace

std::string pump(std::vector<PumpSide>& sides, int stop_fd, int idle_ms) {
  std::vector<SideState> st;
  for (auto& s : sides) {
    SideState x;
    x.s = &s;
    st.push_back(std::move(x));
  }
  std::vector<char> buf(16384);
  auto last = Clock::now();
  std::string end;
  for (;;) {
    bool progress = false, all_done = true;
    for (auto& x : st) {
      if (x.done()) continue;
      if (x.step(buf.data(), buf.size())) progress = true;
      if (!x.error.empty()) {
        end = "error: " + x.error;
        break;
      }
      if (!x.done()) all_done = false;
    }
    if (!end.empty()) break;
    if (all_done) {
      end = "closed";
      break;
    }
    if (progress) {
      last = Clock::now();
      continue;
    }
    std::vector<pollfd> p;
    for (auto& x : st) {
      if (x.done()) continue;
      short ne = 0, pe = 0;
      if (!x.tls_in_done && x.to_plain.size() < kMaxBuffered) ne |= POLLIN;
      if (x.want_write) ne |= POLLOUT;
      if (!x.plain_in_done && x.to_tls.size() < kMaxBuffered) pe |= POLLIN;
      if (!x.to_plain.empty()) pe |= POLLOUT;
      p.push_back({ne ? x.s->net : -1, ne, 0});
      p.push_back({pe ? x.s->plain : -1, pe, 0});
    }
    p.push_back({stop_fd, POLLIN, 0});
    auto dl = last + std::chrono::milliseconds(idle_ms);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(dl - Clock::now()).count();
    if (ms <= 0) {
      end = "idle-timeout";
      break;
    }
    int n = ::poll(p.data(), p.size(), static_cast<int>(std::min<long long>(ms + 1, 1 << 30)));
    if (n < 0 && errno != EINTR) {
      end = std::string("error: poll: ") + strerror(errno);
      break;
    }
    if (p.back().revents) {
      end = "stopped";
      break;
    }
  }
  for (auto& s : sides) {
    ::shutdown(s.plain, SHUT_RDWR);
    ::shutdown(s.net, SHUT_RDWR);
  }
  return end;
}

}  // namespace agentshim::net::tls
