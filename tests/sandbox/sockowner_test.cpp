// sockowner: the process behind an accepted TCP connection, found the way
// the proxy will find it (sock_diag by the connection's ports, then the
// fd tables), with a real connection from another process.
#include "sandbox/sockowner.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>

using namespace agentshim;

namespace {
struct Conn {
  UniqueFd listener, accepted;
  pid_t child = -1;
  int release = -1;  // write end: the child exits when it is closed
  sockowner::Tcp4 tuple;
};

// A child process connects to a listener of ours and holds its socket
// until `release` is closed.
Conn connect_from_child() {
  Conn c;
  c.listener = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(c.listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  EXPECT_EQ(::listen(c.listener.get(), 4), 0);
  socklen_t len = sizeof a;
  ::getsockname(c.listener.get(), reinterpret_cast<sockaddr*>(&a), &len);
  int p[2];
  EXPECT_EQ(::pipe2(p, O_CLOEXEC), 0);
  c.child = ::fork();
  if (c.child == 0) {
    ::close(p[1]);
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) ::_exit(1);
    char b;
    (void)!::read(p[0], &b, 1);
    ::_exit(0);
  }
  ::close(p[0]);
  c.release = p[1];
  sockaddr_in peer{};
  len = sizeof peer;
  c.accepted = UniqueFd(::accept4(c.listener.get(), reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC));
  c.tuple.src = peer.sin_addr;
  c.tuple.sport = ntohs(peer.sin_port);
  c.tuple.dst = a.sin_addr;
  c.tuple.dport = ntohs(a.sin_port);
  return c;
}

void finish(Conn& c) {
  ::close(c.release);
  ::waitpid(c.child, nullptr, 0);
}
}  // namespace

TEST(SockOwner, TheClientProcessOfAnAcceptedConnectionIsFound) {
  Conn c = connect_from_child();
  ASSERT_TRUE(c.accepted);
  UniqueFd diag = sockowner::open_diag();
  auto f = sockowner::lookup_tcp4(diag.get(), c.tuple);
  ASSERT_TRUE(f.has_value());
  EXPECT_NE(f->inode, 0u);
  EXPECT_EQ(f->uid, ::getuid());
  EXPECT_EQ(sockowner::holder_of(f->inode, {::getpid(), c.child}), c.child);
  // Without a narrower list: every process of this network namespace.
  struct stat st {};
  ASSERT_EQ(::stat("/proc/self/ns/net", &st), 0);
  auto pids = sockowner::pids_in_netns(st.st_ino);
  EXPECT_NE(std::find(pids.begin(), pids.end(), c.child), pids.end());
  EXPECT_EQ(sockowner::holder_of(f->inode, pids), c.child);
  finish(c);
}

TEST(SockOwner, AConnectionNobodyHoldsAnyMoreIsUnknownNotAnError) {
  Conn c = connect_from_child();
  ASSERT_TRUE(c.accepted);
  finish(c);  // the child exited: its socket is closed (FIN_WAIT/TIME_WAIT or gone)
  UniqueFd diag = sockowner::open_diag();
  auto f = sockowner::lookup_tcp4(diag.get(), c.tuple);
  if (f) {
    EXPECT_EQ(sockowner::holder_of(f->inode, {c.child, ::getpid()}), 0);
  }
  // A port nobody uses.
  sockowner::Tcp4 none = c.tuple;
  none.sport = 1;
  EXPECT_FALSE(sockowner::lookup_tcp4(diag.get(), none).has_value());
}

// Every holder is named: a socket shared with a second process (as one passed
// over SCM_RIGHTS would be) names both.
TEST(SockOwner, EveryHolderIsNamed) {
  Conn c = connect_from_child();
  ASSERT_TRUE(c.accepted);
  UniqueFd diag = sockowner::open_diag();
  auto f = sockowner::lookup_tcp4(diag.get(), c.tuple);
  ASSERT_TRUE(f.has_value());
  // The child's socket is not ours: only the child holds it.
  bool cut = true;
  auto h = sockowner::holders_of(f->inode, {::getpid(), c.child}, &cut);
  EXPECT_FALSE(cut);
  EXPECT_EQ(h, std::vector<pid_t>{c.child});
  finish(c);
}

// The proxy's question, through the accepted descriptor: the child is named;
// it is in no agentshim container, so no container is.
TEST(SockOwner, AttributorNamesTheProcessBehindAnAcceptedDescriptor) {
  struct stat st {};
  ASSERT_EQ(::stat("/proc/self/ns/net", &st), 0);
  sockowner::Attributor attr(st.st_ino);
  Conn c = connect_from_child();
  ASSERT_TRUE(c.accepted);
  auto hs = attr.holders(c.accepted.get());
  ASSERT_EQ(hs.size(), 1u);
  EXPECT_EQ(hs[0].pid, c.child);
  EXPECT_EQ(hs[0].id, "");
  finish(c);  // (before the next fork: a child would inherit c's release pipe)
  // A second connection from a new process: the candidate list of a moment
  // ago does not hold it and is made anew.
  Conn d = connect_from_child();
  auto hs2 = attr.holders(d.accepted.get());
  ASSERT_EQ(hs2.size(), 1u);
  EXPECT_EQ(hs2[0].pid, d.child);
  finish(d);
  // Not a TCP/IPv4 connection: unknown, not an error.
  int sp[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
  EXPECT_TRUE(attr.holders(sp[0]).empty());
  ::close(sp[0]);
  ::close(sp[1]);
}
