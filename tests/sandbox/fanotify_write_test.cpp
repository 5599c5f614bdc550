// The write watch on a real tmpfs: the written set, the file.* events with
// their paths, a directory removed before its events are read, and both
// ways the account is lost (the dirty-set bound, the kernel's queue
// overflow), which must make every file count as written.
#include "sandbox/fanotify_write.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/util.h"
#include "tests/temp_dir.h"

using namespace agentshim;
using observer::WriteWatch;
using json = nlohmann::json;

namespace {
struct Tmpfs {
  testutil::TempDir dir{"fanotify-write-test"};
  std::string mnt = dir.path + "/mnt";
  bool ok = false;
  Tmpfs() {
    mkdir_p(mnt, 0755);
    ok = ::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64m") == 0;
  }
  ~Tmpfs() {
    if (ok) ::umount2(mnt.c_str(), MNT_DETACH);
  }
};

struct Events {
  std::vector<std::pair<std::string, json>> got;
  WriteWatch::Sink sink() {
    return [this](const std::string& t, json d) { got.emplace_back(t, std::move(d)); };
  }
  bool has(const std::string& type, const std::string& path) const {
    for (const auto& [t, d] : got)
      if (t == type && d.value("path", "") == path) return true;
    return false;
  }
};

std::pair<uint64_t, uint64_t> id_of(const std::string& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return {st.st_dev, st.st_ino};
}
}  // namespace

TEST(WriteWatch, WrittenFilesCreatedAndRemovedNamesAreSeen) {
  Tmpfs fs;
  if (!fs.ok) GTEST_SKIP() << "mount tmpfs: needs root (" << std::strerror(errno) << ")";
  Events ev;
  WriteWatch w(ev.sink());
  UniqueFd root(::open(fs.mnt.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  ASSERT_EQ(w.mark(root.get(), "/t", "/t", true), "");
  write_file(fs.mnt + "/kept", "k");
  write_file(fs.mnt + "/other", "o");
  auto kept = id_of(fs.mnt + "/kept");
  // A directory and its file removed before any event is read: the
  // directory's own handle (TARGET_FID) names the file's removal.
  mkdir_p(fs.mnt + "/d", 0755);
  write_file(fs.mnt + "/d/gone", "g");
  w.drain();  // (the supervisor's loop reads as events come)
  ASSERT_EQ(::unlink((fs.mnt + "/d/gone").c_str()), 0);
  ASSERT_EQ(::rmdir((fs.mnt + "/d").c_str()), 0);
  w.drain();
  // A file only read is not in the written set.
  write_file(fs.dir.path + "/outside", "x");
  EXPECT_TRUE(w.dirty(kept.first, kept.second));
  EXPECT_TRUE(w.dirty_dev(kept.first));
  EXPECT_FALSE(w.dirty(kept.first, kept.second + 1000));
  EXPECT_EQ(w.dirty_count(), 3u);
  EXPECT_EQ(w.overflowed(), "");
  // Paths are the kernel's names for the files (here: the host's).
  EXPECT_TRUE(ev.has("file.written", fs.mnt + "/kept"));
  EXPECT_TRUE(ev.has("file.created", fs.mnt + "/kept"));
  EXPECT_TRUE(ev.has("file.created", fs.mnt + "/d"));
  EXPECT_TRUE(ev.has("file.removed", fs.mnt + "/d/gone"));
  EXPECT_TRUE(ev.has("file.removed", fs.mnt + "/d"));
  for (const auto& [t, d] : ev.got) EXPECT_EQ(d.value("tree", ""), "/t") << t << " " << d.dump();
}

TEST(WriteWatch, ALostAccountMakesEveryFileWritten) {
  Tmpfs fs;
  if (!fs.ok) GTEST_SKIP() << "mount tmpfs: needs root";
  {
    // The bound on the written set.
    Events ev;
    WriteWatch w(ev.sink(), 2);
    UniqueFd root(::open(fs.mnt.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    ASSERT_EQ(w.mark(root.get(), "/t", "/t", false), "");
    for (int i = 0; i < 3; i++) write_file(fs.mnt + "/b" + std::to_string(i), "x");
    w.drain();
    EXPECT_NE(w.overflowed().find("more than 2 files written"), std::string::npos) << w.overflowed();
    EXPECT_TRUE(w.dirty(1, 1));  // anything
    EXPECT_TRUE(w.dirty_dev(1));
    bool said = false;
    for (const auto& [t, d] : ev.got) said |= t == "fs.watch" && d.value("reread", "") == "all";
    EXPECT_TRUE(said);
  }
  {
    // The kernel's queue (16384 events by default) overflows while nobody
    // reads it: FAN_Q_OVERFLOW.
    Events ev;
    WriteWatch w(ev.sink());
    UniqueFd root(::open(fs.mnt.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    ASSERT_EQ(w.mark(root.get(), "/t", "/t", false), "");
    for (int i = 0; i < 17000; i++) write_file(fs.mnt + "/q" + std::to_string(i), "");
    w.drain();
    EXPECT_NE(w.overflowed().find("FAN_Q_OVERFLOW"), std::string::npos) << w.overflowed();
    EXPECT_TRUE(w.dirty(7, 7));
  }
}

// The LSM entry records (sandbox/dirent_bpf.h) mapped to trees and events
// without the kernel: by mount id; for a mount the container made since,
// by the longest mount point of the same filesystem; nothing for a
// filesystem no tree is on or a single-file mount.
TEST(WriteWatch, LsmRecordsAreMappedToTheirTrees) {
  using observer::MarkedMount;
  std::vector<MarkedMount> m = {{10, 1, "/", "rootfs", false},
                                {11, 2, "/vol", "/vol", false},
                                {12, 2, "/vol/sub", "/vol/sub", false},
                                {13, 3, "/etc/conf", "/etc/conf", true}};
  EXPECT_EQ(observer::mount_of_record(m, 11, 2, "/vol/a")->tree, "/vol");
  EXPECT_EQ(observer::mount_of_record(m, 10, 1, "/x")->tree, "rootfs");
  // A bind the container made of /vol/sub: unknown mount id, same device.
  EXPECT_EQ(observer::mount_of_record(m, 99, 2, "/vol/sub/d")->tree, "/vol/sub");
  EXPECT_EQ(observer::mount_of_record(m, 99, 2, "/vol/subx")->tree, "/vol");
  EXPECT_EQ(observer::mount_of_record(m, 99, 2, "/elsewhere")->tree, "/vol");
  EXPECT_EQ(observer::mount_of_record(m, 99, 7, "/vol/a"), nullptr);
  EXPECT_EQ(observer::mount_of_record(m, 13, 3, "/etc"), nullptr);

  observer::DirentBpf::Record r;
  r.op = observer::DirentBpf::Op::moved_to;
  r.dir = true;
  r.pid = 42;
  r.path = "/vol/a b";
  r.name = "c";
  auto [type, ev] = observer::lsm_entry_event(r, "/vol");
  EXPECT_EQ(type, "file.moved");
  EXPECT_EQ(ev, json({{"tree", "/vol"},
                      {"name", "c"},
                      {"path", "/vol/a%20b/c"},
                      {"pid", 42},
                      {"via", "lsm"},
                      {"dir_entry", true},
                      {"side", "to"}}));
  r.op = observer::DirentBpf::Op::created;
  r.dir = false;
  r.path = "/";
  std::tie(type, ev) = observer::lsm_entry_event(r, "rootfs");
  EXPECT_EQ(type, "file.created");
  EXPECT_EQ(ev["path"], "/c");
  r.path = "";
  std::tie(type, ev) = observer::lsm_entry_event(r, "rootfs");
  EXPECT_FALSE(ev.contains("path"));
  EXPECT_EQ(ev["dir"], "unknown: the kernel could not name the directory (bpf_path_d_path)");
}
