#include "sandbox/rootfs.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <deque>

#include "common/error.h"
#include "common/log.h"
#include "common/mountinfo.h"
#include "common/util.h"
#include "sandbox/oci.h"
#include "sandbox/process.h"

namespace agentshim::rootfs {
namespace {

std::string fdpath(int fd) {
  return "/proc/self/fd/" + std::to_string(fd);
}

int openat2_(int dirfd, const std::string& path, int flags, unsigned long long resolve) {
  struct open_how how {};
  how.flags = static_cast<unsigned long long>(flags);
  how.resolve = resolve;
  return static_cast<int>(::syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof how));
}

std::string relative(const std::string& p) {
  std::string r = p;
  while (!r.empty() && r[0] == '/') r.erase(0, 1);
  return r.empty() ? "." : r;
}

void do_mount(const std::string& src, const std::string& target, const std::string& fstype,
              unsigned long flags, const std::string& data, const std::string& what) {
  if (::mount(src.empty() ? nullptr : src.c_str(), target.c_str(), fstype.empty() ? nullptr : fstype.c_str(),
              flags, data.empty() ? nullptr : data.c_str()) < 0) {
    int err = errno;
    std::string msg = "mount " + what;
    if (err == ENODEV)
      throw Error(msg + ": filesystem type \"" + fstype + "\" is not supported by this kernel");
    throw_errno(msg, err);
  }
}

// Flags of the mount at `path` that an unprivileged remount may not clear.
unsigned long locked_flags(const std::string& path) {
  struct statvfs sv {};
  if (::statvfs(path.c_str(), &sv) < 0) return 0;
  unsigned long f = 0;
  if (sv.f_flag & ST_NOSUID) f |= MS_NOSUID;
  if (sv.f_flag & ST_NODEV) f |= MS_NODEV;
  if (sv.f_flag & ST_NOEXEC) f |= MS_NOEXEC;
  if (sv.f_flag & ST_RDONLY) f |= MS_RDONLY;
  if (sv.f_flag & ST_NOATIME) f |= MS_NOATIME;
  if (sv.f_flag & ST_NODIRATIME) f |= MS_NODIRATIME;
  if (sv.f_flag & ST_RELATIME) f |= MS_RELATIME;
  return f;
}

void remount_bind(const std::string& target, unsigned long flags, const std::string& what, bool in_userns) {
  unsigned long locked = in_userns ? locked_flags(target) : 0;
  unsigned long f = MS_BIND | MS_REMOUNT | flags | locked;
  if (::mount(nullptr, target.c_str(), nullptr, f, nullptr) < 0) {
    int err = errno;
    // Retry keeping every flag the mount already has (locked atime flags).
    unsigned long f2 = f | locked_flags(target);
    if (::mount(nullptr, target.c_str(), nullptr, f2, nullptr) < 0) throw_errno("remount " + what, err);
  }
}

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Open a bind source once: exactly the resolved path the policy checked (no
// symlink followed on the way: a component swapped for a link since the
// check fails here), or the descriptor the supervisor opened (userns
// "auto"), then compare its identity with the checked one.
UniqueFd open_source(const Context& ctx, const oci::Mount& m) {
  const std::string what = m.where() + ".source " + m.source_given;
  auto checked = ctx.checked.find(m.source);
  if (checked != ctx.checked.end() && checked->second == oci::FileId{})
    throw Error("mount " + m.destination + ": " + what + " (" + m.source +
                ") did not exist when the policy checked it");
  UniqueFd fd;
  if (auto pre = ctx.sources.find(m.source); pre != ctx.sources.end()) {
    fd.reset(::open(pre->second.c_str(), O_PATH | O_CLOEXEC));
  } else if (checked != ctx.checked.end()) {
    fd.reset(openat2_(AT_FDCWD, m.source, O_PATH | O_CLOEXEC, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS));
  } else {
    // Added by the runtime after the policy (the DNS stub's resolv.conf).
    fd.reset(::open(m.source.c_str(), O_PATH | O_CLOEXEC));
  }
  if (!fd) throw_errno("mount " + m.destination + ": open " + what + " (" + m.source + ")");
  oci::check_identity(fd.get(), ctx.checked, m.source,
                      "mount " + m.destination + ": " + what + " (" + m.source + ")");
  return fd;
}

}  // namespace

UniqueFd open_in_root(int rootfd, const std::string& path, bool create, bool last_is_file) {
  const unsigned long long resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
  std::string rel = relative(path);
  int fd = openat2_(rootfd, rel, O_PATH | O_CLOEXEC, resolve);
  if (fd >= 0) return UniqueFd(fd);
  if (errno != ENOENT || !create) throw_errno("open " + path + " inside the rootfs");
  // Walk and create component by component. A symlink on the way (dangling
  // ones included) is followed inside the rootfs, as runc resolves a mount
  // destination: "/dangle -> /target/deep" creates and returns /target/deep.
  std::deque<std::string> todo;
  auto push_front = [&](const std::string& p) {
    auto parts = split(p, '/');
    for (auto it = parts.rbegin(); it != parts.rend(); ++it)
      if (!it->empty() && *it != ".") todo.push_front(*it);
  };
  push_front(rel);
  std::string cur;  // resolved so far, relative to the root, no symlinks
  int links = 0;
  while (!todo.empty()) {
    const std::string c = todo.front();
    todo.pop_front();
    if (c == "..") {
      auto p = cur.rfind('/');
      cur = p == std::string::npos ? "" : cur.substr(0, p);
      continue;
    }
    const std::string next = cur.empty() ? c : cur + "/" + c;
    UniqueFd parent(openat2_(rootfd, cur.empty() ? "." : cur, O_PATH | O_DIRECTORY | O_CLOEXEC, resolve));
    if (!parent) throw_errno("open directory /" + cur + " inside the rootfs");
    char buf[PATH_MAX];
    ssize_t n = ::readlinkat(parent.get(), c.c_str(), buf, sizeof buf - 1);
    if (n >= 0) {
      if (++links > 40) throw Error("open " + path + " inside the rootfs: too many levels of symbolic links");
      const std::string target(buf, static_cast<std::size_t>(n));
      if (!target.empty() && target[0] == '/') cur.clear();
      push_front(target);
      continue;
    }
    struct stat st {};
    if (::fstatat(parent.get(), c.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      cur = next;
      continue;
    }
    if (errno != ENOENT) throw_errno("stat /" + next + " inside the rootfs");
    bool last = todo.empty();
    if (last && last_is_file) {
      // O_PATH dirfds cannot create files: go through the magic link of the parent.
      UniqueFd dir(::open(fdpath(parent.get()).c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC));
      if (!dir) throw_errno("open directory /" + cur);
      int nf = ::openat(dir.get(), c.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0755);
      if (nf < 0 && errno != EEXIST) throw_errno("create /" + next + " inside the rootfs");
      if (nf >= 0) ::close(nf);
    } else if (::mkdirat(parent.get(), c.c_str(), 0755) < 0 && errno != EEXIST) {
      throw_errno("mkdir /" + next + " inside the rootfs");
    }
    cur = next;
  }
  fd = openat2_(rootfd, cur.empty() ? "." : cur, O_PATH | O_CLOEXEC, resolve);
  if (fd < 0) throw_errno("open " + path + " inside the rootfs");
  return UniqueFd(fd);
}

void prepare_root(const Context& ctx) {
  unsigned long prop = MS_SLAVE | MS_REC;
  const std::string& rp = ctx.spec.linux.rootfs_propagation;
  if (!rp.empty()) {
    auto mo = oci::parse_mount_options({rp});
    if (!mo.propagation.empty()) prop = mo.propagation[0];
  }
  // An unbindable tree cannot be bound: the rootfs is bound onto itself
  // below, so the mounts stay slaves here and enter() makes the container's
  // "/" unbindable after pivot_root (linux.rootfsPropagation applies there).
  if (prop & MS_UNBINDABLE) prop = MS_SLAVE | MS_REC;
  do_mount("", "/", "", prop, "", "/ (set propagation)");
  // Attached by the supervisor: already a private mount of its own.
  if (ctx.rootfs_attached) return;
  // pivot_root refuses a new root whose parent mount is shared: before the
  // rootfs is bound onto itself (the bind inherits its parent's
  // propagation), make the mount that contains it private — the longest
  // mount point that is a prefix of the rootfs's parent directory.
  if (prop & MS_SHARED) {
    std::string parent = ctx.rootfs.substr(0, ctx.rootfs.rfind('/'));
    if (parent.empty()) parent = "/";
    const std::string best = mount_point_of(read_mountinfo(), parent);
    if (::mount(nullptr, best.c_str(), nullptr, MS_PRIVATE, nullptr) < 0)
      throw_errno("make the rootfs's parent mount " + best + " private");
  }
  do_mount(ctx.rootfs, ctx.rootfs, "bind", MS_BIND | MS_REC, "", "rootfs " + ctx.rootfs + " onto itself");
}

namespace {

void mount_cgroup(const Context& ctx, int rootfd, const std::string& dest, unsigned long flags) {
  auto target_fd = open_in_root(rootfd, dest, true, false);
  bool v2only = ctx.cgroups.size() == 1 && ctx.cgroups[0].fstype == "cgroup2" && ctx.cgroups[0].name.empty();
  if (v2only) {
    if (ctx.cgroupns) {
      do_mount("cgroup", fdpath(target_fd.get()), "cgroup2", flags, "", dest + " (cgroup2)");
    } else {
      do_mount(ctx.cgroups[0].host_path, fdpath(target_fd.get()), "bind", MS_BIND | MS_REC, "", dest);
      if (flags)
        remount_bind(fdpath(open_in_root(rootfd, dest, false, false).get()), flags, dest, ctx.userns);
    }
    return;
  }
  // v1 / hybrid: a tmpfs holding one directory per hierarchy.
  do_mount("tmpfs", fdpath(target_fd.get()), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755",
           dest + " (cgroup tmpfs)");
  for (const auto& h : ctx.cgroups) {
    std::string name = h.name.empty() ? "unified" : h.name;
    auto sub = open_in_root(rootfd, dest + "/" + name, true, false);
    if (ctx.cgroupns) {
      do_mount("cgroup", fdpath(sub.get()), h.fstype, flags | MS_NOSUID | MS_NODEV | MS_NOEXEC,
               h.fstype == "cgroup" ? h.options : "", dest + "/" + name);
    } else {
      do_mount(h.host_path, fdpath(sub.get()), "bind", MS_BIND | MS_REC, "", dest + "/" + name);
      remount_bind(fdpath(open_in_root(rootfd, dest + "/" + name, false, false).get()),
                   flags | MS_NOSUID | MS_NODEV | MS_NOEXEC, dest + "/" + name, ctx.userns);
    }
    // Co-mounted controllers get symlinks, as on the host (cpu -> cpu,cpuacct).
    if (h.name.find(',') != std::string::npos) {
      UniqueFd dirfd(::open(fdpath(open_in_root(rootfd, dest, false, false).get()).c_str(),
                            O_DIRECTORY | O_RDONLY | O_CLOEXEC));
      for (const auto& c : split(h.name, ','))
        if (dirfd && c != h.name) ::symlinkat(h.name.c_str(), dirfd.get(), c.c_str());
    }
  }
  if (flags & MS_RDONLY)
    remount_bind(fdpath(open_in_root(rootfd, dest, false, false).get()),
                 MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, dest, ctx.userns);
}

}  // namespace

void mount_all(const Context& ctx) {
  const auto& mounts = ctx.spec.mounts;
  if (mounts.empty()) return;
  UniqueFd rootfd(::open(ctx.rootfs.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!rootfd) throw_errno("open rootfs " + ctx.rootfs);
  for (const auto& m : mounts) {
    const std::string& dest = m.destination;
    const std::string& type = m.fstype;
    const std::string& src = m.source;
    std::string what = dest + " (" + type + (src.empty() ? "" : " from " + src) + ")";
    if (m.is_bind()) {
      auto from = open_source(ctx, m);
      struct stat st {};
      if (::fstat(from.get(), &st) < 0) throw_errno("mount " + what + ": stat source");
      auto target = open_in_root(rootfd.get(), dest, true, !S_ISDIR(st.st_mode));
      do_mount(fdpath(from.get()), fdpath(target.get()), "bind", MS_BIND | (m.recursive ? MS_REC : 0), "",
               what);
      unsigned long extra = m.flags & ~MS_REMOUNT;
      auto mounted = open_in_root(rootfd.get(), dest, false, false);
      if (extra) remount_bind(fdpath(mounted.get()), extra, what, ctx.userns);
      for (auto p : m.propagation) do_mount("", fdpath(mounted.get()), "", p, "", what + " propagation");
      continue;
    }
    if (type == "cgroup") {
      mount_cgroup(ctx, rootfd.get(), dest, m.flags);
      continue;
    }
    // A tmpfs without mode= takes the mode of an existing mount point, as
    // runc (which stats the destination and chmods the mounted tmpfs).
    std::string data = m.data;
    if (type == "tmpfs" && !starts_with(data, "mode=") && data.find(",mode=") == std::string::npos) {
      try {
        auto existing = open_in_root(rootfd.get(), dest, false, false);
        struct stat dst {};
        if (::fstat(existing.get(), &dst) == 0 && S_ISDIR(dst.st_mode)) {
          char mode[16];
          std::snprintf(mode, sizeof mode, "mode=%o", static_cast<unsigned>(dst.st_mode & 07777));
          data = data.empty() ? std::string(mode) : data + "," + mode;
        }
      } catch (const SysError&) {
        // Not there yet: created below, the tmpfs keeps its default mode.
      }
    }
    auto target = open_in_root(rootfd.get(), dest, true, false);
    unsigned long flags = m.flags;
    std::string source = src.empty() ? type : src;
    try {
      do_mount(source, fdpath(target.get()), type, flags, data, what);
    } catch (const SysError& e) {
      if (type == "sysfs" && (e.code() == EPERM || e.code() == EACCES) && ctx.userns) {
        // sysfs needs a network namespace owned by our user namespace: fall back to /sys (rbind, ro).
        do_mount("/sys", fdpath(target.get()), "bind", MS_BIND | MS_REC, "", what + " (rbind fallback)");
        remount_bind(fdpath(open_in_root(rootfd.get(), dest, false, false).get()), flags | MS_RDONLY, what,
                     true);
      } else if (type == "mqueue" && e.code() == EPERM) {
        do_mount("/dev/mqueue", fdpath(target.get()), "bind", MS_BIND, "", what + " (bind fallback)");
      } else {
        throw;
      }
    }
    if (!m.propagation.empty()) {
      auto mounted = open_in_root(rootfd.get(), dest, false, false);
      for (auto p : m.propagation) do_mount("", fdpath(mounted.get()), "", p, "", what + " propagation");
    }
  }
}

namespace {
struct Dev {
  std::string path;
  char type;
  unsigned major, minor;
  mode_t mode;
  uid_t uid;
  gid_t gid;
};

std::vector<Dev> devices(const oci::Spec& spec) {
  std::vector<Dev> out = {
      {"/dev/null", 'c', 1, 3, 0666, 0, 0},    {"/dev/zero", 'c', 1, 5, 0666, 0, 0},
      {"/dev/full", 'c', 1, 7, 0666, 0, 0},    {"/dev/random", 'c', 1, 8, 0666, 0, 0},
      {"/dev/urandom", 'c', 1, 9, 0666, 0, 0}, {"/dev/tty", 'c', 5, 0, 0666, 0, 0},
  };
  for (const auto& d : spec.linux.devices) {
    Dev v{d.path,
          d.type,
          static_cast<unsigned>(d.major),
          static_cast<unsigned>(d.minor),
          static_cast<mode_t>(d.file_mode),
          static_cast<uid_t>(d.uid),
          static_cast<gid_t>(d.gid)};
    bool replaced = false;
    for (auto& o : out)
      if (o.path == v.path) {
        o = v;
        replaced = true;
      }
    if (!replaced) out.push_back(v);
  }
  return out;
}
}  // namespace

namespace {

// "/dev//", "/dev/." -> "/dev": the destination as the kernel resolves it
// (".." is left as is: such a destination is never equal to a device path).
std::string clean_path(const std::string& p) {
  std::string out;
  for (const auto& c : split(p, '/')) {
    if (c.empty() || c == ".") continue;
    out += "/" + c;
  }
  return out.empty() ? "/" : out;
}

// Destinations of the config's bind mounts: what lies below them is a host
// directory, never the container's own.
std::vector<std::string> bind_destinations(const oci::Spec& spec) {
  std::vector<std::string> out;
  for (const auto& m : spec.mounts)
    if (m.is_bind()) out.push_back(m.destination);
  return out;
}

}  // namespace

void create_devices(const Context& ctx) {
  const auto binds = bind_destinations(ctx.spec);
  // As runc (needsSetupDev): a bind mount onto /dev is the caller's /dev —
  // no node, symlink or ptmx is created in it, so the bind's source (a host
  // directory, perhaps the host's /dev) is never written.
  if (std::find(binds.begin(), binds.end(), "/dev") != binds.end()) return;
  UniqueFd rootfd(::open(ctx.rootfs.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!rootfd) throw_errno("open rootfs " + ctx.rootfs);
  struct Umask {
    mode_t old = ::umask(0);
    ~Umask() { ::umask(old); }
  } umask_guard;
  for (const auto& d : devices(ctx.spec)) {
    // Any absolute path inside the rootfs, as runc (resolved in the rootfs:
    // open_in_root never leaves it).
    const std::string path = clean_path(d.path);
    if (!starts_with(d.path, "/") || path == "/")
      throw Error("linux.devices: path \"" + d.path + "\" is not absolute");
    // Never a node in a host directory the caller bound into the container
    // (runc would create it there; agentshim refuses, docs/CONFORMANCE.md).
    // A bind onto the node's own path provides it (as runc: the existing
    // entry is kept).
    if (std::find(binds.begin(), binds.end(), path) != binds.end()) continue;
    for (const auto& b : binds)
      if (b == "/" || starts_with(path, b + "/"))
        throw Error("linux.devices: " + d.path + " lies in the bind mount at " + b +
                    ": agentshim does not create device nodes in a host directory");
    std::string dir = path.substr(0, path.rfind('/'));
    std::string name = path.substr(path.rfind('/') + 1);
    auto dfd = open_in_root(rootfd.get(), dir.empty() ? "/" : dir, true, false);
    UniqueFd dirfd(::open(fdpath(dfd.get()).c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC));
    if (!dirfd) throw_errno("open " + dir + " in rootfs");
    if (ctx.userns) {
      // No mknod in a user namespace: bind the host's node over an empty file.
      int f = ::openat(dirfd.get(), name.c_str(), O_CREAT | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644);
      if (f < 0) throw_errno("create " + path + " in rootfs");
      ::close(f);
      auto target = open_in_root(rootfd.get(), path, false, true);
      do_mount(d.path, fdpath(target.get()), "bind", MS_BIND, "", "device " + path);
      continue;
    }
    mode_t type = d.type == 'b' ? S_IFBLK : d.type == 'p' ? S_IFIFO : S_IFCHR;
    // As runc: an existing entry is left as it is (never unlinked).
    if (::mknodat(dirfd.get(), name.c_str(), type | (d.mode & 07777), makedev(d.major, d.minor)) < 0) {
      if (errno == EEXIST) continue;
      throw_errno("mknod " + path);
    }
    if (::fchownat(dirfd.get(), name.c_str(), d.uid, d.gid, AT_SYMLINK_NOFOLLOW) < 0)
      throw_errno("chown " + path);
  }
  auto devfd = open_in_root(rootfd.get(), "/dev", true, false);
  UniqueFd dev(::open(fdpath(devfd.get()).c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC));
  if (!dev) throw_errno("open /dev in rootfs");
  struct Link {
    const char *target, *name;
  };
  static const Link links[] = {{"/proc/self/fd", "fd"},
                               {"/proc/self/fd/0", "stdin"},
                               {"/proc/self/fd/1", "stdout"},
                               {"/proc/self/fd/2", "stderr"},
                               {"pts/ptmx", "ptmx"}};
  for (const auto& l : links) {
    if (::symlinkat(l.target, dev.get(), l.name) < 0 && errno != EEXIST)
      throw_errno(std::string("symlink /dev/") + l.name);
  }
  if (path_exists("/proc/kcore")) ::symlinkat("/proc/kcore", dev.get(), "core");
}

void enter(const Context& ctx, bool no_pivot) {
  if (no_pivot) {
    if (::chdir(ctx.rootfs.c_str()) < 0) throw_errno("chdir " + ctx.rootfs);
    do_mount(ctx.rootfs, "/", "", MS_MOVE, "", "rootfs onto / (--no-pivot)");
    if (::chroot(".") < 0) throw_errno("chroot " + ctx.rootfs);
    if (::chdir("/") < 0) throw_errno("chdir /");
    return;
  }
  UniqueFd oldroot(::open("/", O_DIRECTORY | O_RDONLY | O_CLOEXEC));
  if (!oldroot) throw_errno("open /");
  UniqueFd newroot(::open(ctx.rootfs.c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC));
  if (!newroot) throw_errno("open rootfs " + ctx.rootfs);
  if (::fchdir(newroot.get()) < 0) throw_errno("chdir " + ctx.rootfs);
  if (::syscall(SYS_pivot_root, ".", ".") < 0) throw_errno("pivot_root " + ctx.rootfs);
  // The old root is now stacked under "."; detach it without letting the
  // unmount propagate back to the host.
  if (::fchdir(oldroot.get()) < 0) throw_errno("fchdir old root");
  do_mount("", ".", "", MS_SLAVE | MS_REC, "", "old root (make rslave)");
  if (::umount2(".", MNT_DETACH) < 0) throw_errno("umount old root");
  if (::chdir("/") < 0) throw_errno("chdir /");
  // linux.rootfsPropagation applies to the container's "/" as it ends up.
  const std::string& rp = ctx.spec.linux.rootfs_propagation;
  if (!rp.empty()) {
    auto mo = oci::parse_mount_options({rp});
    if (!mo.propagation.empty())
      do_mount("", "/", "", mo.propagation[0], "", "/ (rootfsPropagation " + rp + ")");
  }
}

void apply_sysctls(const oci::Spec& spec) {
  // Only what oci::sysctls accepts (validated at create against the host's
  // namespaces, re-checked here against the config the init runs).
  for (const auto& s : oci::sysctls(spec, false)) {
    try {
      write_file(s.path, s.value);
    } catch (const SysError& e) {
      throw Error("linux.sysctl." + s.key + ": " + e.what());
    }
  }
}

void finish(const Context& ctx) {
  // As runc: process.cwd is created inside the container (after pivot_root,
  // before the root goes read-only; path resolution stays in the jail).
  const std::string& cwd = ctx.spec.process.cwd;
  if (starts_with(cwd, "/") && !path_exists(cwd)) mkdir_p(cwd, 0755);
  for (const auto& path : ctx.spec.linux.readonly_paths) {
    if (!path_exists(path)) continue;
    do_mount(path, path, "bind", MS_BIND | MS_REC, "", "readonly path " + path);
    remount_bind(path, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "readonly path " + path, true);
  }
  for (const auto& path : ctx.spec.linux.masked_paths) {
    if (!path_exists(path)) continue;
    if (is_dir(path))
      do_mount("tmpfs", path, "tmpfs", MS_RDONLY, "size=0", "masked path " + path);
    else
      do_mount("/dev/null", path, "bind", MS_BIND, "", "masked path " + path);
  }
  if (ctx.spec.root.readonly) remount_bind("/", MS_RDONLY, "/ read-only", true);
}

void setup_console(int console_socket, const oci::Process& proc, bool mount_dev_console) {
  int master = ::open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0) throw_errno("open /dev/ptmx");
  UniqueFd m(master);
  int unlock = 0;
  if (::ioctl(master, TIOCSPTLCK, &unlock) < 0) throw_errno("ioctl(TIOCSPTLCK)");
  int n = 0;
  if (::ioctl(master, TIOCGPTN, &n) < 0) throw_errno("ioctl(TIOCGPTN)");
  std::string slave_path = "/dev/pts/" + std::to_string(n);
  if (proc.console_size) {
    struct winsize ws {};
    ws.ws_row = static_cast<unsigned short>(proc.console_size->height);
    ws.ws_col = static_cast<unsigned short>(proc.console_size->width);
    ::ioctl(master, TIOCSWINSZ, &ws);
  }
  UniqueFd slave(::open(slave_path.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!slave) throw_errno("open " + slave_path);
  unsigned uid = proc.uid();
  ::fchown(slave.get(), uid, static_cast<gid_t>(-1));
  if (mount_dev_console) {
    int f = ::open("/dev/console", O_CREAT | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (f >= 0) {
      ::close(f);
      do_mount(slave_path, "/dev/console", "bind", MS_BIND, "", "/dev/console");
    }
  }
  int fds[1] = {master};
  send_fds(console_socket, "/dev/ptmx", fds, 1);
  process::new_session();  // then the pty can become its controlling terminal
  if (::ioctl(slave.get(), TIOCSCTTY, 0) < 0) throw_errno("ioctl(TIOCSCTTY)");
  for (int fd = 0; fd < 3; fd++)
    if (::dup2(slave.get(), fd) < 0) throw_errno("dup2 pty slave");
}

}  // namespace agentshim::rootfs
