#include "attest/fstree.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <latch>
#include <memory>
#include <thread>
#include <unordered_map>

#include "attest/canonical.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/log.h"
#include "common/parallel.h"
#include "common/util.h"

namespace agentshim::attest {

namespace {
// The leaf as a JSON object, for canonical(): the definition of the
// encoding, used as is when a string holds a non-ASCII byte.
json leaf_json(const FsEntry& e) {
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
  if (e.type == 'c' || e.type == 'b')
    j["rdev"] = std::to_string(e.rdev_major) + ":" + std::to_string(e.rdev_minor);
  if (!e.xattrs.empty()) {
    json x = json::object();
    for (const auto& [k, v] : e.xattrs) x[pct_encode(k)] = base64_encode(v);
    j["xattrs"] = x;
  }
  return j;
}

// canonical()'s string, for ASCII text (false at the first byte that is
// not: the caller then uses canonical() itself).
bool put_ascii_string(std::string& o, std::string_view s) {
  o.push_back('"');
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        o += "\\\"";
        break;
      case '\\':
        o += "\\\\";
        break;
      case '\b':
        o += "\\b";
        break;
      case '\f':
        o += "\\f";
        break;
      case '\n':
        o += "\\n";
        break;
      case '\r':
        o += "\\r";
        break;
      case '\t':
        o += "\\t";
        break;
      default:
        if (c >= 0x80) return false;
        if (c < 0x20) {
          static const char* hexd = "0123456789abcdef";
          o += "\\u00";
          o.push_back(hexd[c >> 4]);
          o.push_back(hexd[c & 15]);
        } else {
          o.push_back(ch);
        }
    }
  }
  o.push_back('"');
  return true;
}
void put_pct_string(std::string& o, std::string_view bytes) {
  static const char* hexd = "0123456789ABCDEF";
  o.push_back('"');
  for (char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      o.push_back('\\');
      o.push_back(ch);
    } else if (c >= 0x21 && c <= 0x7e && c != '%') {
      o.push_back(ch);
    } else {
      o.push_back('%');
      o.push_back(hexd[c >> 4]);
      o.push_back(hexd[c & 15]);
    }
  }
  o.push_back('"');
}
void put_uint(std::string& o, uint64_t v) {
  char buf[24];
  char* p = buf + sizeof buf;
  do *--p = static_cast<char>('0' + v % 10);
  while (v /= 10);
  o.append(p, static_cast<std::size_t>(buf + sizeof buf - p));
}

// The same bytes as canonical(leaf_json(e)), written directly (a walk
// encodes every entry): the keys in their sorted order, error gid mode path
// rdev sha256 size target type uid xattrs. False when a string is not
// ASCII.
bool write_leaf(const FsEntry& e, std::string& o) {
  o.push_back('{');
  if (!e.error.empty()) {
    o += "\"error\":";
    if (!put_ascii_string(o, e.error)) return false;
    o.push_back(',');
  }
  o += "\"gid\":";
  put_uint(o, e.gid);
  o += ",\"mode\":";
  put_uint(o, e.mode);
  o += ",\"path\":";
  put_pct_string(o, e.path);
  if (e.type == 'c' || e.type == 'b') {
    o += ",\"rdev\":\"";
    put_uint(o, e.rdev_major);
    o.push_back(':');
    put_uint(o, e.rdev_minor);
    o.push_back('"');
  }
  if (e.type == 'f') {
    if (!e.sha256.empty()) {
      o += ",\"sha256\":";
      if (!put_ascii_string(o, e.sha256)) return false;
    }
    o += ",\"size\":";
    put_uint(o, e.size);
  }
  if (e.type == 'l') {
    o += ",\"target\":";
    put_pct_string(o, e.target);
  }
  o += ",\"type\":";
  if (!put_ascii_string(o, std::string_view(&e.type, 1))) return false;
  o += ",\"uid\":";
  put_uint(o, e.uid);
  if (!e.xattrs.empty()) {
    // Sorted by the encoded name, as canonical() sorts an object's keys.
    std::vector<std::pair<std::string, const std::string*>> x;
    x.reserve(e.xattrs.size());
    for (const auto& [k, v] : e.xattrs) x.emplace_back(pct_encode(k), &v);
    std::sort(x.begin(), x.end());
    o += ",\"xattrs\":{";
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (i) o.push_back(',');
      put_ascii_string(o, x[i].first);  // already pct (ASCII): only '"' and '\\' are escaped
      o.push_back(':');
      o.push_back('"');
      o += base64_encode(*x[i].second);
      o.push_back('"');
    }
    o.push_back('}');
  }
  o.push_back('}');
  return true;
}
}  // namespace

std::string leaf_encoding(const FsEntry& e) {
  std::string o;
  o.reserve(192);
  if (!write_leaf(e, o)) return canonical(leaf_json(e));
  return o;
}

Digest leaf_hash(const FsEntry& e) {
  static constexpr std::string_view kDomain = "agentshim-fs-v1\n";
  std::string o;
  o.reserve(224);
  o += kDomain;
  if (!write_leaf(e, o)) {
    o.resize(kDomain.size());
    o += canonical(leaf_json(e));
  }
  return merkle_leaf_hash(o);
}

// ------------------------------------------------------------ tree records

namespace {
// A stored entry (docs/FORMATS.md "Hash cache"): version, identity, the
// leaf's fields, the leaf. Little-endian fixed-width integers.
constexpr unsigned char kRecordVersion = 1;

void put_u32(std::string& o, uint32_t v) {
  o.append(reinterpret_cast<const char*>(&v), 4);
}
void put_u64(std::string& o, uint64_t v) {
  o.append(reinterpret_cast<const char*>(&v), 8);
}
void put_str(std::string& o, const std::string& s) {
  put_u32(o, static_cast<uint32_t>(s.size()));
  o += s;
}

struct Reader {
  std::string_view in;
  bool ok = true;
  bool take(void* out, std::size_t n) {
    if (!ok || in.size() < n) return ok = false;
    std::memcpy(out, in.data(), n);
    in.remove_prefix(n);
    return true;
  }
  uint32_t u32() {
    uint32_t v = 0;
    take(&v, 4);
    return v;
  }
  uint64_t u64() {
    uint64_t v = 0;
    take(&v, 8);
    return v;
  }
  std::string str(std::size_t max) {
    uint32_t n = u32();
    if (!ok || n > max || in.size() < n) {
      ok = false;
      return {};
    }
    std::string s(in.substr(0, n));
    in.remove_prefix(n);
    return s;
  }
};
}  // namespace

std::string encode_record(const FsEntry& e) {
  std::string o;
  o.reserve(160);
  o.push_back(static_cast<char>(kRecordVersion));
  o.push_back(e.type);
  put_u64(o, e.id.dev);
  put_u64(o, e.id.ino);
  put_u64(o, e.id.size);
  put_u64(o, static_cast<uint64_t>(e.id.mtime_ns));
  put_u64(o, static_cast<uint64_t>(e.id.ctime_ns));
  put_u32(o, e.id.mode);
  put_u32(o, e.id.uid);
  put_u32(o, e.id.gid);
  put_u32(o, e.mode);
  put_u32(o, e.uid);
  put_u32(o, e.gid);
  put_u64(o, e.size);
  put_u64(o, e.rdev_major);
  put_u64(o, e.rdev_minor);
  if (e.sha256.empty()) {
    o.push_back(0);
  } else {
    o.push_back(1);
    Digest d = from_hex(e.sha256);
    o.append(reinterpret_cast<const char*>(d.data()), 32);
  }
  put_str(o, e.target);
  put_u32(o, static_cast<uint32_t>(e.xattrs.size()));
  for (const auto& [k, v] : e.xattrs) {
    put_str(o, k);
    put_str(o, v);
  }
  put_str(o, e.overlay);
  o.append(reinterpret_cast<const char*>(e.leaf.data()), 32);
  return o;
}

bool decode_record(std::string_view in, FsEntry& e) {
  Reader r{in};
  unsigned char ver = 0;
  r.take(&ver, 1);
  if (!r.ok || ver != kRecordVersion) return false;
  r.take(&e.type, 1);
  e.id.dev = r.u64();
  e.id.ino = r.u64();
  e.id.size = r.u64();
  e.id.mtime_ns = static_cast<int64_t>(r.u64());
  e.id.ctime_ns = static_cast<int64_t>(r.u64());
  e.id.mode = r.u32();
  e.id.uid = r.u32();
  e.id.gid = r.u32();
  e.mode = r.u32();
  e.uid = r.u32();
  e.gid = r.u32();
  e.size = r.u64();
  e.rdev_major = r.u64();
  e.rdev_minor = r.u64();
  unsigned char has = 0;
  r.take(&has, 1);
  e.sha256.clear();
  if (has == 1) {
    Digest d;
    r.take(d.data(), 32);
    e.sha256 = hex(d);
  } else if (has != 0) {
    return false;
  }
  e.target = r.str(PATH_MAX);
  uint32_t nx = r.u32();
  if (nx > 1024) return false;
  e.xattrs.clear();
  for (uint32_t i = 0; r.ok && i < nx; ++i) {
    std::string k = r.str(4096);
    std::string v = r.str(64 * 1024);
    e.xattrs.emplace_back(std::move(k), std::move(v));
  }
  e.overlay = r.str(256);
  r.take(e.leaf.data(), 32);
  if (!r.ok || !r.in.empty()) return false;
  // The stored leaf must be the leaf of the stored fields' type.
  if (std::string("fdlcbps?").find(e.type) == std::string::npos) return false;
  e.id_valid = true;
  return true;
}

// ------------------------------------------------------------ the walk

namespace {

// Linux's own limits (XATTR_LIST_MAX, XATTR_SIZE_MAX); anything beyond them
// is reported, never silently cut.
constexpr std::size_t kXattrListMax = 64 * 1024;
constexpr std::size_t kXattrValueMax = 64 * 1024;
constexpr std::size_t kXattrTotalMax = 1024 * 1024;  // all recorded values of one entry
constexpr int kXattrRetries = 5;                     // ERANGE: the list/value grew between calls
constexpr int kHashAttempts = 3;                     // a file that keeps changing is recorded as such

// struct statx comes from linux/stat.h (glibc includes it when present),
// which has stx_mnt_id.
uint64_t mnt_id_of(const struct statx& sx) {
  return (sx.stx_mask & STATX_MNT_ID) ? sx.stx_mnt_id : 0;
}
uint64_t dev_of(const struct statx& sx) {
  return makedev(sx.stx_dev_major, sx.stx_dev_minor);
}
int64_t ns_of(const struct statx_timestamp& t) {
  return static_cast<int64_t>(t.tv_sec) * 1000000000LL + t.tv_nsec;
}

int statx_at(int dirfd, const char* name, int flags, struct statx& sx) {
  std::memset(&sx, 0, sizeof sx);
  return ::statx(dirfd, name, flags | AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | AT_STATX_SYNC_AS_STAT,
                 STATX_BASIC_STATS | STATX_MNT_ID, &sx);
}

void add_error(FsEntry& e, const std::string& msg) {
  if (e.error.empty())
    e.error = msg;
  else
    e.error += "; " + msg;
}
std::string errtext(const char* what, int err) {
  return std::string(what) + ": " + std::strerror(err);
}

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

FsEntry::StatId stat_id_of(const struct statx& sx) {
  FsEntry::StatId id;
  id.dev = dev_of(sx);
  id.ino = sx.stx_ino;
  id.size = sx.stx_size;
  id.mtime_ns = ns_of(sx.stx_mtime);
  id.ctime_ns = ns_of(sx.stx_ctime);
  id.mode = sx.stx_mode;
  id.uid = sx.stx_uid;
  id.gid = sx.stx_gid;
  return id;
}
FsEntry::StatId stat_id_of(const struct stat& st) {
  FsEntry::StatId id;
  id.dev = static_cast<uint64_t>(st.st_dev);
  id.ino = static_cast<uint64_t>(st.st_ino);
  id.size = static_cast<uint64_t>(st.st_size);
  id.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
  id.ctime_ns = static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000LL + st.st_ctim.tv_nsec;
  id.mode = st.st_mode;
  id.uid = st.st_uid;
  id.gid = st.st_gid;
  return id;
}

void fill_statx(FsEntry& e, const struct statx& sx) {
  e.type = type_of(sx.stx_mode);
  e.mode = sx.stx_mode & 07777;
  e.uid = sx.stx_uid;
  e.gid = sx.stx_gid;
  if (e.type == 'f') e.size = sx.stx_size;
  if (e.type == 'c' || e.type == 'b') {
    e.rdev_major = sx.stx_rdev_major;
    e.rdev_minor = sx.stx_rdev_minor;
  }
}

// The size-query-then-read dance of the *xattr calls: the list or value can
// grow between the two calls (ERANGE), so retry a few times; a size beyond
// `limit` is an error, not a truncation.
template <class Call>
bool read_sized(Call call, std::size_t limit, std::string& out, int& err, bool& too_big) {
  too_big = false;
  for (int attempt = 0; attempt < kXattrRetries; ++attempt) {
    ssize_t n = call(nullptr, 0);
    if (n < 0) {
      err = errno;
      return false;
    }
    if (static_cast<std::size_t>(n) > limit) {
      too_big = true;
      return false;
    }
    out.resize(static_cast<std::size_t>(n));
    if (n == 0) return true;
    ssize_t m = call(out.data(), out.size());
    if (m >= 0) {
      out.resize(static_cast<std::size_t>(m));
      return true;
    }
    if (errno != ERANGE) {
      err = errno;
      return false;
    }
  }
  err = ERANGE;
  return false;
}

// The *xattrat calls (Linux 6.13) read an entry's attributes relative to its
// directory's descriptor; before them, the l* calls through
// /proc/self/fd/<dir>/<name> do the same with a slower lookup. Either way a
// symlink's own attributes are read, never its target's.
#ifndef __NR_getxattrat
#define __NR_getxattrat 464
#endif
#ifndef __NR_listxattrat
#define __NR_listxattrat 465
#endif
std::atomic<bool> g_xattrat{true};

class XattrSource {
 public:
  // The entry `name` of directory `dirfd`; with `name` empty, the open file
  // `dirfd` itself.
  XattrSource(int dirfd, const std::string& name) : dirfd_(dirfd), name_(name) {}
  // The file `path` leads to (/proc/self/fd/N of an inode pinned by O_PATH:
  // the magic link is followed, to that inode).
  static XattrSource following(const std::string& path) { return XattrSource(-1, path); }
  ssize_t list(char* b, std::size_t n) {
    if (dirfd_ < 0) return ::listxattr(name_.c_str(), b, n);
    if (name_.empty()) return ::flistxattr(dirfd_, b, n);  // an open file itself
    if (g_xattrat.load(std::memory_order_relaxed)) {
      long r = ::syscall(__NR_listxattrat, dirfd_, name_.c_str(), AT_SYMLINK_NOFOLLOW, b, n);
      if (r >= 0 || !unavailable()) return r;
    }
    return ::llistxattr(proc().c_str(), b, n);
  }
  ssize_t get(const std::string& key, char* b, std::size_t n) {
    if (dirfd_ < 0) return ::getxattr(name_.c_str(), key.c_str(), b, n);
    if (name_.empty()) return ::fgetxattr(dirfd_, key.c_str(), b, n);
    if (g_xattrat.load(std::memory_order_relaxed)) {
      struct {
        uint64_t value;
        uint32_t size, flags;
      } args{reinterpret_cast<uintptr_t>(b), static_cast<uint32_t>(n), 0};
      long r = ::syscall(__NR_getxattrat, dirfd_, name_.c_str(), AT_SYMLINK_NOFOLLOW, key.c_str(), &args,
                         sizeof args);
      if (r >= 0 || !unavailable()) return r;
    }
    return ::lgetxattr(proc().c_str(), key.c_str(), b, n);
  }

 private:
  // An older kernel (ENOSYS) or a seccomp filter that does not know the
  // calls (EPERM): use the /proc path from now on.
  static bool unavailable() {
    if (errno != ENOSYS && errno != EPERM) return false;
    g_xattrat.store(false, std::memory_order_relaxed);
    return true;
  }
  const std::string& proc() {
    if (proc_.empty()) proc_ = "/proc/self/fd/" + std::to_string(dirfd_) + "/" + name_;
    return proc_;
  }
  int dirfd_;
  const std::string& name_;
  std::string proc_;
};

// overlayfs's xattrs on a layer's entry: opaque directories are merged;
// origin, impure and nlink change inode numbers and link counts only
// (nothing a leaf holds); anything else (redirect, metacopy, whiteout
// xattrs, "x" opaque) is unsupported, and the layer merge is not used.
// True for overlayfs's private names, which a walk of the mount never sees.
bool note_overlay_xattr(XattrSource& src, const std::string& key, FsEntry& e) {
  std::string_view k = key;
  for (std::string_view pre : {"trusted.overlay.", "user.overlay."})
    if (k.substr(0, pre.size()) == pre) {
      std::string_view what = k.substr(pre.size());
      if (what == "origin" || what == "impure" || what == "nlink") return true;
      if (what == "opaque") {
        char v[8];
        ssize_t n = src.get(key, v, sizeof v);
        if (n == 1 && v[0] == 'y') {
          if (e.overlay.empty()) e.overlay = "opaque";
          return true;
        }
      }
      e.overlay = "unsupported " + pct_encode(key);
      return true;
    }
  return false;
}

// Every namespace a process can write: security.* (file capabilities, LSM
// labels, IMA), system.* (POSIX ACLs: who may do what), trusted.* and
// user.* (data a program may act on; a file's owner writes user.*). In a
// walk of an overlay layer (`overlay`), overlayfs's own names are noted,
// not recorded: the mount hides them.
void read_xattrs(XattrSource& src, FsEntry& e, bool overlay) {
  std::string list;
  int err = 0;
  bool too_big = false;
  if (!read_sized([&](char* b, std::size_t n) { return src.list(b, n); }, kXattrListMax, list, err,
                  too_big)) {
    if (too_big)
      add_error(e, "xattrs: list larger than " + std::to_string(kXattrListMax) + " bytes");
    else if (err != ENOTSUP)
      add_error(e, errtext("xattrs", err));
    return;
  }
  std::size_t total = 0;
  for (std::size_t off = 0; off < list.size();) {
    const char* s = list.data() + off;
    const void* nul = std::memchr(s, '\0', list.size() - off);
    std::size_t len = nul ? static_cast<std::size_t>(static_cast<const char*>(nul) - s) : list.size() - off;
    std::string key(s, len);
    off += len + 1;
    if (overlay && note_overlay_xattr(src, key, e)) continue;
    if (!starts_with(key, "security.") && !starts_with(key, "system.") && !starts_with(key, "trusted.") &&
        !starts_with(key, "user."))
      continue;
    std::string val;
    if (!read_sized([&](char* b, std::size_t n) { return src.get(key, b, n); }, kXattrValueMax, val, err,
                    too_big)) {
      if (too_big)
        add_error(e,
                  "xattrs: " + pct_encode(key) + " larger than " + std::to_string(kXattrValueMax) + " bytes");
      else if (err != ENODATA)  // removed since the listing: gone, like a vanished name
        add_error(e, "xattrs: " + pct_encode(key) + ": " + std::strerror(err));
      continue;
    }
    total += val.size();
    if (total > kXattrTotalMax) {
      add_error(e, "xattrs: values larger than " + std::to_string(kXattrTotalMax) + " bytes in all");
      break;
    }
    e.xattrs.emplace_back(std::move(key), std::move(val));
  }
  std::sort(e.xattrs.begin(), e.xattrs.end());
}
void read_xattrs(int dirfd, const std::string& name, FsEntry& e, bool overlay = false) {
  XattrSource src(dirfd, name);
  read_xattrs(src, e, overlay);
}

// An entry as a walk holds it, with what the tree store needs of it (made
// by finish()).
struct Slot {
  FsEntry e;
  bool done = false;         // finish() ran
  bool had = false;          // the store had a record of this path (before the walk)
  bool storable = false;     // the entry's record can be stored
  HashCache::TreeItem item;  // its record, to be put (an empty key: nothing to put)
};

// What finish() needs of a walk with a tree store.
struct StoreContext {
  const std::unordered_map<std::string, std::string>* prior;  // the stored records (read only)
  std::string prefix;                                         // HashCache::tree_prefix(tree_key)
  int64_t ctime_before;  // entries changed at or after it are not stored (WalkOptions::racy_ns)
};

// An entry's leaf and, with a store (`st`), its record when it is storable
// (no error, did not move while it was read, not changed within racy_ns of
// the walk: else it is read again next time) and not stored as it is. Made
// once nothing can change the entry any more: for a regular file, on its
// hashing thread as soon as it was read; for the others, after the walk.
void finish(Slot& slot, const StoreContext* st) {
  FsEntry& e = slot.e;
  slot.done = true;
  if (!e.reused || !e.error.empty()) e.leaf = leaf_hash(e);
  // A reused entry is its stored record, unchanged (and was storable when
  // stored: its ctime has not moved since).
  if (!st || e.reused) return;
  auto p = st->prior->find(e.path);
  slot.had = p != st->prior->end();
  slot.storable = e.error.empty() && e.id_valid && e.path.size() <= HashCache::kMaxRecordPath &&
                  e.id.ctime_ns < st->ctime_before;
  if (!slot.storable) return;
  std::string rec = encode_record(e);
  if (!slot.had || p->second != rec) slot.item = HashCache::tree_item(st->prefix, e.path, rec);
}

struct Job {
  // Open for reading, or (pinned) the inode the walker pinned with O_PATH,
  // which the worker opens (open_job); either way checked by the worker to
  // be the listed regular file.
  UniqueFd fd;
  bool pinned = false;
  bool xattrs = false;          // the worker reads the file's xattrs (open_job)
  bool overlay_xattrs = false;  // WalkOptions::overlay_xattrs
  FsEntry* entry = nullptr;
  Slot* slot = nullptr;  // a walk's entry: finish()ed once read
  uint64_t dev = 0, ino = 0;
  uint64_t max_bytes = 0;  // WalkOptions::max_file_bytes
  bool fresh = false;      // WalkOptions::reread: never taken from the cache
  // Not fresh: the identity at the listing is looked up first (look_up);
  // then, a miss, only this run's hashes are looked at again.
  bool missed = false;
  HashCache::Key key{};
  bool linked = false;  // it has other names (hard links), which may have been hashed meanwhile
  // The fstat of the inode `fd` was opened from (pinned by O_PATH and
  // checked to be the listed regular file): the first read's "before".
  std::optional<struct stat> opened;
  const std::function<void(const std::string&)>* after_read = nullptr;  // WalkOptions::after_read
  int proc_fds = -1;  // pinned: the walk's descriptor of /proc/self/fd (reopen_pinned)
};

// Opens the inode pinned by O_PATH as `pin` for reading, through its magic
// link in /proc/self/fd (relative to the walk's descriptor of that
// directory: one path component instead of four). A device, FIFO or socket
// is never opened this way: only a pinned inode checked to be a regular file
// is.
UniqueFd reopen_pinned(int proc_fds, int pin) {
  char name[16];
  auto [end, ec] = std::to_chars(name, name + sizeof name - 1, pin);
  *end = '\0';
  const int rd = O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | O_NOATIME;
  UniqueFd fd(::openat(proc_fds, name, rd));
  if (!fd && errno == EPERM) fd = UniqueFd(::openat(proc_fds, name, rd & ~O_NOATIME));
  return fd;
}

// A file whose content this run or the store knows by its identity at the
// listing is not read: its hash is taken, its xattrs are read through the
// pinned inode (or the opened file).
bool look_up(Job& j, HashCache* cache, std::atomic<uint64_t>& hits) {
  if (!j.missed) return false;
  auto d = cache->get(j.key);
  if (!d) return false;
  FsEntry& e = *j.entry;
  if (j.xattrs && j.pinned) {
    const std::string pp = "/proc/self/fd/" + std::to_string(j.fd.get());
    XattrSource src = XattrSource::following(pp);
    read_xattrs(src, e, j.overlay_xattrs);
  } else if (j.xattrs) {
    read_xattrs(j.fd.get(), "", e, j.overlay_xattrs);
  }
  e.sha256 = hex(*d);
  hits++;
  return true;
}

// The worker's part of opening a listed regular file: check the inode (the
// one pinned, or the one opened) is still the regular file listed; for a
// pinned inode, open it for reading through /proc (a device, FIFO or socket
// swapped in is never opened); then read the file's xattrs through the
// opened descriptor (the inode listed, whatever its name leads to now).
// False when the file cannot be read (its entry says why). A file replaced
// since the listing has no xattrs: the inode listed is no longer there.
bool open_job(Job& j) {
  FsEntry& e = *j.entry;
  UniqueFd pin;
  if (j.pinned) pin = std::move(j.fd);
  struct stat st {};
  if (::fstat(j.pinned ? pin.get() : j.fd.get(), &st) < 0) {
    add_error(e, errtext(j.pinned ? "open" : "read", errno));
    return false;
  }
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_ino) != j.ino ||
      static_cast<uint64_t>(st.st_dev) != j.dev) {
    add_error(e, "replaced while being read");
    return false;
  }
  if (j.pinned) {
    j.fd = reopen_pinned(j.proc_fds, pin.get());
    if (!j.fd) {
      const int err = errno;
      if (j.xattrs) {  // through the pinned inode, which is the one listed
        const std::string pp = "/proc/self/fd/" + std::to_string(pin.get());
        XattrSource src = XattrSource::following(pp);
        read_xattrs(src, e, j.overlay_xattrs);
      }
      add_error(e, err == ELOOP ? std::string("replaced while being read") : errtext("open", err));
      return false;
    }
  }
  j.opened = st;
  if (j.xattrs) read_xattrs(j.fd.get(), "", e, j.overlay_xattrs);
  return true;
}

std::string too_large(uint64_t limit) {
  return "not hashed: larger than " + std::to_string(limit) + " bytes";
}

// A bounded queue between the walker and the hashing threads: every job
// holds an open file, so its capacity is part of the descriptor budget.
// Jobs are queued in batches (one lock and one wake-up per batch, not per
// file: most files are small); the batch being filled counts against the
// capacity too.
class JobQueue {
 public:
  explicit JobQueue(std::size_t cap)
      : batch_(cap >= 8 ? std::min<std::size_t>(16, cap / 4) : 1),
        limit_(batch_ > 1 ? cap - batch_ : cap),
        ring_(limit_) {
    batch_jobs_.reserve(batch_);
  }
  // Called (on the walking thread) before the first job is queued: the
  // hashing threads start only for a tree that has a file to read, so a
  // walk of a tree without one (an empty tmpfs, /dev) spawns none.
  std::function<void()> before_first;
  void push(Job j) {
    batch_jobs_.push_back(std::move(j));
    if (batch_jobs_.size() >= batch_) flush();
  }
  // Queues the batch being filled (the walk calls it when it is done).
  void flush() {
    if (batch_jobs_.empty()) return;
    if (before_first) {
      auto f = std::move(before_first);
      before_first = nullptr;
      f();
    }
    const std::size_t n = batch_jobs_.size();
    {
      std::unique_lock<std::mutex> lk(mu_);
      not_full_.wait(lk, [&] { return size_ + n <= limit_; });
      for (auto& j : batch_jobs_) ring_[(head_ + size_++) % ring_.size()] = std::move(j);
    }
    batch_jobs_.clear();
    if (n == 1)
      not_empty_.notify_one();
    else
      not_empty_.notify_all();
  }
  bool pop(Job& out) {
    std::unique_lock<std::mutex> lk(mu_);
    not_empty_.wait(lk, [&] { return size_ != 0 || done_; });
    if (size_ == 0) return false;
    out = std::move(ring_[head_]);
    head_ = (head_ + 1) % ring_.size();
    size_--;
    // The walker waits for room for a batch: woken once, when there is
    // (the queue drains one job at a time, so it passes this size).
    if (size_ + batch_ == limit_) not_full_.notify_one();
    return true;
  }
  void close() {
    std::lock_guard<std::mutex> lk(mu_);
    done_ = true;
    not_empty_.notify_all();
  }

 private:
  // Queued + being filled <= the capacity: the queue holds at most limit_,
  // leaving room for the batch the walker fills meanwhile.
  std::size_t batch_, limit_;
  std::vector<Job> batch_jobs_;  // the walking thread's only
  std::mutex mu_;
  std::condition_variable not_full_, not_empty_;
  // The queued jobs: a ring of limit_ slots, allocated once (a node per
  // job was an allocation on the walker's arena freed on a hashing
  // thread's, a lock of the walker's arena per file).
  std::vector<Job> ring_;
  std::size_t head_ = 0, size_ = 0;
  bool done_ = false;
};

bool same_content_stat(const struct stat& a, const struct stat& b) {
  return a.st_size == b.st_size && a.st_mtim.tv_sec == b.st_mtim.tv_sec &&
         a.st_mtim.tv_nsec == b.st_mtim.tv_nsec && a.st_ctim.tv_sec == b.st_ctim.tv_sec &&
         a.st_ctim.tv_nsec == b.st_ctim.tv_nsec;
}

// Reads exactly the size fstat reports (never "until EOF": a file that keeps
// growing must not be read forever), then checks nothing moved: the same
// size, mtime and ctime after the read, no early EOF, no byte past the end.
// A file that changed is re-read a bounded number of times, then recorded as
// "changed while being read" without a content hash.
void hash_file(Job& j, HashCache* cache, std::vector<char>& buf, std::atomic<uint64_t>& bytes,
               std::atomic<uint64_t>& hits) {
  FsEntry& e = *j.entry;
  const int fd = j.fd.get();
  struct stat st {};
  for (int attempt = 0; attempt < kHashAttempts; ++attempt) {
    if (attempt == 0 && j.opened) {
      st = *j.opened;
    } else if (::fstat(fd, &st) < 0) {
      add_error(e, errtext("read", errno));
      return;
    }
    if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_ino) != j.ino ||
        static_cast<uint64_t>(st.st_dev) != j.dev) {
      add_error(e, "replaced while being read");
      return;
    }
    const uint64_t want = static_cast<uint64_t>(st.st_size);
    if (j.max_bytes && want > j.max_bytes) {  // grew past the limit after the listing
      e.size = want;
      add_error(e, too_large(j.max_bytes));
      return;
    }
    const HashCache::Key key = HashCache::key_of(st);
    if (attempt == 0) {
      // Another path to the same file (a hard link) hashed meanwhile.
      if (auto d = j.fresh                       ? std::nullopt
                   : !j.missed                   ? cache->get(key)
                   : j.linked || st.st_nlink > 1 ? cache->get_known(key)
                                                 : std::nullopt) {
        e.sha256 = hex(*d);
        e.size = want;
        if (stat_id_of(st) != e.id) e.id_valid = false;  // moved since the listing
        hits++;
        return;
      }
      if (want > buf.size()) ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    }
    // The last read asks for one byte more than the size: a file that grew
    // since the fstat says so there. A read that returns less than it asked
    // for ends at the file's end as of that read (a regular file), so a
    // small file takes one read, and the probe is a read of its own only
    // when a full read ends exactly at the size.
    Sha256 h;
    uint64_t off = 0;
    bool early_eof = false, grew = false;
    for (;;) {
      const uint64_t left = want - off;
      const std::size_t chunk = left < buf.size() ? static_cast<std::size_t>(left) + 1 : buf.size();
      ssize_t r = ::pread(fd, buf.data(), chunk, static_cast<off_t>(off));
      if (r < 0) {
        if (errno == EINTR) continue;
        add_error(e, errtext("read", errno));
        return;
      }
      auto got = static_cast<std::size_t>(r);
      if (got == 0) {
        early_eof = off < want;
        break;
      }
      if (got > left) {
        grew = true;
        got = static_cast<std::size_t>(left);
      }
      h.update(buf.data(), got);
      off += got;
      if (grew || (off == want && static_cast<std::size_t>(r) < chunk)) break;
    }
    bytes += off;
    if (j.after_read && *j.after_read) (*j.after_read)(e.path);
    struct stat after {};
    if (::fstat(fd, &after) < 0) {
      add_error(e, errtext("read", errno));
      return;
    }
    if (!early_eof && !grew && same_content_stat(st, after)) {
      Digest d = h.finish();
      e.sha256 = hex(d);
      e.size = off;
      e.mode = after.st_mode & 07777;
      e.uid = after.st_uid;
      e.gid = after.st_gid;
      // The stored identity is the listing's: the fields read there
      // (xattrs) and here (content) belong to it only if nothing moved.
      if (stat_id_of(after) != e.id) e.id_valid = false;
      cache->put(key, d);
      return;
    }
    st = after;
  }
  e.size = static_cast<uint64_t>(st.st_size);
  e.mode = st.st_mode & 07777;
  e.uid = st.st_uid;
  e.gid = st.st_gid;
  add_error(e, "changed while being read");
}

// This process's /proc/self/fd, which pinned files are opened through
// (reopen_pinned); none when /proc is not mounted (files are then opened by
// name, after the listing). Opened per walk, in the walking process: a
// descriptor kept across a fork would name the parent's table.
UniqueFd open_proc_fds() {
  UniqueFd d(::open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC));
  struct statfs fs {};
  if (d && (::fstatfs(d.get(), &fs) < 0 || fs.f_type != PROC_SUPER_MAGIC)) d.reset();
  return d;
}

// Descriptor budget: a fraction of RLIMIT_NOFILE's soft limit (which is
// never raised), split between the open directories of the walk, the queue
// of opened files and the hashing threads.
struct Budget {
  std::size_t dir_fds, queue, workers;
};
Budget budget_for(unsigned threads) {
  struct rlimit rl {};
  std::size_t soft = 1024;
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0)
    soft = rl.rlim_cur == RLIM_INFINITY ? std::size_t{1} << 20 : static_cast<std::size_t>(rl.rlim_cur);
  std::size_t b = std::clamp<std::size_t>(soft / 2, 12, 1024);
  Budget out;
  out.dir_fds = std::clamp<std::size_t>(b / 4, 3, 64);
  out.queue = std::clamp<std::size_t>(b / 4, 1, 256);
  out.workers = std::clamp<std::size_t>(threads, 1, std::max<std::size_t>(1, b / 4));
  return out;
}

struct Child {
  std::string name;
  uint64_t dev, ino;
  FsEntry* entry;
};

// One directory on the walk's path from the root. Its descriptor may be
// closed to stay within the budget and is re-opened, one component at a time
// from the nearest open ancestor, checked against (dev, ino) at each step.
struct Frame {
  std::string name;  // last component ("" for the root)
  std::string rel;
  std::size_t depth = 0;
  uint64_t dev = 0, ino = 0;
  FsEntry* entry = nullptr;
  UniqueFd fd;
  std::vector<Child> subdirs;  // still to descend
  std::size_t next = 0;
};

const char* const kReplacedDir = "replaced while being walked";

class Walker {
 public:
  Walker(const WalkOptions& o, FsSnapshot& s, JobQueue& q, Budget b,
         std::vector<std::unique_ptr<Slot>>& entries,
         const std::unordered_map<std::string, std::string>* prior, int proc_fds)
      : o_(o),
        s_(s),
        q_(q),
        b_(b),
        entries_(entries),
        proc_(proc_fds >= 0),
        proc_fds_(proc_fds),
        prior_(prior) {}

  void run(UniqueFd rootfd, const struct statx& rsx) {
    root_dev_ = dev_of(rsx);
    root_mnt_ = mnt_id_of(rsx);
    auto slot = std::make_unique<Slot>();
    FsEntry* root = &slot->e;
    root->path = ".";
    if (!reuse(*root, rsx)) {
      fill_statx(*root, rsx);
      root->id = stat_id_of(rsx);
      root->id_valid = true;
      read_xattrs(rootfd.get(), ".", *root, o_.overlay_xattrs);
    }
    s_.dirs++;
    Frame f;
    f.dev = root_dev_;
    f.ino = rsx.stx_ino;
    f.entry = root;
    f.fd = std::move(rootfd);
    entries_.push_back(std::move(slot));
    stack_.push_back(std::move(f));
    open_ = 1;
    list(stack_.back());

    while (!stack_.empty()) {
      const std::size_t i = stack_.size() - 1;
      Frame& top = stack_[i];
      if (top.next >= top.subdirs.size()) {
        if (top.fd) open_--;
        stack_.pop_back();
        lo_ = std::min(lo_, std::max<std::size_t>(1, stack_.size()));
        continue;
      }
      Child c = std::move(top.subdirs[top.next++]);
      std::string rel = top.rel.empty() ? c.name : top.rel + "/" + c.name;
      const std::size_t depth = top.depth + 1;
      int pfd = ensure_fd(i);
      if (pfd < 0) {
        // The parent is no longer the directory that was listed: nothing
        // below it can be attributed to this path any more.
        add_error(*c.entry, kReplacedDir);
        for (std::size_t k = top.next; k < top.subdirs.size(); ++k)
          add_error(*top.subdirs[k].entry, kReplacedDir);
        top.next = top.subdirs.size();
        continue;
      }
      if (o_.before_open) o_.before_open(rel, 'd');
      UniqueFd sub(
          ::openat(pfd, c.name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
      if (!sub) {
        add_error(*c.entry, errtext("open", errno));
        continue;
      }
      struct statx sx {};
      if (statx_at(sub.get(), "", AT_EMPTY_PATH, sx) < 0 || dev_of(sx) != c.dev || sx.stx_ino != c.ino ||
          (o_.one_file_system && mounted_on(sx))) {
        add_error(*c.entry, kReplacedDir);
        continue;
      }
      Frame nf;
      nf.name = std::move(c.name);
      nf.rel = std::move(rel);
      nf.depth = depth;
      nf.dev = c.dev;
      nf.ino = c.ino;
      nf.entry = c.entry;
      nf.fd = std::move(sub);
      stack_.push_back(std::move(nf));
      open_++;
      trim();
      Frame& cur = stack_.back();
      list(cur);
      if (cur.subdirs.empty() && cur.fd) {
        cur.fd.reset();
        open_--;
      }
    }
  }

 private:
  // The stat-only check: the stored record of this path, when its identity
  // is this statx's (docs/FORMATS.md "Hash cache").
  bool reuse(FsEntry& e, const struct statx& sx) {
    if (!prior_ || must_reread(sx)) return false;
    auto it = prior_->find(e.path);
    if (it == prior_->end()) return false;
    FsEntry r;
    if (!decode_record(it->second, r) || r.id != stat_id_of(sx)) return false;
    r.path = std::move(e.path);
    r.reused = true;
    e = std::move(r);
    s_.reused++;
    return true;
  }

  // Another mount: a different device than the root, a different mount id
  // (a bind mount of the same file system), or the kernel says it is the
  // root of a mount.
  bool mounted_on(const struct statx& sx) const {
    if (dev_of(sx) != root_dev_) return true;
    if (root_mnt_ && mnt_id_of(sx) && mnt_id_of(sx) != root_mnt_) return true;
    return (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
  }

  // Close the shallowest open descriptors (never the root's, never the
  // top's) until the stack is within its budget.
  void trim() {
    const std::size_t top = stack_.size() - 1;
    for (std::size_t k = lo_; open_ > b_.dir_fds && k < top; ++k) {
      if (stack_[k].fd) {
        stack_[k].fd.reset();
        open_--;
      }
      lo_ = k + 1;
    }
  }

  int ensure_fd(std::size_t i) {
    if (stack_[i].fd) return stack_[i].fd.get();
    std::size_t j = i;
    while (j > 0 && !stack_[j].fd) --j;
    UniqueFd cur;
    int at = stack_[j].fd.get();
    for (std::size_t k = j + 1; k <= i; ++k) {
      UniqueFd next(
          ::openat(at, stack_[k].name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
      if (!next) return -1;
      struct statx sx {};
      if (statx_at(next.get(), "", AT_EMPTY_PATH, sx) < 0 || dev_of(sx) != stack_[k].dev ||
          sx.stx_ino != stack_[k].ino)
        return -1;
      cur = std::move(next);
      at = cur.get();
    }
    stack_[i].fd = std::move(cur);
    open_++;
    lo_ = std::min(lo_, std::max<std::size_t>(1, i));
    trim();
    return stack_[i].fd.get();
  }

  bool excluded(const std::string& rel) const {
    return std::find(o_.exclude.begin(), o_.exclude.end(), rel) != o_.exclude.end();
  }

  void list(Frame& f) {
    // getdents64 on the directory's own descriptor (opened for this walk,
    // at offset 0, listed once): no copy of it, no DIR.
    std::vector<std::string> names;
    if (dents_.empty()) dents_.resize(32 * 1024);
    for (;;) {
      const ssize_t n = ::getdents64(f.fd.get(), dents_.data(), dents_.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) add_error(*f.entry, errtext("readdir", errno));
      if (n <= 0) break;
      for (std::size_t off = 0; off < static_cast<std::size_t>(n);) {
        const auto* de = reinterpret_cast<const struct dirent64*>(dents_.data() + off);
        off += de->d_reclen;
        if (std::strcmp(de->d_name, ".") != 0 && std::strcmp(de->d_name, "..") != 0)
          names.emplace_back(de->d_name);
      }
    }
    const int dfd = f.fd.get();
    for (auto& name : names) {
      std::string rel = f.rel.empty() ? name : f.rel + "/" + name;
      if (excluded(rel)) continue;
      struct statx sx {};
      auto slot = std::make_unique<Slot>();
      FsEntry* e = &slot->e;
      e->path = std::move(rel);
      if (statx_at(dfd, name.c_str(), 0, sx) < 0) {
        if (errno == ENOENT) continue;  // vanished since the listing
        e->type = '?';
        add_error(*e, errtext("stat", errno));
        entries_.push_back(std::move(slot));
        continue;
      }
      const bool reused = reuse(*e, sx);
      if (!reused) {
        fill_statx(*e, sx);
        e->id = stat_id_of(sx);
        e->id_valid = true;
        if (e->type != 'f') read_xattrs(dfd, name, *e, o_.overlay_xattrs);  // (a file's: file())
      }
      switch (e->type) {
        case 'l':
          if (!reused) read_link(dfd, name, *e);
          break;
        case 'f':
          if (reused)
            s_.files++;
          else
            file(dfd, name, sx, *slot);
          break;
        case 'd':
          s_.dirs++;
          if (o_.one_file_system && mounted_on(sx))
            add_error(*e, "not descended: another file system is mounted here");
          else if (f.depth + 1 >= o_.max_depth)
            add_error(*e, "not descended: deeper than " + std::to_string(o_.max_depth) + " levels");
          else
            f.subdirs.push_back({name, dev_of(sx), sx.stx_ino, e});
          break;
        default:
          break;  // devices, FIFOs, sockets: metadata only, never opened
      }
      entries_.push_back(std::move(slot));
    }
  }

  static void read_link(int dfd, const std::string& name, FsEntry& e) {
    char buf[PATH_MAX + 1];
    ssize_t ln = ::readlinkat(dfd, name.c_str(), buf, sizeof buf);
    if (ln < 0)
      add_error(e, errtext("readlink", errno));
    else if (static_cast<std::size_t>(ln) >= sizeof buf)
      add_error(e, "readlink: target longer than " + std::to_string(PATH_MAX) + " bytes");
    else
      e.target.assign(buf, static_cast<std::size_t>(ln));
  }

  // WalkOptions::reread: written during the run (its identity may not say so).
  bool must_reread(const struct statx& sx) const {
    return (sx.stx_mode & S_IFMT) == S_IFREG && o_.reread && o_.reread(dev_of(sx), sx.stx_ino);
  }

  // A regular file is pinned and queued; a hashing thread looks its
  // content up (this run's hashes, the store) and reads what it must
  // (look_up, open_job, hash_file): the walker only lists.
  void file(int dfd, const std::string& name, const struct statx& sx, Slot& slot) {
    FsEntry& e = slot.e;
    s_.files++;
    const bool fresh = must_reread(sx);
    if (fresh && o_.max_file_bytes && sx.stx_size > o_.max_file_bytes) {
      // Never read, so not counted as read again (the others over the
      // limit are looked up first: a known hash is recorded).
      read_xattrs(dfd, name, e, o_.overlay_xattrs);
      add_error(e, too_large(o_.max_file_bytes));
      return;
    }
    if (fresh) s_.reread++;
    if (o_.before_open) o_.before_open(e.path, 'f');
    Job j;
    j.entry = &e;
    j.slot = &slot;
    j.dev = dev_of(sx);
    j.ino = sx.stx_ino;
    j.max_bytes = o_.max_file_bytes;
    j.after_read = &o_.after_read;
    j.fresh = fresh;
    j.missed = !fresh;
    j.key = HashCache::Key{dev_of(sx), sx.stx_ino, sx.stx_size, ns_of(sx.stx_mtime), ns_of(sx.stx_ctime)};
    j.linked = sx.stx_nlink > 1;
    j.xattrs = true;
    j.overlay_xattrs = o_.overlay_xattrs;
    if (proc_) {
      // Pin the inode without opening it (O_PATH runs no driver open); the
      // worker checks it and opens it (open_job).
      j.fd = UniqueFd(::openat(dfd, name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
      j.pinned = true;
      j.proc_fds = proc_fds_;
    } else {
      const int rd = O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | O_NOATIME | O_NOFOLLOW;
      j.fd = UniqueFd(::openat(dfd, name.c_str(), rd));
      if (!j.fd && errno == EPERM) j.fd = UniqueFd(::openat(dfd, name.c_str(), rd & ~O_NOATIME));
    }
    if (!j.fd) {
      const int err = errno;
      // (Gone, or a symlink now: nothing of the file listed to read.)
      if (err != ENOENT && err != ELOOP) read_xattrs(dfd, name, e, o_.overlay_xattrs);
      add_error(e, err == ELOOP && !proc_ ? std::string("replaced while being read") : errtext("open", err));
      return;
    }
    q_.push(std::move(j));
  }

  const WalkOptions& o_;
  FsSnapshot& s_;
  JobQueue& q_;
  Budget b_;
  std::vector<std::unique_ptr<Slot>>& entries_;
  bool proc_;
  int proc_fds_;
  const std::unordered_map<std::string, std::string>* prior_;
  uint64_t root_dev_ = 0, root_mnt_ = 0;
  std::vector<Frame> stack_;
  std::vector<char> dents_;  // list()'s buffer
  std::size_t open_ = 0, lo_ = 1;
};

}  // namespace

namespace {
// A tree whose root is a regular file (a single-file bind mount): one entry,
// ".", read as a walk reads a file.
FsSnapshot snapshot_file(const std::string& root, int pathfd, const struct statx& sx,
                         const WalkOptions& opts) {
  FsSnapshot s;
  s.root_dir = root;
  FsEntry e;
  e.path = ".";
  fill_statx(e, sx);
  e.id = stat_id_of(sx);
  e.id_valid = true;
  s.files = 1;
  std::string pp = "/proc/self/fd/" + std::to_string(pathfd);
  const int rd = O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | O_NOATIME;
  UniqueFd fd(::open(pp.c_str(), rd));
  if (!fd && errno == EPERM) fd = UniqueFd(::open(pp.c_str(), rd & ~O_NOATIME));
  if (!fd) {
    add_error(e, errtext("open", errno));
  } else {
    read_xattrs(fd.get(), "", e);
    if (opts.max_file_bytes && sx.stx_size > opts.max_file_bytes) {
      add_error(e, too_large(opts.max_file_bytes));
    } else {
      std::shared_ptr<HashCache> cache = opts.cache ? opts.cache : std::make_shared<HashCache>("");
      const bool fresh = opts.reread && opts.reread(dev_of(sx), sx.stx_ino);
      if (fresh) s.reread = 1;
      Job j;
      j.fd = std::move(fd);
      j.entry = &e;
      j.dev = dev_of(sx);
      j.ino = sx.stx_ino;
      j.max_bytes = opts.max_file_bytes;
      j.fresh = fresh;
      std::vector<char> buf(1 << 20);
      std::atomic<uint64_t> bytes{0}, hits{0};
      hash_file(j, cache.get(), buf, bytes, hits);
      s.bytes_hashed = bytes;
      s.cache_hits = hits;
    }
  }
  e.leaf = leaf_hash(e);
  s.root = merkle_root({e.leaf});
  s.entries.push_back(std::move(e));
  return s;
}
}  // namespace

namespace {
// `entries` sorted by path, and `out` resized to as many (default) entries.
void sort_and_make_room(std::vector<std::unique_ptr<Slot>>& entries, std::vector<FsEntry>& out,
                        std::size_t threads) {
  auto by_path = [](const std::unique_ptr<Slot>& a, const std::unique_ptr<Slot>& b) {
    return a->e.path < b->e.path;
  };
  const std::size_t n = entries.size();
  if (threads < 2 || n < 8192) {
    std::sort(entries.begin(), entries.end(), by_path);
    out.resize(n);
    return;
  }
  const auto mid = entries.begin() + static_cast<std::ptrdiff_t>(n / 2);
  std::latch sorted(1);
  std::exception_ptr err;
  std::thread other([&] {
    std::sort(mid, entries.end(), by_path);
    sorted.count_down();
    try {
      out.resize(n);
    } catch (...) {
      err = std::current_exception();
    }
  });
  std::sort(entries.begin(), mid, by_path);
  sorted.wait();
  std::inplace_merge(entries.begin(), mid, entries.end(), by_path);
  other.join();
  if (err) std::rethrow_exception(err);
}
}  // namespace

FsSnapshot snapshot(const std::string& root_dir, const WalkOptions& opts) {
  {
    // A regular file at the root: a single-file bind mount. Never through a
    // symlink, except the supervisor's own descriptor of the mount
    // ("/proc/self/fd/N", a magic link to exactly that file).
    const bool own_fd = starts_with(root_dir, "/proc/self/fd/") &&
                        root_dir.find('/', std::strlen("/proc/self/fd/")) == std::string::npos;
    UniqueFd p(::open(root_dir.c_str(), O_PATH | O_CLOEXEC | (own_fd ? 0 : O_NOFOLLOW)));
    struct statx fsx {};
    if (p && statx_at(p.get(), "", AT_EMPTY_PATH, fsx) == 0 && (fsx.stx_mode & S_IFMT) == S_IFREG)
      return snapshot_file(root_dir, p.get(), fsx, opts);
  }
  FsSnapshot s;
  s.root_dir = root_dir;
  UniqueFd rootfd(::open(root_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!rootfd) throw_errno("filesystem root: open " + root_dir);
  struct statx rsx {};
  if (statx_at(rootfd.get(), "", AT_EMPTY_PATH, rsx) < 0) throw_errno("filesystem root: statx " + root_dir);

  // Without a cache file (policy "strict") the cache still lives for this
  // walk: a file reached by several paths (hard links) is read once.
  std::shared_ptr<HashCache> cache = opts.cache;
  const bool persist = !cache && !opts.cache_path.empty();
  if (!cache) cache = std::make_shared<HashCache>(opts.cache_path);
  if (persist) cache->load();
  // The stat-only check's stored records of this tree.
  const bool store = !opts.tree_key.empty() && cache->persistent();
  std::unordered_map<std::string, std::string> prior;
  if (store) prior = cache->tree_records(opts.tree_key);
  struct timespec now {};
  ::clock_gettime(CLOCK_REALTIME, &now);
  const int64_t walk_start = static_cast<int64_t>(now.tv_sec) * 1000000000LL + now.tv_nsec;
  StoreContext store_ctx{&prior, store ? HashCache::tree_prefix(opts.tree_key) : std::string(),
                         walk_start - opts.racy_ns};
  const StoreContext* st = store ? &store_ctx : nullptr;
  std::vector<std::unique_ptr<Slot>> entries;
  std::atomic<uint64_t> bytes{0}, hits{0};
  const Budget budget =
      budget_for(opts.threads ? opts.threads : std::max(1u, std::thread::hardware_concurrency()));
  const UniqueFd proc_fds = open_proc_fds();  // (outlives the hashing threads, which use it)
  JobQueue queue(budget.queue);
  std::vector<std::thread> workers;
  struct Guard {
    JobQueue& q;
    std::vector<std::thread>& w;
    ~Guard() {
      q.close();
      for (auto& t : w)
        if (t.joinable()) t.join();
    }
  } guard{queue, workers};
  queue.before_first = [&] {
    for (std::size_t t = 0; t < budget.workers; ++t)
      workers.emplace_back([&] {
        std::vector<char> buf(1 << 20);
        Job j;
        while (queue.pop(j)) {
          if (!look_up(j, cache.get(), hits) && open_job(j)) hash_file(j, cache.get(), buf, bytes, hits);
          finish(*j.slot, st);  // (nothing changes a file's entry once it was read)
          j = Job{};
        }
      });
  };

  Walker(opts, s, queue, budget, entries, store ? &prior : nullptr, proc_fds.get())
      .run(std::move(rootfd), rsx);
  queue.flush();
  queue.close();
  for (auto& t : workers) t.join();
  s.bytes_hashed = bytes;
  s.cache_hits += hits;
  // Sorted as pointers (an entry is large to swap), on two threads for a
  // large tree: each sorts a half, then one merges them while the other
  // makes room for the entries. Then, on every hashing thread: the leaves
  // and records of the entries not finished yet (all but the files read),
  // each entry moved into place.
  const std::size_t n = entries.size();
  sort_and_make_room(entries, s.entries, budget.workers);
  std::vector<Digest> leaves(n);
  std::vector<HashCache::TreeItem> put(store ? n : 0);
  // (Threads only for a large tree: a block of at least 1,024 entries each.)
  const std::size_t threads = std::min<std::size_t>(budget.workers, n / 1024);
  parallel_for(n, threads, [&](std::size_t i) {
    Slot& slot = *entries[i];
    if (!slot.done) finish(slot, st);
    leaves[i] = slot.e.leaf;
    s.entries[i] = std::move(slot.e);
    if (store) put[i] = std::move(slot.item);
  });
  s.root = merkle_root(leaves, budget.workers);
  if (!store && !persist) return s;
  // The store is updated in place (what changed, what is new, what is gone)
  // with the content hashes learned, in one write transaction that goes on
  // after the walk returns (HashCache::write_later): the root does not
  // need it, only a later walk does.
  std::vector<std::string> del;
  bool all = true;
  if (store) {
    std::size_t matched = 0;  // entries that have a stored record
    for (std::size_t i = 0; i < n; ++i) {
      const Slot& slot = *entries[i];
      const FsEntry& e = s.entries[i];
      if (e.reused || slot.had) ++matched;
      if (e.reused || slot.storable) continue;
      all = false;
      if (slot.had) del.push_back(e.path);
    }
    if (matched < prior.size()) {  // records of paths the walk no longer has: gone
      for (const auto& [path, rec] : prior) {
        auto it = std::lower_bound(s.entries.begin(), s.entries.end(), path,
                                   [](const FsEntry& a, const std::string& b) { return a.path < b; });
        if (it == s.entries.end() || it->path != path) del.push_back(path);
      }
    }
    // (Items left empty, entries stored as they are, are skipped.)
    std::erase_if(put, [](const HashCache::TreeItem& t) { return t.key.empty(); });
  }
  s.stored = cache->write_later(store ? opts.tree_key : std::string(), std::move(put), std::move(del));
  s.storable = store && all;
  if (persist) s.store_cache = cache;  // the walk's own store: open until its write is done
  return s;
}

bool stored_all(const FsSnapshot& s) {
  return s.storable && s.stored.valid() && s.stored.get();
}

FsEntry root_entry(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd) throw_errno("filesystem root: open " + dir);
  struct statx sx {};
  if (statx_at(fd.get(), "", AT_EMPTY_PATH, sx) < 0) throw_errno("filesystem root: statx " + dir);
  FsEntry e;
  e.path = ".";
  fill_statx(e, sx);
  read_xattrs(fd.get(), ".", e);
  e.leaf = leaf_hash(e);
  return e;
}

std::vector<FsChange> diff(const FsSnapshot& before, const FsSnapshot& after) {
  std::vector<FsChange> out;
  if (before.root == after.root) return out;  // the same leaves, in the same order
  if (before.deferred || after.deferred) throw Error("diff: a deferred root's entries were not read");
  std::size_t i = 0, j = 0;
  const auto& a = before.entries;
  const auto& b = after.entries;
  while (i < a.size() || j < b.size()) {
    if (j >= b.size() || (i < a.size() && a[i].path < b[j].path)) {
      out.push_back({a[i].path, "removed", a[i].leaf, std::nullopt, a[i].sha256, ""});
      ++i;
    } else if (i >= a.size() || b[j].path < a[i].path) {
      out.push_back({b[j].path, "added", std::nullopt, b[j].leaf, "", b[j].sha256});
      ++j;
    } else {
      if (a[i].leaf != b[j].leaf)
        out.push_back({a[i].path, "modified", a[i].leaf, b[j].leaf, a[i].sha256, b[j].sha256});
      ++i;
      ++j;
    }
  }
  return out;
}

json change_to_json(const FsChange& c) {
  json j{{"path", pct_encode(c.path)},
         {"change", c.kind},
         {"old", c.old_leaf ? json(hex(*c.old_leaf)) : json(nullptr)},
         {"new", c.new_leaf ? json(hex(*c.new_leaf)) : json(nullptr)}};
  if (!c.old_sha256.empty()) j["old_sha256"] = c.old_sha256;
  if (!c.new_sha256.empty()) j["new_sha256"] = c.new_sha256;
  return j;
}

}  // namespace agentshim::attest
