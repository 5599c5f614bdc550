// Outbound confinement of a network namespace the container keeps (network
// mode "confined": a pod's CNI namespace, Docker's bridge): inbound
// connections and their replies pass (Services, probes, port-forward,
// `docker run -p`); every new outbound connection leaves only through
// loopback — the in-namespace egress proxy and DNS stub, and the pod's
// other containers — IPv4 and IPv6 alike. Rules are nftables, installed
// with libnftables (loaded at first use: the CLI's other commands never pay
// for it) into one table of agentshim's own in that namespace.
//
// The container never holds CAP_NET_ADMIN (policy: dropped in this mode),
// so it cannot change them; CAP_NET_RAW is dropped too (AF_PACKET sends
// below netfilter).
#pragma once

#include <string>
#include <thread>

namespace agentshim::net {

// The ruleset, as nft(8) would list it (recorded in the run's net.namespace
// event). Fixed text: nothing from the container or the caller goes in.
const std::string& confinement_ruleset();

// The nftables socket a ruleset was installed through is closed on a thread
// of its own: closing it right after the commit waits for the kernel to
// release the transaction (an RCU grace period: ~10 ms here, on create's
// path). The descriptor leaves the table at once (libnftables does not open
// it close-on-exec); the thread is joined when this is destroyed. The rules
// stay (the table has no owner).
class Installed {
 public:
  Installed();
  ~Installed();
  Installed(Installed&&) noexcept;
  Installed& operator=(Installed&&) noexcept;
  struct Ctx;

 private:
  friend Installed confine(int nsfd);
  std::thread closer_;
};

// Installs the ruleset in the network namespace `nsfd` names (replacing an
// earlier agentshim table there). Throws Error naming libnftables' message.
[[nodiscard]] Installed confine(int nsfd);

// The ruleset currently in `nsfd`'s namespace (nft list ruleset), for tests
// and the record.
std::string list_ruleset(int nsfd);

}  // namespace agentshim::net
