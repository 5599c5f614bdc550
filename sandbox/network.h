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
  json request_rules = json::array();              // policy network.request_rules, normalised
  static Options from_policy(const json& policy);  // policy["network"] (absent: defaults)
};

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
