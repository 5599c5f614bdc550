// What a container writes, from the kernel: two fanotify notification
// groups held by the supervisor over the container's writable mounts.
//
// - The write group (descriptor mode) has a FAN_CLOSE_WRITE mount mark on
//   every writable mount the container has (directories, single files,
//   tmpfs, nested mounts). Every file the container opened for writing
//   produces an event when its last reference goes (a shared writable
//   mapping holds one: the event comes at munmap or exit, after the last
//   write through it), with a descriptor of the file itself. Its identity
//   (device, inode) goes into the dirty set, which tells the after walk to
//   read the file in full instead of trusting (size, mtime, ctime), which
//   writes through a mapping need not move; the first event per file is
//   recorded ("file.written").
// - The entry group (FAN_REPORT_DFID_NAME) has filesystem marks on tmpfs
//   mounts the container has whole (a tmpfs superblock is its own: no host
//   activity is seen): FAN_CREATE, FAN_DELETE, FAN_MOVED_FROM/TO, so names
//   created and removed within a run are recorded ("file.created",
//   "file.removed", "file.moved") although no walk ever sees them.
// - Everywhere else (volumes, overlay roots, tmpfs mounts the container has
//   a part of), the same events come from BPF LSM programs when they load
//   (sandbox/dirent_bpf.h, watch_entries()): the container's own
//   operations, named by the path the caller used. A filesystem the
//   fanotify entry group covers is left to it (no duplicates: fanotify
//   reports operations that succeeded, the LSM hooks ones the kernel was
//   about to do).
// - Where the LSM programs cannot be loaded, directory trees on a
//   filesystem that can be marked (volumes, an overlay root's upper layer,
//   a plain root) get the same events from a third group: a filesystem
//   mark on the host's filesystem, filtered by the tree's directories
//   (sandbox/fanotify_entries.h, watch_tree_entries()).
//
// A queue overflow (FAN_Q_OVERFLOW) or a dirty set over its bound makes the
// dirty set unusable: overflowed() says so, and the after walk then reads
// every file of every tree (docs/FORMATS.md "Write tracking").
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/fd.h"
#include "common/stoppable_loop.h"
#include "sandbox/dirent_bpf.h"
#include "sandbox/fanotify_entries.h"

namespace agentshim::observer {

using json = nlohmann::json;

// A mount of the container that its processes can write through: not
// mounted read-only, of a filesystem that holds files (not proc, sysfs,
// cgroup, devpts, mqueue and the like), reachable (not covered by a later
// mount on the same point), whose root is a directory or a regular file.
struct WritableMount {
  std::string mount_point;  // in the container
  std::string fstype;
  std::string root;  // the mount's root within its filesystem (mountinfo field 4)
  UniqueFd fd;       // O_PATH, the mount's root as the container has it
  uint64_t dev = 0, ino = 0;
  bool file = false;  // a single-file mount
};
// The writable mounts of process `pid`'s mount namespace, in mountinfo
// order (parents before children). Throws SysError when its mountinfo or
// root cannot be read.
std::vector<WritableMount> writable_mounts(pid_t pid);

// A mount the write watch marked, as the LSM entry records are mapped to
// trees.
struct MarkedMount {
  uint64_t mount_id = 0, dev = 0;
  std::string mount_point, tree;
  bool file = false;
};
// The marked directory mount an LSM record went through: the one with its
// mount id, or — a mount the container made since (a bind, a mount
// namespace of its own) — the mount of the same filesystem whose mount
// point is the longest prefix of `path` (else that filesystem's first).
// nullptr when no tree is on that filesystem.
const MarkedMount* mount_of_record(const std::vector<MarkedMount>& mounts, uint64_t mount_id, uint64_t dev,
                                   std::string_view path);
// The file.created / file.removed / file.moved event of an LSM record on
// `tree`: its type and data.
std::pair<std::string, json> lsm_entry_event(const DirentBpf::Record& r, const std::string& tree);

class WriteWatch {
 public:
  using Sink = std::function<void(const std::string& type, json data)>;
  // At most this many distinct written files are remembered; beyond, the
  // watch counts as overflowed (every file is re-read).
  static constexpr std::size_t kMaxDirty = 1 << 20;

  // Throws SysError when fanotify is unavailable.
  WriteWatch(Sink sink, std::size_t max_dirty = kMaxDirty);
  ~WriteWatch();
  WriteWatch(const WriteWatch&) = delete;
  WriteWatch& operator=(const WriteWatch&) = delete;

  // Load the BPF LSM entry programs for the tasks of cgroup v2 `cgroup_id`
  // (before mark()). "" when loaded, else why not: the entries of mounts
  // other than whole tmpfs ones are then not watched.
  std::string watch_entries(uint64_t cgroup_id);
  // Mark one mount: `fd` refers to the mount's root (any descriptor, O_PATH
  // too), `mount_point` is where the container has it; `tree` names it in
  // events; `entries` adds the filesystem mark of the entry group (a tmpfs
  // the container has whole). "" when marked, else why not.
  std::string mark(int fd, const std::string& mount_point, const std::string& tree, bool entries);
  // Whether created and removed names of the mount last marked are
  // recorded (by the entry group, the LSM programs or
  // watch_tree_entries()).
  bool entries_watched() const;
  // Whether the LSM programs are loaded (else watch_tree_entries() is how
  // a directory tree's entries are watched).
  bool lsm_entries() const { return dirent_ != nullptr; }
  // The fanotify fallback for the mount last marked (a directory; not a
  // tmpfs the entry group covers): `dir` is the tree's directory (the
  // mount's, or an overlay's upper layer with its `lower` layers, top
  // first). Call after mark(); "" when watched (entries_watched() is then
  // true), else why not.
  std::string watch_tree_entries(const std::string& dir, const std::vector<std::string>& lower = {});
  // Read events on a thread until stop(); stop() reads what is queued.
  void start();
  void stop();
  // Read every queued event now (the loop's body; tests call it).
  void drain();

  bool dirty(uint64_t dev, uint64_t ino) const;
  // Any file of device `dev` written.
  bool dirty_dev(uint64_t dev) const;
  // Why the dirty set cannot be trusted ("" when it can).
  std::string overflowed() const;
  bool entries_lost() const;
  std::size_t dirty_count() const;
  uint64_t events() const;

 private:
  void read_write_group();
  void read_entry_group();
  void note_overflow(const std::string& why);
  std::string tree_of(int fd) const;
  std::string dir_path(const std::string& key, const std::string& handle, const std::string& fsid,
                       std::string* tree);
  void remember_dir(const std::string& key, const std::string& path);
  void read_dirent(bool all);
  void dirent_event(const DirentBpf::Record& r);
  void read_tree_entries();
  void note_entries_lost(const std::string& why);
  std::vector<MarkedMount> marked_;  // for the LSM records (loop thread after mark())
  std::set<uint64_t> entry_devs_;    // filesystems the entry group has marked
  bool last_entries_ = false;
  std::unique_ptr<DirentBpf> dirent_;
  std::unique_ptr<EntryTrees> tree_entries_;       // created by the first watch_tree_entries()
  uint64_t dirent_lost_ = 0;                       // LSM records lost, as last reported
  std::map<std::string, std::string> known_dirs_;  // directory handle -> path (loop thread only)
  UniqueFd write_group_, entry_group_;
  Sink sink_;
  std::size_t max_dirty_;
  std::map<uint64_t, std::string> trees_;                       // mount id -> tree name
  std::vector<std::pair<UniqueFd, std::string>> entry_mounts_;  // for open_by_handle_at
  mutable std::mutex mu_;
  std::set<std::pair<uint64_t, uint64_t>> dirty_;
  std::set<uint64_t> dirty_devs_;
  std::string overflow_;
  bool entries_lost_ = false;
  std::atomic<uint64_t> events_{0};
  StoppableLoop loop_{"write watch"};
};

}  // namespace agentshim::observer
