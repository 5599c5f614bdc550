// A root that is an overlay mount, assembled from its layers: the image's
// lower layers (which Docker, containerd and Podman never change once
// unpacked) are reused across runs from the tree store, the container's
// upper layer is walked. The result is the tree a walk of the merged mount
// gives, entry for entry (docs/FORMATS.md "Overlay roots").
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdlib>
#include <unordered_map>
#include <unordered_set>

#include "attest/fstree.h"
#include "common/error.h"
#include "common/log.h"
#include "common/mountinfo.h"
#include "common/util.h"

namespace agentshim::attest {

namespace {

std::string real_path(const std::string& p) {
  char* r = ::realpath(p.c_str(), nullptr);
  if (!r) return "";
  std::string out(r);
  ::free(r);
  return out;
}

// overlayfs escapes ':' in a lowerdir list as "\:".
std::vector<std::string> split_lower(const std::string& v) {
  std::vector<std::string> out(1);
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '\\' && i + 1 < v.size()) {
      out.back() += v[++i];
    } else if (v[i] == ':') {
      out.emplace_back();
    } else {
      out.back() += v[i];
    }
  }
  return out;
}

bool all_of_class(const std::string& s, int (*cls)(int)) {
  if (s.empty()) return false;
  for (unsigned char c : s)
    if (!cls(c) || std::isupper(c)) return false;
  return true;
}

// A layer directory of a content-addressed store, by its place:
//   <root>/overlay2/<64 hex>/diff                                (Docker)
//   <root>/overlay/<64 hex>/diff                                 (Podman, CRI-O: containers/storage)
//   <root>/io.containerd.snapshotter.v1.overlayfs/snapshots/<n>/fs (containerd)
// Docker's per-container "<id>-init" layer and any other directory are not.
bool content_addressed(const std::string& path) {
  auto parts = split(path, '/');
  const std::size_t n = parts.size();
  if (n < 4) return false;
  if (parts[n - 1] == "diff" && (parts[n - 3] == "overlay2" || parts[n - 3] == "overlay"))
    return parts[n - 2].size() == 64 && all_of_class(parts[n - 2], std::isxdigit);
  if (parts[n - 1] == "fs" && parts[n - 3] == "snapshots" && n >= 5 &&
      parts[n - 4] == "io.containerd.snapshotter.v1.overlayfs")
    return all_of_class(parts[n - 2], std::isdigit);
  return false;
}

const char* const kComplete = "/complete";  // no entry's path starts with '/'

bool by_path(const FsEntry& a, const FsEntry& b) {
  return a.path < b.path;
}

// `recs` in path order (the store's): the entries come out sorted.
FsSnapshot from_records(std::vector<std::pair<std::string, std::string>> recs, bool& ok) {
  FsSnapshot s;
  ok = false;
  auto m = std::find_if(recs.begin(), recs.end(), [](const auto& r) { return r.first == kComplete; });
  if (m == recs.end() || m->second != std::to_string(recs.size() - 1)) return s;
  s.entries.reserve(recs.size() - 1);
  for (auto& [path, body] : recs) {
    if (path == kComplete) continue;
    FsEntry e;
    if (!decode_record(body, e)) return FsSnapshot{};
    e.path = std::move(path);
    e.reused = true;
    if (e.type == 'f') s.files++;
    if (e.type == 'd') s.dirs++;
    s.entries.push_back(std::move(e));
  }
  s.reused = s.entries.size();
  // (The store's order is byte order, std::string's: a check, not a sort.)
  if (!std::is_sorted(s.entries.begin(), s.entries.end(), by_path))
    std::sort(s.entries.begin(), s.entries.end(), by_path);
  ok = true;
  return s;
}

FsSnapshot layer_snapshot(const std::string& path, const WalkOptions& opts, LayerUse& use) {
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0 || !S_ISDIR(st.st_mode)) throw_errno("overlay layer: stat " + path);
  WalkOptions lo = opts;
  lo.overlay_xattrs = true;
  lo.exclude.clear();
  use.path = path;
  use.identity.clear();
  if (content_addressed(path)) {
    use.identity =
        std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + ":" +
        std::to_string(static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000LL + st.st_ctim.tv_nsec);
    lo.tree_key = "layer:" + path + "\n" + use.identity;
    bool ok = false;
    FsSnapshot s = from_records(lo.cache->tree_records_sorted(lo.tree_key), ok);
    if (ok) {
      use.walk = "proven";
      use.entries = s.entries.size();
      return s;
    }
  } else {
    lo.tree_key = "tree:" + path;
  }
  FsSnapshot s = snapshot(path, lo);
  use.walk = s.reused == s.entries.size() ? "checked" : "walked";
  use.entries = s.entries.size();
  if (!use.identity.empty() && s.stored_all)
    lo.cache->update_tree(lo.tree_key, {{kComplete, std::to_string(s.entries.size())}}, {});
  return s;
}

bool whiteout(const FsEntry& e) {
  return e.type == 'c' && e.rdev_major == 0 && e.rdev_minor == 0;
}

std::string parent_of(const std::string& p) {
  auto slash = p.rfind('/');
  return slash == std::string::npos ? "." : p.substr(0, slash);
}

// Overlay lookup, top layer first: a path comes from the topmost layer that
// has it, unless a layer above hides it: a whiteout or non-directory at the
// path or at an ancestor, or an opaque directory at an ancestor. A
// directory's own attributes are its topmost copy's.
std::vector<FsEntry> merge(std::vector<FsSnapshot>& layers, bool& supported) {
  supported = true;
  enum : char { kMerge = 'D', kHide = 'X' };
  std::unordered_map<std::string, char> seen;  // path -> what the layers above leave for those below
  std::vector<FsEntry> out;
  for (auto& layer : layers) {
    // Each layer's entries are sorted, so what it adds is a sorted run:
    // merged into the runs before it, `out` stays sorted.
    const std::size_t run = out.size();
    std::unordered_set<std::string> dead;  // this layer's directories whose contents are hidden
    for (auto& e : layer.entries) {
      if (e.path == ".") continue;
      if (starts_with(e.overlay, "unsupported")) {
        supported = false;
        return {};
      }
      const bool dir = e.type == 'd';
      if (dead.count(parent_of(e.path))) {
        if (dir) dead.insert(e.path);
        continue;
      }
      auto it = seen.find(e.path);
      if (it == seen.end()) {
        const bool opaque = e.overlay == "opaque";
        seen.emplace(e.path, dir && !opaque ? kMerge : kHide);
        if (!whiteout(e)) out.push_back(std::move(e));
        continue;
      }
      if (it->second == kHide) {
        if (dir) dead.insert(e.path);
        continue;
      }
      // Below a directory that merges: a directory merges on (an opaque
      // one stops the layers below it), anything else stops them.
      if (!dir || e.overlay == "opaque") it->second = kHide;
    }
    if (!std::is_sorted(out.begin() + static_cast<std::ptrdiff_t>(run), out.end(), by_path))
      std::sort(out.begin() + static_cast<std::ptrdiff_t>(run), out.end(), by_path);
    std::inplace_merge(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(run), out.end(), by_path);
  }
  return out;
}

}  // namespace

std::optional<OverlayLayers> overlay_at(const std::string& dir) {
  const std::string real = real_path(dir);
  if (real.empty()) return std::nullopt;
  std::vector<MountInfo> mounts;
  try {
    mounts = read_mountinfo();
  } catch (const std::exception&) {
    return std::nullopt;
  }
  const MountInfo* m = nullptr;
  for (const auto& x : mounts)
    if (x.mount_point == real) m = &x;  // the last: the one on top
  if (!m || m->fstype != "overlay") return std::nullopt;
  OverlayLayers l;
  l.mount_point = real;
  auto refuse = [&l](const std::string& why) {
    if (l.refused.empty()) l.refused = why;
  };
  if (m->root != "/") refuse("a bind mount of part of an overlay");
  std::vector<std::string> lower;
  for (const auto& o : split(m->super_options, ',')) {
    if (starts_with(o, "lowerdir=")) {
      std::string v = o.substr(9);
      if (v.find("::") != std::string::npos) refuse("data-only lower layers");
      for (auto& p : split_lower(v)) lower.push_back(p);
    } else if (starts_with(o, "lowerdir+=")) {
      lower.push_back(o.substr(10));
    } else if (starts_with(o, "datadir+=")) {
      refuse("data-only lower layers");
    } else if (starts_with(o, "upperdir=")) {
      l.upper = o.substr(9);
    } else if (o == "metacopy=on") {
      refuse("metacopy=on");
    }
  }
  if (lower.empty()) refuse("no lowerdir in the mount options");
  for (auto& p : lower) {
    if (p.empty() || p[0] != '/') {
      refuse("a relative lowerdir");
      continue;
    }
    std::string r = real_path(p);
    if (r.empty()) refuse("lowerdir " + p + " cannot be resolved");
    l.lower.push_back(r.empty() ? p : r);
  }
  if (!l.upper.empty()) {
    std::string r = real_path(l.upper);
    if (r.empty() || l.upper[0] != '/') refuse("upperdir " + l.upper + " cannot be resolved");
    l.upper = r.empty() ? l.upper : r;
  }
  return l;
}

FsSnapshot snapshot_root(const std::string& dir, const WalkOptions& opts, std::vector<LayerUse>* used,
                         const std::string& mount_path) {
  auto whole = [&] { return snapshot(dir, opts); };
  if (opts.tree_key.empty() || !opts.exclude.empty()) return whole();
  // Files of the mount written during the run: their layer entries carry
  // the layer's identities, not the mount's, so the mount is walked (and
  // those files read in full, WalkOptions::reread).
  if (opts.reread_dev) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) == 0 && opts.reread_dev(static_cast<uint64_t>(st.st_dev))) return whole();
  }
  const std::string& where = mount_path.empty() ? dir : mount_path;
  auto layers = overlay_at(where);
  if (!layers) return whole();
  if (where != dir) {
    struct stat a {
    }, b{};
    if (::stat(dir.c_str(), &a) < 0 || ::stat(layers->mount_point.c_str(), &b) < 0 || a.st_dev != b.st_dev)
      return whole();  // not (or no longer) the mount `dir` is a copy of
  }
  if (!layers->refused.empty()) {
    log::debug("record: " + dir + " walked whole: " + layers->refused);
    return whole();
  }
  WalkOptions lo = opts;
  if (!lo.cache) {
    lo.cache = std::make_shared<HashCache>(opts.cache_path);
    lo.cache->load();
  }
  if (!lo.cache->persistent()) return whole();
  try {
    // The mount's own root entry first: a client may unmount it as soon as
    // the container exits (Docker does), while its layers stay.
    FsEntry root = root_entry(dir);
    std::vector<FsSnapshot> snaps;
    std::vector<LayerUse> uses;
    if (!layers->upper.empty()) {
      LayerUse u;
      u.role = "upper";
      u.path = layers->upper;
      WalkOptions uo = lo;
      uo.overlay_xattrs = true;
      uo.tree_key.clear();  // the container's own layer: walked
      snaps.push_back(snapshot(layers->upper, uo));
      u.walk = "walked";
      u.entries = snaps.back().entries.size();
      uses.push_back(u);
    }
    for (const auto& p : layers->lower) {
      LayerUse u;
      u.role = "lower";
      snaps.push_back(layer_snapshot(p, lo, u));
      uses.push_back(u);
    }
    bool supported = true;
    FsSnapshot s;
    s.root_dir = dir;
    for (const auto& l : snaps) {
      s.bytes_hashed += l.bytes_hashed;
      s.cache_hits += l.cache_hits;
      s.reused += l.reused;
    }
    std::vector<FsEntry> merged = merge(snaps, supported);
    if (!supported) {
      log::debug("record: " + dir +
                 " walked whole: a layer uses overlay features the merge does not implement");
      return whole();
    }
    s.dirs = 1;
    for (const auto& e : merged) {
      if (e.type == 'f') s.files++;
      if (e.type == 'd') s.dirs++;
    }
    // `merged` is sorted; "." goes where it sorts (not always first: names
    // may start with '-', '!', ... which sort below '.').
    auto at = std::lower_bound(merged.begin(), merged.end(), root, by_path);
    merged.insert(at, std::move(root));
    s.entries = std::move(merged);
    std::vector<Digest> leaves;
    leaves.reserve(s.entries.size());
    for (const auto& e : s.entries) leaves.push_back(e.leaf);
    s.root = merkle_root(leaves);
    if (used) *used = std::move(uses);
    return s;
  } catch (const std::exception& e) {
    log::warn("record: " + dir + " walked whole: its layers could not be read: " + e.what());
    return whole();
  }
}

}  // namespace agentshim::attest
