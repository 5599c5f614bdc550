#include "sandbox/bpf_host.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/fd.h"
#include "common/util.h"

namespace agentshim::embedded {
extern const unsigned char exec_argv_bpf_obj[];
extern const std::size_t exec_argv_bpf_obj_size;
}  // namespace agentshim::embedded

using namespace agentshim;

namespace {

bpfhost::Spec test_spec() {
  bpfhost::Spec s;
  s.name = "bpfhost_test";  // its own directory, beside the observer's
  s.object = {embedded::exec_argv_bpf_obj, embedded::exec_argv_bpf_obj_size};
  s.maps = {"ring_owner", "stats", "expect"};
  s.slot_keyed = {"stats"};
  s.slot_valued = {"expect", "ring_owner"};
  return s;
}

std::vector<agentshim_bpf_slot> slots_in(const std::string& dir) {
  std::vector<agentshim_bpf_slot> out;
  UniqueFd fd(bpf_obj_get((dir + "/slots").c_str()));
  if (!fd) return out;
  agentshim_bpf_slot k{}, next{};
  const void* prev = nullptr;
  while (bpf_map_get_next_key(fd.get(), prev, &next) == 0) {
    out.push_back(next);
    k = next;
    prev = &k;
  }
  return out;
}

bool has(const std::vector<agentshim_bpf_slot>& v, const agentshim_bpf_slot& s) {
  for (const auto& x : v)
    if (std::memcmp(&x, &s, sizeof s) == 0) return true;
  return false;
}

}  // namespace

TEST(BpfHost, ASlotIsAliveWhileItsOwnerRuns) {
  agentshim_bpf_slot self{}, child{};
  std::string err;
  ASSERT_TRUE(bpfhost::slot_of(::getpid(), self, err)) << err;
  EXPECT_TRUE(bpfhost::slot_alive(self, self.pidns_inum));
  pid_t c = ::fork();
  if (c == 0) {
    ::pause();
    ::_exit(0);
  }
  ASSERT_TRUE(bpfhost::slot_of(c, child, err)) << err;
  EXPECT_TRUE(bpfhost::slot_alive(child, self.pidns_inum));
  ::kill(c, SIGKILL);
  ::waitpid(c, nullptr, 0);
  EXPECT_FALSE(bpfhost::slot_alive(child, self.pidns_inum));
  // Another start time: the pid reused by another process.
  agentshim_bpf_slot reused = self;
  reused.start++;
  EXPECT_FALSE(bpfhost::slot_alive(reused, self.pidns_inum));
  // Another pid namespace's owner cannot be seen from here: kept.
  child.pidns_inum++;
  EXPECT_TRUE(bpfhost::slot_alive(child, self.pidns_inum));
}

// The first holder loads and pins; the next opens the pins; a holder killed
// with SIGKILL leaves its slot, which the next open sweeps.
TEST(BpfHost, LoadsOnceAndSweepsAKilledHoldersSlot) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (bpffs, CAP_BPF)";
  std::string err;
  std::string dir;
  {
    auto h = bpfhost::Host::open(test_spec(), err);
    ASSERT_NE(h, nullptr) << err;
    ASSERT_TRUE(h->pin_error().empty()) << h->pin_error();
    dir = h->dir();
  }
  remove_tree(dir);  // no holder left: the next open loads
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd r(p[0]), w(p[1]);
  pid_t c = ::fork();
  if (c == 0) {
    std::string e;
    auto h = bpfhost::Host::open(test_spec(), e);
    char o = h ? h->obtained()[0] : '!';
    if (::write(w.get(), &o, 1) != 1) ::_exit(1);
    ::pause();
    ::_exit(0);
  }
  w.reset();
  char o = 0;
  ASSERT_EQ(::read(r.get(), &o, 1), 1);
  EXPECT_EQ(o, 'l');  // "loaded"
  agentshim_bpf_slot child{};
  ASSERT_TRUE(bpfhost::slot_of(c, child, err)) << err;
  EXPECT_TRUE(has(slots_in(dir), child));
  ::kill(c, SIGKILL);
  ::waitpid(c, nullptr, 0);
  EXPECT_TRUE(has(slots_in(dir), child));  // nobody left it
  {
    auto h = bpfhost::Host::open(test_spec(), err);
    ASSERT_NE(h, nullptr) << err;
    EXPECT_STREQ(h->obtained(), "pinned");
    auto s = slots_in(dir);
    EXPECT_FALSE(has(s, child));
    ASSERT_EQ(s.size(), 1u);
    EXPECT_TRUE(has(s, h->slot()));
  }
  EXPECT_TRUE(slots_in(dir).empty());  // left at the end
  remove_tree(dir);
}
