// The kernel's own account of what a container executes: a fanotify group
// (FAN_CLASS_PRE_CONTENT) with FAN_OPEN_EXEC_PERM marks on every mount of the
// container's mount namespace, held by the supervisor. Each event carries a
// descriptor of the exact file the kernel opened for an exec (the program,
// every "#!" interpreter of a chain, the ELF interpreter) while that exec
// waits for the answer, so what is hashed is what runs: no path is resolved
// again and nothing is read from the caller's memory.
//
// Mount marks see only opens through the container's mounts (a filesystem
// mark on a shared filesystem would make every host exec wait for this
// group). A file outside them (a memfd, a descriptor the process inherited)
// is covered by an inode mark the exec observer places when the seccomp
// notification names a descriptor (execveat AT_EMPTY_PATH, /proc/self/fd/N),
// before the call continues.
#pragma once

#include <sys/types.h>

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/fd.h"

namespace agentshim::observer {

// FAN_DENY_ERRNO of kernel 6.14 (not in older headers): deny with an errno.
constexpr unsigned kFanDenyErrnoShift = 24;

class ExecWatch {
 public:
  struct Summary {
    std::size_t marked = 0;
    std::vector<std::string> unmarked;  // mount points that could not be marked, with why
  };
  // Creates the group and marks every mount in /proc/<pid>/mountinfo,
  // each opened inside that process's root and checked to be that mount
  // (statx mount id). Throws SysError when fanotify is unavailable.
  explicit ExecWatch(pid_t pid);
  int fd() const { return group_.get(); }
  const Summary& summary() const { return summary_; }
  // True when files of device `dev` can be reached only through read-only
  // mounts of the container (their content hashes may be cached).
  bool read_only_dev(dev_t dev) const { return ro_devs_.count(dev) > 0 && !rw_devs_.count(dev); }
  // The container's pid namespace (its init's) or one below it.
  bool in_container(pid_t pid) const;
  // Inode mark on the file `fd` refers to (any descriptor, O_PATH too);
  // counted: the mark goes when every mark_inode has its unmark_inode.
  bool mark_inode(int fd);
  void unmark_inode(int fd);
  // Answer a permission event: allow, or deny with `error` (an errno).
  void respond(int event_fd, int error);

 private:
  UniqueFd group_;
  Summary summary_;
  std::set<dev_t> ro_devs_, rw_devs_;
  std::map<std::pair<dev_t, ino_t>, int> inode_marks_;
  unsigned long pidns_ino_ = 0;
};

}  // namespace agentshim::observer
