// Who opened a socket: the process behind a TCP connection accepted by the
// egress proxy, so a pod's network decisions are recorded in the record of
// the container that made them (issue 14 item 2), not only in the pod
// sandbox's, whose supervisor serves the shared namespace.
//
// The kernel tells it in two steps. NETLINK_SOCK_DIAG (inet_diag, an exact
// lookup by the connection's addresses and ports, not a dump) gives the
// client socket's inode in the namespace the netlink socket was created in;
// the processes holding that inode are those with a `socket:[INODE]` link in
// /proc/PID/fd. Both steps race with the client closing the socket, so the
// lookup is made while the proxy serves the request (the client is waiting
// for the answer) and "unknown" is a normal answer: the decision then stays
// only in the serving container's record, as the issue asks.
//
// What it names is who holds the socket at that moment. A socket passed to
// another process (SCM_RIGHTS, which containers sharing a network namespace
// can do over an abstract unix socket) names every holder; one handed over
// and closed by its opener names the process that now uses it.
#pragma once

#include <netinet/in.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/fd.h"

namespace agentshim::sockowner {

struct Tcp4 {
  in_addr src{}, dst{};           // the client's address, the server's (network order)
  uint16_t sport = 0, dport = 0;  // host order
};

struct Found {
  uint64_t inode = 0;
  uint32_t uid = 0;  // the socket's owner uid (as the namespace's user ns sees it)
};

// A NETLINK_SOCK_DIAG socket of the calling thread's network namespace
// (make it inside the namespace, e.g. in net::in_netns; it stays bound to it).
UniqueFd open_diag();

// The client socket of a TCP connection, looked up on `diag` (open_diag).
// nullopt when there is no such socket (closed already) or the kernel says
// nothing; throws SysError on a netlink failure.
std::optional<Found> lookup_tcp4(int diag, const Tcp4& conn);

// Bound on the work one search may do: the container decides how many
// processes and descriptors there are, so a search gives up (and the answer
// is "unknown") past this many fd entries in total.
constexpr std::size_t kMaxFdEntries = 1 << 16;

// Every pid among `candidates` that holds socket inode `inode` in its fd
// table (at most 16). Processes that vanish or cannot be read are skipped.
// `exhausted` (optional) is set when kMaxFdEntries stopped the search.
std::vector<pid_t> holders_of(uint64_t inode, const std::vector<pid_t>& candidates,
                              bool* exhausted = nullptr);
// The first of them, or 0.
pid_t holder_of(uint64_t inode, const std::vector<pid_t>& candidates);

// Every pid whose /proc/PID/ns/net is the namespace `netns_ino` names.
std::vector<pid_t> pids_in_netns(uint64_t netns_ino);

// A process that held the connection, and the agentshim container it
// belongs to ("" when it is none of the containers sharing the namespace,
// e.g. a process an operator entered with nsenter).
struct Holder {
  pid_t pid = 0;
  std::string id, root;  // the container's id and state root
};

// The proxy's question, asked from its worker threads: which processes and
// containers are behind this accepted connection. One per served network
// namespace; thread-safe.
class Attributor {
 public:
  // Call inside the network namespace served (the diag socket is bound to
  // the namespace it is made in); `netns_ino` is that namespace's inode.
  explicit Attributor(uint64_t netns_ino);
  // The holders of the client socket behind `accepted_fd` (a TCP/IPv4
  // connection accepted in the namespace), empty when unknown.
  std::vector<Holder> holders(int accepted_fd);

 private:
  std::vector<pid_t> candidates(bool refresh);
  uint64_t netns_ino_;
  std::mutex mu_;  // the diag socket and the candidate cache
  UniqueFd diag_;
  std::vector<pid_t> cached_;
  std::chrono::steady_clock::time_point cached_at_{};
};

}  // namespace agentshim::sockowner
