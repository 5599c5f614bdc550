// The entry LSM programs: turned off by the test hook, and — as root, in
// this process's own cgroup v2 — every operation of the cgroup's tasks is a
// record naming the directory and the entry, in order. Where the kernel
// refuses the programs (no BPF LSM, a host refusing trampoline programs),
// open() must say which step failed.
#include "sandbox/dirent_bpf.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

#include "common/util.h"
#include "tests/temp_dir.h"

using namespace agentshim;
using observer::DirentBpf;

TEST(DirentBpf, TurnedOffByTheEnvironmentItSaysWhy) {
  ::setenv("AGENTSHIM_DIRENT_BPF", "off", 1);
  std::string err;
  auto b = DirentBpf::open(1, err);
  ::unsetenv("AGENTSHIM_DIRENT_BPF");
  EXPECT_EQ(b, nullptr);
  EXPECT_EQ(err, "disabled (AGENTSHIM_DIRENT_BPF=off)");
}

namespace {
// This process's cgroup v2 directory on the host ("" when none).
std::string own_cgroup_v2() {
  auto s = try_read_file("/proc/self/cgroup");
  if (!s) return "";
  auto i = s->find("0::");
  if (i == std::string::npos) return "";
  std::string rel = s->substr(i + 3, s->find('\n', i) - (i + 3));
  for (const char* root : {"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}) {
    std::string d = std::string(root) + (rel == "/" ? "" : rel);
    if (::access((d + "/cgroup.procs").c_str(), R_OK) == 0) return d;
  }
  return "";
}
}  // namespace

TEST(DirentBpf, RecordsTheCgroupsOwnOperationsOrSaysWhyNot) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  const std::string cg = own_cgroup_v2();
  ASSERT_FALSE(cg.empty());
  std::string err;
  auto b = DirentBpf::open(observer::cgroup_v2_id(cg), err);
  if (!b) {
    // The fallback: the reason names the step the kernel refused (or that
    // it refused before, since boot).
    EXPECT_TRUE(err.rfind("bpf_object__load: ", 0) == 0 || err.rfind("bpf_program__attach_lsm ", 0) == 0 ||
                err.rfind("bpf_object__open_mem: ", 0) == 0 ||
                err.rfind("refused by this kernel earlier since boot (/run/agentshim.dirent-bpf-", 0) == 0)
        << err;
    // A refusal of the load is kept until reboot: the next supervisor
    // says so without trying (and without libbpf's 15-20 ms).
    if (err.find("bpf_object__load: ") != std::string::npos) {
      std::string again;
      EXPECT_EQ(DirentBpf::open(observer::cgroup_v2_id(cg), again), nullptr);
      EXPECT_EQ(again.rfind("refused by this kernel earlier since boot (/run/agentshim.dirent-bpf-", 0), 0u)
          << again;
      EXPECT_NE(again.find("bpf_object__load: "), std::string::npos) << again;
    }
    return;
  }
  testutil::TempDir dir{"dirent-bpf-test"};
  const std::string d = dir.path;
  ASSERT_EQ(::mkdir((d + "/sub").c_str(), 0755), 0);
  ASSERT_EQ(::rename((d + "/sub").c_str(), (d + "/sub2").c_str()), 0);
  ASSERT_EQ(::rmdir((d + "/sub2").c_str()), 0);
  int fd = ::open((d + "/f").c_str(), O_CREAT | O_RDONLY | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ::close(fd);
  ASSERT_EQ(::unlink((d + "/f").c_str()), 0);
  std::vector<std::tuple<DirentBpf::Op, std::string, bool>> got;
  b->drain(
      [&](const DirentBpf::Record& r) {
        if (std::string(r.path).rfind(d, 0) == 0)
          got.emplace_back(r.op, std::string(r.path) + "/" + std::string(r.name), r.dir);
      },
      1 << 20);
  using O = DirentBpf::Op;
  std::vector<std::tuple<O, std::string, bool>> want = {
      {O::created, d + "/sub", true},  {O::moved_from, d + "/sub", true}, {O::moved_to, d + "/sub2", true},
      {O::removed, d + "/sub2", true}, {O::created, d + "/f", false},     {O::removed, d + "/f", false}};
  EXPECT_EQ(got, want);
  EXPECT_EQ(b->lost(), 0u);
}
