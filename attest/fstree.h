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

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <memory>
#include <sys/stat.h>
#include <string>
#include <utility>
#include <vector>

#include "attest/hash.h"

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
};

struct FsSnapshot {
  std::string root_dir;
  std::vector<FsEntry> entries;  // sorted bytewise by path
  Digest root{};
  uint64_t files = 0, dirs = 0, bytes_hashed = 0, cache_hits = 0;
};

struct WalkOptions {
  unsigned threads = 0;    // 0: all cores
  std::string cache_path;  // "": no cache (policy "strict")
  // A cache the caller owns and has loaded (it saves it too): the run's one
  // cache, shared by the before and after walks and the exec observer, so
  // the file is read once per run. Overrides cache_path when set.
  std::shared_ptr<class HashCache> cache;
  bool one_file_system = true;
  std::vector<std::string> exclude;  // relative paths skipped with their subtree
  std::size_t max_depth = 4096;
  // Regular files larger than this are recorded without a content hash
  // (error "not hashed: larger than N bytes"): a container can make a
  // petabyte sparse file for free, and hashing it must not keep the
  // record (and the caller's `docker run`) from ever finishing. 0: no limit.
  uint64_t max_file_bytes = 0;
  // Called on the walking thread just before a regular file ('f') or a
  // directory ('d') is opened, with its relative path. For tests that need
  // to change the tree between the listing and the open (races a hostile
  // container could win); leave empty otherwise.
  std::function<void(const std::string& rel, char type)> before_open;
};

std::string leaf_encoding(const FsEntry& e);
Digest leaf_hash(const FsEntry& e);  // merkle_leaf_hash("agentshim-fs-v1\n" + leaf_encoding(e))
FsSnapshot snapshot(const std::string& root_dir, const WalkOptions& opts);

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

// Content hashes keyed by file identity. The file is a binary table of
// fixed-size records behind a header and a trailing SHA-256 of the body; a
// file that does not check out is ignored (and rebuilt), never half-trusted.
class HashCache {
 public:
  struct Key {
    uint64_t dev, ino, size;
    int64_t mtime_ns, ctime_ns;
    bool operator<(const Key& o) const;
    bool operator==(const Key& o) const = default;
  };
  explicit HashCache(std::string path);
  void load();
  void save();  // entries used since load, then older ones, bounded
  std::optional<Digest> get(const Key& k);
  void put(const Key& k, const Digest& d);
  // The key of an open regular file, as the walks compute it.
  static Key key_of(const struct stat& st);

 private:
  std::string path_;
  std::mutex mu_;
  std::map<Key, Digest> old_, used_;
  bool dirty_ = false;  // save() has something to write
};

}  // namespace agentshim::attest
