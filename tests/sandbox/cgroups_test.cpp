// Tests for sandbox/cgroups: layout detection from mountinfo text, the
// systemd path form, path resolution, the v1 and v2 managers over fake
// cgroup trees in a temporary directory, the default device rules, the
// device BPF program (through its interpreter), and one real-kernel test of
// an attached device program (root + cgroup2 only).
#include "sandbox/cgroups/cgroups.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/bpf.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "common/error.h"
#include "common/util.h"
#include "sandbox/oci.h"
#include "tests/temp_dir.h"

using namespace agentshim;
using namespace agentshim::cgroups;
using json = nlohmann::json;

namespace {

// ---------------------------------------------------------------- helpers

struct TempDir : testutil::TempDir {
  TempDir() : testutil::TempDir("agentshim-cgtest") {}
};

bool is_dir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool exists(const std::string& p) {
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0;
}

// linux.resources as the config gives it (oci::parse_resources).
oci::Resources parsed(const json& j) {
  return oci::parse_resources(j, "linux.resources");
}

// Create (or truncate) a file with the given content.
void put(const std::string& path, const std::string& content = "") {
  write_file(path, content);
}

std::string contents(const std::string& path) {
  return read_file(path);
}

void mkdirs(const std::string& path) {
  mkdir_p(path);
}

// Remove every regular file below `dir` (fake cgroup directories only hold
// regular files, and rmdir refuses a directory that still has them).
void remove_files(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> subdirs, files;
  while (auto* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    std::string p = dir + "/" + n;
    if (is_dir(p))
      subdirs.push_back(p);
    else
      files.push_back(p);
  }
  ::closedir(d);
  for (const auto& f : files) ::unlink(f.c_str());
  for (const auto& s : subdirs) remove_files(s);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

std::string mountinfo_line(int id, const std::string& root, const std::string& path,
                           const std::string& fstype, const std::string& super_options) {
  return std::to_string(id) + " 25 0:" + std::to_string(id) + " " + root + " " + path +
         " rw,nosuid,nodev,noexec,relatime shared:" + std::to_string(id) + " - " + fstype + " " +
         (fstype == "cgroup2" ? "cgroup2" : "cgroup") + " " + super_options + "\n";
}

const char kRootAndTmpfs[] =
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n"
    "24 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
    "25 22 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n";

// ---------------------------------------------------------------- Host::parse

TEST(CgroupHost, ParsesLegacyLayout) {
  std::string mi = std::string(kRootAndTmpfs) +
                   mountinfo_line(31, "/", "/sys/fs/cgroup/systemd", "cgroup", "rw,xattr,name=systemd") +
                   mountinfo_line(33, "/", "/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct") +
                   mountinfo_line(34, "/", "/sys/fs/cgroup/memory", "cgroup", "rw,memory") +
                   mountinfo_line(35, "/", "/sys/fs/cgroup/pids", "cgroup", "rw,pids") +
                   mountinfo_line(36, "/docker/abc", "/sys/fs/cgroup/devices", "cgroup", "rw,devices") +
                   mountinfo_line(37, "/", "/sys/fs/cgroup/cpuset", "cgroup",
                                  "rw,release_agent=/sbin/agent,clone_children,cpuset") +
                   // The memory hierarchy bind-mounted a second time: ignored.
                   mountinfo_line(38, "/", "/mnt/memory-again", "cgroup", "rw,memory") +
                   // A cgroup mount without a controller: ignored.
                   mountinfo_line(39, "/", "/mnt/nothing", "cgroup", "rw,relatime");
  std::string self =
      "12:cpuset:/\n"
      "11:devices:/docker/abc\n"
      "10:pids:/user.slice/user-1000.slice\n"
      "9:memory:/user.slice\n"
      "3:cpu,cpuacct:/user.slice\n"
      "1:name=systemd:/user.slice/user-1000.slice/session-1.scope\n";
  Host h = Host::parse(mi, self);
  EXPECT_EQ(h.layout, Layout::legacy);
  EXPECT_EQ(layout_name(h.layout), "legacy");
  EXPECT_EQ(h.unified_mount(), nullptr);
  ASSERT_EQ(h.mounts.size(), 6u);

  EXPECT_EQ(h.mounts[0].path, "/sys/fs/cgroup/systemd");
  EXPECT_EQ(h.mounts[0].fstype, "cgroup");
  EXPECT_EQ(h.mounts[0].options, "name=systemd");
  EXPECT_EQ(h.mounts[0].controllers, std::vector<std::string>{"name=systemd"});

  EXPECT_EQ(h.mounts[1].path, "/sys/fs/cgroup/cpu,cpuacct");
  EXPECT_EQ(h.mounts[1].options, "cpu,cpuacct");
  EXPECT_EQ(h.mounts[1].controllers, (std::vector<std::string>{"cpu", "cpuacct"}));
  EXPECT_EQ(h.mounts[1].root, "/");

  EXPECT_EQ(h.mounts[2].path, "/sys/fs/cgroup/memory");
  EXPECT_EQ(h.mounts[2].controllers, std::vector<std::string>{"memory"});
  EXPECT_EQ(h.mounts[3].options, "pids");

  EXPECT_EQ(h.mounts[4].path, "/sys/fs/cgroup/devices");
  EXPECT_EQ(h.mounts[4].root, "/docker/abc");

  EXPECT_EQ(h.mounts[5].path, "/sys/fs/cgroup/cpuset");
  EXPECT_EQ(h.mounts[5].options, "cpuset");  // release_agent=, clone_children dropped

  EXPECT_EQ(h.self.size(), 6u);
  EXPECT_EQ(h.self.at("cpu,cpuacct"), "/user.slice");
  EXPECT_EQ(h.self.at("name=systemd"), "/user.slice/user-1000.slice/session-1.scope");
  EXPECT_EQ(h.self.at("devices"), "/docker/abc");
  EXPECT_EQ(h.self.at("pids"), "/user.slice/user-1000.slice");
  EXPECT_EQ(h.self.count(""), 0u);
}

TEST(CgroupHost, ParsesHybridLayout) {
  TempDir t;
  std::string unified = t.path + "/unified";
  mkdirs(unified);
  put(unified + "/cgroup.controllers", "hugetlb pids\n");
  std::string mi = std::string(kRootAndTmpfs) + mountinfo_line(30, "/", unified, "cgroup2", "rw,nsdelegate") +
                   mountinfo_line(31, "/", "/sys/fs/cgroup/systemd", "cgroup", "rw,xattr,name=systemd") +
                   mountinfo_line(33, "/", "/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct") +
                   mountinfo_line(34, "/", "/sys/fs/cgroup/memory", "cgroup", "rw,memory");
  std::string self = "4:memory:/a\n3:cpu,cpuacct:/b\n1:name=systemd:/c\n0::/d\n";
  Host h = Host::parse(mi, self);
  EXPECT_EQ(h.layout, Layout::hybrid);
  EXPECT_EQ(layout_name(h.layout), "hybrid");
  ASSERT_EQ(h.mounts.size(), 4u);
  const MountPoint* u = h.unified_mount();
  ASSERT_NE(u, nullptr);
  EXPECT_EQ(u->path, unified);
  EXPECT_EQ(u->fstype, "cgroup2");
  EXPECT_EQ(u->options, "");
  EXPECT_EQ(u->controllers, (std::vector<std::string>{"hugetlb", "pids"}));
  EXPECT_EQ(h.mounts[2].controllers, (std::vector<std::string>{"cpu", "cpuacct"}));
  EXPECT_EQ(h.self.at(""), "/d");
  EXPECT_EQ(h.self.at("memory"), "/a");
  EXPECT_EQ(h.self.at("cpu,cpuacct"), "/b");
  EXPECT_EQ(h.self.at("name=systemd"), "/c");
}

TEST(CgroupHost, ParsesUnifiedLayoutWithEscapedPath) {
  TempDir t;
  std::string mnt = t.path + "/cg 2";  // mountinfo writes the space as \040
  mkdirs(mnt);
  put(mnt + "/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n");
  std::string escaped = t.path + "/cg\\0402";
  std::string mi = std::string(kRootAndTmpfs) + mountinfo_line(30, "/", escaped, "cgroup2", "rw,nsdelegate") +
                   // A second cgroup2 mount (a bind mount): the first wins.
                   mountinfo_line(40, "/", "/somewhere/else", "cgroup2", "rw");
  Host h = Host::parse(mi, "0::/user.slice/user-1000.slice/session-3.scope\n");
  EXPECT_EQ(h.layout, Layout::unified);
  EXPECT_EQ(layout_name(h.layout), "unified");
  ASSERT_EQ(h.mounts.size(), 1u);
  ASSERT_NE(h.unified_mount(), nullptr);
  EXPECT_EQ(h.unified_mount()->path, mnt);
  EXPECT_EQ(h.unified_mount()->root, "/");
  EXPECT_EQ(h.unified_mount()->controllers,
            (std::vector<std::string>{"cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"}));
  ASSERT_EQ(h.self.size(), 1u);
  EXPECT_EQ(h.self.at(""), "/user.slice/user-1000.slice/session-3.scope");
}

TEST(CgroupHost, UnifiedWithoutControllersFile) {
  TempDir t;
  std::string mi = mountinfo_line(30, "/", t.path + "/missing", "cgroup2", "rw");
  Host h = Host::parse(mi, "0::/\n");
  EXPECT_EQ(h.layout, Layout::unified);
  ASSERT_NE(h.unified_mount(), nullptr);
  EXPECT_TRUE(h.unified_mount()->controllers.empty());
}

TEST(CgroupHost, NoCgroupMountsThrows) {
  std::string err = error_of([] { Host::parse(kRootAndTmpfs, "0::/\n"); });
  EXPECT_TRUE(has(err, "mountinfo")) << err;
  EXPECT_THROW(Host::parse("", ""), Error);
  // Garbage lines are skipped, not fatal by themselves.
  err = error_of([] { Host::parse("garbage\n - \n1 2 3\n", ""); });
  EXPECT_TRUE(has(err, "mountinfo")) << err;
}

// ---------------------------------------------------------------- systemd paths

TEST(CgroupSystemdPath, Expands) {
  EXPECT_EQ(expand_systemd_path("system.slice:docker:abc", "ignored"), "/system.slice/docker-abc.scope");
  EXPECT_EQ(expand_systemd_path("a-b-c.slice:p:n", "x"), "/a.slice/a-b.slice/a-b-c.slice/p-n.scope");
  EXPECT_EQ(expand_systemd_path("-.slice:p:n", "x"), "/p-n.scope");
  EXPECT_EQ(expand_systemd_path("", "ctr1"), "/system.slice/agentshim-ctr1.scope");
  // An empty slice means system.slice; an empty prefix means no prefix.
  EXPECT_EQ(expand_systemd_path(":p:n", "x"), "/system.slice/p-n.scope");
  EXPECT_EQ(expand_systemd_path("user.slice::n", "x"), "/user.slice/n.scope");
  // A name that is itself a slice is used as is.
  EXPECT_EQ(expand_systemd_path("machine.slice:p:inner.slice", "x"), "/machine.slice/inner.slice");
}

TEST(CgroupSystemdPath, RejectsMalformed) {
  for (const char* bad :
       {"foo", "x:y", "a:b:c:d", "bad/slice.slice:p:n", "a--b.slice:p:n", "-a.slice:p:n", "a-.slice:p:n",
        "system:p:n", "system.slice:p:", "system.slice:p:a/b", "system.slice:a/b:n", ".slice:p:n"}) {
    std::string err = error_of([&] { expand_systemd_path(bad, "id"); });
    EXPECT_FALSE(err.empty()) << bad;
    EXPECT_TRUE(has(err, "linux.cgroupsPath")) << bad << ": " << err;
  }
  // The id is the unit name when cgroupsPath is empty; it must not be a path.
  EXPECT_THROW(expand_systemd_path("", "a/b"), Error);
}

// ---------------------------------------------------------------- host_dir

TEST(CgroupHostDir, RelativeAbsoluteAndMountRoot) {
  MountPoint m{"/sys/fs/cgroup/memory", "/", "cgroup", "memory", {"memory"}};
  EXPECT_EQ(detail::host_dir(m, "/user.slice", "ctr"), "/sys/fs/cgroup/memory/user.slice/ctr");
  EXPECT_EQ(detail::host_dir(m, "/user.slice", "a/b"), "/sys/fs/cgroup/memory/user.slice/a/b");
  EXPECT_EQ(detail::host_dir(m, "/user.slice", "/abs/ctr"), "/sys/fs/cgroup/memory/abs/ctr");
  EXPECT_EQ(detail::host_dir(m, "", "ctr"), "/sys/fs/cgroup/memory/ctr");
  EXPECT_EQ(detail::host_dir(m, "/", "ctr"), "/sys/fs/cgroup/memory/ctr");
  EXPECT_EQ(detail::host_dir(m, "/x", "/a//./b/"), "/sys/fs/cgroup/memory/a/b");
  EXPECT_EQ(detail::host_dir(m, "/x", "/"), "/sys/fs/cgroup/memory");

  // The mount shows only /docker/abc of the hierarchy (a container's view).
  MountPoint c{"/sys/fs/cgroup/memory", "/docker/abc", "cgroup", "memory", {"memory"}};
  EXPECT_EQ(detail::host_dir(c, "/docker/abc", "ctr"), "/sys/fs/cgroup/memory/ctr");
  EXPECT_EQ(detail::host_dir(c, "/docker/abc/sub", "ctr"), "/sys/fs/cgroup/memory/sub/ctr");
  EXPECT_EQ(detail::host_dir(c, "/", "/docker/abc/ctr"), "/sys/fs/cgroup/memory/ctr");
  EXPECT_EQ(detail::host_dir(c, "/", "/docker/abc"), "/sys/fs/cgroup/memory");
  // Only whole components of the root are stripped.
  EXPECT_EQ(detail::host_dir(c, "/", "/docker/abcdef/ctr"), "/sys/fs/cgroup/memory/docker/abcdef/ctr");
  EXPECT_EQ(detail::host_dir(c, "/", "/other/ctr"), "/sys/fs/cgroup/memory/other/ctr");
}

TEST(CgroupHelpers, SharesToWeight) {
  EXPECT_EQ(detail::shares_to_weight(0), 0u);
  EXPECT_EQ(detail::shares_to_weight(2), 1u);
  EXPECT_EQ(detail::shares_to_weight(1), 1u);
  EXPECT_EQ(detail::shares_to_weight(1024), 39u);
  EXPECT_EQ(detail::shares_to_weight(262144), 10000u);
  EXPECT_EQ(detail::shares_to_weight(1000000), 10000u);
}

TEST(CgroupHelpers, FileHelpers) {
  TempDir t;
  put(t.path + "/memory.stat", "cache 4096\nrss 8192\nbogus line here\nnovalue\nneg -1\n");
  auto m = detail::read_flat_keyed(t.path, "memory.stat");
  EXPECT_EQ(m.size(), 2u);
  EXPECT_EQ(m["cache"], 4096u);
  EXPECT_EQ(m["rss"], 8192u);
  EXPECT_TRUE(detail::read_flat_keyed(t.path, "missing").empty());

  put(t.path + "/f", "");
  detail::write(t.path, "f", "hello");
  EXPECT_EQ(detail::read(t.path, "f"), "hello");
  EXPECT_TRUE(detail::exists(t.path, "f"));
  EXPECT_FALSE(detail::exists(t.path, "g"));
  std::string err = error_of([&] { detail::write(t.path, "g", "v42"); });
  EXPECT_TRUE(has(err, t.path + "/g")) << err;

  auto made = detail::make_dirs(t.path, t.path + "/a/b/c");
  EXPECT_EQ(made, (std::vector<std::string>{t.path + "/a", t.path + "/a/b", t.path + "/a/b/c"}));
  EXPECT_TRUE(is_dir(t.path + "/a/b/c"));
  EXPECT_EQ(detail::make_dirs(t.path, t.path + "/a/b/d"), std::vector<std::string>{t.path + "/a/b/d"});
  EXPECT_THROW(detail::make_dirs(t.path + "/a", "/elsewhere/x"), Error);

  put(t.path + "/a/cgroup.procs", "10\n3\n");
  put(t.path + "/a/b/cgroup.procs", "7\n10\n");
  put(t.path + "/a/b/c/cgroup.procs", "\n");
  EXPECT_EQ(detail::read_procs_recursive(t.path + "/a"), (std::vector<pid_t>{3, 7, 10}));

  remove_files(t.path + "/a");
  detail::remove_dir(t.path + "/a");
  EXPECT_FALSE(exists(t.path + "/a"));
  detail::remove_dir(t.path + "/never-existed");  // ENOENT is fine
}

// ---------------------------------------------------------------- create: path checks

TEST(CgroupManager, CreateRejectsBadPaths) {
  TempDir t;
  Host h = Host::parse(mountinfo_line(30, "/", t.path, "cgroup2", "rw"), "0::/\n");
  std::string err = error_of([&] { Manager::create(h, "/a/../../etc", "id", false); });
  EXPECT_TRUE(has(err, "..")) << err;
  EXPECT_TRUE(has(err, "linux.cgroupsPath")) << err;
  err = error_of([&] { Manager::create(h, "system.slice:p:n", "id", false); });
  EXPECT_TRUE(has(err, "--systemd-cgroup")) << err;
  err = error_of([&] { Manager::create(h, "no-colons", "id", true); });
  EXPECT_TRUE(has(err, "slice:prefix:name")) << err;
  EXPECT_FALSE(exists(t.path + "/a"));
  EXPECT_FALSE(exists(t.path + "/system.slice"));
}

TEST(CgroupManager, LoadRejectsMalformedRecord) {
  EXPECT_TRUE(has(error_of([] { Manager::load(json::object()); }), "malformed cgroup record"));
  EXPECT_TRUE(has(error_of([] { Manager::load(json::array()); }), "malformed cgroup record"));
  EXPECT_THROW(Manager::load(json{{"layout", "unified"}, {"mounts", json::array()}, {"path", "/x"}}), Error);
}

// ---------------------------------------------------------------- v2 on a fake tree

class CgroupV2Fake : public ::testing::Test {
 protected:
  void SetUp() override {
    mnt = t.path + "/cgroup2";
    mkdirs(mnt);
    put(mnt + "/cgroup.controllers", "cpu memory pids io cpuset hugetlb\n");
    put(mnt + "/cgroup.subtree_control", "");
    host = Host::parse(std::string(kRootAndTmpfs) + mountinfo_line(30, "/", mnt, "cgroup2", "rw,nsdelegate"),
                       "0::/\n");
  }

  // The files the kernel would show in a leaf with every controller on.
  void populate(const std::string& dir) {
    for (const char* f :
         {"memory.max", "memory.swap.max", "memory.low", "cpu.weight", "cpu.max", "pids.max", "io.weight",
          "io.max", "cpuset.cpus", "cpuset.mems", "cgroup.freeze", "cgroup.procs", "cgroup.events"})
      put(dir + "/" + f);
  }

  TempDir t;
  std::string mnt;
  Host host;
};

TEST_F(CgroupV2Fake, HostSeesControllers) {
  EXPECT_EQ(host.layout, Layout::unified);
  ASSERT_NE(host.unified_mount(), nullptr);
  EXPECT_EQ(host.unified_mount()->controllers,
            (std::vector<std::string>{"cpu", "memory", "pids", "io", "cpuset", "hugetlb"}));
}

TEST_F(CgroupV2Fake, CreateMakesLeafAndEnablesControllers) {
  auto m = Manager::create(host, "/agentshim-test/ctr1", "ctr1", false);
  ASSERT_NE(m, nullptr);
  std::string dir = mnt + "/agentshim-test/ctr1";
  EXPECT_TRUE(is_dir(dir));
  EXPECT_EQ(m->path(), "/agentshim-test/ctr1");
  auto hs = m->hierarchies();
  ASSERT_EQ(hs.size(), 1u);
  EXPECT_EQ(hs[0].mountpoint_name, "");
  EXPECT_EQ(hs[0].fstype, "cgroup2");
  EXPECT_EQ(hs[0].host_path, dir);
  // Each "+controller" went to the root's subtree_control; the last one
  // wanted and available is hugetlb.
  EXPECT_EQ(contents(mnt + "/cgroup.subtree_control"), "+hugetlb");
}

// As runc (fs2 defaultDirPath): a relative path, and the default "<id>",
// below the PARENT of the caller's cgroup. Found in the guest: under the
// caller's own cgroup (/init, which holds the caller) the kernel enables no
// controller, so every limit failed with "memory.max does not exist".
TEST_F(CgroupV2Fake, CreateRelativeToParentOfOwnCgroupAndWithSystemdDriver) {
  host.self[""] = "/user.slice/session-1.scope";
  auto m = Manager::create(host, "", "myid", false);
  EXPECT_TRUE(is_dir(mnt + "/user.slice/myid"));
  EXPECT_FALSE(exists(mnt + "/user.slice/session-1.scope/myid"));
  EXPECT_EQ(m->hierarchies().at(0).host_path, mnt + "/user.slice/myid");
  EXPECT_EQ(m->save()["driver"], "cgroupfs");

  auto r = Manager::create(host, "sub/ctr", "x", false);
  EXPECT_EQ(r->hierarchies().at(0).host_path, mnt + "/user.slice/sub/ctr");

  // The runner in a child of the root (/init), and in the root itself.
  host.self[""] = "/init";
  EXPECT_EQ(Manager::create(host, "", "c1", false)->v2_dir(), mnt + "/c1");
  host.self[""] = "/";
  EXPECT_EQ(Manager::create(host, "", "c2", false)->v2_dir(), mnt + "/c2");
  EXPECT_EQ(detail::v2_relative_base("/a/b/"), "/a");
  EXPECT_EQ(detail::v2_relative_base(""), "/");
  host.self[""] = "/user.slice/session-1.scope";

  auto s = Manager::create(host, "machine.slice:agentshim:abc", "abc", true);
  EXPECT_TRUE(is_dir(mnt + "/machine.slice/agentshim-abc.scope"));
  EXPECT_EQ(s->path(), "/machine.slice/agentshim-abc.scope");
  EXPECT_EQ(s->save()["driver"], "systemd");
}

// Every ancestor delegates the controllers it offers and has not enabled
// yet; one already enabled (a parent a manager delegated) is not written.
TEST_F(CgroupV2Fake, ControllersDelegatedAlongThePath) {
  for (const char* d : {"/a", "/a/b"}) {
    mkdirs(mnt + d);
    put(mnt + d + "/cgroup.controllers", "cpu memory pids\n");
    put(mnt + d + "/cgroup.subtree_control", "");
  }
  put(mnt + "/a/cgroup.subtree_control", "cpu memory pids\n");
  Manager::create(host, "/a/b/c", "c", false);
  EXPECT_EQ(contents(mnt + "/cgroup.subtree_control"), "+hugetlb");
  EXPECT_EQ(contents(mnt + "/a/cgroup.subtree_control"), "cpu memory pids\n");  // untouched
  // (A fake file keeps the tail of a longer earlier write: "+cpu", "+memory",
  // "+pids" in turn leave "+pidsry".)
  EXPECT_EQ(contents(mnt + "/a/b/cgroup.subtree_control"), "+pidsry");
}

// An ancestor that refuses a controller (EBUSY on a real kernel: it holds
// processes) is named in the error of a limit that needs it.
TEST_F(CgroupV2Fake, RefusedDelegationNamedInTheLimitError) {
  mkdirs(mnt + "/busy");
  put(mnt + "/busy/cgroup.controllers", "memory\n");
  mkdirs(mnt + "/busy/cgroup.subtree_control");  // not writable as a file
  auto m = Manager::create(host, "/busy/ctr", "ctr", false);
  std::string err;
  try {
    m->set(parsed({{"memory", {{"limit", 1 << 20}}}}));
  } catch (const Error& e) {
    err = e.what();
  }
  EXPECT_NE(err.find("linux.resources.memory.limit"), std::string::npos) << err;
  EXPECT_NE(err.find("enabling the memory controller in " + mnt + "/busy"), std::string::npos) << err;
  err.clear();
  try {
    m->set(parsed({{"pids", {{"limit", 5}}}}));
  } catch (const Error& e) {
    err = e.what();
  }
  EXPECT_NE(err.find("the pids controller is not available in " + mnt + "/busy"), std::string::npos) << err;
  ::rmdir((mnt + "/busy/cgroup.subtree_control").c_str());
}

TEST_F(CgroupV2Fake, SetWritesTheV2Files) {
  auto m = Manager::create(host, "/agentshim-test/ctr1", "ctr1", false);
  std::string dir = mnt + "/agentshim-test/ctr1";
  populate(dir);
  json res = json::parse(R"({
    "memory": {"limit": 104857600, "swap": 209715200, "reservation": 52428800},
    "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
    "pids": {"limit": 0},
    "blockIO": {"weight": 500,
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]}
  })");
  m->set(parsed(res));
  EXPECT_EQ(contents(dir + "/memory.max"), "104857600");
  EXPECT_EQ(contents(dir + "/memory.swap.max"), "104857600");  // swap - limit
  EXPECT_EQ(contents(dir + "/memory.low"), "52428800");
  EXPECT_EQ(contents(dir + "/cpu.weight"), "39");
  EXPECT_EQ(contents(dir + "/cpu.max"), "50000 100000");
  EXPECT_EQ(contents(dir + "/cpuset.cpus"), "0-1");
  EXPECT_EQ(contents(dir + "/cpuset.mems"), "0");
  EXPECT_EQ(contents(dir + "/pids.max"), "max");
  EXPECT_EQ(contents(dir + "/io.weight"), "default 4950");
  EXPECT_EQ(contents(dir + "/io.max"), "8:0 rbps=1048576");
  // Untouched by set().
  EXPECT_EQ(contents(dir + "/cgroup.freeze"), "");
  EXPECT_EQ(contents(dir + "/cgroup.procs"), "");
}

TEST_F(CgroupV2Fake, SetPartialAndUnlimitedValues) {
  auto m = Manager::create(host, "/ctr", "ctr", false);
  std::string dir = mnt + "/ctr";
  populate(dir);
  // A partial update keeps the period already in cpu.max.
  put(dir + "/cpu.max", "max 250000\n");
  m->set(parsed({{"cpu", {{"quota", 30000}}}}));
  EXPECT_EQ(contents(dir + "/cpu.max"), "30000 250000");
  put(dir + "/cpu.max", "20000 100000\n");
  m->set(parsed({{"cpu", {{"period", 400000}}}}));
  EXPECT_EQ(trim(contents(dir + "/cpu.max")), "20000 400000");
  // Negative means unlimited.
  m->set(parsed({{"memory", {{"limit", -1}, {"swap", -1}}}, {"pids", {{"limit", 123}}}}));
  EXPECT_EQ(contents(dir + "/memory.max"), "max");
  EXPECT_EQ(contents(dir + "/memory.swap.max"), "max");
  EXPECT_EQ(contents(dir + "/pids.max"), "123");
  // Unset fields leave their files alone; zero shares are "unset".
  put(dir + "/cpu.weight", "77");
  m->set(parsed({{"cpu", {{"shares", 0}}}, {"memory", json::object()}}));
  EXPECT_EQ(contents(dir + "/cpu.weight"), "77");
  // unified: raw file writes.
  put(dir + "/memory.high", "");
  m->set(parsed({{"unified", {{"memory.high", "1073741824"}}}}));
  EXPECT_EQ(contents(dir + "/memory.high"), "1073741824");
  // hugepage limits.
  put(dir + "/hugetlb.2MB.max", "");
  m->set(parsed({{"hugepageLimits", {{{"pageSize", "2MB"}, {"limit", 4194304}}}}}));
  EXPECT_EQ(contents(dir + "/hugetlb.2MB.max"), "4194304");
}

TEST_F(CgroupV2Fake, SetErrorsNameTheField) {
  auto m = Manager::create(host, "/ctr", "ctr", false);
  std::string dir = mnt + "/ctr";
  populate(dir);
  ::unlink((dir + "/pids.max").c_str());
  std::string err = error_of([&] { m->set(parsed({{"pids", {{"limit", 10}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.pids")) << err;
  EXPECT_TRUE(has(err, dir + "/pids.max")) << err;

  ::unlink((dir + "/cpu.weight").c_str());
  err = error_of([&] { m->set(parsed({{"cpu", {{"shares", 512}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.cpu.shares")) << err;

  ::unlink((dir + "/memory.max").c_str());
  err = error_of([&] { m->set(parsed({{"memory", {{"limit", 1048576}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.memory.limit")) << err;

  err = error_of([&] { m->set(parsed({{"memory", {{"limit", 2097152}, {"swap", 1048576}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.memory")) << err;

  put(dir + "/memory.max", "");
  err = error_of([&] { m->set(parsed({{"memory", {{"limit", 2097152}, {"swap", 1048576}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.memory.swap")) << err;
  err = error_of([&] { m->set(parsed({{"memory", {{"swap", 1048576}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.memory.swap")) << err;
  err = error_of([&] { m->set(parsed({{"memory", {{"disableOOMKiller", true}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.memory.disableOOMKiller")) << err;

  err = error_of([&] { m->set(parsed({{"cpu", {{"realtimeRuntime", 1000}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.cpu.realtime")) << err;
  err = error_of([&] { m->set(parsed({{"network", {{"classID", 1}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.network")) << err;
  err = error_of([&] { m->set(parsed({{"unified", {{"../escape", "1"}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.unified")) << err;
  err = error_of([&] { m->set(parsed({{"unified", {{"memory.oom.group", "1"}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.unified.memory.oom.group")) << err;
  err = error_of([&] { m->set(parsed({{"hugepageLimits", {{{"pageSize", "1GB"}, {"limit", 1}}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.hugepageLimits")) << err;
  ::unlink((dir + "/io.weight").c_str());
  err = error_of([&] { m->set(parsed({{"blockIO", {{"weight", 100}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.blockIO.weight")) << err;
  ::unlink((dir + "/io.max").c_str());
  err = error_of([&] {
    m->set(
        parsed({{"blockIO", {{"throttleWriteIOPSDevice", {{{"major", 8}, {"minor", 0}, {"rate", 10}}}}}}}));
  });
  EXPECT_TRUE(has(err, "linux.resources.blockIO.throttleWriteIOPSDevice")) << err;
  err = error_of([&] { m->set(parsed(json::array())); });
  EXPECT_TRUE(has(err, "linux.resources")) << err;
}

TEST_F(CgroupV2Fake, FreezeThawFrozen) {
  auto m = Manager::create(host, "/ctr", "ctr", false);
  std::string dir = mnt + "/ctr";
  populate(dir);
  put(dir + "/cgroup.events", "populated 1\nfrozen 0\n");
  EXPECT_FALSE(m->frozen());
  put(dir + "/cgroup.events", "populated 1\nfrozen 1\n");
  EXPECT_TRUE(m->frozen());
  m->freeze();
  EXPECT_EQ(contents(dir + "/cgroup.freeze"), "1");
  m->thaw();
  EXPECT_EQ(contents(dir + "/cgroup.freeze"), "0");
  // Without cgroup.events, cgroup.freeze is the answer.
  ::unlink((dir + "/cgroup.events").c_str());
  put(dir + "/cgroup.freeze", "1\n");
  EXPECT_TRUE(m->frozen());
  put(dir + "/cgroup.freeze", "0\n");
  EXPECT_FALSE(m->frozen());
}

TEST_F(CgroupV2Fake, FreezeThatNeverCompletesIsUndone) {
  auto m = Manager::create(host, "/ctr", "ctr", false);
  std::string dir = mnt + "/ctr";
  populate(dir);
  put(dir + "/cgroup.events", "populated 1\nfrozen 0\n");
  std::string err = error_of([&] { m->freeze(); });
  EXPECT_TRUE(has(err, "did not complete")) << err;
  EXPECT_EQ(contents(dir + "/cgroup.freeze"), "0");
  ::unlink((dir + "/cgroup.freeze").c_str());
  err = error_of([&] { m->freeze(); });
  EXPECT_TRUE(has(err, "pause")) << err;
}

TEST_F(CgroupV2Fake, ApplyPidsStats) {
  auto m = Manager::create(host, "/ctr", "ctr", false);
  std::string dir = mnt + "/ctr";
  populate(dir);
  m->apply(4242);
  EXPECT_EQ(contents(dir + "/cgroup.procs"), "4242");
  mkdirs(dir + "/inner");
  put(dir + "/inner/cgroup.procs", "4343\n");
  EXPECT_EQ(m->pids(), (std::vector<pid_t>{4242, 4343}));

  put(dir + "/cpu.stat",
      "usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 5\nnr_throttled 2\n"
      "throttled_usec 7\n");
  put(dir + "/memory.events", "low 0\nhigh 0\nmax 4\noom 3\noom_kill 3\n");
  put(dir + "/memory.current", "12345\n");
  put(dir + "/memory.max", "max\n");
  put(dir + "/memory.stat", "anon 100\nfile 200\n");
  put(dir + "/pids.current", "5\n");
  put(dir + "/pids.max", "max\n");
  put(dir + "/io.stat", "8:0 rbytes=1024 wbytes=2048 rios=3 wios=4 dbytes=0 dios=0\n");
  EXPECT_EQ(m->oom_kill_count(), 3u);
  json s = m->stats();
  EXPECT_EQ(s["cpu"]["usage"]["total"], 100000u);
  EXPECT_EQ(s["cpu"]["usage"]["user"], 60000u);
  EXPECT_EQ(s["cpu"]["usage"]["kernel"], 40000u);
  EXPECT_EQ(s["cpu"]["throttling"]["periods"], 5u);
  EXPECT_EQ(s["cpu"]["throttling"]["throttledPeriods"], 2u);
  EXPECT_EQ(s["cpu"]["throttling"]["throttledTime"], 7000u);
  EXPECT_EQ(s["memory"]["usage"]["usage"], 12345u);
  EXPECT_EQ(s["memory"]["usage"]["limit"], 0u);  // "max"
  EXPECT_EQ(s["memory"]["usage"]["failcnt"], 4u);
  EXPECT_EQ(s["memory"]["cache"], 200u);
  EXPECT_EQ(s["pids"]["current"], 5u);
  EXPECT_EQ(s["pids"]["limit"], 0u);
  ASSERT_EQ(s["blkio"]["ioServiceBytesRecursive"].size(), 2u);
  EXPECT_EQ(s["blkio"]["ioServiceBytesRecursive"][0]["op"], "Read");
  EXPECT_EQ(s["blkio"]["ioServiceBytesRecursive"][0]["value"], 1024u);
  EXPECT_EQ(s["blkio"]["ioServiceBytesRecursive"][1]["value"], 2048u);
  ASSERT_EQ(s["blkio"]["ioServicedRecursive"].size(), 2u);
  EXPECT_EQ(s["blkio"]["ioServicedRecursive"][1]["value"], 4u);
}

// A single-threaded process joins by itself; v2 has no lock-free path, so
// only when asked (the init is born there with clone3 instead).
TEST_F(CgroupV2Fake, JoinSelfOnlyWhenAskedAndNamesTheCloneTarget) {
  auto m = Manager::create(host, "/ctr", "ctr", false);
  std::string dir = mnt + "/ctr";
  populate(dir);
  EXPECT_EQ(m->v2_dir(), dir);
  m->join_self(false);
  EXPECT_EQ(contents(dir + "/cgroup.procs"), "");
  m->join_self(true);
  EXPECT_EQ(contents(dir + "/cgroup.procs"), std::to_string(::getpid()));
}

TEST_F(CgroupV2Fake, SaveLoadRoundTripAndDestroy) {
  mkdirs(mnt + "/shared");  // existed before: not the manager's to remove
  auto m = Manager::create(host, "/shared/agentshim-test/ctr1", "ctr1", false);
  std::string dir = mnt + "/shared/agentshim-test/ctr1";
  ASSERT_TRUE(is_dir(dir));
  json saved = m->save();
  EXPECT_EQ(saved["layout"], "unified");
  EXPECT_EQ(saved["path"], "/shared/agentshim-test/ctr1");
  EXPECT_EQ(saved["created"], json(std::vector<std::string>{mnt + "/shared/agentshim-test",
                                                            mnt + "/shared/agentshim-test/ctr1"}));

  EXPECT_EQ(saved["dir"], dir);
  // A state whose "self" no longer resolves to the same place (written by
  // an older version): the saved directory wins.
  json moved = saved;
  moved["self"][""] = "/elsewhere/deep";
  EXPECT_EQ(Manager::load(moved)->v2_dir(), dir);

  // Through text, as the state file stores it.
  auto l = Manager::load(json::parse(saved.dump()));
  EXPECT_EQ(l->path(), m->path());
  ASSERT_EQ(l->hierarchies().size(), 1u);
  EXPECT_EQ(l->hierarchies()[0].host_path, dir);
  EXPECT_EQ(l->save(), saved);
  // The loaded manager drives the same directory.
  populate(dir);
  l->set(parsed({{"pids", {{"limit", 7}}}}));
  EXPECT_EQ(contents(dir + "/pids.max"), "7");

  remove_files(dir);
  l->destroy();
  EXPECT_FALSE(exists(dir));
  EXPECT_FALSE(exists(mnt + "/shared/agentshim-test"));
  EXPECT_TRUE(is_dir(mnt + "/shared"));
  EXPECT_TRUE(is_dir(mnt));
}

// The fallback when clone3 cannot place the child joins through the cgroup
// directory fd, not its path: the exec path calls it from inside the
// container's mount namespace, where the host path is another file or
// none (found in the guest: "open /sys/fs/cgroup/test/as-t2/cgroup.procs: No
// such file or directory"). Here the fake directory is renamed after being
// opened, and is no cgroup, so clone3 refuses.
TEST_F(CgroupV2Fake, CloneFallbackJoinsThroughTheDirectoryFd) {
  std::string dir = mnt + "/ctr";
  mkdirs(dir);
  put(dir + "/cgroup.procs", "");
  pid_t helper = ::fork();
  ASSERT_GE(helper, 0);
  if (helper == 0) {
    CloneTarget t;
    t.v2.reset(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    t.v2_dir = dir;
    t.v2_required = true;
    if (::rename(dir.c_str(), (mnt + "/moved").c_str()) < 0) ::_exit(2);
    pid_t c = -1;
    try {
      c = clone_parent_into(t);
    } catch (...) {
      ::_exit(3);
    }
    if (c == 0) ::_exit(0);  // the child (a sibling of the helper)
    ::_exit(c > 0 ? 0 : 4);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(helper, &st, 0), helper);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  ::waitpid(-1, nullptr, 0);  // the sibling
  EXPECT_EQ(contents(mnt + "/moved/cgroup.procs"), std::to_string(helper));
}

// The child enters the cgroup namespace it is given once born (exec: the
// creator stays in its own, see CloneTarget::cgroupns); a bad one is an
// error in the child, not a silent stay in the wrong namespace.
TEST(CgroupClone, ChildEntersTheCgroupNamespace) {
  if (::geteuid() != 0) GTEST_SKIP() << "setns(CLONE_NEWCGROUP) needs CAP_SYS_ADMIN";
  pid_t helper = ::fork();
  ASSERT_GE(helper, 0);
  if (helper == 0) {
    CloneTarget t;
    int bad = ::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);  // not a cgroup namespace
    t.cgroupns = bad;
    try {
      pid_t c = clone_parent_into(t);
      if (c == 0) ::_exit(5);  // must not get here
    } catch (const SysError& e) {
      // Thrown in the child: report through the exit status.
      if (std::string(e.what()).find("cgroup namespace") != std::string::npos) ::_exit(7);
      ::_exit(6);
    }
    ::_exit(0);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(helper, &st, 0), helper);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  int cst = 0;
  pid_t c = ::waitpid(-1, &cst, 0);
  ASSERT_GT(c, 0);
  EXPECT_TRUE(WIFEXITED(cst) && WEXITSTATUS(cst) == 7) << cst;
}

// ---------------------------------------------------------------- v1 on a fake tree

class CgroupV1Fake : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string mi = kRootAndTmpfs;
    std::string self;
    int id = 30;
    // mount directory, super options, the hierarchy's name in /proc/self/cgroup
    for (const auto& [dirname, opts, key] : std::vector<std::tuple<std::string, std::string, std::string>>{
             {"systemd", "rw,xattr,name=systemd", "name=systemd"},
             {"memory", "rw,memory", "memory"},
             {"cpu,cpuacct", "rw,cpu,cpuacct", "cpu,cpuacct"},
             {"pids", "rw,pids", "pids"},
             {"freezer", "rw,freezer", "freezer"},
             {"devices", "rw,devices", "devices"},
             {"cpuset", "rw,cpuset", "cpuset"}}) {
      std::string p = t.path + "/" + dirname;
      mkdirs(p);
      mi += mountinfo_line(id, "/", p, "cgroup", opts);
      self += std::to_string(id) + ":" + key + ":/\n";
      ++id;
    }
    put(t.path + "/cpuset/cpuset.cpus", "0-3\n");
    put(t.path + "/cpuset/cpuset.mems", "0\n");
    host = Host::parse(mi, self);
  }

  std::string dir(const std::string& hierarchy) const { return t.path + "/" + hierarchy + path_dir; }

  // The files set() touches, as the kernel would show them.
  void populate() {
    for (const char* f : {"memory.limit_in_bytes", "memory.memsw.limit_in_bytes",
                          "memory.soft_limit_in_bytes", "memory.swappiness", "cgroup.procs"})
      put(dir("memory") + "/" + f);
    for (const char* f : {"cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us", "cgroup.procs"})
      put(dir("cpu,cpuacct") + "/" + f);
    for (const char* f : {"pids.max", "cgroup.procs"}) put(dir("pids") + "/" + f);
    for (const char* f : {"freezer.state", "cgroup.procs"}) put(dir("freezer") + "/" + f);
    for (const char* f : {"devices.allow", "devices.deny", "cgroup.procs"}) put(dir("devices") + "/" + f);
    put(dir("cpuset") + "/cgroup.procs");
  }

  void clear_all() {
    for (const char* h : {"systemd", "memory", "cpu,cpuacct", "pids", "freezer", "devices", "cpuset"})
      remove_files(dir(h));
  }

  TempDir t;
  Host host;
  std::string path_dir = "/agentshim-test/ctr";
};

TEST_F(CgroupV1Fake, HostIsLegacy) {
  EXPECT_EQ(host.layout, Layout::legacy);
  ASSERT_EQ(host.mounts.size(), 7u);
  EXPECT_EQ(host.self.at("cpu,cpuacct"), "/");
  EXPECT_EQ(host.self.at("name=systemd"), "/");
  EXPECT_EQ(host.mounts[2].options, "cpu,cpuacct");
}

TEST_F(CgroupV1Fake, CreateMakesADirectoryPerHierarchyAndCopiesCpuset) {
  // The kernel makes cpuset.cpus/mems empty in a new cpuset cgroup; a
  // process cannot join one until they are filled from the parent. The
  // directories exist already here (so that the files can), which is also
  // the case of a directory left behind by an earlier run.
  mkdirs(dir("cpuset"));
  for (const auto& d : {t.path + "/cpuset/agentshim-test", dir("cpuset")}) {
    put(d + "/cpuset.cpus", "");
    put(d + "/cpuset.mems", "");
  }
  auto m = Manager::create(host, "/agentshim-test/ctr", "ctr", false);
  for (const char* h : {"systemd", "memory", "cpu,cpuacct", "pids", "freezer", "devices", "cpuset"})
    EXPECT_TRUE(is_dir(dir(h))) << h;
  EXPECT_EQ(contents(t.path + "/cpuset/agentshim-test/cpuset.cpus"), "0-3");
  EXPECT_EQ(contents(t.path + "/cpuset/agentshim-test/cpuset.mems"), "0");
  EXPECT_EQ(contents(dir("cpuset") + "/cpuset.cpus"), "0-3");
  EXPECT_EQ(contents(dir("cpuset") + "/cpuset.mems"), "0");

  auto hs = m->hierarchies();
  ASSERT_EQ(hs.size(), 7u);
  EXPECT_EQ(hs[0].mountpoint_name, "systemd");
  EXPECT_EQ(hs[0].options, "name=systemd");
  EXPECT_EQ(hs[2].mountpoint_name, "cpu,cpuacct");
  EXPECT_EQ(hs[2].options, "cpu,cpuacct");
  EXPECT_EQ(hs[2].fstype, "cgroup");
  EXPECT_EQ(hs[2].host_path, dir("cpu,cpuacct"));
  EXPECT_EQ(m->path(), "/agentshim-test/ctr");
}

TEST_F(CgroupV1Fake, CpusetAlreadySetIsLeftAlone) {
  mkdirs(dir("cpuset"));
  put(t.path + "/cpuset/agentshim-test/cpuset.cpus", "1\n");
  put(t.path + "/cpuset/agentshim-test/cpuset.mems", "0\n");
  put(dir("cpuset") + "/cpuset.cpus", "");
  put(dir("cpuset") + "/cpuset.mems", "");
  Manager::create(host, "/agentshim-test/ctr", "ctr", false);
  EXPECT_EQ(contents(t.path + "/cpuset/agentshim-test/cpuset.cpus"), "1\n");
  EXPECT_EQ(contents(dir("cpuset") + "/cpuset.cpus"), "1");  // from its parent, not the root
}

TEST_F(CgroupV1Fake, SetWritesTheV1Files) {
  auto m = Manager::create(host, "/agentshim-test/ctr", "ctr", false);
  populate();
  json res = json::parse(R"({
    "memory": {"limit": 104857600, "swap": 209715200, "reservation": 52428800, "swappiness": 60},
    "cpu": {"shares": 1024, "quota": 50000, "period": 100000},
    "pids": {"limit": 64},
    "devices": [{"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]
  })");
  m->set(parsed(res));
  EXPECT_EQ(contents(dir("memory") + "/memory.limit_in_bytes"), "104857600");
  EXPECT_EQ(contents(dir("memory") + "/memory.memsw.limit_in_bytes"), "209715200");
  EXPECT_EQ(contents(dir("memory") + "/memory.soft_limit_in_bytes"), "52428800");
  EXPECT_EQ(contents(dir("memory") + "/memory.swappiness"), "60");
  EXPECT_EQ(contents(dir("cpu,cpuacct") + "/cpu.shares"), "1024");
  EXPECT_EQ(contents(dir("cpu,cpuacct") + "/cpu.cfs_quota_us"), "50000");
  EXPECT_EQ(contents(dir("cpu,cpuacct") + "/cpu.cfs_period_us"), "100000");
  EXPECT_EQ(contents(dir("pids") + "/pids.max"), "64");
  EXPECT_EQ(contents(dir("devices") + "/devices.deny"), "a *:* rwm");
  EXPECT_EQ(contents(dir("devices") + "/devices.allow"), "c 1:3 rwm");

  populate();
  m->set(parsed({{"pids", {{"limit", 0}}}, {"devices", {{{"allow", true}, {"type", "b"}, {"major", 8}}}}}));
  EXPECT_EQ(contents(dir("pids") + "/pids.max"), "max");
  EXPECT_EQ(contents(dir("devices") + "/devices.allow"), "b 8:* rwm");
  EXPECT_EQ(contents(dir("devices") + "/devices.deny"), "");
}

TEST_F(CgroupV1Fake, MemoryAndSwapWritesAreOrdered) {
  auto m = Manager::create(host, "/agentshim-test/ctr", "ctr", false);
  populate();
  // Make memory.limit_in_bytes unwritable (a directory) to see which of the
  // two files is written first.
  std::string lim = dir("memory") + "/memory.limit_in_bytes";
  std::string sw = dir("memory") + "/memory.memsw.limit_in_bytes";
  ::unlink(lim.c_str());
  mkdirs(lim);
  json raise = {{"memory", {{"limit", 104857600}, {"swap", 209715200}}}};
  // Raising memsw above its current value: memsw first, then the limit.
  put(sw, "0\n");
  std::string err = error_of([&] { m->set(parsed(raise)); });
  EXPECT_TRUE(has(err, "memory.limit_in_bytes")) << err;
  EXPECT_EQ(contents(sw), "209715200");
  // Lowering memsw below its current value: the limit first.
  put(sw, "999999999999\n");
  err = error_of([&] { m->set(parsed(raise)); });
  EXPECT_TRUE(has(err, "memory.limit_in_bytes")) << err;
  EXPECT_EQ(contents(sw), "999999999999\n");
  // Unlimited swap (-1) always raises first.
  put(sw, "");
  err = error_of([&] { m->set(parsed({{"memory", {{"limit", 104857600}, {"swap", -1}}}})); });
  EXPECT_FALSE(err.empty());
  EXPECT_EQ(contents(sw), "-1");
}

TEST_F(CgroupV1Fake, SwapIgnoredWithoutSwapAccounting) {
  auto m = Manager::create(host, "/agentshim-test/ctr", "ctr", false);
  populate();
  ::unlink((dir("memory") + "/memory.memsw.limit_in_bytes").c_str());
  m->set(parsed({{"memory", {{"limit", 104857600}, {"swap", 209715200}}}}));
  EXPECT_EQ(contents(dir("memory") + "/memory.limit_in_bytes"), "104857600");
  EXPECT_FALSE(exists(dir("memory") + "/memory.memsw.limit_in_bytes"));
}

TEST_F(CgroupV1Fake, SetErrorsNameTheField) {
  auto m = Manager::create(host, "/agentshim-test/ctr", "ctr", false);
  populate();
  std::string err = error_of([&] { m->set(parsed({{"memory", {{"swappiness", 101}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.memory.swappiness")) << err;
  err = error_of([&] { m->set(parsed({{"devices", {{{"allow", true}, {"type", "x"}}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.devices[0].type")) << err;
  err = error_of([&] {
    m->set(parsed({{"devices", {{{"allow", true}}, {{"allow", true}, {"access", "rwx"}}}}}));
  });
  EXPECT_TRUE(has(err, "linux.resources.devices[1].access")) << err;
  err = error_of([&] { m->set(parsed({{"devices", {{{"allow", true}, {"major", "one"}}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.devices[0].major")) << err;
  err = error_of([&] { m->set(parsed({{"network", {{"classID", 1}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.network.classID")) << err;
  EXPECT_TRUE(has(err, "net_cls")) << err;
  err = error_of([&] { m->set(parsed({{"blockIO", {{"weight", 100}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.blockIO")) << err;
  err = error_of([&] { m->set(parsed({{"hugepageLimits", {{{"pageSize", "2MB"}, {"limit", 1}}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.hugepageLimits")) << err;
  err = error_of([&] { m->set(parsed({{"unified", {{"memory.high", "1"}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.unified")) << err;
  err = error_of([&] { m->set(parsed({{"cpu", {{"burst", 1000}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.cpu.burst")) << err;
  ::unlink((dir("pids") + "/pids.max").c_str());
  err = error_of([&] { m->set(parsed({{"pids", {{"limit", 5}}}})); });
  EXPECT_TRUE(has(err, dir("pids") + "/pids.max")) << err;
}

TEST_F(CgroupV1Fake, MissingControllerIsNamed) {
  // A host without the pids and freezer hierarchies.
  Host h = host;
  h.mounts.erase(
      std::remove_if(h.mounts.begin(), h.mounts.end(),
                     [](const MountPoint& mp) { return mp.options == "pids" || mp.options == "freezer"; }),
      h.mounts.end());
  auto m = Manager::create(h, "/agentshim-test/ctr", "ctr", false);
  std::string err = error_of([&] { m->set(parsed({{"pids", {{"limit", 5}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.pids")) << err;
  EXPECT_TRUE(has(err, "pids cgroup controller is not mounted")) << err;
  err = error_of([&] { m->freeze(); });
  EXPECT_TRUE(has(err, "freezer")) << err;
  EXPECT_FALSE(m->frozen());
}

TEST_F(CgroupV1Fake, FreezerState) {
  auto m = Manager::create(host, "/agentshim-test/ctr", "ctr", false);
  populate();
  std::string state = dir("freezer") + "/freezer.state";
  put(state, "THAWED\n");
  EXPECT_FALSE(m->frozen());
  put(state, "FROZEN\n");
  EXPECT_TRUE(m->frozen());
  put(state, "FREEZING\n");
  EXPECT_FALSE(m->frozen());
  put(state, "THAWED\n");
  m->freeze();
  EXPECT_EQ(trim(contents(state)), "FROZEN");
  EXPECT_TRUE(m->frozen());
  m->thaw();
  EXPECT_EQ(trim(contents(state)), "THAWED");
  EXPECT_FALSE(m->frozen());
}

// "0" to tasks in every hierarchy: a task moving itself takes no global
// lock (no RCU grace period, unlike a pid written to cgroup.procs).
TEST_F(CgroupV1Fake, JoinSelfWritesZeroToTasksEverywhere) {
  auto m = Manager::create(host, path_dir, "ctr", false);
  for (const char* h : {"systemd", "memory", "cpu,cpuacct", "pids", "freezer", "devices", "cpuset"}) {
    put(dir(h) + "/tasks");
    put(dir(h) + "/cgroup.procs");
  }
  EXPECT_EQ(m->v2_dir(), "");  // a legacy host has no v2 part
  m->join_self(true);
  for (const char* h : {"systemd", "memory", "cpu,cpuacct", "pids", "freezer", "devices", "cpuset"}) {
    EXPECT_EQ(contents(dir(h) + "/tasks"), "0") << h;
    EXPECT_EQ(contents(dir(h) + "/cgroup.procs"), "") << h;
  }
  // A hierarchy that refuses is an error naming the file, except the named
  // (bookkeeping) ones.
  remove_files(dir("systemd"));
  ::rmdir(dir("systemd").c_str());
  EXPECT_NO_THROW(m->join_self(false));
  remove_files(dir("memory"));
  ::rmdir(dir("memory").c_str());
  std::string err = error_of([&] { m->join_self(false); });
  EXPECT_TRUE(has(err, dir("memory") + "/tasks")) << err;
}

TEST_F(CgroupV1Fake, ApplyAndPids) {
  auto m = Manager::create(host, "/agentshim-test/ctr", "ctr", false);
  populate();
  // name=systemd has no cgroup.procs here: a named hierarchy is tolerated.
  m->apply(777);
  for (const char* h : {"memory", "cpu,cpuacct", "pids", "freezer", "devices", "cpuset"})
    EXPECT_EQ(contents(dir(h) + "/cgroup.procs"), "777") << h;
  EXPECT_EQ(m->pids(), std::vector<pid_t>{777});
  // A real controller's hierarchy is not.
  ::unlink((dir("memory") + "/cgroup.procs").c_str());
  std::string err = error_of([&] { m->apply(778); });
  EXPECT_TRUE(has(err, dir("memory") + "/cgroup.procs")) << err;
}

TEST_F(CgroupV1Fake, StatsAndOomKills) {
  auto m = Manager::create(host, "/agentshim-test/ctr", "ctr", false);
  populate();
  put(dir("memory") + "/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
  put(dir("memory") + "/memory.usage_in_bytes", "4096\n");
  put(dir("memory") + "/memory.stat", "cache 8192\nrss 4096\n");
  put(dir("cpu,cpuacct") + "/cpuacct.usage", "123456789\n");
  put(dir("cpu,cpuacct") + "/cpuacct.usage_percpu", "100 200 300\n");
  put(dir("cpu,cpuacct") + "/cpu.stat", "nr_periods 9\nnr_throttled 1\nthrottled_time 55\n");
  put(dir("pids") + "/pids.current", "3\n");
  put(dir("pids") + "/pids.max", "max\n");
  EXPECT_EQ(m->oom_kill_count(), 2u);
  json s = m->stats();
  EXPECT_EQ(s["cpu"]["usage"]["total"], 123456789u);
  EXPECT_EQ(s["cpu"]["usage"]["percpu"], (json{100, 200, 300}));
  EXPECT_EQ(s["cpu"]["throttling"]["periods"], 9u);
  EXPECT_EQ(s["cpu"]["throttling"]["throttledTime"], 55u);
  EXPECT_EQ(s["memory"]["usage"]["usage"], 4096u);
  EXPECT_EQ(s["memory"]["cache"], 8192u);
  EXPECT_EQ(s["pids"]["current"], 3u);
  EXPECT_EQ(s["pids"]["limit"], 0u);
}

TEST_F(CgroupV1Fake, SaveLoadRoundTripAndDestroy) {
  // The cpuset parent exists before: only what the manager made goes away.
  mkdirs(t.path + "/cpuset/agentshim-test");
  auto m = Manager::create(host, "/agentshim-test/ctr", "ctr", false);
  json saved = m->save();
  EXPECT_EQ(saved["layout"], "legacy");
  EXPECT_EQ(saved["driver"], "cgroupfs");
  EXPECT_EQ(saved["unified_ok"], false);
  auto l = Manager::load(json::parse(saved.dump()));
  EXPECT_EQ(l->path(), m->path());
  auto a = m->hierarchies(), b = l->hierarchies();
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].mountpoint_name, b[i].mountpoint_name);
    EXPECT_EQ(a[i].host_path, b[i].host_path);
    EXPECT_EQ(a[i].options, b[i].options);
  }
  EXPECT_EQ(l->save(), saved);
  populate();
  l->set(parsed({{"pids", {{"limit", 9}}}}));
  EXPECT_EQ(contents(dir("pids") + "/pids.max"), "9");

  clear_all();
  l->destroy();
  for (const char* h : {"systemd", "memory", "cpu,cpuacct", "pids", "freezer", "devices", "cpuset"}) {
    EXPECT_FALSE(exists(dir(h))) << h;
    EXPECT_TRUE(is_dir(t.path + "/" + h)) << h;
  }
  EXPECT_FALSE(exists(t.path + "/memory/agentshim-test"));
  EXPECT_TRUE(is_dir(t.path + "/cpuset/agentshim-test"));
}

TEST(CgroupHybridFake, UsesTheUnifiedPartToo) {
  TempDir t;
  std::string mi = kRootAndTmpfs;
  mkdirs(t.path + "/memory");
  mkdirs(t.path + "/unified");
  put(t.path + "/unified/cgroup.controllers", "hugetlb\n");
  put(t.path + "/unified/cgroup.subtree_control", "");
  mi += mountinfo_line(30, "/", t.path + "/memory", "cgroup", "rw,memory");
  mi += mountinfo_line(31, "/", t.path + "/unified", "cgroup2", "rw");
  Host h = Host::parse(mi, "2:memory:/\n0::/\n");
  ASSERT_EQ(h.layout, Layout::hybrid);
  auto m = Manager::create(h, "/ctr", "ctr", false);
  std::string udir = t.path + "/unified/ctr";
  EXPECT_TRUE(is_dir(t.path + "/memory/ctr"));
  EXPECT_TRUE(is_dir(udir));
  // Never enables controllers on the v2 side of a hybrid host (that would pin
  // them to v2 host-wide and break v1 users such as crun).
  EXPECT_EQ(contents(t.path + "/unified/cgroup.subtree_control"), "");
  auto hs = m->hierarchies();
  ASSERT_EQ(hs.size(), 2u);
  EXPECT_EQ(hs[1].mountpoint_name, "unified");
  EXPECT_EQ(hs[1].fstype, "cgroup2");
  EXPECT_EQ(hs[1].host_path, udir);
  json saved = m->save();
  EXPECT_EQ(saved["layout"], "hybrid");
  EXPECT_EQ(saved["unified_ok"], true);

  // hugetlb lives on the v2 side; unified files go there as well.
  put(udir + "/hugetlb.2MB.max", "");
  put(udir + "/memory.high", "");
  auto l = Manager::load(saved);
  l->set(parsed({{"hugepageLimits", {{{"pageSize", "2MB"}, {"limit", 2097152}}}},
                 {"unified", {{"memory.high", "max"}}}}));
  EXPECT_EQ(contents(udir + "/hugetlb.2MB.max"), "2097152");
  // The v2 part is the clone3 target; a process joining by itself writes
  // "0" to the v1 tasks and its pid to the v2 cgroup.procs only if asked.
  EXPECT_EQ(l->v2_dir(), udir);
  put(t.path + "/memory/ctr/tasks");
  put(udir + "/cgroup.procs");
  l->join_self(false);
  EXPECT_EQ(contents(t.path + "/memory/ctr/tasks"), "0");
  EXPECT_EQ(contents(udir + "/cgroup.procs"), "");
  l->join_self(true);
  EXPECT_EQ(contents(udir + "/cgroup.procs"), std::to_string(::getpid()));
  EXPECT_EQ(contents(udir + "/memory.high"), "max");
  std::string err = error_of([&] { l->set(parsed({{"unified", {{"io.max", "x"}}}})); });
  EXPECT_TRUE(has(err, "linux.resources.unified.io.max")) << err;

  remove_files(t.path + "/memory/ctr");
  remove_files(udir);
  l->destroy();
  EXPECT_FALSE(exists(t.path + "/memory/ctr"));
  EXPECT_FALSE(exists(udir));
}

// ---------------------------------------------------------------- device rules

// A config the device rules are read from (parsed as create parses it).
oci::Spec spec_with(const json& linux) {
  json cfg = {{"ociVersion", "1.0.2"}, {"root", {{"path", "rootfs"}}}, {"process", {{"args", {"sh"}}}}};
  cfg["linux"] = linux;
  return oci::parse_spec(cfg);
}

// Rules as linux.resources.devices spells them.
json as_json(const std::vector<oci::DeviceRule>& rules) {
  json out = json::array();
  for (const auto& r : rules) out.push_back(oci::to_json(r));
  return out;
}

TEST(DeviceRules, ConfigThenDefaultsThenLinuxDevices) {
  json r = as_json(effective_device_rules(spec_with(json::parse(R"({
      "resources": {"devices": [{"allow": false, "access": "rwm"},
                                {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rw"}]},
      "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
                  {"path": "/dev/sdb", "type": "b", "major": 8, "minor": 16},
                  {"path": "/dev/uu", "type": "u", "major": 4, "minor": 1},
                  {"path": "/dev/fifo", "type": "p"}]
  })"))));
  ASSERT_EQ(r.size(), 2u + 10u + 3u);
  // The config's rules as the drivers read them (type "a" when not given).
  EXPECT_EQ(r[0], (json{{"allow", false}, {"type", "a"}, {"access", "rwm"}}));
  EXPECT_EQ(r[1]["minor"], 200);
  // The defaults, as runc adds them.
  EXPECT_EQ(r[2], (json{{"allow", true}, {"type", "c"}, {"access", "m"}}));
  EXPECT_EQ(r[3], (json{{"allow", true}, {"type", "b"}, {"access", "m"}}));
  EXPECT_EQ(r[4], (json{{"allow", true}, {"type", "c"}, {"major", 1}, {"minor", 3}, {"access", "rwm"}}));
  EXPECT_EQ(r[10], (json{{"allow", true}, {"type", "c"}, {"major", 136}, {"access", "rwm"}}));
  EXPECT_EQ(r[11], (json{{"allow", true}, {"type", "c"}, {"major", 5}, {"minor", 2}, {"access", "rwm"}}));
  // Then linux.devices: b stays b, u becomes c, p (no device number) is skipped.
  EXPECT_EQ(r[12], (json{{"allow", true}, {"type", "c"}, {"major", 10}, {"minor", 229}, {"access", "rwm"}}));
  EXPECT_EQ(r[13], (json{{"allow", true}, {"type", "b"}, {"major", 8}, {"minor", 16}, {"access", "rwm"}}));
  EXPECT_EQ(r[14], (json{{"allow", true}, {"type", "c"}, {"major", 4}, {"minor", 1}, {"access", "rwm"}}));
}

TEST(DeviceRules, DefaultsOnlyForAnEmptyConfig) {
  const auto r = effective_device_rules(spec_with(json::object()));
  ASSERT_EQ(r.size(), 10u);
  EXPECT_EQ(r[0].access, "m");
  // Everything a container needs, nothing else (default deny).
  auto p = device_program(r);
  EXPECT_TRUE(run_device_program(p, 'c', 1, 3, 2 | 4));    // /dev/null
  EXPECT_TRUE(run_device_program(p, 'c', 1, 9, 2));        // /dev/urandom
  EXPECT_TRUE(run_device_program(p, 'c', 136, 7, 2 | 4));  // /dev/pts/7
  EXPECT_TRUE(run_device_program(p, 'c', 5, 2, 2 | 4));    // /dev/ptmx
  EXPECT_TRUE(run_device_program(p, 'b', 8, 0, 1));        // mknod of any block device
  EXPECT_FALSE(run_device_program(p, 'b', 8, 0, 2));       // but not reading it
  EXPECT_FALSE(run_device_program(p, 'c', 10, 229, 2));    // /dev/fuse not listed
  EXPECT_FALSE(run_device_program(p, 'c', 1, 1, 2));       // /dev/mem
}

// ---------------------------------------------------------------- device program

constexpr uint32_t kMknod = 1, kRead = 2, kWrite = 4;

// linux.resources.devices from its JSON text (oci::parse_resources).
std::vector<oci::DeviceRule> rules(const char* text) {
  return parsed({{"devices", json::parse(text)}}).devices;
}

TEST(DeviceProgram, DenyAllThenAllowNull) {
  auto p = device_program(rules(R"([{"allow": false, "access": "rwm"},
    {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}])"));
  EXPECT_TRUE(run_device_program(p, 'c', 1, 3, kRead));
  EXPECT_TRUE(run_device_program(p, 'c', 1, 3, kRead | kWrite | kMknod));
  EXPECT_FALSE(run_device_program(p, 'c', 1, 5, kRead));
  EXPECT_FALSE(run_device_program(p, 'b', 8, 0, kRead));
  EXPECT_FALSE(run_device_program(p, 'b', 1, 3, kRead));  // type matters
  EXPECT_FALSE(run_device_program(p, 'c', 3, 1, kRead));  // major/minor not swapped
}

TEST(DeviceProgram, EmptyRulesDenyEverything) {
  auto p = device_program({});
  EXPECT_FALSE(run_device_program(p, 'c', 1, 3, kRead));
  EXPECT_FALSE(run_device_program(p, 'b', 8, 0, kMknod));
}

TEST(DeviceProgram, LaterRulesOverrideEarlierOnes) {
  auto allow_then_deny = device_program(rules(R"([
    {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "rwm"}])"));
  EXPECT_FALSE(run_device_program(allow_then_deny, 'c', 1, 3, kRead));
  auto deny_then_allow = device_program(rules(R"([
    {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}])"));
  EXPECT_TRUE(run_device_program(deny_then_allow, 'c', 1, 3, kRead));
  // Allow a whole major, then deny one minor in it.
  auto major = device_program(rules(R"([
    {"allow": true, "type": "c", "major": 1, "access": "rwm"},
    {"allow": false, "type": "c", "major": 1, "minor": 1, "access": "rwm"}])"));
  EXPECT_TRUE(run_device_program(major, 'c', 1, 3, kRead));
  EXPECT_TRUE(run_device_program(major, 'c', 1, 5, kWrite));
  EXPECT_FALSE(run_device_program(major, 'c', 1, 1, kRead));
  EXPECT_FALSE(run_device_program(major, 'c', 2, 1, kRead));
}

TEST(DeviceProgram, PartialDenyKeepsTheOtherAccesses) {
  auto p = device_program(rules(R"([{"allow": false, "access": "rwm"},
    {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "w"}])"));
  EXPECT_FALSE(run_device_program(p, 'c', 1, 3, kWrite));
  EXPECT_FALSE(run_device_program(p, 'c', 1, 3, kRead | kWrite));  // touches a denied bit
  EXPECT_TRUE(run_device_program(p, 'c', 1, 3, kRead));
  EXPECT_TRUE(run_device_program(p, 'c', 1, 3, kMknod));
}

TEST(DeviceProgram, TypeAMatchesEverything) {
  auto p = device_program(rules(R"([{"allow": true, "type": "a", "access": "rwm"}])"));
  EXPECT_TRUE(run_device_program(p, 'c', 1, 3, kRead));
  EXPECT_TRUE(run_device_program(p, 'b', 8, 0, kRead | kWrite));
  EXPECT_TRUE(run_device_program(p, 'c', 4294967295u, 0, kMknod));
  // Missing type and access default to "a" and "rwm"; negative numbers are wildcards.
  auto q = device_program(rules(R"([{"allow": true, "major": -1, "minor": -1}])"));
  EXPECT_TRUE(run_device_program(q, 'b', 259, 1, kRead | kWrite | kMknod));
  // "a" with a major applies to both char and block devices of that major.
  auto r = device_program(rules(R"([{"allow": true, "type": "a", "major": 8, "access": "r"}])"));
  EXPECT_TRUE(run_device_program(r, 'b', 8, 1, kRead));
  EXPECT_TRUE(run_device_program(r, 'c', 8, 1, kRead));
  EXPECT_FALSE(run_device_program(r, 'b', 9, 1, kRead));
}

TEST(DeviceProgram, MknodOnlyAllow) {
  auto p = device_program(rules(R"([{"allow": true, "type": "c", "major": null, "minor": null,
                                          "access": "m"}])"));
  EXPECT_TRUE(run_device_program(p, 'c', 1, 3, kMknod));
  EXPECT_TRUE(run_device_program(p, 'c', 42, 7, kMknod));
  EXPECT_FALSE(run_device_program(p, 'c', 1, 3, kRead));
  EXPECT_FALSE(run_device_program(p, 'c', 1, 3, kMknod | kRead));  // asks for more than allowed
  EXPECT_FALSE(run_device_program(p, 'b', 8, 0, kMknod));
  // "rw" without m: read and write, read+write, not mknod.
  auto rw =
      device_program(rules(R"([{"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"}])"));
  EXPECT_TRUE(run_device_program(rw, 'c', 1, 3, kRead | kWrite));
  EXPECT_FALSE(run_device_program(rw, 'c', 1, 3, kMknod));
}

TEST(DeviceProgram, BadRulesNameTheField) {
  auto err = [](const char* text) { return error_of([&] { device_program(rules(text)); }); };
  EXPECT_TRUE(has(err(R"({"allow": true})"), "linux.resources.devices"));
  EXPECT_TRUE(has(err(R"([{"allow": true}, 5])"), "linux.resources.devices[1]"));
  EXPECT_TRUE(has(err(R"([{"allow": true, "type": "x"}])"), "linux.resources.devices[0].type"));
  EXPECT_TRUE(has(err(R"([{"allow": true, "access": "rwx"}])"), "linux.resources.devices[0].access"));
  EXPECT_TRUE(has(err(R"([{"allow": true, "major": "1"}])"), "linux.resources.devices[0].major"));
  EXPECT_TRUE(has(err(R"([{"allow": true, "minor": 4294967296}])"), "linux.resources.devices[0].minor"));
}

// The kernel's verifier rejects a program with instructions no path reaches.
bool all_reachable(const std::vector<BpfInsn>& prog) {
  std::vector<bool> seen(prog.size(), false);
  std::vector<std::size_t> todo = {0};
  while (!todo.empty()) {
    std::size_t pc = todo.back();
    todo.pop_back();
    if (pc >= prog.size() || seen[pc]) continue;
    seen[pc] = true;
    uint8_t code = prog[pc].code;
    if (code == (BPF_JMP | BPF_EXIT)) continue;
    todo.push_back(pc + 1);
    if (BPF_CLASS(code) == BPF_JMP) todo.push_back(pc + 1 + static_cast<std::size_t>(prog[pc].off));
  }
  return std::all_of(seen.begin(), seen.end(), [](bool b) { return b; });
}

TEST(DeviceProgram, HasNoUnreachableInstructions) {
  // A leading deny-all (what every container engine sends) matches
  // everything: nothing may be emitted after it.
  auto with_deny_all = effective_device_rules(
      spec_with(json::parse(R"({"resources": {"devices": [{"allow": false, "access": "rwm"}]}})")));
  auto p = device_program(with_deny_all);
  EXPECT_TRUE(all_reachable(p));
  EXPECT_TRUE(run_device_program(p, 'c', 1, 3, kRead | kWrite));
  EXPECT_FALSE(run_device_program(p, 'c', 1, 1, kRead));
  for (const char* text :
       {R"([])", R"([{"allow": false, "access": "rwm"}])", R"([{"allow": true}])",
        R"([{"allow": false}, {"allow": true, "type": "a", "access": "rwm"},
               {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "rwm"}])",
        R"([{"allow": true, "type": "c", "major": 1, "minor": 3}, {"allow": true}, {"allow": false}])",
        R"([{"allow": true, "access": "r"}, {"allow": false, "access": "w"}])"}) {
    EXPECT_TRUE(all_reachable(device_program(rules(text)))) << text;
  }
  // Everything after an unconditional rule is dead: the last rule decides.
  auto last = device_program(rules(R"([{"allow": true, "type": "c", "major": 1, "minor": 3},
                                             {"allow": false}])"));
  EXPECT_FALSE(run_device_program(last, 'c', 1, 3, kRead));
  // Rules hidden behind an unconditional one are still validated (when
  // parsed, before any program is built).
  std::string err = error_of([] { device_program(rules(R"([{"type": "x"}, {"allow": false}])")); });
  EXPECT_TRUE(has(err, "linux.resources.devices[0].type")) << err;
}

TEST(DeviceProgram, RunRejectsMalformedPrograms) {
  EXPECT_THROW(run_device_program({}, 'c', 1, 3, kRead), Error);
  std::vector<BpfInsn> bogus = {{0xff, 0, 0, 0}};
  EXPECT_THROW(run_device_program(bogus, 'c', 1, 3, kRead), Error);
}

// ---------------------------------------------------------------- real kernel

// The cgroup2 mount to test on: /sys/fs/cgroup/unified (hybrid) or
// /sys/fs/cgroup (unified); "" when neither is cgroup2.
std::string real_cgroup2_mount() {
  for (const char* p : {"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}) {
    struct statfs sf;
    if (::statfs(p, &sf) == 0 && sf.f_type == static_cast<decltype(sf.f_type)>(CGROUP2_SUPER_MAGIC)) return p;
  }
  return "";
}

uint32_t attached_device_programs(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return 9999;
  union bpf_attr attr;
  std::memset(&attr, 0, sizeof(attr));
  attr.query.target_fd = static_cast<uint32_t>(fd);
  attr.query.attach_type = BPF_CGROUP_DEVICE;
  long rc = ::syscall(SYS_bpf, BPF_PROG_QUERY, &attr, sizeof(attr));
  ::close(fd);
  return rc == 0 ? attr.query.prog_cnt : 9999;
}

TEST(DeviceProgramKernel, AttachedProgramDeniesDevNull) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to create a cgroup and attach a BPF program";
  std::string mnt = real_cgroup2_mount();
  if (mnt.empty()) GTEST_SKIP() << "neither /sys/fs/cgroup/unified nor /sys/fs/cgroup is a cgroup2 mount";

  std::string dir = mnt + "/agentshim-test-devbpf-" + std::to_string(::getpid());
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0) << dir << ": " << std::strerror(errno);
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      try {
        detail::remove_dir(dir);
      } catch (...) {
      }
    }
  } cleanup{dir};

  // A deny-everything program first, then the usual rules (a leading
  // deny-all and the defaults): attaching the next one must replace it.
  attach_device_program(dir, device_program({}));
  EXPECT_EQ(attached_device_programs(dir), 1u);
  attach_device_program(dir, device_program(effective_device_rules(spec_with(json::parse(
                                 R"({"resources": {"devices": [{"allow": false, "access": "rwm"}]}})")))));
  EXPECT_EQ(attached_device_programs(dir), 1u);
  auto prog = device_program(rules(R"([{"allow": false, "access": "rwm"},
    {"allow": true, "type": "a", "access": "rwm"},
    {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "rwm"}])"));
  // The interpreter agrees with what the kernel is expected to do.
  EXPECT_FALSE(run_device_program(prog, 'c', 1, 3, kRead));
  EXPECT_TRUE(run_device_program(prog, 'c', 1, 5, kRead));
  attach_device_program(dir, prog);
  EXPECT_EQ(attached_device_programs(dir), 1u);

  // Everything the child needs, prepared before fork.
  std::string procs = dir + "/cgroup.procs";
  const char* procs_c = procs.c_str();
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int fd = ::open(procs_c, O_WRONLY | O_CLOEXEC);
    if (fd < 0) ::_exit(10);
    char buf[32];
    int n = std::snprintf(buf, sizeof buf, "%d", static_cast<int>(::getpid()));
    if (::write(fd, buf, static_cast<size_t>(n)) != n) ::_exit(11);
    ::close(fd);
    int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd >= 0) ::_exit(12);
    if (errno != EPERM) ::_exit(13);
    int zero_fd = ::open("/dev/zero", O_RDONLY | O_CLOEXEC);
    if (zero_fd < 0) ::_exit(14);
    char c = 1;
    if (::read(zero_fd, &c, 1) != 1 || c != 0) ::_exit(15);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child died with status " << status;
  const char* what[] = {"ok",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "could not open cgroup.procs",
                        "could not join the cgroup",
                        "open(/dev/null) succeeded despite the deny rule",
                        "open(/dev/null) failed, but not with EPERM",
                        "open(/dev/zero) was denied",
                        "reading /dev/zero failed"};
  int code = WEXITSTATUS(status);
  EXPECT_EQ(code, 0) << (code < 16 ? what[code] : "unexpected exit code");
  // The child has exited and been reaped: the cgroup is empty again.
  detail::remove_dir(dir);
  EXPECT_FALSE(exists(dir));
}

}  // namespace

// kill --all SIGKILL writes "1" to the container's cgroup.kill where the
// kernel has one; without it (an older kernel) the caller walks the pids.
TEST_F(CgroupV2Fake, KillAllUsesCgroupKillWhereTheKernelHasIt) {
  auto m = Manager::create(host, "/kill/ctr", "ctr", false);
  const std::string dir = m->v2_dir();
  EXPECT_FALSE(cgroups::kill_all_via_cgroup_kill(*m));  // the fake kernel has no cgroup.kill
  write_file(dir + "/cgroup.kill", "");
  EXPECT_TRUE(cgroups::kill_all_via_cgroup_kill(*m));
  EXPECT_EQ(contents(dir + "/cgroup.kill"), "1");
}
