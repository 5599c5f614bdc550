// Filesystem roots: a Merkle tree over every entry of a directory tree,
// taken by the supervisor before the container's process runs and after it
// exits, and the exact change set between the two. The tree comes from a
// hostile container: symlinks are never followed, FIFOs, sockets and
// devices are never opened, names are arbitrary bytes, depth is bounded,
// the walk holds a bounded number of descriptors (RLIMIT_NOFILE is never
// raised) and does not cross mount points (one_file_system); an entry that
// cannot be read is recorded with an error, never left out.
// Content hashing runs on all cores; a per-host cache keyed on file identity
// (device, inode, size, mtime, ctime) skips files that did not change.
// See docs/FORMATS.md, "Filesystem trees".
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attest/hash.h"
#include "attest/hashcache.h"

namespace agentshim::attest {

using json = nlohmann::json;

struct FsEntry {
  std::string path;  // raw bytes relative to the root, '/'-separated; the root itself is "."
  char type = '?';   // f d l c b p s
  uint32_t mode = 0, uid = 0, gid = 0;
  uint64_t size = 0;
  std::string sha256;  // regular files, lowercase hex
  std::string target;  // symlinks
  uint64_t rdev_major = 0, rdev_minor = 0;
  std::vector<std::pair<std::string, std::string>> xattrs;  // security.*, sorted by name
  std::string error;  // what could not be read (docs/FORMATS.md "Errors"); several joined by "; "
  Digest leaf{};
  // Not part of the leaf: the identity the entry was read under (statx at
  // the listing), for the stat-only check of a later walk. `id_valid` is
  // false when the entry moved while it was read.
  struct StatId {
    uint64_t dev = 0, ino = 0, size = 0;
    int64_t mtime_ns = 0, ctime_ns = 0;
    uint32_t mode = 0, uid = 0, gid = 0;  // mode: st_mode with the type bits
    bool operator==(const StatId&) const = default;
  } id;
  bool id_valid = false;
  bool reused = false;  // taken from the tree store (its leaf too)
  // Layer walks only (WalkOptions::overlay_xattrs), not part of the leaf:
  // "opaque" for an overlay opaque directory, "unsupported NAME" for an
  // overlay xattr whose meaning the layer merge does not implement.
  std::string overlay;
};

struct FsSnapshot {
  std::string root_dir;
  std::vector<FsEntry> entries;  // sorted bytewise by path
  Digest root{};
  uint64_t files = 0, dirs = 0, bytes_hashed = 0, cache_hits = 0;
  uint64_t reread = 0;  // files read in full because WalkOptions::reread named them
  uint64_t reused = 0;  // entries whose stored record matched their statx (the stat-only check)
  // With a tree_key (and a store that is open), the walk updates the store:
  // its entries' records and the content hashes it learned, in one write
  // transaction that goes on after the walk returned (HashCache::write_later;
  // the root does not need it). `stored`: whether it committed (a failure is
  // logged); `storable`: every entry could be stored. stored_all() waits.
  std::shared_future<bool> stored;
  bool storable = false;
  std::shared_ptr<HashCache> store_cache;  // a walk's own store (no WalkOptions::cache), open until then
  // A root assembled from a stored layer stack (snapshot_root, "Overlay
  // roots" in docs/FORMATS.md) has its root and counts but not its entries:
  // they are read only when someone needs them (materialize()), which a
  // run whose root did not change never does. Null for every other root.
  struct Deferred {
    uint64_t entries = 0, not_hashed = 0;
    std::function<std::vector<FsEntry>()> fill;  // the entries, sorted, the root entry included
  };
  std::shared_ptr<const Deferred> deferred;
};
// Every entry of `s` is in the store now: waits for the walk's store write
// (false without one).
bool stored_all(const FsSnapshot& s);
// Entries of `s`, deferred or not.
std::size_t entry_count(const FsSnapshot& s);
// Regular files of `s` recorded without a content hash (over max_file_bytes).
uint64_t not_hashed_count(const FsSnapshot& s);
// Fills in a deferred snapshot's entries (no-op otherwise). Throws what
// reading the layers again throws; the snapshot is then left deferred.
void materialize(FsSnapshot& s);

struct WalkOptions {
  unsigned threads = 0;    // 0: all cores
  std::string cache_path;  // "": no cache (policy "strict")
  // A cache the caller owns and has loaded (it saves it too): the run's one
  // cache, shared by the before and after walks and the exec observer, so
  // the file is read once per run. Overrides cache_path when set.
  std::shared_ptr<class HashCache> cache;
  // Non-empty (and a persistent cache): the stat-only check. Entries whose
  // statx identity (device, inode, size, mtime, ctime, mode, owner) equals
  // the one stored for their path by an earlier walk of the same tree are
  // taken from the store, leaf and all, without reading their xattrs, link
  // target or content; the walk then updates the store in place.
  std::string tree_key;
  // Entries changed less than this long before the walk are not stored
  // (a change within the timestamp granularity could keep its ctime).
  int64_t racy_ns = 2'000'000'000;
  // Also note overlayfs's own xattrs (trusted.overlay.*, user.overlay.*)
  // in FsEntry::overlay: a walk of an overlay layer directory.
  bool overlay_xattrs = false;
  bool one_file_system = true;
  std::vector<std::string> exclude;  // relative paths skipped with their subtree
  std::size_t max_depth = 4096;
  // Regular files larger than this are recorded without a content hash
  // (error "not hashed: larger than N bytes"): a container can make a
  // petabyte sparse file for free, and hashing it must not keep the
  // record (and the caller's `docker run`) from ever finishing. 0: no limit.
  uint64_t max_file_bytes = 0;
  // Files (device, inode) written during the run: read in full, never
  // taken from the cache or the tree store, whatever their identity says (a
  // write through a shared mapping need not move mtime or ctime). Empty:
  // none.
  std::function<bool(uint64_t dev, uint64_t ino)> reread;
  // Any file of device `dev` written during the run: an overlay mount is
  // then walked whole, not assembled from its layers (snapshot_root).
  std::function<bool(uint64_t dev)> reread_dev;
  // Called on the walking thread just before a regular file ('f') is
  // pinned (O_PATH; a hashing thread opens it) or a directory ('d') is
  // opened, with its relative path. For tests that need
  // to change the tree between the listing and the open (races a hostile
  // container could win); leave empty otherwise.
  std::function<void(const std::string& rel, char type)> before_open;
  // Called on a hashing thread after each read of a regular file's
  // content, before the file's second fstat decides whether it changed
  // meanwhile. For tests (a writer racing the read, made deterministic);
  // leave empty otherwise.
  std::function<void(const std::string& rel)> after_read;
};

std::string leaf_encoding(const FsEntry& e);
Digest leaf_hash(const FsEntry& e);  // merkle_leaf_hash("agentshim-fs-v1\n" + leaf_encoding(e))
FsSnapshot snapshot(const std::string& root_dir, const WalkOptions& opts);

// An overlay mount's layers, from /proc/self/mountinfo: `lower` top first,
// as real paths; `refused` says why the mount cannot be assembled from its
// layers ("" when it can).
struct OverlayLayers {
  std::string mount_point;
  std::vector<std::string> lower;
  std::string upper;
  std::string refused;
};
// The overlay mounted exactly at `dir`, if any.
std::optional<OverlayLayers> overlay_at(const std::string& dir);
// What a layer-assembled root says about itself (the fs.root event's
// "layers", docs/FORMATS.md "Overlay roots").
struct LayerUse {
  std::string path;
  std::string role;      // "upper" | "lower"
  std::string walk;      // "proven" (store, identity) | "checked" (stat-only walk) | "walked"
  std::string identity;  // proven/checked content-addressed layers: "dev:ino:ctime_ns"
  uint64_t entries = 0;
};
// A root's snapshot. When `dir` is an overlay whose layers can be read
// (and opts has a persistent cache and a tree_key), the merged tree is
// assembled from per-layer snapshots, image layers reused across runs; else
// (or when a layer holds overlay features the merge does not implement) a
// walk of `dir`. The root is the same either way.
// `mount_path`: where the mount is found in mountinfo when `dir` is a
// detached copy of it (/proc/self/fd/N/.); it must be the same mount (the
// same st_dev), else `dir` is walked.
FsSnapshot snapshot_root(const std::string& dir, const WalkOptions& opts, std::vector<LayerUse>* layers,
                         const std::string& mount_path = "");

// The root entry (".") of the tree at `dir`, as a walk records it (its
// leaf computed).
FsEntry root_entry(const std::string& dir);

// The tree store's value for an entry (its identity, fields and leaf), and
// back: false for anything that is not exactly such a value.
std::string encode_record(const FsEntry& e);
bool decode_record(std::string_view in, FsEntry& e);

struct FsChange {
  std::string path;
  std::string kind;  // added | modified | removed
  std::optional<Digest> old_leaf, new_leaf;
  // The content SHA-256 (hex) before and after, for regular files whose
  // content was hashed; empty otherwise.
  std::string old_sha256 = {}, new_sha256 = {};
};
std::vector<FsChange> diff(const FsSnapshot& before, const FsSnapshot& after);
json change_to_json(const FsChange& c);

}  // namespace agentshim::attest
