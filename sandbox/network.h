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

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "netpolicy/netns.h"

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

// The policy's network section with defaults filled in.
struct Options {
  std::string mode = "confined";  // "confined" | "internal" | "passthrough"
  std::string ns = "new";         // "new" | "caller" | "peer" | "host" (policy's network.namespace)
  std::string peer;               // the agentshim container serving a "peer" network
  std::vector<std::string> allow;
  std::string dns = "refuse";  // "refuse" | "allowlisted"
  uint16_t proxy_port = 3128;
  json limits = json::object();
  // The credentials the container asked for (policy Result::network
  // "credentials": {"name", "placeholder", "definition"}); their secrets are
  // read when the proxy starts (docs/CREDENTIALS.md).
  json credentials = json::array();
  json request_rules = json::array();  // policy network.request_rules, normalised
  // TLS interception (trust_run_ca): {"ca_file", "ca_path", "env"}, or empty.
  json tls = json::object();
  // The run's certificate authority (prepare_run_ca), set by the supervisor.
  std::shared_ptr<net::tls::Authority> run_ca;
  static Options from_policy(const json& policy);  // policy["network"] (absent: defaults)
};

// The in-container path of the trusted bundle (the image's CA bundle plus the run's CA).
constexpr const char* kRunCaPath = "/etc/agentshim-ca.pem";
// The line in that bundle after which the run's CA certificate follows.
constexpr const char* kRunCaMarker = "# agentshim: this run's certificate authority (docs/CREDENTIALS.md)\n";
// The run's CA certificate (PEM) from a bundle file's text: the one
// certificate after the last marker; "" when there is none or more.
std::string run_ca_of_bundle(const std::string& bundle);
// Whether a policy Result's network is served by the container's own
// proxy (internal/confined in a namespace of its own, or confined in the
// caller's): what it decides is then what `served_network` saves.
bool serves_own_network(const json& net);
// The runtime's environment variable naming a PEM file that replaces the
// host's trust store for the proxy's upstream TLS connections. Test-only
// (docs/CREDENTIALS.md): read by the supervisor from the runtime's own
// environment, never from the container's config.
constexpr const char* kTestUpstreamCaEnv = "AGENTSHIM_TEST_UPSTREAM_CA";

// `create`: a container whose proxy (served by its own supervisor)
// intercepts TLS — it asked for credentials, or the policy has request
// rules — trusts the run's CA: an empty file `<state_dir>/run-ca.pem` is
// made (filled by the supervisor). A container joining another's network
// whose proxy intercepts (net["peer_run_ca"], set by the policy from
// peers::Peer::run_ca_file) gets `<state_dir>/run-ca.pem` written here,
// complete: its own image's bundle and the owner's run CA (net["tls"] then
// has "bundle_file" and "served_by" instead of "ca_file"). Either file is
// bind-mounted read-only at kRunCaPath, and
// SSL_CERT_FILE, REQUESTS_CA_BUNDLE, NODE_EXTRA_CA_CERTS, CURL_CA_BUNDLE and
// GIT_SSL_CAINFO point at it (a caller's values are replaced); the decisions
// say so; net["tls"] tells the supervisor and `exec`. Nothing otherwise.
void trust_run_ca(json& cfg, json& net, json& decisions, const std::string& rootfs,
                  const std::string& state_dir);
// The supervisor, before the init mounts anything: for a container with
// net["tls"], make the run's CA (its key only in this process's memory) and
// write the bundle file: the rootfs's distribution bundle (the first of the
// usual paths that is a regular PEM file, read inside the rootfs, at most
// 8 MiB) followed by the run's CA, or the CA alone. nullptr otherwise.
std::shared_ptr<net::tls::Authority> prepare_run_ca(const json& policy, const std::string& rootfs,
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
  std::unique_ptr<net::Proxy> proxy_;
  std::unique_ptr<net::DnsStub> dns_;
};

}  // namespace agentshim::network
