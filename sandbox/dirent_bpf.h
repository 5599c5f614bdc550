// Names created, removed and renamed by the container's processes on every
// filesystem, from BPF LSM programs (sandbox/bpf/dirent.bpf.c: path_mknod,
// path_mkdir, path_unlink, path_rmdir, path_rename, path_link,
// path_symlink) into a BPF ring buffer the write watch reads
// (sandbox/fanotify_write.h turns the records into file.created /
// file.removed / file.moved events).
//
// The programs record only tasks in the container's cgroup v2 or below it
// (cgroup_id); they never deny. They run before the operation, so an
// operation the filesystem then refuses (rmdir of a non-empty directory,
// ENOSPC) is reported too. Loaded per container for now; a kernel's refusal
// of the load is remembered in /run until reboot.
//
// Load failures (no BPF LSM in /sys/kernel/security/lsm, no BTF, a kernel
// before 6.12 without the bpf_path_d_path kfunc, no CAP_BPF, a host that
// refuses trampoline programs — EPERM —, the test hook
// AGENTSHIM_DIRENT_BPF=off) are reported by open(): the entries of the
// trees other than whole tmpfs mounts are then not watched.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

struct bpf_object;
struct bpf_link;
struct ring_buffer;

namespace agentshim::observer {

// The id of the cgroup v2 directory `dir` (what bpf_get_current_cgroup_id
// gives for its tasks: the directory's inode number). Throws SysError.
uint64_t cgroup_v2_id(const std::string& dir);

class DirentBpf {
 public:
  enum class Op { created, removed, moved_from, moved_to };
  struct Record {
    Op op = Op::created;
    bool dir = false;       // the entry is a directory
    bool exchange = false;  // rename(RENAME_EXCHANGE)
    pid_t pid = 0;          // thread group id in the initial pid namespace
    uint64_t mount_id = 0;  // the mount it was changed through (statx STATX_MNT_ID)
    uint64_t dev = 0;       // the filesystem's device (st_dev encoding)
    std::string_view path;  // the directory as the caller names it; empty when unknown
    std::string_view name;  // the entry's name
  };
  // Loads and attaches the programs for the tasks of cgroup `cgroup_id`;
  // nullptr with `error` set when they cannot be.
  static std::unique_ptr<DirentBpf> open(uint64_t cgroup_id, std::string& error);
  ~DirentBpf();
  DirentBpf(const DirentBpf&) = delete;
  DirentBpf& operator=(const DirentBpf&) = delete;

  // Readable when records wait.
  int fd() const;
  // Calls `f` for the waiting records, at most `max` of them (a flood
  // from the container cannot hold the reader); false when more wait.
  bool drain(const std::function<void(const Record&)>& f, std::size_t max);
  // Records the kernel could not put into the ring buffer (it was full).
  uint64_t lost() const;
  // Records sent.
  uint64_t sent() const;

 private:
  DirentBpf() = default;
  uint64_t stat(uint32_t i) const;
  struct ObjectClose {
    void operator()(bpf_object* o) const;
  };
  struct LinkDestroy {
    void operator()(bpf_link* l) const;
  };
  struct RingFree {
    void operator()(ring_buffer* r) const;
  };
  std::unique_ptr<bpf_object, ObjectClose> obj_;
  std::vector<std::unique_ptr<bpf_link, LinkDestroy>> links_;
  std::unique_ptr<ring_buffer, RingFree> ring_;
  int stats_fd_ = -1;  // owned by obj_
  const std::function<void(const Record&)>* cb_ = nullptr;
  std::size_t left_ = 0;  // records this drain() may still read
};

}  // namespace agentshim::observer
