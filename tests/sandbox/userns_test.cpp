// Tests for sandbox/userns: the id pool from /etc/subuid and /etc/subgid,
// slot allocation (distinct, reused when the owner is gone, exhaustion),
// the idmapped rootfs copy (a real user namespace, a real idmapped mount)
// and the stdio hand-over.
#include "sandbox/userns.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/mount.h>

#include "common/error.h"
#include "common/util.h"
#include "tests/temp_dir.h"

using namespace agentshim;

namespace {

struct TempDir : testutil::TempDir {
  TempDir() : testutil::TempDir("agentshim-usernstest") {}
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(UsernsPool, BuiltInWithoutSubidEntries) {
  TempDir etc;
  write_file(etc.path + "/subuid", "alice:100000:65536\n");
  write_file(etc.path + "/subgid", "alice:100000:65536\n");
  auto p = userns::pool(etc.path);
  EXPECT_EQ(p.source, "built-in");
  EXPECT_EQ(p.uid_first, 1ULL << 30);
  EXPECT_GE(p.count / userns::kSlotSize, 1000u);
}

TEST(UsernsPool, FromSubidFiles) {
  TempDir etc;
  write_file(etc.path + "/subuid", "# c\nalice:100000:65536\nagentshim:2000000:655360\n");
  write_file(etc.path + "/subgid", "agentshim:3000000:131072\n");
  auto p = userns::pool(etc.path);
  EXPECT_EQ(p.uid_first, 2000000u);
  EXPECT_EQ(p.gid_first, 3000000u);
  EXPECT_EQ(p.count, 131072u);  // the smaller of the two
  EXPECT_NE(p.source.find("subuid"), std::string::npos);
}

TEST(UsernsPool, BadEntriesAreErrorsThatNameTheFile) {
  TempDir etc;
  write_file(etc.path + "/subuid", "agentshim:2000000:655360\n");
  write_file(etc.path + "/subgid", "alice:1:2\n");
  auto m = error_of([&] { userns::pool(etc.path); });
  EXPECT_NE(m.find("subgid has none"), std::string::npos) << m;
  write_file(etc.path + "/subgid", "agentshim:x:655360\n");
  m = error_of([&] { userns::pool(etc.path); });
  EXPECT_NE(m.find(etc.path + "/subgid:1"), std::string::npos) << m;
  write_file(etc.path + "/subgid", "agentshim:0:655360\n");
  m = error_of([&] { userns::pool(etc.path); });
  EXPECT_NE(m.find("host root"), std::string::npos) << m;
  write_file(etc.path + "/subgid", "agentshim:5000000:1000\n");
  m = error_of([&] { userns::pool(etc.path); });
  EXPECT_NE(m.find("holds 1000 ids"), std::string::npos) << m;
}

TEST(UsernsAllocate, DistinctSlotsReuseAndExhaustion) {
  TempDir t;
  std::string dir = t.path + "/alloc";
  std::string a = t.path + "/a", b = t.path + "/b", c = t.path + "/c";
  for (const auto& d : {a, b, c}) mkdir_p(d, 0700);
  userns::Pool p;
  p.uid_first = 1000000;
  p.gid_first = 2000000;
  p.count = 2 * userns::kSlotSize;
  auto ra = userns::allocate(a, p, dir);
  auto rb = userns::allocate(b, p, dir);
  EXPECT_EQ(ra.uid, 1000000u);
  EXPECT_EQ(ra.gid, 2000000u);
  EXPECT_EQ(rb.uid, 1000000u + userns::kSlotSize);
  EXPECT_EQ(rb.gid, 2000000u + userns::kSlotSize);
  // Pool full.
  auto m = error_of([&] { userns::allocate(c, p, dir); });
  EXPECT_NE(m.find("in use"), std::string::npos) << m;
  // Released: reused.
  userns::release(a, dir);
  auto rc = userns::allocate(c, p, dir);
  EXPECT_EQ(rc.uid, ra.uid);
  // An owner whose directory is gone (a crashed create) frees its slot.
  remove_tree(b);
  auto ra2 = userns::allocate(a, p, dir);
  EXPECT_EQ(ra2.uid, rb.uid);
  userns::release(t.path + "/never", dir);  // harmless
}

TEST(UsernsIdmap, RootfsFilesShowAsTheContainersRootAndWritesLandAsHostRoot) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (idmapped mounts need CAP_SYS_ADMIN in the initial namespace)";
  TempDir t;
  std::string root = t.path + "/rootfs";
  mkdir_p(root + "/etc", 0755);
  write_file(root + "/etc/owned-by-root", "x");
  ASSERT_EQ(::chown((root + "/etc/owned-by-root").c_str(), 0, 0), 0);
  ASSERT_EQ(::chmod(root.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(t.path.c_str(), 0755), 0);
  const unsigned base = 1u << 30;

  int sp[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(sp[0]);
    char b = 0;
    if (::unshare(CLONE_NEWUSER) < 0) ::_exit(20);
    if (::write(sp[1], "u", 1) != 1 || ::read(sp[1], &b, 1) != 1) ::_exit(21);
    if (::setresgid(0, 0, 0) < 0 || ::setresuid(0, 0, 0) < 0) ::_exit(22);
    if (::unshare(CLONE_NEWNS) < 0) ::_exit(23);
    if (::mount(nullptr, "/", nullptr, MS_SLAVE | MS_REC, nullptr) < 0) ::_exit(24);
    if (::write(sp[1], "m", 1) != 1) ::_exit(25);
    std::vector<UniqueFd> fds;
    try {
      recv_fds(sp[1], fds);
    } catch (...) {
      ::_exit(26);
    }
    if (fds.size() != 1) ::_exit(27);
    if (::syscall(SYS_move_mount, fds[0].get(), "", AT_FDCWD, root.c_str(), MOVE_MOUNT_F_EMPTY_PATH) < 0) ::_exit(28);
    struct stat st {};
    if (::stat((root + "/etc/owned-by-root").c_str(), &st) < 0) ::_exit(29);
    if (st.st_uid != 0 || st.st_gid != 0) ::_exit(30);  // host root's file shows as our root
    int f = ::open((root + "/etc/written").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (f < 0) ::_exit(31);
    ::close(f);
    ::_exit(0);
  }
  ::close(sp[1]);
  char b = 0;
  ASSERT_EQ(::read(sp[0], &b, 1), 1);
  std::string m = "0 " + std::to_string(base) + " 65536\n";
  write_file("/proc/" + std::to_string(pid) + "/uid_map", m);
  write_file("/proc/" + std::to_string(pid) + "/gid_map", m);
  ASSERT_EQ(::write(sp[0], "k", 1), 1);
  ASSERT_EQ(::read(sp[0], &b, 1), 1);
  {
    auto tree = userns::idmapped_tree(root, pid);
    int fd = tree.get();
    send_fds(sp[0], "t", &fd, 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ::close(sp[0]);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  // What the container's root wrote is host root's on disk.
  struct stat st {};
  ASSERT_EQ(::stat((root + "/etc/written").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(st.st_gid, 0u);
  // The host's view of the rootfs is not idmapped (the copy lived in the child's namespace).
  EXPECT_EQ(::stat((root + "/etc/owned-by-root").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
}

TEST(UsernsIdmap, ErrorsNameThePath) {
  auto m = error_of([] { userns::idmapped_tree("/nonexistent/agentshim-rootfs", ::getpid()); });
  EXPECT_NE(m.find("/nonexistent/agentshim-rootfs"), std::string::npos) << m;
}

TEST(UsernsStdio, PipesAreHandedToTheContainersRoot) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (fchown to another uid)";
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(p[0], 0);
    int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, 1);
    ::dup2(p[1], 2);
    try {
      userns::chown_stdio(1u << 30, (1u << 30) + 5);
    } catch (...) {
      ::_exit(10);
    }
    struct stat st {};
    if (::fstat(0, &st) < 0 || st.st_uid != (1u << 30) || st.st_gid != (1u << 30) + 5) ::_exit(11);
    if (::fstat(1, &st) < 0 || st.st_uid != 0) ::_exit(12);  // /dev/null untouched
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  struct stat st {};
  ASSERT_EQ(::stat("/dev/null", &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
  ::close(p[0]);
  ::close(p[1]);
}
