// Who opened a socket: the process behind a TCP connection accepted by the
// egress proxy, so a pod's network decisions can be recorded in the record
// of the container that made them (issue 14 item 2), not only in the pod
// sandbox's whose supervisor serves the shared namespace.
//
// The kernel tells it in two steps. NETLINK_SOCK_DIAG (inet_diag, an exact
// lookup by the connection's addresses and ports, not a dump) gives the
// client socket's inode in the namespace the netlink socket was created in;
// the process holding that inode is the one with a `socket:[INODE]` link in
// /proc/PID/fd. Both steps race with the client closing the socket, so a
// lookup is made at accept time and "unknown" is a normal answer (the
// decision then stays with the sandbox's record, as the issue asks).
#pragma once

#include <netinet/in.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
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

// The pid among `candidates` that holds socket inode `inode` in its fd
// table, or 0. Processes that vanish or cannot be read are skipped.
pid_t holder_of(uint64_t inode, const std::vector<pid_t>& candidates);

// Every pid whose /proc/PID/ns/net is the namespace `netns_ino` names (for
// the candidates of holder_of when nothing narrower is known).
std::vector<pid_t> pids_in_netns(uint64_t netns_ino);

}  // namespace agentshim::sockowner
