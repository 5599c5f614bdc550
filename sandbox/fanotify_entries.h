// Names created, removed and renamed in directory trees that live on a
// filesystem shared with the host (a volume's host directory, an overlay
// root's upper layer, a plain directory root), from fanotify alone: the
// write watch's fallback when the BPF LSM entry programs cannot be loaded
// (sandbox/dirent_bpf.h).
//
// A fanotify mount mark refuses directory-entry events and a filesystem
// mark on an overlay needs nfs_export=on, so the group marks the host
// filesystem the tree is on (FAN_MARK_FILESYSTEM: FAN_CREATE, FAN_DELETE,
// FAN_RENAME, FAN_ONDIR, reported as directory handle + name and the
// object's own handle, FAN_REPORT_DFID_NAME_TARGET) and keeps only events
// in the tree's directories: those present when it was watched (walked
// then, by handle) and those created or moved in since (learned from
// their own events, which the kernel queues before any event inside them).
// Everything else on that filesystem (the host's own activity) is
// discarded on arrival.
//
// An overlay's upper layer is read as overlayfs writes it (its work
// directory is outside the tree):
// - a whiteout arriving (a character device 0:0, created in the work
//   directory and renamed in) is the removal of that name;
// - a name appearing whose path a lower layer shows (the topmost layer
//   that has it, not below an opaque directory of a higher one) is a
//   copy-up (the container wrote or renamed a file of the image), not a
//   new name — unless the name was removed earlier in the run (a new file
//   over a whiteout);
// - a name leaving for the work directory (to be deleted there) is a
//   removal, reported once with its whiteout.
#pragma once

#include <linux/fanotify.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/fd.h"

namespace agentshim::observer {

// One file-handle info record of a fanotify event (FID, DFID_NAME,
// OLD_/NEW_DFID_NAME), read from [p, next) and checked to lie within it.
struct FidRecord {
  std::string key;     // fsid + struct file_handle (header and bytes): a map key
  std::string handle;  // struct file_handle, ready for open_by_handle_at
  std::string name;    // the *DFID_NAME kinds only
  std::string fsid() const { return key.substr(0, sizeof(uint64_t)); }
};
bool parse_fid_record(const char* p, const char* next, bool with_name, FidRecord& out);

// The file-handle records of one event.
struct FidEvent {
  std::optional<FidRecord> dir;       // DFID_NAME: the directory and the name
  std::optional<FidRecord> from, to;  // OLD_/NEW_DFID_NAME (FAN_RENAME)
  std::optional<FidRecord> self;      // FID: the object itself
};
// Read every queued event of a FAN_REPORT_DFID_NAME(_TARGET) group (a
// non-blocking descriptor): `f` gets each event's metadata (its descriptor,
// if any, closed) and records; a record that does not fit its event is left
// out, an event of another metadata version skipped.
void read_fid_events(int group,
                     const std::function<void(const struct fanotify_event_metadata&, FidEvent&)>& f);

class EntryTrees {
 public:
  using json = nlohmann::json;
  using Sink = std::function<void(const std::string& type, json data)>;
  // Directories remembered, all trees together; beyond, names in new
  // directories cannot be told apart from the host's and the account is
  // lost (drain() reports it).
  static constexpr std::size_t kMaxDirs = 1 << 18;
  // A tree deeper than this many directories is not watched (the walk
  // holds one descriptor per level).
  static constexpr std::size_t kMaxDepth = 512;

  // Throws SysError when the group cannot be made (no fanotify, or no
  // FAN_REPORT_DFID_NAME_TARGET).
  explicit EntryTrees(Sink sink, std::size_t max_dirs = kMaxDirs);
  EntryTrees(const EntryTrees&) = delete;
  EntryTrees& operator=(const EntryTrees&) = delete;

  // Watch one tree. `dir` is its directory as a path (/proc/self/fd/N of
  // the container's mount, or an overlay's upper layer on the host);
  // `mount_point` is where the container has it (events' paths are
  // mount_point + the path within the tree); `tree` names it in events.
  // `lower`: for an overlay's upper layer, the lower layers' directories,
  // top first. Before the container runs. "" when watched, else why not.
  std::string watch(const std::string& dir, const std::string& mount_point, const std::string& tree,
                    const std::vector<std::string>& lower = {});
  int fd() const { return group_.get(); }

  struct Drained {
    uint64_t events = 0;  // events of the trees (the host's are not counted)
    std::string lost;     // why entry events were lost ("" when none)
  };
  // Read every queued event.
  Drained drain();

 private:
  struct Tree {
    std::string name, mount_point;
    UniqueFd dir;                          // O_RDONLY directory: open_by_handle_at's mount
    std::vector<UniqueFd> lower;           // O_PATH, top first (overlay only)
    std::vector<std::string> lower_paths;  // the same, for their xattrs
    bool overlay = false;
  };
  struct Dir {
    uint32_t parent;  // kRoot for a tree's directory
    uint32_t tree;
    bool fresh;  // made during the run: nothing below it is in a lower layer
    std::string name;
  };
  static constexpr uint32_t kRoot = UINT32_MAX;

  std::string walk(int root_fd, uint32_t tree, uint32_t root_dir, const std::string& fsid);
  int64_t find(const std::string& key) const;
  bool add_dir(const std::string& key, uint32_t parent, uint32_t tree, bool fresh, const std::string& name);
  std::string path_of(uint32_t dir) const;                          // as the container names it
  std::string rel_of(uint32_t dir, const std::string& name) const;  // within the tree
  bool in_lower(const Tree& t, uint32_t dir, const std::string& name) const;
  bool whiteout(const Tree& t, const std::string& handle) const;
  void emit(const char* type, uint32_t dir, const std::string& name, int pid, bool is_dir, const char* side);
  // A removal on an overlay: once per name until it is created again.
  void removed(uint32_t dir, const std::string& name, int pid, bool is_dir);
  std::string gone_key(uint32_t dir, const std::string& name) const;

  Sink sink_;
  std::size_t max_dirs_;
  UniqueFd group_;
  std::vector<Tree> trees_;
  std::vector<Dir> dirs_;
  std::unordered_map<std::string, uint32_t> by_handle_;  // fsid + file handle -> dirs_ index
  std::unordered_set<std::string> gone_;                 // overlay: tree + '\0' + rel path removed
  // overlay: the last name that arrived from the work directory (an
  // exchange's other half leaves next) and whether it was a new name.
  std::string last_in_;
  bool last_in_created_ = false;
  std::string lost_;
};

}  // namespace agentshim::observer
