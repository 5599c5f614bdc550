#include "sandbox/exec_argv_bpf.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "common/fd.h"

using namespace agentshim;
using json = nlohmann::json;

TEST(ExecArgv, ParsesTheArgumentAreaWithinTheLimits) {
  json argv;
  bool trunc = true;
  EXPECT_FALSE(observer::parse_argv_area("", argv, trunc));
  // NUL-terminated strings; an empty argument is a lone NUL; bytes outside
  // printable ASCII are pct-encoded.
  ASSERT_TRUE(observer::parse_argv_area(std::string_view("ls\0a b\0\0%\0", 10), argv, trunc));
  EXPECT_EQ(argv, json({"ls", "a%20b", "", "%25"}));
  EXPECT_FALSE(trunc);
  // At most 256 arguments.
  std::string many;
  for (int i = 0; i < 300; i++) many += "x" + std::string(1, '\0');
  ASSERT_TRUE(observer::parse_argv_area(many, argv, trunc));
  EXPECT_EQ(argv.size(), 256u);
  EXPECT_TRUE(trunc);
  // An argument is cut at 4096 bytes, and nothing follows it.
  std::string longarg = "a" + std::string(1, '\0') + std::string(5000, 'b') + std::string(1, '\0') + "c";
  ASSERT_TRUE(observer::parse_argv_area(longarg, argv, trunc));
  ASSERT_EQ(argv.size(), 2u);
  EXPECT_EQ(argv[1].get<std::string>(), std::string(4096, 'b'));
  EXPECT_TRUE(trunc);
  // 64 KiB in all.
  std::string big;
  for (int i = 0; i < 20; i++) big += std::string(4000, 'z') + std::string(1, '\0');
  ASSERT_TRUE(observer::parse_argv_area(big, argv, trunc));
  ASSERT_EQ(argv.size(), 17u);
  EXPECT_EQ(argv[16].get<std::string>().size(), 64u * 1024 - 16 * 4000);
  EXPECT_TRUE(trunc);
}

TEST(ExecArgvBpf, TurnedOffByTheEnvironmentItSaysWhy) {
  ::setenv("AGENTSHIM_EXEC_ARGV_BPF", "off", 1);
  std::string err;
  auto b = observer::ExecArgvBpf::open(err);
  ::unsetenv("AGENTSHIM_EXEC_ARGV_BPF");
  EXPECT_EQ(b, nullptr);
  EXPECT_EQ(err, "disabled (AGENTSHIM_EXEC_ARGV_BPF=off)");
}

namespace {

// A child that waits for a byte on `go`, then has `av` executed (by its
// main thread, or by a second thread when `by_thread`).
struct Exec {
  const char* path;
  std::vector<const char*> av;
};

void* exec_it(void* p) {
  auto* e = static_cast<Exec*>(p);
  std::vector<char*> av;
  for (const char* a : e->av) av.push_back(const_cast<char*>(a));
  av.push_back(nullptr);
  ::execv(e->path, av.data());
  ::_exit(127);
}

pid_t spawn_waiting(int go, Exec& e, bool by_thread) {
  pid_t c = ::fork();
  if (c != 0) return c;
  char b;
  if (::read(go, &b, 1) != 1) ::_exit(126);
  if (!by_thread) exec_it(&e);
  pthread_t t;
  if (::pthread_create(&t, nullptr, exec_it, &e) != 0) ::_exit(125);
  ::pause();
  ::_exit(124);
}

int wait_exit(pid_t pid) {
  int st = 0;
  if (::waitpid(pid, &st, 0) != pid) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

}  // namespace

// Programs that exit at once (busybox, static: `true`), executed by the main
// thread and by another thread: each announced exec is copied once, with
// its tgid and sequence number; an unannounced one is not.
TEST(ExecArgvBpf, CopiesTheArgvOfProgramsThatExitAtOnce) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (CAP_BPF, CAP_PERFMON)";
  std::string err;
  auto b = observer::ExecArgvBpf::open(err);
  ASSERT_NE(b, nullptr) << err;
  const uint64_t sent0 = b->sent();
  struct Want {
    pid_t pid;
    uint64_t seq;
    std::string area;
  };
  std::vector<Want> want;
  Exec plain{"/bin/busybox", {"true", "a b", "", "plain"}};
  Exec threaded{"/bin/busybox", {"true", "threaded"}};
  Exec quiet{"/bin/busybox", {"true", "not announced"}};
  uint64_t seq = 40;
  for (auto [e, by_thread, announce] : {std::tuple{&plain, false, true}, std::tuple{&threaded, true, true},
                                        std::tuple{&quiet, false, false}}) {
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    UniqueFd r(p[0]), w(p[1]);
    pid_t c = spawn_waiting(r.get(), *e, by_thread);
    ASSERT_GT(c, 0);
    if (announce) {
      ASSERT_TRUE(b->expect(c, ++seq));
      std::string area;
      for (const char* a : e->av) area += std::string(a) + std::string(1, '\0');
      want.push_back({c, seq, area});
    }
    ASSERT_EQ(::write(w.get(), "g", 1), 1);
    EXPECT_EQ(wait_exit(c), 0);
  }
  std::vector<Want> got;
  b->drain([&](const observer::ExecArgvBpf::Record& r) {
    EXPECT_FALSE(r.truncated);
    EXPECT_FALSE(r.fault);
    got.push_back({r.tgid, r.seq, std::string(r.area)});
  });
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); i++) {
    EXPECT_EQ(got[i].pid, want[i].pid);
    EXPECT_EQ(got[i].seq, want[i].seq);
    EXPECT_EQ(got[i].area, want[i].area);
  }
  EXPECT_EQ(b->sent() - sent0, 2u);
  EXPECT_EQ(b->lost(), 0u);
}

// An announcement left by a supervisor that is gone (killed before the
// sweep), naming a ring buffer that another supervisor holds now: the
// program drops it; the holder gets nothing.
TEST(ExecArgvBpf, AStaleAnnouncementReachesNoOtherSupervisorsRing) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (CAP_BPF, CAP_PERFMON)";
  std::string err;
  auto b = observer::ExecArgvBpf::open(err);
  ASSERT_NE(b, nullptr) << err;
  ASSERT_STRNE(b->obtained(), "private");
  agentshim_bpf_slot self{};
  ASSERT_TRUE(bpfhost::slot_of(::getpid(), self, err)) << err;
  // The pins holding this process's slot, and its ring buffer's index.
  std::string dir;
  for (const auto& e : std::filesystem::directory_iterator("/sys/fs/bpf/agentshim")) {
    UniqueFd owners(bpf_obj_get((e.path().string() + "/ring_owner").c_str()));
    uint32_t k = 0, next = 0;
    const void* prev = nullptr;
    agentshim_bpf_slot v{};
    while (owners && bpf_map_get_next_key(owners.get(), prev, &next) == 0) {
      if (bpf_map_lookup_elem(owners.get(), &next, &v) == 0 && std::memcmp(&v, &self, sizeof v) == 0)
        dir = e.path().string() + ":" + std::to_string(next);
      k = next;
      prev = &k;
    }
  }
  auto colon = dir.rfind(':');
  ASSERT_NE(colon, std::string::npos) << "no ring buffer held by this process";
  const uint32_t ring = static_cast<uint32_t>(std::stoul(dir.substr(colon + 1)));
  UniqueFd expect(bpf_obj_get((dir.substr(0, colon) + "/expect").c_str()));
  ASSERT_TRUE(expect);
  const uint64_t sent0 = b->sent();
  Exec e{"/bin/busybox", {"true", "stale"}};
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  UniqueFd r(p[0]), w(p[1]);
  pid_t c = spawn_waiting(r.get(), e, false);
  ASSERT_GT(c, 0);
  agentshim_argv_key key{self.pidns_inum, static_cast<uint32_t>(c)};
  agentshim_argv_expect stale{};
  stale.slot = self;
  stale.slot.start++;  // an earlier holder of this pid: not this process
  stale.ring = ring;
  stale.seq = 7;
  ASSERT_EQ(bpf_map_update_elem(expect.get(), &key, &stale, BPF_ANY), 0);
  ASSERT_EQ(::write(w.get(), "g", 1), 1);
  EXPECT_EQ(wait_exit(c), 0);
  int got = 0;
  b->drain([&](const observer::ExecArgvBpf::Record&) { got++; });
  EXPECT_EQ(got, 0);
  EXPECT_EQ(b->sent(), sent0);
  // Taken by the exec all the same (one record per announcement, none sent).
  agentshim_argv_expect left{};
  EXPECT_NE(bpf_map_lookup_elem(expect.get(), &key, &left), 0);
}
