#include "sandbox/network.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <optional>

#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "netpolicy/allowlist.h"
#include "netpolicy/dns.h"
#include "netpolicy/firewall.h"
#include "netpolicy/proxy.h"
#include "netpolicy/request_rules.h"
#include "netpolicy/tls.h"
#include "sandbox/rootfs.h"
#include "sandbox/sockowner.h"

namespace agentshim::network {

void to_json(json& j, const Credential& c) {
  j = {{"name", c.name}, {"placeholder", c.placeholder}, {"definition", net::cred::to_json(c.definition)}};
  if (!c.served_by.empty()) j["served_by"] = c.served_by;
}

void from_json(const json& j, Credential& c) {
  c.name = j.at("name").get<std::string>();
  c.placeholder = j.at("placeholder").get<std::string>();
  c.definition = net::cred::parse(c.name, j.at("definition"), "credential " + c.name);
  c.served_by = j.value("served_by", "");
}

void to_json(json& j, const Options& o) {
  j = {{"mode", o.mode}, {"namespace", o.ns},          {"allow", o.allow},
       {"dns", o.dns},   {"proxy_port", o.proxy_port}, {"limits", o.limits}};
  if (!o.peer.empty()) j["peer"] = o.peer;
  if (!o.credentials.empty()) j["credentials"] = o.credentials;
  if (!o.request_rules.empty()) j["request_rules"] = o.request_rules.to_json();
  if (!o.peer_run_ca.empty()) j["peer_run_ca"] = o.peer_run_ca;
  if (o.tls) {
    json t = {{"ca_path", o.tls->ca_path}, {"env", o.tls->env}};
    if (!o.tls->ca_file.empty()) t["ca_file"] = o.tls->ca_file;
    if (!o.tls->bundle_file.empty()) t["bundle_file"] = o.tls->bundle_file;
    if (!o.tls->served_by.empty()) t["served_by"] = o.tls->served_by;
    j["tls"] = t;
  }
}

void to_json(json& j, const Served& s) {
  j = {{"credentials", s.credentials}};
  if (!s.run_ca_file.empty()) j["run_ca_file"] = s.run_ca_file;
}

void from_json(const json& j, Served& s) {
  s.credentials = j.value("credentials", std::vector<Credential>{});
  s.run_ca_file = j.value("run_ca_file", "");
}

bool Options::serves_own() const {
  return mediated() && (ns == "new" || (ns == "caller" && mode == "confined"));
}

namespace {

// The policy's network.limits (docs/POLICY.md), seconds in the policy,
// milliseconds in the proxy.
net::Limits limits_of(const std::map<std::string, long long>& m) {
  net::Limits l;
  auto get = [&](const char* k) -> std::optional<long long> {
    auto it = m.find(k);
    return it == m.end() ? std::nullopt : std::optional<long long>(it->second);
  };
  auto ms = [](long long s) { return static_cast<int>(std::min<long long>(s, 1LL << 20) * 1000); };
  if (auto v = get("max_header_bytes")) l.max_header_bytes = static_cast<std::size_t>(*v);
  if (auto v = get("max_headers")) l.max_headers = static_cast<int>(*v);
  if (auto v = get("max_connections")) l.max_connections = static_cast<int>(*v);
  if (auto v = get("max_pending")) l.max_pending = static_cast<int>(*v);
  if (auto v = get("max_requests_per_connection")) l.max_requests_per_connection = static_cast<int>(*v);
  if (auto v = get("header_timeout_seconds")) l.header_timeout_ms = ms(*v);
  if (auto v = get("connect_timeout_seconds")) l.connect_timeout_ms = ms(*v);
  if (auto v = get("idle_timeout_seconds")) l.idle_timeout_ms = ms(*v);
  if (auto v = get("total_timeout_seconds")) l.total_timeout_ms = ms(*v);
  return l;
}

const char* const kTrustVars[] = {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
                                  "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"};
const char* const kDistroBundles[] = {
    "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", "/etc/ssl/cert.pem"};

// The image's CA bundle, read inside the rootfs (symlinks resolved within
// it); "" when none of the usual paths is a regular PEM file of at most 8 MiB.
std::string distro_bundle(const std::string& rootfs, std::string& which) {
  UniqueFd root(::open(rootfs.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root) return "";
  for (const char* path : kDistroBundles) {
    try {
      UniqueFd p = rootfs::open_in_root(root.get(), path, false, true);
      struct stat st {};
      if (::fstat(p.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (8 << 20)) continue;
      UniqueFd f(
          ::open(("/proc/self/fd/" + std::to_string(p.get())).c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
      if (!f) continue;
      std::string text;
      char buf[65536];
      for (;;) {
        ssize_t n = ::read(f.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 || text.size() + static_cast<std::size_t>(n) > (8u << 20)) break;
        text.append(buf, static_cast<std::size_t>(n));
      }
      if (text.find("-----BEGIN CERTIFICATE-----") == std::string::npos) continue;
      if (text.back() != '\n') text += '\n';
      which = path;
      return text;
    } catch (const std::exception&) {
      continue;
    }
  }
  return "";
}

}  // namespace

std::string run_ca_of_bundle(const std::string& bundle) {
  const auto at = bundle.rfind(kRunCaMarker);
  if (at == std::string::npos) return "";
  std::string pem = bundle.substr(at + std::string_view(kRunCaMarker).size());
  const auto b = pem.find("-----BEGIN CERTIFICATE-----");
  const auto e = pem.find("-----END CERTIFICATE-----");
  if (b != 0 || e == std::string::npos || pem.find("-----BEGIN", b + 1) != std::string::npos) return "";
  return pem.substr(0, e + std::string_view("-----END CERTIFICATE-----").size()) + "\n";
}

namespace {

// A bundle file in the state directory, world-readable (the container's
// users read it through the bind mount); never through a symlink.
void write_bundle(const std::string& file, std::string_view text, int flags) {
  UniqueFd f(::open(file.c_str(), flags | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (!f) throw_errno("open " + file);
  if (::fchmod(f.get(), 0644) != 0) throw_errno("chmod " + file);
  write_all(f.get(), text, file);
}

}  // namespace

void trust_run_ca(json& cfg, Options& net, json& decisions, const std::string& rootfs,
                  const std::string& state_dir) {
  const std::string file = state_dir + "/run-ca.pem";
  std::string peer;  // the container whose proxy intercepts for this one
  const bool creds = !net.credentials.empty();
  if (net.serves_own()) {
    const bool rules = !net.request_rules.empty();
    if (!creds && !rules) return;
    write_bundle(file, "", O_CREAT | O_EXCL);  // filled by the supervisor (prepare_run_ca)
  } else if (net.ns == "peer" && !net.peer_run_ca.empty()) {
    // A joined network whose owner intercepts TLS (for its credentials or
    // request rules): this container must trust that run's CA, next to its
    // own image's bundle (the owner's image, a pod's pause, has none). The
    // owner wrote its bundle before its `create` returned.
    peer = net.peer;
    const std::string& from = net.peer_run_ca;
    std::string ca;
    try {
      ca = run_ca_of_bundle(read_file_limited(from, 16u << 20));
    } catch (const std::exception& e) {
      throw Error("the run CA of agentshim container " + peer +
                  ", whose network this container joins: " + e.what());
    }
    if (ca.empty())
      throw Error("the run CA of agentshim container " + peer +
                  ", whose network this container joins, is not in " + from);
    std::string which;
    write_bundle(file, distro_bundle(rootfs, which) + kRunCaMarker + ca, O_CREAT | O_EXCL);
  } else {
    return;
  }
  oci::put_mount(cfg, oci::runtime_bind(file, kRunCaPath), oci::MountPlace::kLast);
  // The mountpoint, made by the runtime as for /etc/resolv.conf (see there).
  UniqueFd rootfd(::open(rootfs.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (rootfd) {
    try {
      (void)rootfs::open_in_root(rootfd.get(), kRunCaPath, true, true);
    } catch (const std::exception& e) {
      log::debug(std::string("run CA mountpoint not created by the runtime: ") + e.what());
    }
  }
  std::vector<std::string> names, env_add;
  for (const char* v : kTrustVars) {
    names.push_back(v);
    env_add.push_back(std::string(v) + "=" + kRunCaPath);
  }
  std::string replaced;
  for (const auto& n : oci::put_env(cfg, names, env_add)) replaced += (replaced.empty() ? "" : ", ") + n;
  // "ca_file": the supervisor makes the CA and fills the file; a joiner's
  // bundle is complete already ("bundle_file", "served_by").
  net.tls = Tls{};
  (peer.empty() ? net.tls->ca_file : net.tls->bundle_file) = file;
  net.tls->served_by = peer;
  net.tls->ca_path = kRunCaPath;
  net.tls->env = env_add;
  if (!decisions.is_array()) decisions = json::array();
  const std::string why = !peer.empty() ? "network.namespace"
                          : creds       ? "credentials"
                                        : "network.request_rules";
  decisions.push_back(
      {{"rule", why},
       {"path", std::string("mounts[") + kRunCaPath + "]"},
       {"action", "added"},
       {"detail",
        (peer.empty() ? std::string("the egress proxy intercepts TLS to the destinations of ") + why
                      : "agentshim container " + peer +
                            "'s egress proxy, which serves the network this container joins, "
                            "intercepts TLS to the destinations of its credentials or request rules") +
            ": the run's certificate authority (with the image's CA bundle) is mounted "
            "read-only at " +
            kRunCaPath +
            " and SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS, "
            "CURL_CA_BUNDLE, GIT_SSL_CAINFO point at it" +
            (replaced.empty() ? std::string() : " (caller's " + replaced + " replaced)")}});
}

std::shared_ptr<net::tls::Authority> prepare_run_ca(const Options& o, const std::string& rootfs,
                                                    const std::string& label) {
  if (!o.tls || o.tls->ca_file.empty()) return nullptr;
  auto ca = net::tls::Authority::generate(label);
  std::string which;
  std::string bundle = distro_bundle(rootfs, which) + kRunCaMarker + ca->ca_pem();
  const std::string& file = o.tls->ca_file;
  write_bundle(file, bundle, O_TRUNC);
  log::debug("run CA bundle " + file + (which.empty() ? " (the CA alone)" : " (" + which + " + the CA)"));
  return ca;
}

ContainerNetwork::ContainerNetwork(pid_t init_pid, bool new_netns, Options o, Sink sink) : o_(std::move(o)) {
  std::string nspath = "/proc/" + std::to_string(init_pid) + "/ns/net";
  UniqueFd nsfd(::open(nspath.c_str(), O_RDONLY | O_CLOEXEC));
  if (!nsfd) throw_errno("open " + nspath);
  // Served here: the container's own namespace (internal or confined) and
  // the caller's (confined). Another agentshim container's (a pod's
  // sandbox) is served by that container's supervisor.
  const bool serve = o_.mediated() && (new_netns || (o_.mode == "confined" && o_.ns == "caller"));
  const bool confine = serve && o_.mode == "confined";
  UniqueFd proxy_fd, dns_udp, dns_tcp;
  std::shared_ptr<sockowner::Attributor> attributor;
  json view;
  // Rules first: nothing leaves before the namespace is confined.
  if (confine) firewall_ = net::confine(nsfd.get());
  net::in_netns(nsfd.get(), [&] {
    // A namespace of our own starts with lo down (runc brings it up too);
    // a namespace the caller prepared is left as it is, but for lo, which
    // the proxy and DNS stub listen on (CNI's loopback plugin has usually
    // brought it up already).
    if (new_netns || confine) net::bring_up_loopback();
    if (serve) {
      proxy_fd = net::listen_tcp("127.0.0.1", o_.proxy_port, 1024);
      dns_udp = net::bind_udp("127.0.0.53", 53);
      dns_tcp = net::listen_tcp("127.0.0.53", 53, 64);
      // Who is behind each proxy connection: a pod's containers share this
      // namespace and its proxy (sandbox/sockowner.h). Best effort: without
      // sock_diag the decisions stay this container's alone.
      try {
        struct stat st {};
        if (::fstat(nsfd.get(), &st) == 0) attributor = std::make_shared<sockowner::Attributor>(st.st_ino);
      } catch (const std::exception& e) {
        log::warn(std::string("network: connections will not be attributed to processes: ") + e.what());
      }
    }
    view = net::describe_namespace();
  });
  json ev = {{"mode", new_netns || confine ? o_.mode : std::string("joined")},
             {"namespace", new_netns ? std::string("new") : o_.ns},
             {"interfaces", view["interfaces"]},
             {"routes", view["routes"]}};
  if (!o_.peer.empty()) ev["served_by"] = o_.peer;
  if (confine) ev["confinement"] = {{"nftables", net::confinement_ruleset()}};
  if (serve) {
    auto allow = net::Allowlist::parse(o_.allow, "policy network.allow");
    ev["proxy"] = "127.0.0.1:" + std::to_string(o_.proxy_port);
    ev["dns"] = "127.0.0.53:53 (" + o_.dns + ")";
    ev["allow"] = allow.rules();
    proxy_ = std::make_unique<net::Proxy>(std::move(proxy_fd), allow, limits_of(o_.limits), sink);
    if (attributor)
      proxy_->set_attribution([attributor](int fd) -> json {
        auto hs = attributor->holders(fd);
        if (hs.empty()) return nullptr;
        json o = json::array();
        for (const auto& h : hs) o.push_back({{"pid", h.pid}, {"container", h.id}, {"root", h.root}});
        return o;
      });
    if (!o_.request_rules.empty()) {
      proxy_->set_request_rules(o_.request_rules);
      ev["request_rules"] = o_.request_rules.to_json();
    }
    if (!o_.credentials.empty()) {
      // The secrets are read here, by the supervisor, and kept only in the
      // proxy's memory; the record names the credentials, never a value.
      std::vector<net::cred::Active> creds;
      json names = json::array();
      for (const auto& c : o_.credentials) {
        net::cred::Active a;
        a.def = c.definition;
        a.placeholder = c.placeholder;
        a.secret = net::cred::load_secret(a.def.source);
        names.push_back(a.def.name);
        creds.push_back(std::move(a));
      }
      proxy_->set_credentials(std::move(creds));
      ev["credentials"] = names;
    }
    if (o_.run_ca) {
      // The upstream trust store: the host's, or (tests only) the file the
      // runtime's own environment names.
      const char* test_ca = std::getenv(kTestUpstreamCaEnv);
      std::string upstream_ca = test_ca ? test_ca : "";
      proxy_->set_tls(std::make_shared<net::tls::Interceptor>(o_.run_ca, upstream_ca));
      ev["tls"] = {
          {"interception", true},
          {"ca_path", o_.tls ? o_.tls->ca_path : std::string()},
          {"upstream_trust", upstream_ca.empty() ? std::string("host") : "test file " + upstream_ca}};
    }
    dns_ = std::make_unique<net::DnsStub>(std::move(dns_udp), std::move(dns_tcp), o_.dns, allow, sink);
  }
  sink("net.namespace", ev);
  if (proxy_) proxy_->start();
  if (dns_) dns_->start();
}

ContainerNetwork::~ContainerNetwork() {
  stop();
}

void ContainerNetwork::stop() {
  if (proxy_) proxy_->stop();
  if (dns_) dns_->stop();
}

json ContainerNetwork::totals() const {
  json t = {{"mode", o_.mode}, {"allowed", 0}, {"denied", 0}, {"bytes_up", 0}, {"bytes_down", 0}};
  if (proxy_) {
    json p = proxy_->totals();
    for (const auto& [k, v] : p.items()) t[k] = v;
  }
  if (dns_) t["dns"] = dns_->totals();
  return t;
}

}  // namespace agentshim::network
