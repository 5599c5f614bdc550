#include "attest/hashcache.h"

#include <lmdb.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <system_error>
#include <thread>
#include <tuple>

#include "common/error.h"
#include "common/log.h"
#include "common/parallel.h"

namespace agentshim::attest {

bool HashCache::Key::operator<(const Key& o) const {
  return std::tie(dev, ino, size, mtime_ns, ctime_ns) <
         std::tie(o.dev, o.ino, o.size, o.mtime_ns, o.ctime_ns);
}

std::size_t HashCache::KeyHash::operator()(const Key& k) const {
  // (Identities are not chosen to collide: a container can make many files
  // of one size and time, whose inode numbers still differ.)
  uint64_t h = k.ino * 0x9E3779B97F4A7C15ull;
  h ^= (k.dev + (h << 6) + (h >> 2));
  h ^= (k.size + (h << 6) + (h >> 2));
  h ^= (static_cast<uint64_t>(k.mtime_ns) + (h << 6) + (h >> 2));
  h ^= (static_cast<uint64_t>(k.ctime_ns) + (h << 6) + (h >> 2));
  return static_cast<std::size_t>(h);
}

HashCache::Key HashCache::key_of(const struct stat& st) {
  return Key{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
             static_cast<uint64_t>(st.st_size),
             static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec,
             static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000LL + st.st_ctim.tv_nsec};
}

namespace {
// The address space the store may grow to (a sparse mapping, not memory).
// When it is full the store is emptied and refilled: a stale entry can
// never hit (its key holds the file's ctime), so emptying only costs
// re-hashing.
constexpr std::size_t kMapSize = std::size_t{4} << 30;
// Reader slots: concurrent supervisors, each keeping at most kPooledReaders
// read transactions (HashCache::get) and one for a tree's records.
constexpr unsigned kMaxReaders = 1024;
constexpr std::size_t kPooledReaders = 4;
constexpr std::size_t kCheck = 16;  // bytes of SHA-256 over key and value bytes, after the value

std::string mdb_err(const std::string& what, int rc) {
  return what + ": " + mdb_strerror(rc);
}

std::string file_key(const HashCache::Key& k) {
  uint64_t f[5] = {k.dev, k.ino, k.size, static_cast<uint64_t>(k.mtime_ns),
                   static_cast<uint64_t>(k.ctime_ns)};
  return std::string(reinterpret_cast<const char*>(f), sizeof f);
}

Digest check_of(std::string_view key, std::string_view body) {
  Sha256 h;
  h.update(key);
  h.update(body);
  return h.finish();
}
std::string checked(std::string_view key, std::string_view body) {
  Digest c = check_of(key, body);
  std::string out;
  out.reserve(body.size() + kCheck);
  out += body;
  out.append(reinterpret_cast<const char*>(c.data()), kCheck);
  return out;
}
// The value's body when its check holds.
std::optional<std::string_view> unchecked(std::string_view key, std::string_view val) {
  if (val.size() < kCheck) return std::nullopt;
  std::string_view body = val.substr(0, val.size() - kCheck);
  Digest c = check_of(key, body);
  if (std::memcmp(c.data(), val.data() + body.size(), kCheck) != 0) return std::nullopt;
  return body;
}

MDB_val val_of(std::string_view s) {
  return MDB_val{s.size(), const_cast<char*>(s.data())};
}
std::string_view view_of(const MDB_val& v) {
  return {static_cast<const char*>(v.mv_data), v.mv_size};
}

// Content hashes into the files table (key: the file's identity; value:
// the digest with its check), in the order given (a later one wins).
int write_hashes(MDB_txn* txn, MDB_dbi files, const std::vector<std::pair<HashCache::Key, Digest>>& hashes) {
  for (const auto& [k, d] : hashes) {
    const std::string key = file_key(k);
    const std::string val = checked(key, std::string_view(reinterpret_cast<const char*>(d.data()), 32));
    MDB_val kv = val_of(key), vv = val_of(val);
    if (int rc = mdb_put(txn, files, &kv, &vv, 0)) return rc;
  }
  return 0;
}

// A tree's records removed (`del`: paths under `prefix`) and written
// (`put`: stored keys and checked values) in transaction `txn`.
int write_tree_items(MDB_txn* txn, MDB_dbi trees, const std::string& prefix,
                     const std::vector<std::string>& del, const std::vector<HashCache::TreeItem>& put) {
  for (const auto& p : del) {
    const std::string key = prefix + p;
    MDB_val k = val_of(key);
    int rc = mdb_del(txn, trees, &k, nullptr);
    if (rc && rc != MDB_NOTFOUND) return rc;
  }
  for (const auto& item : put) {
    MDB_val k = val_of(item.key), v = val_of(item.value);
    if (int rc = mdb_put(txn, trees, &k, &v, 0)) return rc;
  }
  return 0;
}

}  // namespace

// One LMDB environment per data file per process (LMDB's rule: a process
// must not open the same environment twice), with the thread of its
// deferred writes (HashCache::write_later).
struct HashCache::Env {
  MDB_env* env = nullptr;
  MDB_dbi files = 0, trees = 0;
  std::string path;
  ~Env() {
    wait();
    if (env) mdb_env_close(env);
  }

  // The deferred writes: each on a thread of its own that first joins the
  // one queued before it, so they run one at a time, in order, and joining
  // the last one waits for them all.
  struct Joined {
    std::thread t;
    Joined() = default;
    Joined(Joined&&) = default;
    Joined& operator=(Joined&&) = default;
    ~Joined() {
      if (t.joinable()) t.join();
    }
  };
  std::mutex writer_mu;  // writer (held while joining it: the writes take no lock of the Env)
  Joined writer;
  template <class Fn>
  void later(Fn fn) {
    auto task = std::make_shared<Fn>(std::move(fn));
    std::lock_guard<std::mutex> lk(writer_mu);
    try {
      writer.t = std::thread([prev = std::move(writer), task]() mutable {
        if (prev.t.joinable()) prev.t.join();
        (*task)();
      });
    } catch (const std::system_error&) {
      // No thread to be had (the earlier writes are joined by now): the
      // write is done here.
      (*task)();
    }
  }
  void wait() {
    std::lock_guard<std::mutex> lk(writer_mu);
    if (writer.t.joinable()) writer.t.join();
  }

  static std::shared_ptr<Env> open(const std::string& path) {
    static std::mutex mu;
    static std::map<std::string, std::weak_ptr<Env>> open_envs;
    std::lock_guard<std::mutex> lk(mu);
    if (auto e = open_envs[path].lock()) return e;
    auto e = std::make_shared<Env>();
    e->path = path;
    int rc = mdb_env_create(&e->env);
    if (rc) throw Error(mdb_err("hash cache " + path + ": mdb_env_create", rc));
    mdb_env_set_maxdbs(e->env, 4);
    mdb_env_set_mapsize(e->env, kMapSize);
    mdb_env_set_maxreaders(e->env, kMaxReaders);
    // NOMETASYNC: a crash may lose the last transaction, never the store's
    // consistency (a cache: losing entries costs re-hashing only).
    rc = mdb_env_open(e->env, path.c_str(), MDB_NOSUBDIR | MDB_NOTLS | MDB_NORDAHEAD | MDB_NOMETASYNC, 0600);
    if (rc) {
      mdb_env_close(e->env);
      e->env = nullptr;
      throw Error(mdb_err("hash cache " + path + ": open", rc));
    }
    int dead = 0;
    mdb_reader_check(e->env, &dead);  // slots of supervisors that died mid-read
    MDB_txn* txn = nullptr;
    rc = mdb_txn_begin(e->env, nullptr, 0, &txn);
    if (rc) throw Error(mdb_err("hash cache " + path + ": begin", rc));
    if ((rc = mdb_dbi_open(txn, "files", MDB_CREATE, &e->files)) ||
        (rc = mdb_dbi_open(txn, "trees", MDB_CREATE, &e->trees)) || (rc = mdb_txn_commit(txn))) {
      if (txn) mdb_txn_abort(txn);
      throw Error(mdb_err("hash cache " + path + ": open databases", rc));
    }
    open_envs[path] = e;
    return e;
  }

  // Runs `fn` in a write transaction; a full map empties the store and
  // retries once.
  template <class Fn>
  void write(Fn fn) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      MDB_txn* txn = nullptr;
      int rc = mdb_txn_begin(env, nullptr, 0, &txn);
      if (rc) throw Error(mdb_err("hash cache " + path + ": begin", rc));
      rc = fn(txn);
      if (rc == 0)
        rc = mdb_txn_commit(txn);
      else
        mdb_txn_abort(txn);
      if (rc == 0) return;
      if (rc != MDB_MAP_FULL || attempt) throw Error(mdb_err("hash cache " + path + ": write", rc));
      log::warn("hash cache " + path + " is full; emptying it");
      rc = mdb_txn_begin(env, nullptr, 0, &txn);
      if (rc) throw Error(mdb_err("hash cache " + path + ": begin", rc));
      mdb_drop(txn, files, 0);
      mdb_drop(txn, trees, 0);
      if ((rc = mdb_txn_commit(txn))) throw Error(mdb_err("hash cache " + path + ": empty", rc));
    }
  }
};

HashCache::HashCache(std::string path) : path_(std::move(path)) {}

HashCache::~HashCache() {
  wait_writes();  // (a deferred write that fails puts its hashes back in pending)
  for (void* t : rtxns_) mdb_txn_abort(static_cast<MDB_txn*>(t));
}

HashCache::Shard& HashCache::shard(const Key& k) {
  return shards_[(KeyHash{}(k)*0x9E3779B97F4A7C15ull) >> 60];  // (kShards == 16)
}

std::vector<std::pair<HashCache::Key, Digest>> HashCache::take_pending() {
  std::vector<std::pair<Key, Digest>> out;
  for (auto& sh : shards_) {
    std::lock_guard<std::mutex> lk(sh.mu);
    if (out.empty())
      out.swap(sh.pending);
    else
      out.insert(out.end(), sh.pending.begin(), sh.pending.end());
    sh.pending.clear();
  }
  return out;
}

bool HashCache::persistent() const {
  return env_ != nullptr;
}

void HashCache::load() {
  std::shared_ptr<Env> env;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (loaded_ || path_.empty()) return;
    loaded_ = true;
    try {
      env_ = Env::open(path_);
      env_ptr_.store(env_.get(), std::memory_order_release);
    } catch (const std::exception& e) {
      log::warn(std::string(e.what()) + "; hashing without the cache");
    }
    env = env_;
  }
  // A store opened again in this process sees the writes queued before.
  if (env) env->wait();
}

std::optional<Digest> HashCache::get(const Key& k) {
  Shard& sh = shard(k);
  {
    std::lock_guard<std::mutex> lk(sh.mu);
    if (auto u = sh.used.find(k); u != sh.used.end()) return u->second;  // hashed earlier in this run
  }
  Env* env = env_ptr_.load(std::memory_order_acquire);  // set once, by load(), kept while this lives
  if (!env) return std::nullopt;
  // The store is read in a read transaction of this lookup's own (from the
  // pool): the hashing threads' lookups do not wait for each other.
  MDB_txn* txn = nullptr;
  {
    std::lock_guard<std::mutex> lk(rtxn_mu_);
    if (!rtxns_.empty()) {
      txn = static_cast<MDB_txn*>(rtxns_.back());
      rtxns_.pop_back();
    }
  }
  // A read transaction is a snapshot: renewed for each lookup (cheap: the
  // reader slot is kept), reset after it, so no old snapshot pins pages.
  if (txn ? mdb_txn_renew(txn) != 0 : mdb_txn_begin(env->env, nullptr, MDB_RDONLY, &txn) != 0) {
    if (txn) mdb_txn_abort(txn);
    return std::nullopt;
  }
  std::optional<Digest> out;
  const std::string key = file_key(k);
  MDB_val kv = val_of(key), v{};
  if (mdb_get(txn, env->files, &kv, &v) == 0) {
    auto body = unchecked(key, view_of(v));
    if (body && body->size() == 32) {
      Digest d;
      std::memcpy(d.data(), body->data(), 32);
      out = d;
    }
  }
  mdb_txn_reset(txn);
  {
    // Kept for the next lookup, up to kPooledReaders (each holds a reader
    // slot of the host's store); a lookup beyond them used one of its own.
    std::lock_guard<std::mutex> lk(rtxn_mu_);
    if (rtxns_.size() < kPooledReaders) {
      rtxns_.push_back(txn);
      txn = nullptr;
    }
  }
  if (txn) mdb_txn_abort(txn);
  if (out) {
    std::lock_guard<std::mutex> lk(sh.mu);
    sh.used[k] = *out;
  }
  return out;
}

std::optional<Digest> HashCache::get_known(const Key& k) {
  Shard& sh = shard(k);
  std::lock_guard<std::mutex> lk(sh.mu);
  if (auto u = sh.used.find(k); u != sh.used.end()) return u->second;
  return std::nullopt;
}

void HashCache::put(const Key& k, const Digest& d) {
  Shard& sh = shard(k);
  std::lock_guard<std::mutex> lk(sh.mu);
  sh.used.insert_or_assign(k, d);
  sh.pending.emplace_back(k, d);
}

void HashCache::save() {
  wait_writes();
  std::lock_guard<std::mutex> lk(mu_);
  if (!env_) return;
  std::vector<std::pair<Key, Digest>> pending = take_pending();
  if (pending.empty()) return;
  try {
    env_->write([&](MDB_txn* txn) { return write_hashes(txn, env_->files, pending); });
  } catch (...) {
    give_back(std::move(pending));
    throw;
  }
}

void HashCache::give_back(std::vector<std::pair<Key, Digest>> hashes) {
  std::array<std::vector<std::pair<Key, Digest>>, kShards> by;
  for (auto& kd : hashes) by[static_cast<std::size_t>(&shard(kd.first) - shards_.data())].push_back(kd);
  for (std::size_t i = 0; i < kShards; ++i) {
    if (by[i].empty()) continue;
    // Before what was learned since (put() appended it), which wins.
    std::lock_guard<std::mutex> lk(shards_[i].mu);
    shards_[i].pending.insert(shards_[i].pending.begin(), by[i].begin(), by[i].end());
  }
}

void HashCache::each_tree_record(const std::string& tree, const std::function<void(std::size_t)>& size_hint,
                                 const std::function<void(std::string_view, std::string)>& take) {
  wait_writes();  // the writes this process queued before
  std::lock_guard<std::mutex> lk(mu_);
  if (!env_) return;
  const std::string prefix = tree_prefix(tree);
  MDB_txn* txn = nullptr;
  if (mdb_txn_begin(env_->env, nullptr, MDB_RDONLY, &txn)) return;
  // Every stored record (of every tree): an upper bound of this tree's.
  MDB_stat st{};
  if (mdb_stat(txn, env_->trees, &st) == 0) size_hint(st.ms_entries);
  MDB_cursor* cur = nullptr;
  if (mdb_cursor_open(txn, env_->trees, &cur) == 0) {
    MDB_val k = val_of(prefix), v{};
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      std::string_view key = view_of(k);
      if (key.size() < prefix.size() || key.substr(0, prefix.size()) != prefix) break;
      if (auto body = unchecked(key, view_of(v))) take(key.substr(prefix.size()), std::string(*body));
    }
    mdb_cursor_close(cur);
  }
  mdb_txn_abort(txn);
}

std::unordered_map<std::string, std::string> HashCache::tree_records(const std::string& tree) {
  std::unordered_map<std::string, std::string> out;
  each_tree_record(
      tree, [&](std::size_t n) { out.reserve(n); },  // never rehashed while it fills
      [&](std::string_view path, std::string body) { out.emplace(std::string(path), std::move(body)); });
  return out;
}

std::vector<std::pair<std::string, std::string>> HashCache::tree_records_sorted(const std::string& tree) {
  std::vector<std::pair<std::string, std::string>> out;
  each_tree_record(
      tree, [](std::size_t) {},
      [&](std::string_view path, std::string body) { out.emplace_back(std::string(path), std::move(body)); });
  return out;
}

void HashCache::update_tree(const std::string& tree, const std::map<std::string, std::string>& put,
                            const std::vector<std::string>& del) {
  if (put.empty() && del.empty()) return;
  const std::string prefix = tree_prefix(tree);
  // The stored keys and checked values, computed before the write
  // transaction and, for a whole tree's records (a first walk), on every
  // core: the transaction then only inserts.
  std::vector<const std::pair<const std::string, std::string>*> items;
  items.reserve(put.size());
  for (const auto& item : put)
    if (!item.first.empty() && item.first.size() <= kMaxRecordPath) items.push_back(&item);
  std::vector<TreeItem> kv(items.size());
  parallel_for(kv.size(), std::min<std::size_t>(std::thread::hardware_concurrency(), kv.size() / 4096),
               [&](std::size_t i) { kv[i] = tree_item(prefix, items[i]->first, items[i]->second); });
  wait_writes();
  std::lock_guard<std::mutex> lk(mu_);
  if (!env_) return;
  env_->write([&](MDB_txn* txn) { return write_tree_items(txn, env_->trees, prefix, del, kv); });
}

void HashCache::wait_writes() {
  std::shared_ptr<Env> env;
  {
    std::lock_guard<std::mutex> lk(mu_);
    env = env_;
  }
  if (env) env->wait();
}

std::string HashCache::tree_prefix(const std::string& tree) {
  // A tree's records share a 16-byte prefix: the start of SHA-256(tree name).
  Digest d = sha256("agentshim-tree\n" + tree);
  return std::string(reinterpret_cast<const char*>(d.data()), 16);
}

HashCache::TreeItem HashCache::tree_item(const std::string& prefix, const std::string& path,
                                         std::string_view record) {
  TreeItem t;
  t.key.reserve(prefix.size() + path.size());
  t.key += prefix;
  t.key += path;
  t.value = checked(t.key, record);
  return t;
}

std::shared_future<bool> HashCache::write_later(const std::string& tree, std::vector<TreeItem> put,
                                                std::vector<std::string> del) {
  std::promise<bool> done;
  std::shared_future<bool> out = done.get_future().share();
  std::vector<std::pair<Key, Digest>> hashes;
  Env* env = nullptr;  // kept while this object lives: its destructor waits for the write
  {
    std::lock_guard<std::mutex> lk(mu_);
    env = env_.get();
  }
  if (env) hashes = take_pending();
  if (!env || tree.empty()) {
    put.clear();
    del.clear();
  }
  if (hashes.empty() && put.empty() && del.empty()) {
    done.set_value(env != nullptr);  // nothing to write: no transaction
    return out;
  }
  const std::string prefix = del.empty() ? std::string() : tree_prefix(tree);
  env->later([this, env, prefix, hashes = std::move(hashes), put = std::move(put), del = std::move(del),
              done = std::move(done)]() mutable {
    bool ok = false;
    try {
      env->write([&](MDB_txn* txn) {
        if (int rc = write_hashes(txn, env->files, hashes)) return rc;
        return write_tree_items(txn, env->trees, prefix, del, put);
      });
      ok = true;
    } catch (const std::exception& e) {
      log::warn(std::string("hash cache: ") + e.what());
    }
    if (!ok) give_back(std::move(hashes));  // (what was learned since wins)
    done.set_value(ok);
  });
  return out;
}

}  // namespace agentshim::attest
