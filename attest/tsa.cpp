#include "attest/tsa.h"

#include <netdb.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ts.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>

#include "attest/hash.h"
#include "common/error.h"
#include "common/fd.h"

namespace agentshim::attest {
namespace {

constexpr std::size_t kMaxResponse = 1 << 20;  // a TimeStampResp with its certificates is a few KiB

struct Url {
  std::string host, port = "80", path = "/";
};

Url parse_url(const std::string& url) {
  const std::string scheme = "http://";
  if (url.compare(0, scheme.size(), scheme) != 0)
    throw Error("TSA URL " + url + ": only http:// is supported (the time-stamp response is signed)");
  std::string rest = url.substr(scheme.size());
  Url u;
  auto slash = rest.find('/');
  if (slash != std::string::npos) {
    u.path = rest.substr(slash);
    rest.resize(slash);
  }
  if (!rest.empty() && rest[0] == '[') {  // [v6]:port
    auto close = rest.find(']');
    if (close == std::string::npos) throw Error("TSA URL " + url + ": unterminated IPv6 address");
    u.host = rest.substr(1, close - 1);
    if (close + 1 < rest.size()) {
      if (rest[close + 1] != ':') throw Error("TSA URL " + url + ": bad port");
      u.port = rest.substr(close + 2);
    }
  } else {
    auto colon = rest.find(':');
    u.host = rest.substr(0, colon);
    if (colon != std::string::npos) u.port = rest.substr(colon + 1);
  }
  if (u.host.empty() || u.port.empty() || u.port.find_first_not_of("0123456789") != std::string::npos ||
      u.path.find_first_of(" \r\n") != std::string::npos ||
      u.host.find_first_of(" \r\n/") != std::string::npos)
    throw Error("TSA URL " + url + ": expected http://host[:port][/path]");
  return u;
}

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return ms > 0 ? static_cast<int>(ms) : 0;
}

void wait_for(int fd, short events, Clock::time_point deadline, const std::string& what) {
  for (;;) {
    struct pollfd p {
      fd, events, 0
    };
    int n = ::poll(&p, 1, remaining_ms(deadline));
    if (n > 0) return;
    if (n == 0) throw Error(what + ": timed out");
    if (errno != EINTR) throw_errno(what + ": poll");
  }
}

UniqueFd connect_to(const Url& u, Clock::time_point deadline, const std::string& what) {
  struct addrinfo hints {};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  struct addrinfo* res = nullptr;
  int rc = ::getaddrinfo(u.host.c_str(), u.port.c_str(), &hints, &res);
  if (rc != 0) throw Error(what + ": resolve " + u.host + ": " + ::gai_strerror(rc));
  std::unique_ptr<struct addrinfo, decltype(&::freeaddrinfo)> guard(res, ::freeaddrinfo);
  int last = ECONNREFUSED;
  for (auto* a = res; a; a = a->ai_next) {
    UniqueFd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
    if (!fd) {
      last = errno;
      continue;
    }
    if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) == 0) return fd;
    if (errno != EINPROGRESS) {
      last = errno;
      continue;
    }
    wait_for(fd.get(), POLLOUT, deadline, what + ": connect");
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) return fd;
    last = err;
  }
  throw_errno(what + ": connect", last);
}

// POST `body`; the response body (HTTP/1.0 semantics: read until close).
std::string http_post(const std::string& url, const std::string& body, int timeout_ms) {
  Url u = parse_url(url);
  const std::string what = "TSA " + url;
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  UniqueFd fd = connect_to(u, deadline, what);
  std::string req = "POST " + u.path + " HTTP/1.0\r\nHost: " + u.host +
                    "\r\nContent-Type: application/timestamp-query\r\n" +
                    "Accept: application/timestamp-reply\r\nContent-Length: " + std::to_string(body.size()) +
                    "\r\nConnection: close\r\n\r\n" + body;
  for (std::size_t off = 0; off < req.size();) {
    ssize_t n = ::send(fd.get(), req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<std::size_t>(n);
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      wait_for(fd.get(), POLLOUT, deadline, what + ": send");
    } else {
      throw_errno(what + ": send");
    }
  }
  std::string resp;
  char buf[16384];
  for (;;) {
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n > 0) {
      resp.append(buf, static_cast<std::size_t>(n));
      if (resp.size() > kMaxResponse) throw Error(what + ": response larger than 1 MiB");
    } else if (n == 0) {
      break;
    } else if (errno == EAGAIN || errno == EINTR) {
      wait_for(fd.get(), POLLIN, deadline, what + ": receive");
    } else {
      throw_errno(what + ": receive");
    }
  }
  auto end = resp.find("\r\n\r\n");
  if (end == std::string::npos) throw Error(what + ": no complete HTTP response");
  std::string head = resp.substr(0, end);
  std::string status = head.substr(0, head.find("\r\n"));
  if (status.size() < 12 || status.compare(0, 5, "HTTP/") != 0 || status.find(' ') == std::string::npos)
    throw Error(what + ": malformed HTTP status line");
  std::string code = status.substr(status.find(' ') + 1, 3);
  if (code != "200") throw Error(what + ": HTTP status " + code);
  std::string lower;
  for (char c : head) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower.find("\r\ntransfer-encoding:") != std::string::npos)
    throw Error(what + ": chunked responses are not supported");
  std::string out = resp.substr(end + 4);
  auto cl = lower.find("\r\ncontent-length:");
  if (cl != std::string::npos) {
    std::size_t n = std::strtoull(lower.c_str() + cl + 17, nullptr, 10);
    if (n > out.size()) throw Error(what + ": response shorter than its Content-Length");
    out.resize(n);
  }
  return out;
}

std::string ossl_err() {
  unsigned long e = ERR_get_error();
  char b[256] = "unknown OpenSSL error";
  if (e) ERR_error_string_n(e, b, sizeof b);
  ERR_clear_error();
  return b;
}

template <typename T, void (*F)(T*)>
struct Del {
  void operator()(T* p) const { F(p); }
};
using ReqPtr = std::unique_ptr<TS_REQ, Del<TS_REQ, TS_REQ_free>>;
using RespPtr = std::unique_ptr<TS_RESP, Del<TS_RESP, TS_RESP_free>>;
using VctxPtr = std::unique_ptr<TS_VERIFY_CTX, Del<TS_VERIFY_CTX, TS_VERIFY_CTX_free>>;

ReqPtr make_request(std::string_view signature) {
  Digest d = sha256(signature);
  ReqPtr req(TS_REQ_new());
  TS_MSG_IMPRINT* mi = TS_MSG_IMPRINT_new();
  X509_ALGOR* algo = X509_ALGOR_new();
  ASN1_INTEGER* nonce = ASN1_INTEGER_new();
  bool ok =
      req && mi && algo && nonce && TS_REQ_set_version(req.get(), 1) == 1 &&
      X509_ALGOR_set0(algo, OBJ_nid2obj(NID_sha256), V_ASN1_NULL, nullptr) == 1 &&
      TS_MSG_IMPRINT_set_algo(mi, algo) == 1 &&
      TS_MSG_IMPRINT_set_msg(mi, const_cast<unsigned char*>(d.data()), static_cast<int>(d.size())) == 1 &&
      TS_REQ_set_msg_imprint(req.get(), mi) == 1;
  if (ok) {
    unsigned char rnd[8];
    ok = RAND_bytes(rnd, sizeof rnd) == 1;
    rnd[0] &= 0x7f;  // positive
    uint64_t v = 0;
    for (unsigned char c : rnd) v = (v << 8) | c;
    ok = ok && ASN1_INTEGER_set_uint64(nonce, v) == 1 && TS_REQ_set_nonce(req.get(), nonce) == 1 &&
         TS_REQ_set_cert_req(req.get(), 1) == 1;
  }
  // The setters copied what they were given.
  X509_ALGOR_free(algo);
  TS_MSG_IMPRINT_free(mi);
  ASN1_INTEGER_free(nonce);
  if (!ok) throw Error("time-stamp request: " + ossl_err());
  return req;
}

RespPtr parse_response(std::string_view der, const std::string& what) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  RespPtr resp(d2i_TS_RESP(nullptr, &p, static_cast<long>(der.size())));
  if (!resp || p != reinterpret_cast<const unsigned char*>(der.data()) + der.size())
    throw Error(what + ": not a DER TimeStampResp");
  TS_STATUS_INFO* si = TS_RESP_get_status_info(resp.get());
  long status = si ? ASN1_INTEGER_get(TS_STATUS_INFO_get0_status(si)) : -1;
  if (status != 0 && status != 1)  // granted, grantedWithMods
    throw Error(what + ": the TSA refused the request (PKIStatus " + std::to_string(status) + ")");
  if (!TS_RESP_get_tst_info(resp.get())) throw Error(what + ": the response has no time-stamp token");
  return resp;
}

std::string gen_time(TS_RESP* resp) {
  const ASN1_GENERALIZEDTIME* t = TS_TST_INFO_get_time(TS_RESP_get_tst_info(resp));
  struct tm tm {};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return "";
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

std::string rfc3161_timestamp(const std::string& url, std::string_view signature, int timeout_ms) {
  const std::string what = "TSA " + url;
  ReqPtr req = make_request(signature);
  unsigned char* der = nullptr;
  int n = i2d_TS_REQ(req.get(), &der);
  if (n <= 0) throw Error("time-stamp request: " + ossl_err());
  std::string body(reinterpret_cast<char*>(der), static_cast<std::size_t>(n));
  OPENSSL_free(der);
  std::string reply = http_post(url, body, timeout_ms);
  RespPtr resp = parse_response(reply, what);
  // The reply answers this request: version, imprint, nonce (the TSA's
  // signature is the verifier's to check against its trusted TSA roots).
  VctxPtr ctx(TS_REQ_to_TS_VERIFY_CTX(req.get(), nullptr));
  if (!ctx) throw Error("time-stamp request: " + ossl_err());
  TS_VERIFY_CTX_set_flags(ctx.get(), TS_VFY_VERSION | TS_VFY_IMPRINT | TS_VFY_NONCE);
  if (TS_RESP_verify_response(ctx.get(), resp.get()) != 1)
    throw Error(what + ": the response does not answer the request (" + ossl_err() + ")");
  return reply;
}

std::string rfc3161_check(std::string_view der, std::string_view signature) {
  RespPtr resp = parse_response(der, "RFC 3161 time-stamp");
  TS_MSG_IMPRINT* mi = TS_TST_INFO_get_msg_imprint(TS_RESP_get_tst_info(resp.get()));
  ASN1_OCTET_STRING* msg = mi ? TS_MSG_IMPRINT_get_msg(mi) : nullptr;
  X509_ALGOR* algo = mi ? TS_MSG_IMPRINT_get_algo(mi) : nullptr;
  Digest d = sha256(signature);
  if (!msg || !algo || OBJ_obj2nid(algo->algorithm) != NID_sha256 || ASN1_STRING_length(msg) != 32 ||
      std::memcmp(ASN1_STRING_get0_data(msg), d.data(), 32) != 0)
    throw Error("RFC 3161 time-stamp: its imprint is not the SHA-256 of the signature");
  return gen_time(resp.get());
}

}  // namespace agentshim::attest
