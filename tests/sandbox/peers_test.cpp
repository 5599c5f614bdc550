// peers: the host-wide index of sentinels, believed only when the state
// agrees and both processes are the recorded ones; namespace paths that
// name a sentinel resolve to the init's.
#include "sandbox/peers.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <vector>

#include "common/util.h"
#include "sandbox/state.h"
#include "tests/temp_dir.h"

using namespace agentshim;

namespace {

struct Fixture {
  testutil::TempDir pids{"peers-pids"};
  testutil::TempDir root{"peers-root"};
  Fixture() { ::setenv("AGENTSHIM_PIDS_DIR", pids.path.c_str(), 1); }
  ~Fixture() { ::unsetenv("AGENTSHIM_PIDS_DIR"); }

  // A container whose "sentinel" is this test process and whose "init" is
  // our parent (both alive, in the same namespaces as each other).
  state::ContainerState make(const std::string& id, pid_t sentinel, pid_t init) {
    mkdir_p(state::container_dir(root.path, id), 0700);
    state::ContainerState st;
    st.id = id;
    st.sentinel_pid = sentinel;
    st.sentinel_start = state::process_start_time(sentinel);
    st.init_pid = init;
    st.init_start = state::process_start_time(init);
    state::save(root.path, st);
    write_file(state::container_dir(root.path, id) + "/policy.json",
               R"({"policy":{"network":{"mode":"internal"}}})");
    return st;
  }
};

}  // namespace

TEST(Peers, IndexedSentinelIsFoundAndForgotten) {
  Fixture f;
  auto st = f.make("c1", ::getpid(), ::getppid());
  EXPECT_FALSE(peers::by_sentinel(::getpid()));  // not indexed yet
  peers::record(::getpid(), f.root.path, "c1");
  auto p = peers::by_sentinel(::getpid());
  ASSERT_TRUE(p);
  EXPECT_EQ(p->id, "c1");
  EXPECT_EQ(p->root, f.root.path);
  EXPECT_EQ(p->init_pid, ::getppid());
  EXPECT_EQ(p->network_mode, "internal");
  // forget() of another container leaves the entry; of this one removes it.
  peers::forget(::getpid(), f.root.path, "other");
  EXPECT_TRUE(peers::by_sentinel(::getpid()));
  peers::forget(::getpid(), f.root.path, "c1");
  EXPECT_FALSE(peers::by_sentinel(::getpid()));
}

TEST(Peers, StaleOrForgedEntriesAreNotBelieved) {
  Fixture f;
  // The state names another sentinel pid than the entry's.
  f.make("c1", ::getppid(), ::getppid());
  peers::record(::getpid(), f.root.path, "c1");
  EXPECT_FALSE(peers::by_sentinel(::getpid()));
  // A recycled pid: the recorded start time differs.
  auto st = f.make("c2", ::getpid(), ::getppid());
  st.sentinel_start += 1;
  state::save(f.root.path, st);
  peers::record(::getpid(), f.root.path, "c2");
  EXPECT_FALSE(peers::by_sentinel(::getpid()));
  // The init is gone.
  pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  auto st3 = f.make("c3", ::getpid(), child);
  ::waitpid(child, nullptr, 0);
  peers::record(::getpid(), f.root.path, "c3");
  EXPECT_FALSE(peers::by_sentinel(::getpid()));
  // No entry at all, a pid that is not a number, a deleted state.
  EXPECT_FALSE(peers::by_sentinel(1));
  EXPECT_FALSE(peers::by_sentinel(0));
  auto st4 = f.make("c4", ::getpid(), ::getppid());
  peers::record(::getpid(), f.root.path, "c4");
  ASSERT_TRUE(peers::by_sentinel(::getpid()));
  remove_tree(state::container_dir(f.root.path, "c4"));
  EXPECT_FALSE(peers::by_sentinel(::getpid()));
}

TEST(Peers, NamespacePathsOfASentinelResolveToTheInit) {
  Fixture f;
  f.make("c1", ::getpid(), ::getppid());
  peers::record(::getpid(), f.root.path, "c1");
  std::string me = std::to_string(::getpid()), parent = std::to_string(::getppid());
  for (const char* n : {"net", "ipc", "uts", "pid", "mnt"}) {
    auto t = peers::resolve_namespace_path("/proc/" + me + "/ns/" + n, n);
    ASSERT_TRUE(t) << n;
    EXPECT_EQ(t->path, "/proc/" + parent + "/ns/" + n);
    EXPECT_EQ(t->peer.id, "c1");
  }
  // Only the exact /proc/<pid>/ns/<type> spelling, and only of its type.
  for (const std::string& p : std::vector<std::string>{
           "/proc/" + me + "/ns/net/", "/proc/" + me + "/../" + me + "/ns/net", "/proc/+" + me + "/ns/net",
           "/proc/" + me + "/task/" + me + "/ns/net", "/proc/self/ns/net", "/run/netns/x", "/proc//ns/net"})
    EXPECT_FALSE(peers::resolve_namespace_path(p, "net")) << p;
  EXPECT_FALSE(peers::resolve_namespace_path("/proc/" + me + "/ns/ipc", "net"));
}
