#include "netpolicy/netns.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/route.h>
#include <sched.h>
#include <sys/socket.h>

#include <exception>
#include <memory>
#include <thread>

#include "common/error.h"

namespace agentshim::net {

void in_netns(int nsfd, const std::function<void()>& fn) {
  std::exception_ptr err;
  std::thread t([&] {
    try {
      if (::setns(nsfd, CLONE_NEWNET) < 0) throw_errno("setns into the container's network namespace");
      fn();
    } catch (...) {
      err = std::current_exception();
    }
  });
  t.join();
  if (err) std::rethrow_exception(err);
}

namespace {

struct SockDel {
  void operator()(nl_sock* s) const { nl_socket_free(s); }
};
struct CacheDel {
  void operator()(nl_cache* c) const { nl_cache_free(c); }
};
struct LinkDel {
  void operator()(rtnl_link* l) const { rtnl_link_put(l); }
};
using Sock = std::unique_ptr<nl_sock, SockDel>;
using Cache = std::unique_ptr<nl_cache, CacheDel>;
using Link = std::unique_ptr<rtnl_link, LinkDel>;

Sock route_socket() {
  Sock s(nl_socket_alloc());
  if (!s) throw Error("netlink: cannot allocate a socket");
  if (int r = nl_connect(s.get(), NETLINK_ROUTE); r < 0)
    throw Error(std::string("netlink: connect NETLINK_ROUTE: ") + nl_geterror(r));
  return s;
}

std::string addr_str(nl_addr* a) {
  if (!a) return "";
  char buf[128];
  return nl_addr2str(a, buf, sizeof buf);
}

}  // namespace

void bring_up_loopback() {
  Sock s = route_socket();
  rtnl_link* raw = nullptr;
  if (int r = rtnl_link_get_kernel(s.get(), 0, "lo", &raw); r < 0)
    throw Error(std::string("netlink: get link lo: ") + nl_geterror(r));
  Link lo(raw);
  Link change(rtnl_link_alloc());
  if (!change) throw Error("netlink: cannot allocate a link");
  rtnl_link_set_flags(change.get(), IFF_UP);
  if (int r = rtnl_link_change(s.get(), lo.get(), change.get(), 0); r < 0)
    throw Error(std::string("netlink: set lo up: ") + nl_geterror(r));
}

json describe_namespace() {
  Sock s = route_socket();
  json links = json::array();
  nl_cache* raw = nullptr;
  if (int r = rtnl_link_alloc_cache(s.get(), AF_UNSPEC, &raw); r < 0)
    throw Error(std::string("netlink: list links: ") + nl_geterror(r));
  Cache lc(raw);
  raw = nullptr;
  if (int r = rtnl_addr_alloc_cache(s.get(), &raw); r < 0)
    throw Error(std::string("netlink: list addresses: ") + nl_geterror(r));
  Cache ac(raw);
  for (nl_object* o = nl_cache_get_first(lc.get()); o; o = nl_cache_get_next(o)) {
    auto* l = reinterpret_cast<rtnl_link*>(o);
    int idx = rtnl_link_get_ifindex(l);
    json addrs = json::array();
    for (nl_object* ao = nl_cache_get_first(ac.get()); ao; ao = nl_cache_get_next(ao)) {
      auto* a = reinterpret_cast<rtnl_addr*>(ao);
      if (rtnl_addr_get_ifindex(a) == idx) addrs.push_back(addr_str(rtnl_addr_get_local(a)));
    }
    const char* name = rtnl_link_get_name(l);
    unsigned flags = rtnl_link_get_flags(l);
    links.push_back({{"name", name ? name : ""},
                     {"index", idx},
                     {"up", (flags & IFF_UP) ? "yes" : "no"},
                     {"addresses", addrs}});
  }
  raw = nullptr;
  if (int r = rtnl_route_alloc_cache(s.get(), AF_UNSPEC, ROUTE_CACHE_CONTENT, &raw); r < 0)
    throw Error(std::string("netlink: list routes: ") + nl_geterror(r));
  Cache rc(raw);
  json routes = json::array();
  for (nl_object* o = nl_cache_get_first(rc.get()); o; o = nl_cache_get_next(o)) {
    auto* r = reinterpret_cast<rtnl_route*>(o);
    json hops = json::array();
    int n = rtnl_route_get_nnexthops(r);
    for (int i = 0; i < n; ++i) {
      rtnl_nexthop* nh = rtnl_route_nexthop_n(r, i);
      char ifn[IF_NAMESIZE + 1] = {};
      int ifindex = rtnl_route_nh_get_ifindex(nh);
      std::string dev;
      if (rtnl_link* l = rtnl_link_get(lc.get(), ifindex)) {
        if (const char* nm = rtnl_link_get_name(l)) dev = nm;
        rtnl_link_put(l);
      }
      (void)ifn;
      hops.push_back({{"dev", dev}, {"gateway", addr_str(rtnl_route_nh_get_gateway(nh))}});
    }
    routes.push_back({{"table", static_cast<int64_t>(rtnl_route_get_table(r))},
                      {"dst", addr_str(rtnl_route_get_dst(r))},
                      {"nexthops", hops}});
  }
  return {{"interfaces", links}, {"routes", routes}};
}

namespace {
sockaddr_in v4(const std::string& addr, uint16_t port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  if (::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr) != 1) throw Error("not an IPv4 address: " + addr);
  return sa;
}
}  // namespace

UniqueFd listen_tcp(const std::string& addr, uint16_t port, int backlog) {
  auto sa = v4(addr, port);
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) throw_errno("socket (tcp " + addr + ")");
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  std::string where = addr + ":" + std::to_string(port);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) throw_errno("bind tcp " + where);
  if (::listen(fd.get(), backlog) < 0) throw_errno("listen tcp " + where);
  return fd;
}

UniqueFd bind_udp(const std::string& addr, uint16_t port) {
  auto sa = v4(addr, port);
  UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) throw_errno("socket (udp " + addr + ")");
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0)
    throw_errno("bind udp " + addr + ":" + std::to_string(port));
  return fd;
}

}  // namespace agentshim::net
