#include "sandbox/fanotify_write.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <poll.h>
#include <sys/fanotify.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "attest/canonical.h"
#include "common/error.h"
#include "common/log.h"
#include "common/mountinfo.h"

namespace agentshim::observer {
namespace {

std::string self_fd(int fd) {
  return "/proc/self/fd/" + std::to_string(fd);
}

uint64_t mount_id(int fd) {
  struct statx sx {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID, &sx) < 0 || !(sx.stx_mask & STATX_MNT_ID)) return 0;
  return sx.stx_mnt_id;
}

// Where a descriptor's file is, as the kernel names it: for a file of the
// container's mount namespace, its path there. "" when it cannot be read.
std::string fd_path(int fd, bool* deleted = nullptr) {
  char buf[PATH_MAX + 1];
  ssize_t n = ::readlink(self_fd(fd).c_str(), buf, sizeof buf - 1);
  if (n <= 0) return "";
  std::string p(buf, static_cast<std::size_t>(n));
  static const std::string kDeleted = " (deleted)";
  struct stat st {};
  if (p.size() > kDeleted.size() && p.compare(p.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0 &&
      ::fstat(fd, &st) == 0 && st.st_nlink == 0) {
    p.resize(p.size() - kDeleted.size());
    if (deleted) *deleted = true;
  }
  return p;
}

std::string fsid_key(const void* fsid) {
  return std::string(static_cast<const char*>(fsid), sizeof(__kernel_fsid_t));
}

// Filesystems that hold no files a container writes as data: the kernel's
// own views, and the pseudo filesystems runtimes mount.
bool data_fs(const std::string& t) {
  static const char* const kNot[] = {"proc",      "sysfs",    "cgroup",    "cgroup2",     "devpts",
                                     "mqueue",    "debugfs",  "tracefs",   "securityfs",  "bpf",
                                     "pstore",    "configfs", "fusectl",   "binfmt_misc", "nsfs",
                                     "hugetlbfs", "efivarfs", "selinuxfs", "autofs",      "rpc_pipefs"};
  for (const char* n : kNot)
    if (t == n) return false;
  return true;
}

// At most this many mounts are considered (a container has tens).
constexpr std::size_t kMaxMounts = 4096;

}  // namespace

std::vector<WritableMount> writable_mounts(pid_t pid) {
  const std::string proc = "/proc/" + std::to_string(pid);
  UniqueFd root(::open((proc + "/root").c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root) throw_errno("open " + proc + "/root");
  auto mounts = read_mountinfo(proc + "/mountinfo");
  if (mounts.size() > kMaxMounts) mounts.resize(kMaxMounts);
  std::vector<WritableMount> out;
  for (const auto& m : mounts) {
    if (has_option(m.mount_options, "ro") || has_option(m.super_options, "ro") || !data_fs(m.fstype))
      continue;
    struct open_how how {};
    how.flags = O_PATH | O_CLOEXEC | O_NOFOLLOW;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS;
    UniqueFd f(static_cast<int>(::syscall(SYS_openat2, root.get(), m.mount_point.c_str(), &how, sizeof how)));
    if (!f) continue;
    struct statx sx {};
    if (::statx(f.get(), "", AT_EMPTY_PATH, STATX_MNT_ID | STATX_BASIC_STATS, &sx) < 0 ||
        !(sx.stx_mask & STATX_MNT_ID) || sx.stx_mnt_id != static_cast<uint64_t>(m.id))
      continue;  // covered by a later mount on the same point
    const bool dir = S_ISDIR(sx.stx_mode), file = S_ISREG(sx.stx_mode);
    if (!dir && !file) continue;  // a device node bound over /dev/null, say
    WritableMount w;
    w.mount_point = m.mount_point;
    w.fstype = m.fstype;
    w.root = m.root;
    w.fd = std::move(f);
    w.dev = ::makedev(sx.stx_dev_major, sx.stx_dev_minor);
    w.ino = sx.stx_ino;
    w.file = file;
    out.push_back(std::move(w));
  }
  return out;
}

WriteWatch::WriteWatch(Sink sink, std::size_t max_dirty) : sink_(std::move(sink)), max_dirty_(max_dirty) {
  // The kernel opens each event's file for us: O_NONBLOCK, so a FIFO the
  // container wrote never blocks the read (only regular files are used).
  int g = ::fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK,
                          O_RDONLY | O_LARGEFILE | O_CLOEXEC | O_NONBLOCK);
  if (g < 0) throw_errno("fanotify_init(FAN_CLASS_NOTIF)");
  write_group_.reset(g);
  g = ::fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_NONBLOCK | FAN_REPORT_DFID_NAME_TARGET,
                      O_RDONLY | O_LARGEFILE | O_CLOEXEC);
  if (g >= 0)
    entry_group_.reset(g);
  else
    log::debug(std::string("write watch: fanotify_init(FAN_REPORT_DFID_NAME_TARGET): ") +
               std::strerror(errno));
}

WriteWatch::~WriteWatch() {
  loop_.stop();
}

std::string WriteWatch::watch_entries(uint64_t cgroup_id) {
  std::string why;
  dirent_ = DirentBpf::open(cgroup_id, why);
  return dirent_ ? "" : why;
}

bool WriteWatch::entries_watched() const {
  return last_entries_;
}

std::string WriteWatch::mark(int fd, const std::string& mount_point, const std::string& tree, bool entries) {
  last_entries_ = false;
  // fanotify_mark takes no O_PATH descriptor as the object itself: name it
  // through its magic link, which is exact.
  if (::fanotify_mark(write_group_.get(), FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_CLOSE_WRITE, AT_FDCWD,
                      self_fd(fd).c_str()) < 0)
    return std::string("fanotify_mark(FAN_MARK_MOUNT, FAN_CLOSE_WRITE): ") + std::strerror(errno);
  MarkedMount mk;
  mk.mount_id = mount_id(fd);
  mk.mount_point = mount_point;
  mk.tree = tree;
  struct stat st {};
  if (::fstat(fd, &st) == 0) {
    mk.dev = static_cast<uint64_t>(st.st_dev);
    mk.file = !S_ISDIR(st.st_mode);
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    trees_[mk.mount_id] = tree;
  }
  // A single file has no names to create: the LSM records are for directories.
  last_entries_ = dirent_ && !mk.file;
  marked_.push_back(std::move(mk));
  if (!entries || !entry_group_) return "";
  if (::fanotify_mark(entry_group_.get(), FAN_MARK_ADD | FAN_MARK_FILESYSTEM,
                      FAN_CREATE | FAN_DELETE | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_ONDIR, AT_FDCWD,
                      self_fd(fd).c_str()) < 0) {
    log::debug("write watch: " + tree + ": fanotify_mark(FAN_MARK_FILESYSTEM): " + std::strerror(errno));
    return "";  // the entry events are an addition; the dirty set is what the walk relies on
  }
  last_entries_ = true;
  entry_devs_.insert(marked_.back().dev);
  // open_by_handle_at takes no O_PATH descriptor as its mount: a real open
  // of the mount's root directory.
  UniqueFd dir(::open(self_fd(fd).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir) entry_mounts_.emplace_back(std::move(dir), tree);
  return "";
}

std::string WriteWatch::watch_tree_entries(const std::string& dir, const std::vector<std::string>& lower) {
  if (marked_.empty() || marked_.back().file) return "not a directory mount";
  const MarkedMount& mk = marked_.back();
  if (entry_devs_.count(mk.dev)) return "";  // the entry group has the whole filesystem
  // (For bench/dirent_ops.py's baseline.)
  if (const char* e = ::getenv("AGENTSHIM_DIRENT_FANOTIFY"); e && std::strcmp(e, "off") == 0)
    return "disabled (AGENTSHIM_DIRENT_FANOTIFY=off)";
  try {
    if (!tree_entries_) tree_entries_ = std::make_unique<EntryTrees>(sink_);
  } catch (const std::exception& e) {
    return e.what();
  }
  std::string why = tree_entries_->watch(dir, mk.mount_point, mk.tree, lower);
  if (why.empty()) last_entries_ = true;
  return why;
}

void WriteWatch::start() {
  loop_.start([this] {
    struct pollfd p[5] = {{loop_.stop_fd(), POLLIN, 0},
                          {write_group_.get(), POLLIN, 0},
                          {entry_group_ ? entry_group_.get() : -1, POLLIN, 0},
                          {dirent_ ? dirent_->fd() : -1, POLLIN, 0},
                          {tree_entries_ ? tree_entries_->fd() : -1, POLLIN, 0}};
    for (;;) {
      int r = ::poll(p, 5, -1);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 || (p[0].revents & POLLIN)) return;
      drain();
    }
  });
}

void WriteWatch::stop() {
  loop_.stop();
  // What the container's last processes left queued (their final close
  // comes before their exit is seen).
  read_write_group();
  if (entry_group_) read_entry_group();
  if (dirent_) read_dirent(true);
  if (tree_entries_) read_tree_entries();
}

void WriteWatch::drain() {
  read_write_group();
  if (entry_group_) read_entry_group();
  if (dirent_) read_dirent(false);
  if (tree_entries_) read_tree_entries();
}

void WriteWatch::read_tree_entries() {
  auto d = tree_entries_->drain();
  events_ += d.events;
  if (!d.lost.empty()) note_entries_lost(d.lost);
}

void WriteWatch::note_entries_lost(const std::string& why) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (entries_lost_) return;
    entries_lost_ = true;
  }
  sink_("fs.watch", json{{"overflow", why}});
}

namespace {
// LSM records read per pass of the loop: a flood from the container takes
// turns with the write group's events instead of holding the loop.
constexpr std::size_t kDirentBatch = 4096;
}  // namespace

void WriteWatch::read_dirent(bool all) {
  const std::function<void(const DirentBpf::Record&)> f = [this](const DirentBpf::Record& r) {
    dirent_event(r);
  };
  while (!dirent_->drain(f, kDirentBatch) && all) {
  }
  const uint64_t lost = dirent_->lost();
  if (lost == dirent_lost_) return;
  dirent_lost_ = lost;
  note_entries_lost("the entry ring buffer (BPF LSM) was full");
}

const MarkedMount* mount_of_record(const std::vector<MarkedMount>& mounts, uint64_t mount_id, uint64_t dev,
                                   std::string_view path) {
  for (const auto& m : mounts)
    if (!m.file && m.mount_id == mount_id) return &m;
  const MarkedMount* at = nullptr;
  std::size_t best = 0;
  for (const auto& m : mounts) {
    if (m.file || m.dev != dev) continue;
    const std::string& mp = m.mount_point;
    const bool under = mp == "/" || (path.size() >= mp.size() && path.compare(0, mp.size(), mp) == 0 &&
                                     (path.size() == mp.size() || path[mp.size()] == '/'));
    if (!at || (under && mp.size() + 1 > best)) {
      at = &m;
      if (under) best = mp.size() + 1;
    }
  }
  return at;
}

std::pair<std::string, json> lsm_entry_event(const DirentBpf::Record& r, const std::string& tree) {
  const char* type = r.op == DirentBpf::Op::created   ? "file.created"
                     : r.op == DirentBpf::Op::removed ? "file.removed"
                                                      : "file.moved";
  json ev{{"tree", tree}, {"name", attest::pct_encode(r.name)}, {"pid", r.pid}, {"via", "lsm"}};
  if (!r.path.empty()) {
    std::string full(r.path);
    if (full != "/") full += '/';
    full += r.name;
    ev["path"] = attest::pct_encode(full);
  } else {
    ev["dir"] = "unknown: the kernel could not name the directory (bpf_path_d_path)";
  }
  if (r.dir) ev["dir_entry"] = true;
  if (r.op == DirentBpf::Op::moved_from) ev["side"] = "from";
  if (r.op == DirentBpf::Op::moved_to) ev["side"] = "to";
  if (r.exchange) ev["exchange"] = true;
  return {type, std::move(ev)};
}

// One LSM record as the event the entry group would have made. Filesystems
// no tree is on (the container's own tmpfs, cgroupfs...) and those the
// entry group covers are left out.
void WriteWatch::dirent_event(const DirentBpf::Record& r) {
  if (entry_devs_.count(r.dev)) return;
  const MarkedMount* at = mount_of_record(marked_, r.mount_id, r.dev, r.path);
  if (!at) return;
  events_++;
  auto [type, ev] = lsm_entry_event(r, at->tree);
  sink_(type, std::move(ev));
}

std::string WriteWatch::tree_of(int fd) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = trees_.find(mount_id(fd));
  return it == trees_.end() ? std::string() : it->second;
}

void WriteWatch::note_overflow(const std::string& why) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!overflow_.empty()) return;
    overflow_ = why;
    dirty_.clear();
  }
  // Every file is read after the run anyway: stop paying for events (each
  // opens a file in this process) that can no longer change anything.
  ::fanotify_mark(write_group_.get(), FAN_MARK_FLUSH | FAN_MARK_MOUNT, 0, AT_FDCWD, nullptr);
  sink_("fs.watch", json{{"overflow", why}, {"reread", "all"}});
}

void WriteWatch::read_write_group() {
  alignas(struct fanotify_event_metadata) char buf[64 * 1024];
  for (;;) {
    ssize_t n = ::read(write_group_.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // EAGAIN: nothing queued
    const auto* m = reinterpret_cast<const struct fanotify_event_metadata*>(buf);
    for (ssize_t len = n; FAN_EVENT_OK(m, len); m = FAN_EVENT_NEXT(m, len)) {
      if (m->vers != FANOTIFY_METADATA_VERSION) {
        if (m->fd >= 0) ::close(m->fd);
        continue;
      }
      UniqueFd f(m->fd >= 0 ? m->fd : -1);
      events_++;
      if (m->mask & FAN_Q_OVERFLOW) {
        note_overflow("the write event queue overflowed (FAN_Q_OVERFLOW)");
        continue;
      }
      if (!f) continue;
      struct stat st {};
      if (::fstat(f.get(), &st) < 0 || !S_ISREG(st.st_mode)) continue;
      bool fresh = false, over = false;
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (!overflow_.empty()) continue;
        fresh = dirty_.emplace(static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)).second;
        dirty_devs_.insert(static_cast<uint64_t>(st.st_dev));
        over = dirty_.size() > max_dirty_;
      }
      if (over) {
        note_overflow("more than " + std::to_string(max_dirty_) + " files written");
        continue;
      }
      if (!fresh) continue;  // recorded once per file and run
      bool deleted = false;
      std::string path = fd_path(f.get(), &deleted);
      json ev{{"path", attest::pct_encode(path)},
              {"tree", tree_of(f.get())},
              {"size", static_cast<uint64_t>(st.st_size)},
              {"pid", m->pid}};
      if (deleted) ev["removed"] = true;
      sink_("file.written", std::move(ev));
    }
  }
}

namespace {
// At most this many directory handles are remembered with their paths.
constexpr std::size_t kMaxKnownDirs = 65536;
}  // namespace

// The path of the directory a handle names: decoded now on the marked
// mount, or, when it is gone already, the path it had when last decoded or
// created ("" when never seen).
std::string WriteWatch::dir_path(const std::string& key, const std::string& handle, const std::string& fsid,
                                 std::string* tree) {
  for (const auto& [mfd, t] : entry_mounts_) {
    struct statfs sf {};
    if (::fstatfs(mfd.get(), &sf) < 0 || fsid_key(&sf.f_fsid) != fsid) continue;
    *tree = t;
    alignas(struct file_handle) char hb[sizeof(struct file_handle) + MAX_HANDLE_SZ];
    std::memcpy(hb, handle.data(), std::min(handle.size(), sizeof hb));
    UniqueFd d(static_cast<int>(::syscall(SYS_open_by_handle_at, mfd.get(),
                                          reinterpret_cast<struct file_handle*>(hb), O_PATH | O_CLOEXEC)));
    std::string p = d ? fd_path(d.get()) : std::string();
    if (!p.empty()) {
      remember_dir(key, p);
      return p;
    }
    break;
  }
  auto it = known_dirs_.find(key);
  return it == known_dirs_.end() ? std::string() : it->second;
}

void WriteWatch::remember_dir(const std::string& key, const std::string& path) {
  if (known_dirs_.size() >= kMaxKnownDirs && !known_dirs_.count(key)) return;
  known_dirs_[key] = path;
}

void WriteWatch::read_entry_group() {
  // Info records follow the metadata: DFID_NAME (the directory's handle,
  // then the name) and, for a created directory, FID (its own handle:
  // remembered with its path, so entries below it are named even once it
  // is gone).
  read_fid_events(entry_group_.get(), [&](const struct fanotify_event_metadata& m, FidEvent& fe) {
    events_++;
    if (m.mask & FAN_Q_OVERFLOW) {
      note_entries_lost("the entry event queue overflowed (FAN_Q_OVERFLOW)");
      return;
    }
    auto& dir = fe.dir;
    auto& self = fe.self;
    if (!dir) return;
    std::string tree;
    std::string where = dir_path(dir->key, dir->handle, dir->fsid(), &tree);
    json ev{{"tree", tree}, {"name", attest::pct_encode(dir->name)}, {"pid", m.pid}};
    std::string full;
    if (!where.empty()) {
      full = where == "/" ? "/" + dir->name : where + "/" + dir->name;
      ev["path"] = attest::pct_encode(full);
    } else {
      ev["dir"] = "unknown: the directory was gone before its first event was read";
    }
    if (m.mask & FAN_ONDIR) {
      ev["dir_entry"] = true;
      if (self && !full.empty() && (m.mask & (FAN_CREATE | FAN_MOVED_TO))) remember_dir(self->key, full);
    }
    // The kernel merges queued events of one name and object (a file
    // created and removed before the queue is read): one event per
    // operation, in the order created, moved to, moved from, removed.
    if (m.mask & FAN_CREATE) sink_("file.created", ev);
    if (m.mask & FAN_MOVED_TO) {
      json e = ev;
      e["side"] = "to";
      sink_("file.moved", std::move(e));
    }
    if (m.mask & FAN_MOVED_FROM) {
      json e = ev;
      e["side"] = "from";
      sink_("file.moved", std::move(e));
    }
    if (m.mask & FAN_DELETE) sink_("file.removed", std::move(ev));
  });
}

bool WriteWatch::dirty(uint64_t dev, uint64_t ino) const {
  std::lock_guard<std::mutex> lk(mu_);
  return !overflow_.empty() || dirty_.count({dev, ino}) > 0;
}
bool WriteWatch::dirty_dev(uint64_t dev) const {
  std::lock_guard<std::mutex> lk(mu_);
  return !overflow_.empty() || dirty_devs_.count(dev) > 0;
}
std::string WriteWatch::overflowed() const {
  std::lock_guard<std::mutex> lk(mu_);
  return overflow_;
}
bool WriteWatch::entries_lost() const {
  std::lock_guard<std::mutex> lk(mu_);
  return entries_lost_;
}
std::size_t WriteWatch::dirty_count() const {
  std::lock_guard<std::mutex> lk(mu_);
  return dirty_.size();
}
uint64_t WriteWatch::events() const {
  return events_;
}

}  // namespace agentshim::observer
