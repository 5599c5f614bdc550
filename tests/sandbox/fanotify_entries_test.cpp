// The fanotify fallback for names created and removed (EntryTrees) on a
// real host filesystem: only the watched tree's events, named by the
// container's paths, through renames of their directories; and an overlay
// root's upper layer read as overlayfs writes it (copy-ups are not new
// names, whiteouts are removals, each removal once).
#include "sandbox/fanotify_entries.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/error.h"
#include "common/util.h"

using namespace agentshim;
using observer::EntryTrees;
using json = nlohmann::json;

namespace {
// On /var/tmp: a disk filesystem, as volumes and overlay layers are.
struct Dir {
  std::string path;
  Dir() {
    std::string t = "/var/tmp/entries-test-XXXXXX";
    if (!::mkdtemp(t.data())) throw_errno("mkdtemp");
    path = t;
  }
  ~Dir() {
    try {
      remove_tree(path);
    } catch (...) {
    }
  }
};

// An overlay of `lower` (top first) with its upper and work directories
// in `d`, mounted on d/m; unmounted at the end.
struct Overlay {
  std::string upper, m;
  bool ok = false;
  Overlay(const std::string& d, const std::vector<std::string>& lower) : upper(d + "/u"), m(d + "/m") {
    const std::string work = d + "/w";
    for (const auto& p : {upper, work, m}) mkdir_p(p, 0755);
    std::string opts = "lowerdir=";
    for (std::size_t i = 0; i < lower.size(); ++i) opts += (i ? ":" : "") + lower[i];
    opts += ",upperdir=" + upper + ",workdir=" + work;
    ok = ::mount("overlay", m.c_str(), "overlay", 0, opts.c_str()) == 0;
  }
  ~Overlay() {
    if (ok) ::umount2(m.c_str(), MNT_DETACH);
  }
};

using Ev = std::tuple<std::string, std::string, std::string>;  // type, path, side

struct Events {
  std::vector<std::pair<std::string, json>> got;
  EntryTrees::Sink sink() {
    return [this](const std::string& t, json d) { got.emplace_back(t, std::move(d)); };
  }
  std::vector<Ev> list() const {
    std::vector<Ev> v;
    for (const auto& [t, d] : got) v.emplace_back(t, d.value("path", ""), d.value("side", ""));
    return v;
  }
};

void touch(const std::string& p) {
  write_file(p, "x");
}
void run_ok(int r, const std::string& what) {
  ASSERT_EQ(r, 0) << what << ": " << std::strerror(errno);
}
}  // namespace

TEST(EntryTrees, OnlyTheTreesNamesThroughRenamedDirectories) {
  if (::geteuid() != 0) GTEST_SKIP() << "fanotify filesystem marks need CAP_SYS_ADMIN";
  Dir d;
  const std::string vol = d.path + "/vol", out = d.path + "/outside";
  mkdir_p(vol + "/a/b", 0755);
  mkdir_p(out, 0755);
  Events ev;
  EntryTrees e(ev.sink());
  ASSERT_EQ(e.watch(vol, "/vol", "/vol"), "");
  run_ok(::mkdir((vol + "/n").c_str(), 0755), "mkdir");
  touch(vol + "/n/x");
  run_ok(::unlink((vol + "/n/x").c_str()), "unlink");
  run_ok(::rmdir((vol + "/n").c_str()), "rmdir");
  touch(vol + "/a/b/f");
  run_ok(::rename((vol + "/a/b/f").c_str(), (vol + "/g").c_str()), "rename");
  run_ok(::unlink((vol + "/g").c_str()), "unlink");
  // A directory of the walk renamed: what is below it follows.
  run_ok(::rename((vol + "/a").c_str(), (vol + "/a2").c_str()), "rename dir");
  touch(vol + "/a2/b/y");
  // A new directory and one inside it, made faster than the events are read.
  mkdir_p(vol + "/p/q/r", 0755);
  touch(vol + "/p/q/r/z");
  // The rest of the filesystem is not ours.
  touch(out + "/host");
  mkdir_p(out + "/hd", 0755);
  run_ok(::rename((out + "/host").c_str(), (out + "/hd/host").c_str()), "rename outside");
  auto r = e.drain();
  EXPECT_EQ(r.lost, "");
  // Nothing was read meanwhile: the kernel merged the creation and removal
  // of /vol/n (and of /vol/n/x) into one event, where the creation was.
  std::vector<Ev> want = {{"file.created", "/vol/n", ""},      {"file.removed", "/vol/n", ""},
                          {"file.created", "/vol/n/x", ""},    {"file.removed", "/vol/n/x", ""},
                          {"file.created", "/vol/a/b/f", ""},  {"file.moved", "/vol/a/b/f", "from"},
                          {"file.moved", "/vol/g", "to"},      {"file.removed", "/vol/g", ""},
                          {"file.moved", "/vol/a", "from"},    {"file.moved", "/vol/a2", "to"},
                          {"file.created", "/vol/a2/b/y", ""}, {"file.created", "/vol/p", ""},
                          {"file.created", "/vol/p/q", ""},    {"file.created", "/vol/p/q/r", ""},
                          {"file.created", "/vol/p/q/r/z", ""}};
  EXPECT_EQ(ev.list(), want);
  // Events, not operations: the kernel merges a queued creation and removal
  // of one name and object into one (the two under /vol/n).
  EXPECT_EQ(r.events, 11u);
  for (const auto& [t, j] : ev.got) {
    EXPECT_EQ(j.value("tree", ""), "/vol");
    EXPECT_EQ(j.value("pid", 0), ::getpid());
  }
  EXPECT_TRUE(ev.got[1].second.value("dir_entry", false));
  EXPECT_FALSE(ev.got[2].second.contains("dir_entry"));
}

TEST(EntryTrees, ATreeOverTheDirectoryBoundIsNotWatched) {
  if (::geteuid() != 0) GTEST_SKIP() << "fanotify filesystem marks need CAP_SYS_ADMIN";
  Dir d;
  mkdir_p(d.path + "/t/a/b", 0755);
  mkdir_p(d.path + "/u", 0755);
  Events ev;
  EntryTrees e(ev.sink(), 2);
  EXPECT_EQ(e.watch(d.path + "/t", "/t", "/t"), "more than 2 directories");
  // The refused tree left nothing behind: another one still fits.
  ASSERT_EQ(e.watch(d.path + "/u", "/u", "/u"), "");
  touch(d.path + "/t/a/x");
  touch(d.path + "/u/y");
  e.drain();
  EXPECT_EQ(ev.list(), (std::vector<Ev>{{"file.created", "/u/y", ""}}));
  EXPECT_NE(e.watch("/nonexistent-entries-test", "/x", "/x").find("open /nonexistent-entries-test"),
            std::string::npos);
  // The same directory mounted twice: its events stay with the first tree.
  EXPECT_EQ(e.watch(d.path + "/u", "/u2", "/u2"), "its directory is watched already, as part of /u");
  touch(d.path + "/u/z");
  e.drain();
  EXPECT_EQ(ev.list(), (std::vector<Ev>{{"file.created", "/u/y", ""}, {"file.created", "/u/z", ""}}));
}

TEST(EntryTrees, AnOverlayUpperLayerIsReadAsOverlayfsWritesIt) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting an overlay needs root";
  Dir d;
  const std::string lower = d.path + "/l";
  mkdir_p(lower + "/a", 0755);
  write_file(lower + "/a/f", "f");
  write_file(lower + "/g", "g");
  write_file(lower + "/h", "h");
  Overlay ov(d.path, {lower});
  if (!ov.ok) GTEST_SKIP() << "mount overlay: " << std::strerror(errno);
  const std::string& m = ov.m;
  Events ev;
  EntryTrees e(ev.sink());
  ASSERT_EQ(e.watch(ov.upper, "/", "rootfs", {lower}), "");
  // A write to an image file: a copy-up of a/ and a/f, no new name.
  {
    std::string c = read_file(m + "/a/f");
    write_file(m + "/a/f", c + "more");
  }
  run_ok(::unlink((m + "/g").c_str()), "rm g");          // a whiteout
  write_file(m + "/g", "new");                           // a new file over it
  run_ok(::mkdir((m + "/n").c_str(), 0755), "mkdir n");  // new names
  touch(m + "/n/z");
  run_ok(::unlink((m + "/n/z").c_str()), "rm n/z");
  run_ok(::rename((m + "/a/f").c_str(), (m + "/a/f2").c_str()), "mv a/f a/f2");
  run_ok(::unlink((m + "/a/f2").c_str()), "rm a/f2");
  run_ok(::rmdir((m + "/a").c_str()), "rmdir a");  // a merged directory
  run_ok(::unlink((m + "/g").c_str()), "rm g again");
  run_ok(::rename((m + "/h").c_str(), (m + "/n/h").c_str()), "mv h n/h");  // an image file moved
  auto r = e.drain();
  EXPECT_EQ(r.lost, "");
  std::vector<Ev> want = {
      {"file.removed", "/g", ""},    {"file.created", "/g", ""},    {"file.created", "/n", ""},
      {"file.created", "/n/z", ""},  {"file.removed", "/n/z", ""},  {"file.moved", "/a/f", "from"},
      {"file.moved", "/a/f2", "to"}, {"file.removed", "/a/f2", ""}, {"file.removed", "/a", ""},
      {"file.removed", "/g", ""},    {"file.moved", "/h", "from"},  {"file.moved", "/n/h", "to"}};
  EXPECT_EQ(ev.list(), want);
  for (const auto& [t, j] : ev.got) EXPECT_EQ(j.value("tree", ""), "rootfs");
}

// A name a lower layer has below an opaque directory of a higher layer was
// not visible: making it is a new name, not a copy-up.
TEST(EntryTrees, AnOpaqueDirectoryHidesTheLayersBelow) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting an overlay needs root";
  Dir d;
  const std::string l1 = d.path + "/l1", l2 = d.path + "/l2";
  mkdir_p(l2 + "/x", 0755);
  mkdir_p(l2 + "/y", 0755);
  write_file(l2 + "/x/foo", "hidden");
  write_file(l2 + "/y/bar", "visible");
  mkdir_p(l1 + "/x", 0755);
  ASSERT_EQ(::setxattr((l1 + "/x").c_str(), "trusted.overlay.opaque", "y", 1, 0), 0) << std::strerror(errno);
  Overlay ov(d.path, {l1, l2});
  if (!ov.ok) GTEST_SKIP() << "mount overlay: " << std::strerror(errno);
  const std::string& m = ov.m;
  ASSERT_NE(::access((m + "/x/foo").c_str(), F_OK), 0);  // hidden indeed
  Events ev;
  EntryTrees e(ev.sink());
  ASSERT_EQ(e.watch(ov.upper, "/", "rootfs", {l1, l2}), "");
  write_file(m + "/x/foo", "new");
  write_file(m + "/y/bar", "changed");  // a copy-up
  e.drain();
  EXPECT_EQ(ev.list(), (std::vector<Ev>{{"file.created", "/x/foo", ""}}));
}
