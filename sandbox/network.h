// The container's network as the supervisor serves it (SPEC "Network"):
// a network namespace with only `lo`, and the single way out — the egress
// allowlist proxy (netpolicy/proxy.h) listening on 127.0.0.1:<proxy_port>
// inside it, with the DNS stub (netpolicy/dns.h) on 127.0.0.53:53. The
// listening sockets are created by a thread that enters the container's
// namespace; every upstream connection is made from the host's.
//
// The policy's "network" section decides the mode:
//   confined     (default) the caller's namespace is kept (a pod's CNI
//                namespace, Docker's bridge: inbound connections, Services,
//                probes and -p work) and confined by nftables rules inside
//                it (netpolicy/firewall.h): new outbound connections leave
//                only through the proxy and the DNS stub on loopback. A
//                config without a namespace path gets a new one, as internal.
//   internal     a namespace with only `lo`: a path the caller prepared was
//                already replaced by a new namespace by the policy layer
//   passthrough  the caller's namespace is used as it is; no proxy, no DNS
//                stub; the record still says what the container could see.
// A network joined from another agentshim container (a pod's app joining
// its sandbox's) is served by that container's supervisor: nothing here.
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "netpolicy/credentials.h"
#include "netpolicy/firewall.h"
#include "netpolicy/netns.h"
#include "netpolicy/request_rules.h"

namespace agentshim::net {
class Proxy;
class DnsStub;
namespace tls {
class Authority;
}
}  // namespace agentshim::net

namespace agentshim::network {

using json = nlohmann::json;
using Sink = std::function<void(const std::string& type, json data)>;

// A credential a container asked for (dev.agentshim.credentials): its name,
// the placeholder the container sees, and its definition
// (netpolicy/credentials.h; never a secret). served_by: the agentshim
// container whose proxy applies it ("" = this one's).
struct Credential {
  std::string name;
  std::string placeholder;
  net::cred::Credential definition;
  std::string served_by;
};

// TLS interception for a container (trust_run_ca): the file its trusted
// bundle is in (ca_file: made empty by `create`, filled by the supervisor;
// bundle_file: a joiner's, complete, served_by the owner of the network),
// the path it is mounted at and the variables pointing at it.
struct Tls {
  std::string ca_file;
  std::string bundle_file;
  std::string served_by;
  std::string ca_path;
  std::vector<std::string> env;
};

// The network settings, in two places with one shape: the policy's
// network section (mode, allow, dns, proxy_port, limits, request_rules)
// and the enforced network policy::Result::network that `create` decides
// and the supervisor, `exec` and the record read (the rest).
struct Options {
  std::string mode = "confined";  // "confined" | "internal" | "passthrough"
  std::string ns = "new";         // "new" | "caller" | "peer" | "host" (where the network namespace is)
  std::string peer;               // the agentshim container serving a "peer" network
  std::vector<std::string> allow;
  std::string dns = "refuse";  // "refuse" | "allowlisted"
  uint16_t proxy_port = 3128;
  // network.limits (docs/POLICY.md): key -> value, seconds for timeouts.
  std::map<std::string, long long> limits;
  // The credentials the container asked for; their secrets are read when
  // the proxy starts (docs/CREDENTIALS.md).
  std::vector<Credential> credentials;
  net::RequestRules request_rules;  // network.request_rules
  std::optional<Tls> tls;           // trust_run_ca
  // A joined network's owner's run-CA bundle file (peers::Peer::run_ca_file).
  std::string peer_run_ca;
  // The run's certificate authority (prepare_run_ca), set by the supervisor.
  std::shared_ptr<net::tls::Authority> run_ca;

  // Served by the container's own proxy: internal/confined in a namespace
  // of its own, or confined in the caller's.
  bool serves_own() const;
  bool mediated() const { return mode == "internal" || mode == "confined"; }
};
// The document form (Result::network in `policy check --json`; the
// policy's section is read by policy::parse).
void to_json(json& j, const Options& o);
void to_json(json& j, const Credential& c);
void from_json(const json& j, Credential& c);

// What a container's own proxy serves, for containers joining its network
// (peers::Peer; saved by `create` in policy.json "served_network"): the
// credentials it holds (placeholders, never a secret) and the file with its
// run's CA ("" without TLS interception).
struct Served {
  std::vector<Credential> credentials;
  std::string run_ca_file;
};
void to_json(json& j, const Served& s);
void from_json(const json& j, Served& s);

// The in-container path of the trusted bundle (the image's CA bundle plus the run's CA).
constexpr const char* kRunCaPath = "/etc/agentshim-ca.pem";
// The line in that bundle after which the run's CA certificate follows.
constexpr const char* kRunCaMarker = "# agentshim: this run's certificate authority (docs/CREDENTIALS.md)\n";
// The run's CA certificate (PEM) from a bundle file's text: the one
// certificate after the last marker; "" when there is none or more.
std::string run_ca_of_bundle(const std::string& bundle);
// The runtime's environment variable naming a PEM file that replaces the
// host's trust store for the proxy's upstream TLS connections. Test-only
// (docs/CREDENTIALS.md): read by the supervisor from the runtime's own
// environment, never from the container's config.
constexpr const char* kTestUpstreamCaEnv = "AGENTSHIM_TEST_UPSTREAM_CA";

// `create`: a container whose proxy (served by its own supervisor)
// intercepts TLS — it asked for credentials, or the policy has request
// rules — trusts the run's CA: an empty file `<state_dir>/run-ca.pem` is
// made (filled by the supervisor). A container joining another's network
// whose proxy intercepts (net.peer_run_ca, set by the policy from
// peers::Peer::run_ca_file) gets `<state_dir>/run-ca.pem` written here,
// complete: its own image's bundle and the owner's run CA (net["tls"] then
// has bundle_file and served_by instead of ca_file). Either file is
// bind-mounted read-only at kRunCaPath, and
// SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS, CURL_CA_BUNDLE and
// GIT_SSL_CAINFO point at it (a caller's values are replaced); the decisions
// say so; net.tls tells the supervisor and `exec`. Nothing otherwise.
void trust_run_ca(json& cfg, Options& net, json& decisions, const std::string& rootfs,
                  const std::string& state_dir);
// The supervisor, before the init mounts anything: for a container with
// net.tls (ca_file), make the run's CA (its key only in this process's memory) and
// write the bundle file: the rootfs's distribution bundle (the first of the
// usual paths that is a regular PEM file, read inside the rootfs, at most
// 8 MiB) followed by the run's CA, or the CA alone. nullptr otherwise.
std::shared_ptr<net::tls::Authority> prepare_run_ca(const Options& net, const std::string& rootfs,
                                                    const std::string& label);

class ContainerNetwork {
 public:
  // Prepare the network of the container whose init is `init_pid`:
  // `new_netns` says whether the config gave it a namespace of its own.
  // Records a "net.namespace" event through `sink` (what the container
  // sees at start); in internal mode starts the proxy and the DNS stub.
  ContainerNetwork(pid_t init_pid, bool new_netns, Options o, Sink sink);
  ~ContainerNetwork();
  ContainerNetwork(const ContainerNetwork&) = delete;
  ContainerNetwork& operator=(const ContainerNetwork&) = delete;

  // Stop serving: close every connection, join every thread. Idempotent.
  void stop();
  // Totals for the attestation: allowed, denied, bytes each way, DNS.
  json totals() const;

 private:
  Options o_;
  // The thread closing the confinement's nftables socket off create's path
  // (net::Installed), joined with this object.
  net::Installed firewall_;
  std::unique_ptr<net::Proxy> proxy_;
  std::unique_ptr<net::DnsStub> dns_;
};

}  // namespace agentshim::network
