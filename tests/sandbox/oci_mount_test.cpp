// oci::Mount: the one reading of a config mount that the policy and the
// mounting code share (issue 12: a typeless bind, relative sources and
// last-wins options were read differently by the two).
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/util.h"
#include "sandbox/oci.h"
#include "tests/temp_dir.h"

using namespace agentshim;
using json = nlohmann::json;

namespace {

oci::Mount parse(const json& m) {
  return oci::parse_mount(m, 3);
}

std::string error_of(const json& m) {
  try {
    (void)parse(m);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(OciMount, TypelessWithBindOptionIsABind) {
  auto m = parse({{"destination", "/host"}, {"source", "/"}, {"options", {"rbind"}}});
  EXPECT_TRUE(m.is_bind());
  EXPECT_EQ(m.fstype, "bind");
  EXPECT_TRUE(m.recursive);
  // Any type with MS_BIND among the options: the kernel binds the source.
  auto t = parse({{"destination", "/x"}, {"type", "tmpfs"}, {"source", "/etc"}, {"options", {"bind"}}});
  EXPECT_TRUE(t.is_bind());
  auto n = parse({{"destination", "/x"}, {"type", "none"}, {"source", "/etc"}, {"options", {"ro", "bind"}}});
  EXPECT_TRUE(n.is_bind());
  EXPECT_FALSE(n.recursive);
  EXPECT_TRUE(parse({{"destination", "/x"}, {"type", "bind"}, {"source", "/etc"}}).is_bind());
}

TEST(OciMount, TypelessWithoutBindIsAnErrorNamingTheField) {
  std::string e = error_of({{"destination", "/host"}, {"source", "/"}});
  EXPECT_NE(e.find("mounts[3].type"), std::string::npos) << e;
  e = error_of({{"destination", "/host"}, {"source", "/"}, {"options", {"ro", "nosuid"}}});
  EXPECT_NE(e.find("mounts[3].type"), std::string::npos) << e;
  // validate_config refuses it on load.
  json cfg = json::parse(R"({"ociVersion":"1.0.2","root":{"path":"rootfs"},
    "process":{"args":["sh"],"cwd":"/"},"mounts":[{"destination":"/host","source":"/"}]})");
  try {
    oci::validate_config(cfg);
    ADD_FAILURE() << "typeless mount accepted";
  } catch (const Error& x) {
    EXPECT_NE(std::string(x.what()).find("mounts[0].type"), std::string::npos) << x.what();
  }
  // A bind needs a source.
  e = error_of({{"destination", "/x"}, {"type", "bind"}});
  EXPECT_NE(e.find("mounts[3].source"), std::string::npos) << e;
}

TEST(OciMount, OptionsApplyInOrderLastWins) {
  auto ro_rw =
      parse({{"destination", "/sys"}, {"type", "sysfs"}, {"source", "sysfs"}, {"options", {"ro", "rw"}}});
  EXPECT_FALSE(ro_rw.readonly());
  auto rw_ro =
      parse({{"destination", "/sys"}, {"type", "sysfs"}, {"source", "sysfs"}, {"options", {"rw", "ro"}}});
  EXPECT_TRUE(rw_ro.readonly());
  auto b = parse({{"destination", "/d"}, {"source", "/tmp"}, {"options", {"rbind", "ro", "rw"}}});
  EXPECT_TRUE(b.is_bind());
  EXPECT_FALSE(b.readonly());
  EXPECT_EQ(b.flags & (MS_BIND | MS_REC), 0u);  // the kind says bind; flags are what is remounted
  auto p = parse({{"destination", "/d"},
                  {"type", "tmpfs"},
                  {"source", "tmpfs"},
                  {"options", {"rprivate", "size=1m", "shared", "mode=755"}}});
  EXPECT_EQ(p.propagation, (std::vector<unsigned long>{MS_PRIVATE | MS_REC, MS_SHARED}));
  EXPECT_EQ(p.data, "size=1m,mode=755");
}

// Every spelling in the option table: the flag it sets and its opposite
// clears it, in both orders.
TEST(OciMount, EveryOptionSpelling) {
  struct P {
    const char* set;
    const char* clear;
    unsigned long flag;
  };
  const P pairs[] = {{"ro", "rw", MS_RDONLY},
                     {"nosuid", "suid", MS_NOSUID},
                     {"nodev", "dev", MS_NODEV},
                     {"noexec", "exec", MS_NOEXEC},
                     {"sync", "async", MS_SYNCHRONOUS},
                     {"mand", "nomand", MS_MANDLOCK},
                     {"noatime", "atime", MS_NOATIME},
                     {"nodiratime", "diratime", MS_NODIRATIME},
                     {"relatime", "norelatime", MS_RELATIME},
                     {"strictatime", "nostrictatime", MS_STRICTATIME},
                     {"lazytime", "nolazytime", MS_LAZYTIME},
                     {"silent", "loud", MS_SILENT}};
  for (const auto& p : pairs) {
    auto on = parse({{"destination", "/d"}, {"type", "tmpfs"}, {"options", {p.clear, p.set}}});
    auto off = parse({{"destination", "/d"}, {"type", "tmpfs"}, {"options", {p.set, p.clear}}});
    EXPECT_EQ(on.flags & p.flag, p.flag) << p.set;
    EXPECT_EQ(off.flags & p.flag, 0u) << p.clear;
    EXPECT_TRUE(on.data.empty()) << p.set;
  }
  EXPECT_EQ(parse({{"destination", "/d"}, {"type", "tmpfs"}, {"options", {"dirsync"}}}).flags & MS_DIRSYNC,
            static_cast<unsigned long>(MS_DIRSYNC));
  EXPECT_TRUE(parse({{"destination", "/d"}, {"type", "tmpfs"}, {"options", {"tmpcopyup"}}}).tmpcopyup);
  for (const char* p :
       {"private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable"})
    EXPECT_EQ(parse({{"destination", "/d"}, {"type", "tmpfs"}, {"options", {p}}}).propagation.size(), 1u)
        << p;
}

TEST(OciMount, DestinationIsCleaned) {
  EXPECT_EQ(parse({{"destination", "//a/./b/../c/"}, {"type", "tmpfs"}}).destination, "/a/c");
  EXPECT_EQ(parse({{"destination", "/../../x"}, {"type", "tmpfs"}}).destination, "/x");
  EXPECT_NE(error_of({{"destination", "rel"}, {"type", "tmpfs"}}).find("mounts[3].destination"),
            std::string::npos);
  EXPECT_EQ(oci::clean_path("/"), "/");
  EXPECT_EQ(oci::clean_path("/a//b/"), "/a/b");
}

TEST(OciMount, RelativeSourcesAreRelativeToTheBundleAndResolved) {
  testutil::TempDir t;
  mkdir_p(t.path + "/bundle/data", 0755);
  mkdir_p(t.path + "/real", 0755);
  ASSERT_EQ(::symlink((t.path + "/real").c_str(), (t.path + "/bundle/link").c_str()), 0);
  // The caller's cwd never matters.
  ASSERT_EQ(::chdir("/"), 0);
  auto m = parse({{"destination", "/d"}, {"source", "data"}, {"options", {"rbind"}}});
  oci::resolve_source(m, t.path + "/bundle");
  EXPECT_EQ(m.source, t.path + "/bundle/data");
  EXPECT_EQ(m.source_given, "data");
  auto root =
      parse({{"destination", "/d"}, {"source", "../../../../../../../../../../"}, {"options", {"rbind"}}});
  oci::resolve_source(root, t.path + "/bundle");
  EXPECT_EQ(root.source, "/");
  EXPECT_EQ(root.source_id, *oci::file_id("/"));
  auto l = parse({{"destination", "/d"}, {"source", "link/"}, {"type", "bind"}});
  oci::resolve_source(l, t.path + "/bundle");
  EXPECT_EQ(l.source, t.path + "/real");
  EXPECT_EQ(l.source_id, *oci::file_id(t.path + "/real"));
  // No bundle: a relative source is an error naming the field.
  auto r = parse({{"destination", "/d"}, {"source", "data"}, {"type", "bind"}});
  try {
    oci::resolve_source(r, "");
    ADD_FAILURE() << "relative source without a bundle accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mounts[3].source"), std::string::npos) << e.what();
  }
  // A missing source: resolved as far as it exists, no identity.
  auto miss = parse({{"destination", "/d"}, {"source", "link/no/../such"}, {"type", "bind"}});
  oci::resolve_source(miss, t.path + "/bundle");
  EXPECT_EQ(miss.source, t.path + "/real/such");
  EXPECT_EQ(miss.source_id, oci::FileId{});
}

TEST(OciMount, IdentityChain) {
  testutil::TempDir t;
  mkdir_p(t.path + "/a/b", 0755);
  ASSERT_EQ(::symlink((t.path + "/a").c_str(), (t.path + "/l").c_str()), 0);
  auto c = oci::identity_chain(t.path + "/l/b");
  ASSERT_GE(c.size(), 3u);
  EXPECT_EQ(c[0], *oci::file_id(t.path + "/a/b"));
  EXPECT_EQ(c[1], *oci::file_id(t.path + "/a"));
  EXPECT_EQ(c.back(), *oci::file_id("/"));
  EXPECT_TRUE(oci::identity_chain(t.path + "/nope").empty());
}

TEST(OciMount, MountsOfAConfig) {
  json cfg = {{"ociVersion", "1.0.2"},
              {"root", {{"path", "rootfs"}}},
              {"process", {{"args", {"sh"}}}},
              {"mounts",
               {{{"destination", "/proc"}, {"type", "proc"}, {"source", "proc"}},
                {{"destination", "/h"}, {"source", "/"}, {"options", {"rbind", "ro", "rw"}}}}}};
  auto ms = oci::parse_spec(cfg).mounts;
  ASSERT_EQ(ms.size(), 2u);
  EXPECT_FALSE(ms[0].is_bind());
  EXPECT_EQ(ms[1].index, 1u);
  EXPECT_EQ(ms[1].where(), "mounts[1]");
  EXPECT_TRUE(ms[1].is_bind());
  EXPECT_FALSE(ms[1].readonly());
  cfg.erase("mounts");
  EXPECT_TRUE(oci::parse_spec(cfg).mounts.empty());
}
