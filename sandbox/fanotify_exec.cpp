#include "sandbox/fanotify_exec.h"

#include <fcntl.h>
#include <linux/nsfs.h>
#include <linux/openat2.h>
#include <sys/fanotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/mountinfo.h"

namespace agentshim::observer {
namespace {

// At most this many mounts are marked (a container has tens).
constexpr std::size_t kMaxMounts = 4096;

std::string self_fd(int fd) {
  return "/proc/self/fd/" + std::to_string(fd);
}

}  // namespace

ExecWatch::ExecWatch(pid_t pid) {
  // Pre-content class: the only one whose denials may carry an errno
  // (FAN_DENY_ERRNO), which lets the observer answer ETXTBSY exactly as the
  // kernel's deny-write would.
  int g = ::fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK,
                          O_RDONLY | O_LARGEFILE | O_CLOEXEC | O_NOATIME);
  if (g < 0) throw_errno("fanotify_init(FAN_CLASS_PRE_CONTENT)");
  group_.reset(g);
  const std::string proc = "/proc/" + std::to_string(pid);
  struct stat ns {};
  if (::stat((proc + "/ns/pid").c_str(), &ns) < 0) throw_errno("stat " + proc + "/ns/pid");
  pidns_ino_ = ns.st_ino;
  UniqueFd root(::open((proc + "/root").c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root) throw_errno("open " + proc + "/root");
  auto mounts = read_mountinfo(proc + "/mountinfo");
  if (mounts.size() > kMaxMounts) {
    summary_.unmarked.push_back("(" + std::to_string(mounts.size() - kMaxMounts) + " mounts over the limit)");
    mounts.resize(kMaxMounts);
  }
  for (const auto& m : mounts) {
    struct open_how how {};
    how.flags = O_PATH | O_CLOEXEC | O_NOFOLLOW;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS;
    UniqueFd f(static_cast<int>(::syscall(SYS_openat2, root.get(), m.mount_point.c_str(), &how, sizeof how)));
    if (!f) {
      summary_.unmarked.push_back(m.mount_point + ": open: " + std::strerror(errno));
      continue;
    }
    struct statx sx {};
    if (::statx(f.get(), "", AT_EMPTY_PATH, STATX_MNT_ID, &sx) < 0 || !(sx.stx_mask & STATX_MNT_ID) ||
        sx.stx_mnt_id != static_cast<uint64_t>(m.id)) {
      // Covered by a later mount on the same point: nothing can be reached
      // (or executed) through it any more by path.
      summary_.unmarked.push_back(m.mount_point + ": covered by another mount");
      continue;
    }
    // fanotify_mark takes no O_PATH descriptor as the object itself (fdget
    // skips them): name it through its magic link, which is exact.
    if (::fanotify_mark(g, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN_EXEC_PERM, AT_FDCWD,
                        self_fd(f.get()).c_str()) < 0) {
      summary_.unmarked.push_back(m.mount_point + ": fanotify_mark: " + std::strerror(errno));
      continue;
    }
    summary_.marked++;
    dev_t dev = ::makedev(sx.stx_dev_major, sx.stx_dev_minor);
    (has_option(m.mount_options, "ro") ? ro_devs_ : rw_devs_).insert(dev);
  }
}

bool ExecWatch::in_container(pid_t pid) const {
  UniqueFd ns(::open(("/proc/" + std::to_string(pid) + "/ns/pid").c_str(), O_RDONLY | O_CLOEXEC));
  for (int depth = 0; ns && depth < 33; depth++) {
    struct stat st {};
    if (::fstat(ns.get(), &st) < 0) return false;
    if (st.st_ino == pidns_ino_) return true;
    ns.reset(::ioctl(ns.get(), NS_GET_PARENT));
  }
  return false;
}

bool ExecWatch::mark_inode(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) < 0) return false;
  int& n = inode_marks_[{st.st_dev, st.st_ino}];
  if (n == 0 && ::fanotify_mark(group_.get(), FAN_MARK_ADD | FAN_MARK_INODE, FAN_OPEN_EXEC_PERM, AT_FDCWD,
                                self_fd(fd).c_str()) < 0) {
    inode_marks_.erase({st.st_dev, st.st_ino});
    return false;
  }
  n++;
  return true;
}

void ExecWatch::unmark_inode(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) < 0) return;
  auto it = inode_marks_.find({st.st_dev, st.st_ino});
  if (it == inode_marks_.end() || --it->second > 0) return;
  inode_marks_.erase(it);
  ::fanotify_mark(group_.get(), FAN_MARK_REMOVE | FAN_MARK_INODE, FAN_OPEN_EXEC_PERM, AT_FDCWD,
                  self_fd(fd).c_str());
}

void ExecWatch::respond(int event_fd, int error) {
  struct fanotify_response r {};
  r.fd = event_fd;
  r.response =
      error == 0 ? FAN_ALLOW : (FAN_DENY | ((static_cast<unsigned>(error) & 0xff) << kFanDenyErrnoShift));
  if (::write(group_.get(), &r, sizeof r) < 0 && error != 0) {
    r.response = FAN_DENY;  // a kernel without FAN_DENY_ERRNO: EPERM
    ssize_t w = ::write(group_.get(), &r, sizeof r);
    (void)w;
  }
}

}  // namespace agentshim::observer
