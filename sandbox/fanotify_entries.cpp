#include "sandbox/fanotify_entries.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/fanotify.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>

#include "attest/canonical.h"
#include "common/error.h"

namespace agentshim::observer {
namespace {

std::string errno_text(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

std::string fsid_of(int fd) {
  struct statfs sf {};
  if (::fstatfs(fd, &sf) < 0) return "";
  return std::string(reinterpret_cast<const char*>(&sf.f_fsid), sizeof sf.f_fsid);
}

// The key of a directory: its filesystem's id and its file handle (struct
// file_handle's header and bytes), as fanotify reports it.
std::optional<std::string> handle_key(int fd, const std::string& fsid, int* mount_id) {
  alignas(struct file_handle) char buf[sizeof(struct file_handle) + MAX_HANDLE_SZ];
  auto* fh = reinterpret_cast<struct file_handle*>(buf);
  fh->handle_bytes = MAX_HANDLE_SZ;
  if (::name_to_handle_at(fd, "", fh, mount_id, AT_EMPTY_PATH) < 0) return std::nullopt;
  return fsid + std::string(buf, sizeof(struct file_handle) + fh->handle_bytes);
}

}  // namespace

bool parse_fid_record(const char* p, const char* next, bool with_name, FidRecord& out) {
  if (static_cast<std::size_t>(next - p) <
      sizeof(struct fanotify_event_info_fid) + sizeof(struct file_handle))
    return false;
  const char* fsid = p + offsetof(struct fanotify_event_info_fid, fsid);
  const char* fhp = p + sizeof(struct fanotify_event_info_fid);
  struct file_handle fh {};
  std::memcpy(&fh, fhp, sizeof fh);
  const char* bytes = fhp + sizeof(struct file_handle);
  if (fh.handle_bytes > MAX_HANDLE_SZ || fh.handle_bytes > static_cast<std::size_t>(next - bytes))
    return false;
  out.handle.assign(fhp, sizeof(struct file_handle) + fh.handle_bytes);
  static_assert(sizeof(__kernel_fsid_t) == sizeof(uint64_t));
  out.key = std::string(fsid, sizeof(__kernel_fsid_t)) + out.handle;
  if (with_name) {
    const char* name = bytes + fh.handle_bytes;
    const void* nul = name < next ? std::memchr(name, '\0', static_cast<std::size_t>(next - name)) : nullptr;
    if (!nul) return false;
    out.name.assign(name, static_cast<const char*>(nul));
  }
  return true;
}

EntryTrees::EntryTrees(Sink sink, std::size_t max_dirs) : sink_(std::move(sink)), max_dirs_(max_dirs) {
  int g = ::fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME_TARGET,
                          O_RDONLY | O_LARGEFILE | O_CLOEXEC);
  if (g < 0) throw_errno("fanotify_init(FAN_REPORT_DFID_NAME_TARGET)");
  group_.reset(g);
}

std::string EntryTrees::watch(const std::string& dir, const std::string& mount_point, const std::string& tree,
                              const std::vector<std::string>& lower) {
  Tree t;
  t.name = tree;
  t.mount_point = mount_point;
  t.overlay = !lower.empty();
  t.dir.reset(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!t.dir) return errno_text("open " + dir);
  for (const auto& l : lower) {
    UniqueFd f(::open(l.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!f) return errno_text("open lower layer " + l);
    t.lower.push_back(std::move(f));
    t.lower_paths.push_back(l);
  }
  // Marked first, walked second: a directory made meanwhile is reported by
  // its own event.
  if (::fanotify_mark(group_.get(), FAN_MARK_ADD | FAN_MARK_FILESYSTEM,
                      FAN_CREATE | FAN_DELETE | FAN_RENAME | FAN_ONDIR, t.dir.get(), nullptr) < 0)
    return errno_text("fanotify_mark(FAN_MARK_FILESYSTEM) " + dir);
  const std::string fsid = fsid_of(t.dir.get());
  if (fsid.empty()) return errno_text("fstatfs " + dir);
  const auto index = static_cast<uint32_t>(trees_.size());
  const std::size_t dirs_before = dirs_.size();
  int mnt = 0;
  auto key = handle_key(t.dir.get(), fsid, &mnt);
  if (!key) return errno_text("name_to_handle_at " + dir);
  if (auto it = by_handle_.find(*key); it != by_handle_.end())
    return "its directory is watched already, as part of " + trees_[dirs_[it->second].tree].name;
  trees_.push_back(std::move(t));
  std::string why;
  if (!add_dir(*key, kRoot, index, false, mount_point))
    why = "more than " + std::to_string(max_dirs_) + " directories";
  else
    why = walk(trees_.back().dir.get(), index, static_cast<uint32_t>(dirs_.size() - 1), fsid);
  if (!why.empty()) {
    // Not watched after all: forget its directories (the mark stays; its
    // events find no directory of ours).
    for (auto it = by_handle_.begin(); it != by_handle_.end();)
      it = it->second >= dirs_before ? by_handle_.erase(it) : std::next(it);
    dirs_.resize(dirs_before);
    trees_.pop_back();
    return why;
  }
  return "";
}

// Every directory below the tree's, depth first, each frame holding its
// directory open; only directories of the same mount (a mount below is a
// tree of its own) and never through a symlink.
std::string EntryTrees::walk(int root_fd, uint32_t tree, uint32_t root_dir, const std::string& fsid) {
  int root_mnt = 0;
  if (!handle_key(root_fd, fsid, &root_mnt)) return errno_text("name_to_handle_at");
  struct Frame {
    UniqueFd fd;
    uint32_t dir;
    std::vector<std::string> subdirs;
    std::size_t next = 0;
  };
  auto read_subdirs = [](int fd, std::vector<std::string>& out) -> bool {
    UniqueFd d(::openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!d) return false;
    DIR* ds = ::fdopendir(d.get());
    if (!ds) return false;
    d.release();
    errno = 0;
    while (struct dirent* e = ::readdir(ds)) {
      if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2]))) continue;
      bool is_dir = e->d_type == DT_DIR;
      if (e->d_type == DT_UNKNOWN) {
        struct stat st {};
        is_dir = ::fstatat(::dirfd(ds), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
      }
      if (is_dir) out.emplace_back(e->d_name);
    }
    const int err = errno;
    ::closedir(ds);
    errno = err;
    return err == 0;
  };
  std::vector<Frame> stack;
  stack.push_back({UniqueFd(::dup(root_fd)), root_dir, {}, 0});
  if (!stack.back().fd || !read_subdirs(root_fd, stack.back().subdirs))
    return errno_text("read the tree's directory");
  while (!stack.empty()) {
    Frame& f = stack.back();
    if (f.next == f.subdirs.size()) {
      stack.pop_back();
      continue;
    }
    const std::string name = f.subdirs[f.next++];
    UniqueFd c(::openat(f.fd.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!c) {
      if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) continue;  // gone or replaced meanwhile
      return errno_text("open " + path_of(f.dir) + "/" + name);
    }
    int mnt = 0;
    auto key = handle_key(c.get(), fsid, &mnt);
    if (!key) {
      // A mount point below (/proc in a root, say): its filesystem may have
      // no file handles at all.
      const int err = errno;
      struct statx sx {};
      if (::statx(c.get(), "", AT_EMPTY_PATH, STATX_MNT_ID, &sx) == 0 && (sx.stx_mask & STATX_MNT_ID) &&
          sx.stx_mnt_id != static_cast<uint64_t>(root_mnt))
        continue;
      errno = err;
      return errno_text("name_to_handle_at " + path_of(f.dir) + "/" + name);
    }
    if (mnt != root_mnt) continue;         // another mount: a tree of its own
    if (by_handle_.count(*key)) continue;  // an earlier tree's (the same directory mounted twice)
    if (!add_dir(*key, f.dir, tree, false, name))
      return "more than " + std::to_string(max_dirs_) + " directories";
    if (stack.size() >= kMaxDepth) return "deeper than " + std::to_string(kMaxDepth) + " directories";
    Frame child{std::move(c), static_cast<uint32_t>(dirs_.size() - 1), {}, 0};
    if (!read_subdirs(child.fd.get(), child.subdirs)) return errno_text("read " + path_of(child.dir));
    stack.push_back(std::move(child));
  }
  return "";
}

int64_t EntryTrees::find(const std::string& key) const {
  auto it = by_handle_.find(key);
  return it == by_handle_.end() ? -1 : static_cast<int64_t>(it->second);
}

bool EntryTrees::add_dir(const std::string& key, uint32_t parent, uint32_t tree, bool fresh,
                         const std::string& name) {
  if (auto it = by_handle_.find(key); it != by_handle_.end()) {
    // Known already (renamed, or seen twice): it is where it is now.
    Dir& d = dirs_[it->second];
    d.parent = parent;
    d.tree = tree;
    d.name = name;
    return true;
  }
  if (dirs_.size() >= max_dirs_) return false;
  dirs_.push_back({parent, tree, fresh, name});
  by_handle_.emplace(key, static_cast<uint32_t>(dirs_.size() - 1));
  return true;
}

std::string EntryTrees::path_of(uint32_t dir) const {
  std::vector<const std::string*> parts;
  uint32_t d = dir;
  for (std::size_t guard = 0; dirs_[d].parent != kRoot && guard < dirs_.size(); ++guard) {
    parts.push_back(&dirs_[d].name);
    d = dirs_[d].parent;
  }
  std::string p = dirs_[d].name;  // the mount point
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    if (p.empty() || p.back() != '/') p += '/';
    p += **it;
  }
  return p;
}

std::string EntryTrees::rel_of(uint32_t dir, const std::string& name) const {
  std::vector<const std::string*> parts{&name};
  for (uint32_t d = dir; dirs_[d].parent != kRoot; d = dirs_[d].parent) parts.push_back(&dirs_[d].name);
  std::string p;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    if (!p.empty()) p += '/';
    p += **it;
  }
  return p;
}

// Whether a lower layer shows `name` in `dir`: the topmost layer that has
// the path decides (a whiteout there hides it).
bool EntryTrees::in_lower(const Tree& t, uint32_t dir, const std::string& name) const {
  for (uint32_t d = dir;; d = dirs_[d].parent) {
    if (dirs_[d].fresh) return false;  // a directory of this run: nothing below it is in a lower layer
    if (dirs_[d].parent == kRoot) break;
  }
  const std::string rel = rel_of(dir, name);
  for (std::size_t i = 0; i < t.lower.size(); ++i) {
    struct stat st {};
    if (::fstatat(t.lower[i].get(), rel.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0)
      return !(S_ISCHR(st.st_mode) && st.st_rdev == 0);
    // Not in this layer: an opaque directory on the way hides the layers below.
    for (std::size_t slash = rel.find('/'); slash != std::string::npos; slash = rel.find('/', slash + 1)) {
      const std::string a = t.lower_paths[i] + "/" + rel.substr(0, slash);
      char v[2];
      for (const char* x : {"trusted.overlay.opaque", "user.overlay.opaque"})
        if (::lgetxattr(a.c_str(), x, v, sizeof v) == 1 && v[0] == 'y') return false;
    }
  }
  return false;
}

bool EntryTrees::whiteout(const Tree& t, const std::string& handle) const {
  alignas(struct file_handle) char hb[sizeof(struct file_handle) + MAX_HANDLE_SZ];
  std::memcpy(hb, handle.data(), std::min(handle.size(), sizeof hb));
  UniqueFd f(static_cast<int>(::syscall(SYS_open_by_handle_at, t.dir.get(),
                                        reinterpret_cast<struct file_handle*>(hb), O_PATH | O_CLOEXEC)));
  struct stat st {};
  return f && ::fstat(f.get(), &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == 0;
}

void EntryTrees::emit(const char* type, uint32_t dir, const std::string& name, int pid, bool is_dir,
                      const char* side) {
  std::string full = path_of(dir);
  if (full.empty() || full.back() != '/') full += '/';
  full += name;
  json ev{{"tree", trees_[dirs_[dir].tree].name},
          {"name", attest::pct_encode(name)},
          {"path", attest::pct_encode(full)},
          {"pid", pid}};
  if (is_dir) ev["dir_entry"] = true;
  if (side) ev["side"] = side;
  sink_(type, std::move(ev));
}

std::string EntryTrees::gone_key(uint32_t dir, const std::string& name) const {
  return std::to_string(dirs_[dir].tree) + '\0' + rel_of(dir, name);
}

namespace {
// Names remembered as removed on overlays (for the dedup); beyond, a
// removal may be reported twice and a name made over an older whiteout
// taken for a copy-up.
constexpr std::size_t kMaxGone = 1 << 18;
}  // namespace

void EntryTrees::removed(uint32_t dir, const std::string& name, int pid, bool is_dir) {
  if (trees_[dirs_[dir].tree].overlay) {
    std::string g = gone_key(dir, name);
    if (gone_.count(g)) return;
    if (gone_.size() < kMaxGone) gone_.insert(std::move(g));
  }
  emit("file.removed", dir, name, pid, is_dir, nullptr);
}

void read_fid_events(int group,
                     const std::function<void(const struct fanotify_event_metadata&, FidEvent&)>& f) {
  alignas(struct fanotify_event_metadata) char buf[64 * 1024];
  for (;;) {
    ssize_t n = ::read(group, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // EAGAIN: nothing queued
    const auto total = static_cast<std::size_t>(n);
    for (std::size_t off = 0; off + sizeof(struct fanotify_event_metadata) <= total;) {
      // Events with name records are padded to 4 bytes only: the metadata
      // (64-bit fields) is copied out rather than read in place.
      struct fanotify_event_metadata m {};
      std::memcpy(&m, buf + off, sizeof m);
      if (m.event_len < sizeof m || m.event_len > total - off) break;
      const char* base = buf + off;
      off += m.event_len;
      if (m.fd >= 0) ::close(m.fd);
      if (m.vers != FANOTIFY_METADATA_VERSION) continue;
      FidEvent ev;
      const char* p = base + m.metadata_len;
      const char* end = base + m.event_len;
      while (p + sizeof(struct fanotify_event_info_header) <= end) {
        struct fanotify_event_info_header h {};
        std::memcpy(&h, p, sizeof h);
        if (h.len < sizeof h || h.len > static_cast<std::size_t>(end - p)) break;
        const char* next = p + h.len;
        FidRecord r;
        if (h.info_type == FAN_EVENT_INFO_TYPE_DFID_NAME && parse_fid_record(p, next, true, r))
          ev.dir = std::move(r);
        else if (h.info_type == FAN_EVENT_INFO_TYPE_OLD_DFID_NAME && parse_fid_record(p, next, true, r))
          ev.from = std::move(r);
        else if (h.info_type == FAN_EVENT_INFO_TYPE_NEW_DFID_NAME && parse_fid_record(p, next, true, r))
          ev.to = std::move(r);
        else if (h.info_type == FAN_EVENT_INFO_TYPE_FID && parse_fid_record(p, next, false, r))
          ev.self = std::move(r);
        p = next;
      }
      f(m, ev);
    }
  }
}

EntryTrees::Drained EntryTrees::drain() {
  Drained out;
  read_fid_events(group_.get(), [&](const struct fanotify_event_metadata& m, FidEvent& ev) {
    if (m.mask & FAN_Q_OVERFLOW) {
      lost_ = "the entry event queue overflowed (FAN_Q_OVERFLOW)";
      return;
    }
    auto& dir = ev.dir;
    auto& from = ev.from;
    auto& to = ev.to;
    auto& self = ev.self;
    const bool is_dir = (m.mask & FAN_ONDIR) != 0;
    const int pid = m.pid;
    auto learn = [&](uint32_t parent, const std::string& name, bool fresh) {
      if (!is_dir || !self) return;
      if (!add_dir(self->key, parent, dirs_[parent].tree, fresh, name) && lost_.empty())
        lost_ = "more than " + std::to_string(max_dirs_) + " directories";
    };
    auto forget = [&] {
      if (is_dir && self) by_handle_.erase(self->key);
    };
    if (m.mask & FAN_RENAME) {
      if (!from || !to) return;
      const int64_t o = find(from->key), t = find(to->key);
      if (o < 0 && t < 0) return;  // the host's
      out.events++;
      if (o >= 0 && t >= 0) {
        const auto od = static_cast<uint32_t>(o), td = static_cast<uint32_t>(t);
        if (trees_[dirs_[td].tree].overlay) {
          // The old name may keep a whiteout (RENAME_WHITEOUT): a file
          // made there later is a new name, not a copy-up.
          gone_.erase(gone_key(td, to->name));
          if (gone_.size() < kMaxGone) gone_.insert(gone_key(od, from->name));
        }
        emit("file.moved", od, from->name, pid, is_dir, "from");
        emit("file.moved", td, to->name, pid, is_dir, "to");
        learn(td, to->name, dirs_[td].fresh);
        return;
      }
      if (t >= 0) {  // arrived from outside the tree
        const auto td = static_cast<uint32_t>(t);
        const Tree& tr = trees_[dirs_[td].tree];
        if (!tr.overlay) {
          emit("file.moved", td, to->name, pid, is_dir, "to");
          learn(td, to->name, true);
          return;
        }
        // From the overlay's work directory: a whiteout, a copy-up or a
        // new name over a whiteout.
        last_in_ = gone_key(td, to->name);
        last_in_created_ = false;
        if (self && !is_dir && whiteout(tr, self->handle)) {
          removed(td, to->name, pid, false);
          return;
        }
        const bool recreated = gone_.erase(last_in_) > 0;
        const bool copy_up = !recreated && in_lower(tr, td, to->name);
        learn(td, to->name, !copy_up);
        if (!copy_up) emit("file.created", td, to->name, pid, is_dir, nullptr);
        last_in_created_ = !copy_up;
        return;
      }
      // Left the tree.
      const auto od = static_cast<uint32_t>(o);
      forget();
      if (!trees_[dirs_[od].tree].overlay) {
        emit("file.moved", od, from->name, pid, is_dir, "from");
        return;
      }
      // To the work directory, to be deleted there. The other half of an
      // exchange that just put a new name in its place is the whiteout
      // that stood there; anything else is the name's removal.
      const bool partner = last_in_ == gone_key(od, from->name);
      const bool was_whiteout = partner && last_in_created_;
      last_in_.clear();
      if (!was_whiteout) removed(od, from->name, pid, is_dir);
      return;
    }
    if (!dir) return;
    const int64_t d = find(dir->key);
    if (d < 0) return;  // the host's
    out.events++;
    const auto dd = static_cast<uint32_t>(d);
    const Tree& tr = trees_[dirs_[dd].tree];
    // The kernel merges queued events of one name and object (a mkdir
    // and its rmdir before the queue is read): each bit is an
    // operation, the creation first.
    if (m.mask & FAN_CREATE) {
      bool created = true;
      if (tr.overlay) {
        const std::string g = gone_key(dd, dir->name);
        const bool recreated = gone_.erase(g) > 0;
        if (!recreated && in_lower(tr, dd, dir->name)) {
          // A whiteout made in place, or a copy-up (linked in from a
          // temporary file).
          created = false;
          if (self && !is_dir && whiteout(tr, self->handle))
            removed(dd, dir->name, pid, false);
          else
            learn(dd, dir->name, false);
        }
      }
      if (created) {
        learn(dd, dir->name, true);
        emit("file.created", dd, dir->name, pid, is_dir, nullptr);
      }
    }
    if (m.mask & FAN_DELETE) {
      // A directory removed is forgotten, unless its creation was merged
      // into this event: then this event stands where the creation was,
      // before the events of what was made inside it.
      if (!(m.mask & FAN_CREATE)) forget();
      if (tr.overlay)
        removed(dd, dir->name, pid, is_dir);
      else
        emit("file.removed", dd, dir->name, pid, is_dir, nullptr);
    }
  });
  out.lost = lost_;
  return out;
}

}  // namespace agentshim::observer
