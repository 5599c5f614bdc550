#include "attest/fstree.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <thread>

#include "attest/canonical.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/log.h"
#include "common/util.h"

namespace agentshim::attest {

std::string leaf_encoding(const FsEntry& e) {
  json j = {{"path", pct_encode(e.path)},
            {"type", std::string(1, e.type)},
            {"mode", e.mode},
            {"uid", e.uid},
            {"gid", e.gid}};
  if (e.type == 'f') {
    j["size"] = e.size;
    if (!e.sha256.empty()) j["sha256"] = e.sha256;
  }
  if (!e.error.empty()) j["error"] = e.error;
  if (e.type == 'l') j["target"] = pct_encode(e.target);
  if (e.type == 'c' || e.type == 'b') j["rdev"] = std::to_string(e.rdev_major) + ":" + std::to_string(e.rdev_minor);
  if (!e.xattrs.empty()) {
    json x = json::object();
    for (const auto& [k, v] : e.xattrs) x[pct_encode(k)] = base64_encode(v);
    j["xattrs"] = x;
  }
  return canonical(j);
}

Digest leaf_hash(const FsEntry& e) { return merkle_leaf_hash(std::string("agentshim-fs-v1\n") + leaf_encoding(e)); }

// ------------------------------------------------------------ hash cache

bool HashCache::Key::operator<(const Key& o) const {
  return std::tie(dev, ino, size, mtime_ns, ctime_ns) < std::tie(o.dev, o.ino, o.size, o.mtime_ns, o.ctime_ns);
}

HashCache::HashCache(std::string path) : path_(std::move(path)) {}

namespace {
constexpr char kCacheMagic[8] = {'A', 'S', 'H', 'C', 'v', '1', '\n', '\0'};
constexpr std::size_t kRecord = 5 * 8 + 32;
}  // namespace

void HashCache::load() {
  std::lock_guard<std::mutex> lk(mu_);
  old_.clear();
  auto data = try_read_file(path_);
  if (!data) return;
  const std::string& d = *data;
  if (d.size() < 8 + 32 || std::memcmp(d.data(), kCacheMagic, 8) != 0 || (d.size() - 8 - 32) % kRecord != 0) {
    log::warn("hash cache " + path_ + " is malformed; ignoring it");
    return;
  }
  std::string_view body(d.data() + 8, d.size() - 8 - 32);
  Digest want;
  std::memcpy(want.data(), d.data() + d.size() - 32, 32);
  if (sha256(body) != want) {
    log::warn("hash cache " + path_ + " failed its checksum; ignoring it");
    return;
  }
  for (std::size_t off = 0; off < body.size(); off += kRecord) {
    Key k{};
    uint64_t f[5];
    std::memcpy(f, body.data() + off, 40);
    k = {f[0], f[1], f[2], static_cast<int64_t>(f[3]), static_cast<int64_t>(f[4])};
    Digest v;
    std::memcpy(v.data(), body.data() + off + 40, 32);
    old_[k] = v;
  }
}

void HashCache::save() {
  std::lock_guard<std::mutex> lk(mu_);
  // Entries used by this walk first, then older ones (other trees, other
  // containers) up to a bound. A stale entry can never hit: its key carries
  // the file's ctime.
  constexpr std::size_t kMaxEntries = 2'000'000;
  std::map<Key, Digest> keep = used_;
  for (const auto& [k, v] : old_) {
    if (keep.size() >= kMaxEntries) break;
    keep.emplace(k, v);
  }
  std::string body;
  body.reserve(keep.size() * kRecord);
  for (const auto& [k, v] : keep) {
    uint64_t f[5] = {k.dev, k.ino, k.size, static_cast<uint64_t>(k.mtime_ns), static_cast<uint64_t>(k.ctime_ns)};
    body.append(reinterpret_cast<const char*>(f), 40);
    body.append(reinterpret_cast<const char*>(v.data()), 32);
  }
  Digest sum = sha256(body);
  std::string out(kCacheMagic, 8);
  out += body;
  out.append(reinterpret_cast<const char*>(sum.data()), 32);
  write_file_atomic(path_, out, 0600);
}

std::optional<Digest> HashCache::get(const Key& k) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = old_.find(k);
  if (it == old_.end()) return std::nullopt;
  used_[k] = it->second;
  return it->second;
}

void HashCache::put(const Key& k, const Digest& d) {
  std::lock_guard<std::mutex> lk(mu_);
  used_[k] = d;
}

// ------------------------------------------------------------ the walk

namespace {

char type_of(mode_t m) {
  if (S_ISREG(m)) return 'f';
  if (S_ISDIR(m)) return 'd';
  if (S_ISLNK(m)) return 'l';
  if (S_ISCHR(m)) return 'c';
  if (S_ISBLK(m)) return 'b';
  if (S_ISFIFO(m)) return 'p';
  if (S_ISSOCK(m)) return 's';
  return '?';
}

// security.* xattrs only (file capabilities, LSM labels, IMA): what changes
// what a file may do. Read through /proc/self/fd/<dir>/<name> with the l*
// calls, so a symlink's own attributes are read and never its target's.
void read_xattrs(int dirfd, const std::string& name, FsEntry& e) {
  std::string p = "/proc/self/fd/" + std::to_string(dirfd) + "/" + name;
  char names[4096];
  ssize_t n = ::llistxattr(p.c_str(), names, sizeof names);
  if (n <= 0) return;
  for (ssize_t off = 0; off < n;) {
    std::string key(names + off);
    off += static_cast<ssize_t>(key.size()) + 1;
    if (!starts_with(key, "security.")) continue;
    char val[4096];
    ssize_t vn = ::lgetxattr(p.c_str(), key.c_str(), val, sizeof val);
    if (vn >= 0) e.xattrs.emplace_back(key, std::string(val, static_cast<std::size_t>(vn)));
  }
  std::sort(e.xattrs.begin(), e.xattrs.end());
}

void fill_stat(FsEntry& e, const struct stat& st) {
  e.type = type_of(st.st_mode);
  e.mode = st.st_mode & 07777;
  e.uid = st.st_uid;
  e.gid = st.st_gid;
  if (e.type == 'f') e.size = static_cast<uint64_t>(st.st_size);
  if (e.type == 'c' || e.type == 'b') {
    e.rdev_major = major(st.st_rdev);
    e.rdev_minor = minor(st.st_rdev);
  }
}

using DirFd = std::shared_ptr<UniqueFd>;

struct Job {
  DirFd dir;  // keeps the parent directory open until the file is hashed
  std::string name;
  FsEntry* entry;
  struct stat st;
};

// A bounded queue between the walker and the hashing threads, so open
// directory descriptors stay bounded however large the tree is.
class JobQueue {
 public:
  explicit JobQueue(std::size_t cap) : cap_(cap) {}
  void push(Job j) {
    std::unique_lock<std::mutex> lk(mu_);
    not_full_.wait(lk, [&] { return q_.size() < cap_; });
    q_.push_back(std::move(j));
    not_empty_.notify_one();
  }
  bool pop(Job& out) {
    std::unique_lock<std::mutex> lk(mu_);
    not_empty_.wait(lk, [&] { return !q_.empty() || done_; });
    if (q_.empty()) return false;
    out = std::move(q_.front());
    q_.pop_front();
    not_full_.notify_one();
    return true;
  }
  void close() {
    std::lock_guard<std::mutex> lk(mu_);
    done_ = true;
    not_empty_.notify_all();
  }

 private:
  std::size_t cap_;
  std::mutex mu_;
  std::condition_variable not_full_, not_empty_;
  std::deque<Job> q_;
  bool done_ = false;
};

void hash_file(Job& j, HashCache* cache, std::vector<char>& buf, std::atomic<uint64_t>& bytes,
               std::atomic<uint64_t>& hits) {
  FsEntry& e = *j.entry;
  UniqueFd fd(::openat(j.dir->get(), j.name.c_str(), O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC));
  if (!fd) {
    e.error = std::string("open: ") + std::strerror(errno);
    return;
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0 || !S_ISREG(st.st_mode) || st.st_ino != j.st.st_ino || st.st_dev != j.st.st_dev) {
    e.error = "replaced while being read";
    return;
  }
  fill_stat(e, st);
  HashCache::Key key{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                     static_cast<uint64_t>(st.st_size),
                     static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec,
                     static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000LL + st.st_ctim.tv_nsec};
  if (cache) {
    if (auto d = cache->get(key)) {
      e.sha256 = hex(*d);
      hits++;
      return;
    }
  }
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  Sha256 h;
  uint64_t total = 0;
  for (;;) {
    ssize_t r = ::read(fd.get(), buf.data(), buf.size());
    if (r < 0) {
      if (errno == EINTR) continue;
      e.error = std::string("read: ") + std::strerror(errno);
      return;
    }
    if (r == 0) break;
    h.update(buf.data(), static_cast<std::size_t>(r));
    total += static_cast<uint64_t>(r);
  }
  bytes += total;
  Digest d = h.finish();
  e.sha256 = hex(d);
  e.size = total;
  // Only a file that did not change while it was read goes into the cache.
  struct stat after {};
  if (cache && ::fstat(fd.get(), &after) == 0 && after.st_mtim.tv_sec == st.st_mtim.tv_sec &&
      after.st_mtim.tv_nsec == st.st_mtim.tv_nsec && after.st_ctim.tv_sec == st.st_ctim.tv_sec &&
      after.st_ctim.tv_nsec == st.st_ctim.tv_nsec && static_cast<uint64_t>(after.st_size) == total)
    cache->put(key, d);
}

void raise_fd_limit() {
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max && rl.rlim_cur < 65536) {
    rl.rlim_cur = std::min<rlim_t>(rl.rlim_max, 65536);
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

}  // namespace

FsSnapshot snapshot(const std::string& root_dir, const WalkOptions& opts) {
  raise_fd_limit();
  FsSnapshot s;
  s.root_dir = root_dir;
  auto rootfd = std::make_shared<UniqueFd>(::open(root_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  if (!*rootfd) throw_errno("filesystem root: open " + root_dir);
  struct stat rst {};
  if (::fstat(rootfd->get(), &rst) < 0) throw_errno("filesystem root: stat " + root_dir);

  std::unique_ptr<HashCache> cache;
  if (!opts.cache_path.empty()) {
    cache = std::make_unique<HashCache>(opts.cache_path);
    cache->load();
  }
  std::vector<std::unique_ptr<FsEntry>> entries;
  std::atomic<uint64_t> bytes{0}, hits{0};
  JobQueue queue(4096);
  unsigned n = opts.threads ? opts.threads : std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < n; ++t)
    workers.emplace_back([&] {
      std::vector<char> buf(1 << 20);
      Job j;
      while (queue.pop(j)) {
        hash_file(j, cache.get(), buf, bytes, hits);
        j = Job{};
      }
    });
  struct Guard {
    JobQueue& q;
    std::vector<std::thread>& w;
    ~Guard() {
      q.close();
      for (auto& t : w)
        if (t.joinable()) t.join();
    }
  } guard{queue, workers};

  auto root_entry = std::make_unique<FsEntry>();
  root_entry->path = ".";
  fill_stat(*root_entry, rst);
  read_xattrs(rootfd->get(), ".", *root_entry);
  entries.push_back(std::move(root_entry));
  s.dirs++;

  // Depth-first; a frame is a directory to list, opened from its parent's
  // descriptor (never by path), so symlinks can never redirect the walk.
  struct Frame {
    DirFd fd;
    std::string rel;
    std::size_t depth;
  };
  std::vector<Frame> stack;
  stack.push_back({rootfd, "", 0});
  auto excluded = [&](const std::string& rel) {
    return std::find(opts.exclude.begin(), opts.exclude.end(), rel) != opts.exclude.end();
  };
  while (!stack.empty()) {
    Frame f = std::move(stack.back());
    stack.pop_back();
    int dup = ::fcntl(f.fd->get(), F_DUPFD_CLOEXEC, 0);
    if (dup < 0) throw_errno("filesystem root: dup");
    DIR* d = ::fdopendir(dup);
    if (!d) {
      ::close(dup);
      throw_errno("filesystem root: fdopendir " + f.rel);
    }
    std::vector<std::string> names;
    while (struct dirent* de = ::readdir(d)) {
      std::string nm = de->d_name;
      if (nm != "." && nm != "..") names.push_back(std::move(nm));
    }
    ::closedir(d);
    for (const auto& name : names) {
      std::string rel = f.rel.empty() ? name : f.rel + "/" + name;
      if (excluded(rel)) continue;
      struct stat st {};
      if (::fstatat(f.fd->get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) continue;  // vanished
      auto e = std::make_unique<FsEntry>();
      e->path = rel;
      fill_stat(*e, st);
      read_xattrs(f.fd->get(), name, *e);
      if (e->type == 'l') {
        char buf[4096];
        ssize_t ln = ::readlinkat(f.fd->get(), name.c_str(), buf, sizeof buf);
        if (ln >= 0)
          e->target.assign(buf, static_cast<std::size_t>(ln));
        else
          e->error = std::string("readlink: ") + std::strerror(errno);
      } else if (e->type == 'f') {
        s.files++;
        queue.push(Job{f.fd, name, e.get(), st});
      } else if (e->type == 'd') {
        s.dirs++;
        if (opts.one_file_system && st.st_dev != rst.st_dev) {
          e->error = "not descended: another file system is mounted here";
        } else if (f.depth + 1 >= opts.max_depth) {
          e->error = "not descended: deeper than " + std::to_string(opts.max_depth) + " levels";
        } else {
          auto sub = std::make_shared<UniqueFd>(
              ::openat(f.fd->get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
          if (*sub)
            stack.push_back({sub, rel, f.depth + 1});
          else
            e->error = std::string("open: ") + std::strerror(errno);
        }
      }
      entries.push_back(std::move(e));
    }
  }
  queue.close();
  for (auto& t : workers) t.join();
  s.bytes_hashed = bytes;
  s.cache_hits = hits;
  if (cache) {
    try {
      cache->save();
    } catch (const std::exception& e) {
      log::warn(std::string("hash cache: ") + e.what());
    }
  }
  s.entries.reserve(entries.size());
  for (auto& e : entries) s.entries.push_back(std::move(*e));
  std::sort(s.entries.begin(), s.entries.end(), [](const FsEntry& a, const FsEntry& b) { return a.path < b.path; });
  std::vector<Digest> leaves;
  leaves.reserve(s.entries.size());
  for (auto& e : s.entries) {
    e.leaf = leaf_hash(e);
    leaves.push_back(e.leaf);
  }
  s.root = merkle_root(leaves);
  return s;
}

std::vector<FsChange> diff(const FsSnapshot& before, const FsSnapshot& after) {
  std::vector<FsChange> out;
  std::size_t i = 0, j = 0;
  const auto& a = before.entries;
  const auto& b = after.entries;
  while (i < a.size() || j < b.size()) {
    if (j >= b.size() || (i < a.size() && a[i].path < b[j].path)) {
      out.push_back({a[i].path, "removed", a[i].leaf, std::nullopt});
      ++i;
    } else if (i >= a.size() || b[j].path < a[i].path) {
      out.push_back({b[j].path, "added", std::nullopt, b[j].leaf});
      ++j;
    } else {
      if (a[i].leaf != b[j].leaf) out.push_back({a[i].path, "modified", a[i].leaf, b[j].leaf});
      ++i;
      ++j;
    }
  }
  return out;
}

json change_to_json(const FsChange& c) {
  return json{{"path", pct_encode(c.path)},
              {"change", c.kind},
              {"old", c.old_leaf ? json(hex(*c.old_leaf)) : json(nullptr)},
              {"new", c.new_leaf ? json(hex(*c.new_leaf)) : json(nullptr)}};
}

}  // namespace agentshim::attest
