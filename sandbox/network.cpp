#include "sandbox/network.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <memory>
#include <optional>

#include "common/error.h"
#include "common/log.h"
#include "netpolicy/allowlist.h"
#include "netpolicy/dns.h"
#include "netpolicy/firewall.h"
#include "netpolicy/proxy.h"
#include "netpolicy/request_rules.h"
#include "sandbox/sockowner.h"

namespace agentshim::network {

Options Options::from_policy(const json& policy) {
  Options o;
  if (!policy.is_object() || !policy.contains("network") || !policy["network"].is_object()) return o;
  const json& n = policy["network"];
  o.mode = n.value("mode", o.mode);
  o.ns = n.value("namespace", o.ns);
  o.peer = n.value("peer", o.peer);
  if (n.contains("allow") && n["allow"].is_array())
    for (const auto& r : n["allow"])
      if (r.is_string()) o.allow.push_back(r.get<std::string>());
  o.dns = n.value("dns", o.dns);
  if (n.contains("proxy_port") && n["proxy_port"].is_number_unsigned())
    o.proxy_port = static_cast<uint16_t>(n["proxy_port"].get<unsigned>());
  if (n.contains("limits") && n["limits"].is_object()) o.limits = n["limits"];
  if (n.contains("credentials") && n["credentials"].is_array()) o.credentials = n["credentials"];
  if (n.contains("request_rules") && n["request_rules"].is_array()) o.request_rules = n["request_rules"];
  return o;
}

namespace {

// The policy's network.limits (docs/POLICY.md), seconds in the policy,
// milliseconds in the proxy.
net::Limits limits_of(const json& j) {
  net::Limits l;
  auto get = [&](const char* k) -> std::optional<long long> {
    if (j.contains(k) && j[k].is_number_integer()) return j[k].get<long long>();
    return std::nullopt;
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

}  // namespace

ContainerNetwork::ContainerNetwork(pid_t init_pid, bool new_netns, Options o, Sink sink) : o_(std::move(o)) {
  std::string nspath = "/proc/" + std::to_string(init_pid) + "/ns/net";
  UniqueFd nsfd(::open(nspath.c_str(), O_RDONLY | O_CLOEXEC));
  if (!nsfd) throw_errno("open " + nspath);
  // Served here: the container's own namespace (internal or confined) and
  // the caller's (confined). Another agentshim container's (a pod's
  // sandbox) is served by that container's supervisor.
  const bool mediated = o_.mode == "internal" || o_.mode == "confined";
  const bool serve = mediated && (new_netns || (o_.mode == "confined" && o_.ns == "caller"));
  const bool confine = serve && o_.mode == "confined";
  UniqueFd proxy_fd, dns_udp, dns_tcp;
  std::shared_ptr<sockowner::Attributor> attributor;
  json view;
  // Rules first: nothing leaves before the namespace is confined.
  if (confine) net::confine(nsfd.get());
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
      proxy_->set_request_rules(net::RequestRules::parse(o_.request_rules, "policy"));
      ev["request_rules"] = o_.request_rules;
    }
    if (!o_.credentials.empty()) {
      // The secrets are read here, by the supervisor, and kept only in the
      // proxy's memory; the record names the credentials, never a value.
      std::vector<net::cred::Active> creds;
      json names = json::array();
      for (const auto& c : o_.credentials) {
        net::cred::Active a;
        a.def =
            net::cred::parse(c["name"].get<std::string>(), c["definition"], "the container's credentials");
        a.placeholder = c["placeholder"].get<std::string>();
        a.secret = net::cred::load_secret(a.def.source);
        names.push_back(a.def.name);
        creds.push_back(std::move(a));
      }
      proxy_->set_credentials(std::move(creds));
      ev["credentials"] = names;
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
