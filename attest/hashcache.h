// The per-host filesystem cache: content hashes keyed by file identity, and
// the stored entries of trees already walked (the stat-only check), in one
// LMDB store under <audit-dir>/cache. Shared by every supervisor on the host
// at once (LMDB's own locking), updated in place in one short write
// transaction per walk that learned something, never rewritten whole.
// Nothing in a record depends on it: a root is the same with or without it
// (docs/FORMATS.md "Hash cache").
#pragma once

#include <sys/stat.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "attest/hash.h"

namespace agentshim::attest {

class HashCache {
 public:
  struct Key {
    uint64_t dev, ino, size;
    int64_t mtime_ns, ctime_ns;
    bool operator<(const Key& o) const;
    bool operator==(const Key& o) const = default;
  };
  // `path`: the store's data file (LMDB, one file, its lock file beside it
  // as path + "-lock"); "" keeps everything in memory for this object.
  explicit HashCache(std::string path);
  ~HashCache();
  HashCache(const HashCache&) = delete;
  HashCache& operator=(const HashCache&) = delete;

  // Opens the store (once), after the writes this process queued to it
  // (write_later). A store that cannot be opened is reported and the cache
  // works in memory only: a slower walk, never a wrong one.
  void load();
  // Writes the content hashes learned since the last save in one
  // transaction (nothing to write: no transaction, no fsync), after the
  // writes queued by write_later.
  void save();
  std::optional<Digest> get(const Key& k);
  // Only what this object has found or computed (no store lookup): for a
  // second look at a key `get` already missed.
  std::optional<Digest> get_known(const Key& k);
  void put(const Key& k, const Digest& d);
  // The key of an open regular file, as the walks compute it.
  static Key key_of(const struct stat& st);

  // Tree records: per tree (any name: a host path, a layer's identity),
  // opaque values keyed by the entry's relative path. Every value carries a
  // check over its key and bytes; one that fails is dropped, never used.
  // Paths longer than kMaxRecordPath are not stored.
  static constexpr std::size_t kMaxRecordPath = 400;
  std::unordered_map<std::string, std::string> tree_records(const std::string& tree);
  // The same records in path order (byte order, as the store keeps them):
  // for a caller that reads them all, with no lookup.
  std::vector<std::pair<std::string, std::string>> tree_records_sorted(const std::string& tree);
  // One write transaction: `put` replaces or adds, `del` removes (after
  // the writes queued by write_later).
  void update_tree(const std::string& tree, const std::map<std::string, std::string>& put,
                   const std::vector<std::string>& del);
  // A tree's record as the store keeps it: the key (the tree's prefix, then
  // the path) and the value (the record, then its check). Made on any
  // thread (a walk makes them on its hashing threads), written by
  // write_later.
  struct TreeItem {
    std::string key, value;
  };
  static std::string tree_prefix(const std::string& tree);
  static TreeItem tree_item(const std::string& prefix, const std::string& path, std::string_view record);
  // One write transaction that goes on after the call returns, on a thread
  // of the store's: the content hashes learned and not yet saved, and, with
  // a `tree`, its records `put` (in key order, keys of tree_prefix(tree))
  // and the paths `del`. The store's writes in this process run one at a
  // time, in the order queued; reading a tree's records, save(),
  // update_tree() and the destructor wait for the ones queued before them
  // (another process sees a write once it committed). The future: whether
  // it committed; a failure is logged ("hash cache: ...") and its content
  // hashes are pending again (the next save() retries them).
  std::shared_future<bool> write_later(const std::string& tree, std::vector<TreeItem> put,
                                       std::vector<std::string> del);
  bool persistent() const;  // the store is open (not memory only)

 private:
  // Every record of `tree` in path order, read in one read transaction.
  void each_tree_record(const std::string& tree, const std::function<void(std::size_t)>& size_hint,
                        const std::function<void(std::string_view, std::string)>& take);
  // Waits for the writes queued by write_later (of any object of the
  // store's file in this process).
  void wait_writes();
  struct Env;
  std::string path_;
  std::shared_ptr<Env> env_;
  std::mutex mu_;  // env_ and loaded_
  // env_.get(), once load() opened the store (it is kept while this object
  // lives): read by get() without mu_.
  std::atomic<Env*> env_ptr_{nullptr};
  struct KeyHash {
    std::size_t operator()(const Key& k) const;
  };
  // This run's hashes, in shards by key, each under its own lock: the
  // hashing threads look up and add a hash per file, and one lock for all
  // made them wait for each other (futex sleeps) thousands of times a walk.
  struct Shard {
    std::mutex mu;
    std::unordered_map<Key, Digest, KeyHash> used;  // found or computed
    std::vector<std::pair<Key, Digest>> pending;    // computed and not yet in the store
  };
  static constexpr std::size_t kShards = 16;
  std::array<Shard, kShards> shards_;
  Shard& shard(const Key& k);
  std::vector<std::pair<Key, Digest>> take_pending();
  // Hashes a failed write took (take_pending) are pending again.
  void give_back(std::vector<std::pair<Key, Digest>> hashes);
  // Read transactions for store lookups (MDB_NOTLS: any thread's), one per
  // concurrent lookup, reset between uses, at most a few kept; taken and
  // given back under rtxn_mu_, used without it.
  std::mutex rtxn_mu_;
  std::vector<void*> rtxns_;  // MDB_txn*
  bool loaded_ = false;
};

}  // namespace agentshim::attest
