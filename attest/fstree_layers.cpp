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

// A lower layer: where it is, what it says about itself in the record,
// and its entries once read.
struct Lower {
  LayerUse use;
  std::string tree_key;
  bool content_addressed = false;
  FsSnapshot snap;
  bool read = false;
};

WalkOptions layer_options(const WalkOptions& opts) {
  WalkOptions lo = opts;
  lo.overlay_xattrs = true;
  lo.exclude.clear();
  return lo;
}

// Names a lower layer: a content-addressed one by its identity (its
// entries are the store's, once stored), any other by its path.
Lower identify(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0 || !S_ISDIR(st.st_mode)) throw_errno("overlay layer: stat " + path);
  Lower l;
  l.use.role = "lower";
  l.use.path = path;
  l.content_addressed = content_addressed(path);
  if (l.content_addressed) {
    l.use.identity =
        std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + ":" +
        std::to_string(static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000LL + st.st_ctim.tv_nsec);
    l.tree_key = "layer:" + path + "\n" + l.use.identity;
  } else {
    l.tree_key = "tree:" + path;
  }
  return l;
}

// Reads a lower layer: a content-addressed one from the store when its set
// is complete there, else walked (the stat-only check against its last walk).
void read_layer(Lower& l, const WalkOptions& opts) {
  WalkOptions lo = layer_options(opts);
  lo.tree_key = l.tree_key;
  l.read = true;
  if (l.content_addressed) {
    bool ok = false;
    l.snap = from_records(lo.cache->tree_records_sorted(lo.tree_key), ok);
    if (ok) {
      l.use.walk = "proven";
      l.use.entries = l.snap.entries.size();
      return;
    }
  }
  l.snap = snapshot(l.use.path, lo);
  l.use.walk = l.snap.reused == l.snap.entries.size() ? "checked" : "walked";
  l.use.entries = l.snap.entries.size();
  if (l.content_addressed && stored_all(l.snap))
    lo.cache->update_tree(lo.tree_key, {{kComplete, std::to_string(l.snap.entries.size())}}, {});
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

bool over_limit(const FsEntry& e) {
  return e.type == 'f' && e.error.find("not hashed: larger than") != std::string::npos;
}

// The tree's entries: the layers merged, the mount's root entry where it
// sorts ("." is not always first: names may start with '-', '!', ...).
// Empty and `supported` false when a layer uses what the merge does not
// implement.
std::vector<FsEntry> assemble(FsEntry root, std::vector<FsSnapshot>& layers, bool& supported) {
  std::vector<FsEntry> merged = merge(layers, supported);
  if (!supported) return {};
  auto at = std::lower_bound(merged.begin(), merged.end(), root, by_path);
  merged.insert(at, std::move(root));
  return merged;
}

// What decides a layer-assembled root: the mount's root entry, the walk's
// content-hash limit and, top first, each layer: a content-addressed one
// by its identity (its entries never change), any other by its entries'
// leaves (a leaf covers its path) and overlay attributes. Equal inputs give
// the same entries, so the same root.
std::string stack_key(const FsEntry& root, const WalkOptions& opts, const FsSnapshot* upper,
                      const std::vector<Lower>& lowers) {
  Sha256 h;
  h.update("agentshim-layer-stack-v1\n");
  h.update(root.leaf.data(), root.leaf.size());
  h.update(std::to_string(opts.max_file_bytes) + "\n");
  auto entries = [&h](const char* role, const FsSnapshot& s) {
    h.update(std::string(role) + " entries " + std::to_string(s.entries.size()) + "\n");
    for (const auto& e : s.entries) {
      h.update(e.leaf.data(), e.leaf.size());
      h.update(std::to_string(e.overlay.size()) + ":" + e.overlay);
    }
  };
  if (upper) entries("upper", *upper);
  for (const auto& l : lowers) {
    if (l.content_addressed)
      h.update("lower identity " + std::to_string(l.tree_key.size()) + ":" + l.tree_key);
    else
      entries("lower", l.snap);
  }
  return "stack:" + hex(h.finish());
}

// The store's value for a stack: "v1 ROOT ENTRIES FILES DIRS NOT_HASHED"
// and each content-addressed layer's entry count, top first.
struct StackValue {
  Digest root{};
  uint64_t entries = 0, files = 0, dirs = 0, not_hashed = 0;
  std::vector<uint64_t> layer_entries;
};

std::string encode_stack(const StackValue& v) {
  std::string out = "v1 " + hex(v.root);
  for (uint64_t n : {v.entries, v.files, v.dirs, v.not_hashed}) out += " " + std::to_string(n);
  for (uint64_t n : v.layer_entries) out += " " + std::to_string(n);
  return out;
}

std::optional<StackValue> decode_stack(const std::vector<std::pair<std::string, std::string>>& recs,
                                       std::size_t layers) {
  if (recs.size() != 1 || recs[0].first != "v") return std::nullopt;
  auto f = split(recs[0].second, ' ');
  if (f.size() != 6 + layers || f[0] != "v1" || f[1].size() != 64 || !all_of_class(f[1], std::isxdigit))
    return std::nullopt;
  StackValue v;
  v.root = from_hex(f[1]);
  std::vector<uint64_t> n;
  for (std::size_t i = 2; i < f.size(); ++i) {
    if (!all_of_class(f[i], std::isdigit) || f[i].size() > 19) return std::nullopt;
    n.push_back(std::stoull(f[i]));
  }
  v.entries = n[0];
  v.files = n[1];
  v.dirs = n[2];
  v.not_hashed = n[3];
  v.layer_entries.assign(n.begin() + 4, n.end());
  return v;
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
  auto plain = [&](const char* why) {
    log::debug("record: " + dir + " walked whole: " + why);
    return whole();
  };
  if (opts.tree_key.empty()) return whole();
  if (!opts.exclude.empty()) return plain("paths excluded");
  // Files of the mount written during the run: their layer entries carry
  // the layer's identities, not the mount's, so the mount is walked (and
  // those files read in full, WalkOptions::reread).
  if (opts.reread_dev) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) == 0 && opts.reread_dev(static_cast<uint64_t>(st.st_dev)))
      return plain("a file of the mount was written");
  }
  const std::string& where = mount_path.empty() ? dir : mount_path;
  auto layers = overlay_at(where);
  if (!layers) return plain("not an overlay mount point");
  if (where != dir) {
    struct stat a {
    }, b{};
    if (::stat(dir.c_str(), &a) < 0 || ::stat(layers->mount_point.c_str(), &b) < 0 || a.st_dev != b.st_dev)
      return plain("not (or no longer) the mount it is a copy of");
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
  if (!lo.cache->persistent()) return plain("the store is not open");
  try {
    // The mount's own root entry first: a client may unmount it as soon as
    // the container exits (Docker does), while its layers stay.
    FsEntry root = root_entry(dir);
    std::optional<FsSnapshot> upper;
    LayerUse upper_use;
    if (!layers->upper.empty()) {
      upper_use.role = "upper";
      upper_use.path = layers->upper;
      WalkOptions uo = layer_options(lo);
      uo.tree_key.clear();  // the container's own layer: walked
      upper = snapshot(layers->upper, uo);
      upper_use.walk = "walked";
      upper_use.entries = upper->entries.size();
    }
    std::vector<Lower> lowers;
    for (const auto& p : layers->lower) {
      lowers.push_back(identify(p));
      if (!lowers.back().content_addressed) read_layer(lowers.back(), lo);
    }
    std::size_t addressed = 0;
    for (const auto& l : lowers) addressed += l.content_addressed;
    FsSnapshot s;
    s.root_dir = dir;
    auto add_walk_counts = [&s](const FsSnapshot& l) {
      s.bytes_hashed += l.bytes_hashed;
      s.cache_hits += l.cache_hits;
      s.reused += l.reused;
    };
    if (upper) add_walk_counts(*upper);
    std::vector<LayerUse> uses;
    if (upper) uses.push_back(upper_use);

    // A stack seen before: its root and counts, no entry read.
    const std::string key = stack_key(root, lo, upper ? &*upper : nullptr, lowers);
    if (auto v = decode_stack(lo.cache->tree_records_sorted(key), addressed)) {
      std::size_t k = 0;
      for (auto& l : lowers) {
        if (l.content_addressed) {
          l.use.walk = "proven";
          l.use.entries = v->layer_entries[k++];
          s.reused += l.use.entries;
        } else {
          add_walk_counts(l.snap);
        }
        uses.push_back(l.use);
      }
      s.root = v->root;
      s.files = v->files;
      s.dirs = v->dirs;
      auto d = std::make_shared<FsSnapshot::Deferred>();
      d->entries = v->entries;
      d->not_hashed = v->not_hashed;
      // Read later, the layers give the same entries: the image's never
      // change, the others' and the upper layer's are kept from now.
      d->fill = [root, upper, lowers, lo, want = v->root, dir]() {
        std::vector<FsSnapshot> snaps;
        if (upper) snaps.push_back(*upper);
        for (const auto& layer : lowers) {
          Lower l = layer;
          if (!l.read) read_layer(l, lo);
          snaps.push_back(std::move(l.snap));
        }
        bool supported = true;
        std::vector<FsEntry> out = assemble(root, snaps, supported);
        std::vector<Digest> leaves;
        leaves.reserve(out.size());
        for (const auto& e : out) leaves.push_back(e.leaf);
        if (!supported || merkle_root(leaves) != want)
          throw Error("overlay root " + dir + ": its layers no longer give the root recorded for them");
        return out;
      };
      s.deferred = std::move(d);
      if (used) *used = std::move(uses);
      return s;
    }

    std::vector<FsSnapshot> snaps;
    if (upper) snaps.push_back(std::move(*upper));  // not used after this
    bool storable = true;
    StackValue v;
    for (auto& l : lowers) {
      if (!l.read) read_layer(l, lo);
      if (l.content_addressed) {
        v.layer_entries.push_back(l.snap.entries.size());
        storable = storable && (l.use.walk == "proven" || stored_all(l.snap));
      }
      add_walk_counts(l.snap);
      uses.push_back(l.use);
      snaps.push_back(std::move(l.snap));
    }
    bool supported = true;
    std::vector<FsEntry> merged = assemble(std::move(root), snaps, supported);
    if (!supported) {
      log::debug("record: " + dir +
                 " walked whole: a layer uses overlay features the merge does not implement");
      return whole();
    }
    for (const auto& e : merged) {
      if (e.type == 'f') s.files++;
      if (e.type == 'd') s.dirs++;
      if (over_limit(e)) v.not_hashed++;
    }
    s.entries = std::move(merged);
    std::vector<Digest> leaves;
    leaves.reserve(s.entries.size());
    for (const auto& e : s.entries) leaves.push_back(e.leaf);
    s.root = merkle_root(leaves);
    if (storable) {
      v.root = s.root;
      v.entries = s.entries.size();
      v.files = s.files;
      v.dirs = s.dirs;
      lo.cache->update_tree(key, {{"v", encode_stack(v)}}, {});
    }
    if (used) *used = std::move(uses);
    return s;
  } catch (const std::exception& e) {
    log::warn("record: " + dir + " walked whole: its layers could not be read: " + e.what());
    return whole();
  }
}

std::size_t entry_count(const FsSnapshot& s) {
  return s.deferred ? s.deferred->entries : s.entries.size();
}

uint64_t not_hashed_count(const FsSnapshot& s) {
  if (s.deferred) return s.deferred->not_hashed;
  return static_cast<uint64_t>(std::count_if(s.entries.begin(), s.entries.end(), over_limit));
}

void materialize(FsSnapshot& s) {
  if (!s.deferred) return;
  s.entries = s.deferred->fill();
  s.deferred.reset();
}

}  // namespace agentshim::attest
