// The outbound confinement as create installs it: the rules stay after the
// nftables socket that installed them is closed (on a thread of its own),
// and that socket (which libnftables does not open close-on-exec) is gone
// from the descriptor table once the Installed handle is destroyed.
#include "netpolicy/firewall.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/netlink.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "common/fd.h"

using namespace agentshim;

namespace {

// A network namespace of its own, held by a child that sleeps in it.
struct NetNs {
  pid_t pid = -1;
  UniqueFd fd;
  NetNs() {
    int p[2];
    if (::pipe(p) < 0) return;
    pid = ::fork();
    if (pid == 0) {
      char c = ::unshare(CLONE_NEWNET) == 0 ? 'y' : 'n';
      (void)!::write(p[1], &c, 1);
      ::pause();
      ::_exit(0);
    }
    ::close(p[1]);
    char c = 0;
    if (::read(p[0], &c, 1) == 1 && c == 'y')
      fd = UniqueFd(::open(("/proc/" + std::to_string(pid) + "/ns/net").c_str(), O_RDONLY | O_CLOEXEC));
    ::close(p[0]);
  }
  ~NetNs() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
};

// Netlink sockets of the netfilter family in this process's table.
int netfilter_sockets() {
  int n = 0;
  for (const auto& d : std::filesystem::directory_iterator("/proc/self/fd")) {
    int fd = std::stoi(d.path().filename().string());
    int domain = 0, proto = 0;
    socklen_t l = sizeof domain;
    if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &l) != 0 || domain != AF_NETLINK) continue;
    l = sizeof proto;
    if (::getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l) == 0 && proto == NETLINK_NETFILTER) n++;
  }
  return n;
}

}  // namespace

TEST(Firewall, TheRulesStayAndTheSocketThatInstalledThemIsClosed) {
  if (::geteuid() != 0) GTEST_SKIP() << "a network namespace and nftables need root";
  NetNs ns;
  ASSERT_TRUE(ns.fd) << "could not make a network namespace";
  const int before = netfilter_sockets();
  {
    net::Installed installed = net::confine(ns.fd.get());
    net::Installed moved = std::move(installed);  // (a handle moves with its thread)
  }
  // Joined: the socket was closed, none of ours is left behind.
  EXPECT_EQ(netfilter_sockets(), before);
  const std::string rules = net::list_ruleset(ns.fd.get());
  EXPECT_NE(rules.find("table inet agentshim"), std::string::npos) << rules;
  EXPECT_NE(rules.find("policy drop"), std::string::npos) << rules;
  // Installing again replaces the table (one transaction), never adds one.
  { auto again = net::confine(ns.fd.get()); }
  const std::string twice = net::list_ruleset(ns.fd.get());
  EXPECT_EQ(twice.find("table inet agentshim"), twice.rfind("table inet agentshim")) << twice;
  EXPECT_EQ(netfilter_sockets(), before);
}

TEST(Firewall, TheRuntimesOwnNamespaceIsRefused) {
  UniqueFd own(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(own);
  EXPECT_THROW((void)net::confine(own.get()), std::exception);
}
