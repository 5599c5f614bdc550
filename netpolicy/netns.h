// The container's network namespace as the supervisor prepares it: only
// `lo`, brought up over netlink (libnl-route), and the sockets the
// supervisor serves inside it (the egress proxy on 127.0.0.1, the DNS stub
// on 127.0.0.53). The supervisor itself stays in the host's namespace; a
// short-lived thread enters the container's namespace (setns(CLONE_NEWNET)
// affects only the calling thread), creates what is needed and leaves, and
// the sockets keep belonging to the namespace they were created in.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "common/fd.h"

namespace agentshim::net {

using json = nlohmann::json;

// Run `fn` on a new thread that has joined the network namespace `nsfd`
// (an open /proc/<pid>/ns/net). Exceptions from fn are rethrown here.
void in_netns(int nsfd, const std::function<void()>& fn);

// In the calling thread's network namespace:
// bring the loopback interface up (RTM_NEWLINK with IFF_UP via libnl).
void bring_up_loopback();
// The interfaces (name, index, flags, addresses) and routes (every table)
// this namespace has, for the record: what the container sees at start.
json describe_namespace();
// A listening TCP socket / a bound UDP socket on an IPv4 address.
UniqueFd listen_tcp(const std::string& addr, uint16_t port, int backlog);
UniqueFd bind_udp(const std::string& addr, uint16_t port);

}  // namespace agentshim::net
