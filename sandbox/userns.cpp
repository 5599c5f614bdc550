#include "sandbox/userns.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <optional>

#include "common/error.h"
#include "common/util.h"

namespace agentshim::userns {
namespace {

struct SubId {
  std::uint64_t first = 0, count = 0;
};

std::optional<SubId> subid_entry(const std::string& file, const std::string& user) {
  auto text = try_read_file(file);
  if (!text) return std::nullopt;
  int lineno = 0;
  for (const auto& line : split(*text, '\n')) {
    lineno++;
    if (line.empty() || line[0] == '#') continue;
    auto f = split(line, ':');
    if (f.size() != 3) {
      if (!f.empty() && f[0] == user)
        throw Error(file + ":" + std::to_string(lineno) + ": expected name:first:count, got \"" + line +
                    "\"");
      continue;
    }
    if (f[0] != user) continue;
    auto first = parse_uint(f[1]);
    auto count = parse_uint(f[2]);
    if (!first || !count)
      throw Error(file + ":" + std::to_string(lineno) + ": first and count must be numbers in \"" + line +
                  "\"");
    return SubId{*first, *count};
  }
  return std::nullopt;
}

}  // namespace

Pool pool(const std::string& etc) {
  auto u = subid_entry(etc + "/subuid", "agentshim");
  auto g = subid_entry(etc + "/subgid", "agentshim");
  if (!u && !g) return Pool{};
  if (!u || !g)
    throw Error(std::string("userns auto: ") + (u ? etc + "/subuid" : etc + "/subgid") +
                " has a range for agentshim but " + (u ? etc + "/subgid" : etc + "/subuid") +
                " has none; give both or neither");
  Pool p;
  p.uid_first = u->first;
  p.gid_first = g->first;
  p.count = std::min(u->count, g->count);
  p.source = etc + "/subuid and " + etc + "/subgid (agentshim)";
  if (p.uid_first == 0 || p.gid_first == 0)
    throw Error("userns auto: the agentshim range in " + p.source + " starts at id 0 (host root)");
  if (p.count < kSlotSize)
    throw Error("userns auto: the agentshim range in " + p.source + " holds " + std::to_string(p.count) +
                " ids; one container needs " + std::to_string(kSlotSize));
  if (p.uid_first + p.count > 0xFFFFFFFFULL || p.gid_first + p.count > 0xFFFFFFFFULL)
    throw Error("userns auto: the agentshim range in " + p.source + " goes beyond id 4294967294");
  return p;
}

namespace {

struct DirLock {
  UniqueFd fd;
  explicit DirLock(const std::string& dir) {
    mkdir_p(dir, 0700);
    fd.reset(::open((dir + "/.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!fd) throw_errno("open " + dir + "/.lock");
    while (::flock(fd.get(), LOCK_EX) < 0)
      if (errno != EINTR) throw_errno("flock " + dir + "/.lock");
  }
};

std::optional<std::string> slot_owner(const std::string& path) {
  auto t = try_read_file(path);
  if (!t) return std::nullopt;
  std::string s = *t;
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

bool owner_alive(const std::string& owner) {
  struct stat st {};
  return !owner.empty() && owner[0] == '/' && ::stat(owner.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

Range allocate(const std::string& owner, const Pool& p, const std::string& dir) {
  DirLock lock(dir);
  const std::uint64_t slots = p.count / kSlotSize;
  for (std::uint64_t i = 0; i < slots; i++) {
    std::string path = dir + "/" + std::to_string(i);
    if (auto o = slot_owner(path)) {
      if (owner_alive(*o)) continue;  // held
    }
    write_file_atomic(path, owner + "\n", 0600, false);
    return Range{p.uid_first + i * kSlotSize, p.gid_first + i * kSlotSize, kSlotSize, i};
  }
  throw Error("userns auto: every one of the " + std::to_string(slots) + " uid ranges of " + p.source +
              " is in use (one per container); delete containers or give agentshim a larger range");
}

void release(const std::string& owner, const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) < 0) return;
  DirLock lock(dir);
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  while (struct dirent* e = ::readdir(d)) {
    if (!parse_uint(e->d_name)) continue;
    std::string path = dir + "/" + e->d_name;
    if (auto o = slot_owner(path); o && *o == owner) ::unlink(path.c_str());
  }
  ::closedir(d);
}

namespace {

std::string fs_magic(const std::string& path) {
  struct statfs sf {};
  if (::statfs(path.c_str(), &sf) < 0) return "";
  switch (static_cast<unsigned long>(sf.f_type)) {
    case 0x794c7630UL:
      return "overlayfs";
    case 0xEF53UL:
      return "ext4";
    case 0x58465342UL:
      return "xfs";
    case 0x9123683EUL:
      return "btrfs";
    case 0x01021994UL:
      return "tmpfs";
    case 0x6969UL:
      return "nfs";
    case 0x65735546UL:
      return "fuse";
    default: {
      char hex[32];
      std::snprintf(hex, sizeof hex, "magic 0x%lx", static_cast<unsigned long>(sf.f_type));
      return hex;
    }
  }
}

}  // namespace

bool can_idmap(const std::string& path, std::string* why) {
  auto pipe_in = make_pipe(O_CLOEXEC), pipe_out = make_pipe(O_CLOEXEC);
  pid_t child = ::fork();
  if (child < 0) throw_errno("fork (idmap probe)");
  if (child == 0) {
    char b = 0;
    if (::unshare(CLONE_NEWUSER) < 0) ::_exit(1);
    if (::write(pipe_out.second.get(), "u", 1) != 1) ::_exit(1);
    ssize_t r = ::read(pipe_in.first.get(), &b, 1);  // until the parent is done
    ::_exit(r < 0 ? 1 : 0);
  }
  pipe_out.second.reset();
  pipe_in.first.reset();
  struct Reap {
    pid_t pid;
    ~Reap() {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } reap{child};
  char b = 0;
  if (::read(pipe_out.first.get(), &b, 1) != 1) throw Error("idmap probe: could not create a user namespace");
  const std::string proc = "/proc/" + std::to_string(child);
  write_file(proc + "/uid_map", "0 " + std::to_string(1ULL << 30) + " 1\n");
  write_file(proc + "/gid_map", "0 " + std::to_string(1ULL << 30) + " 1\n");
  try {
    (void)idmapped_tree(path, child, true);
    return true;
  } catch (const std::exception& e) {
    if (why) *why = e.what();
    return false;
  }
}

UniqueFd idmapped_tree(const std::string& path, pid_t pid, bool idmap) {
  UniqueFd tree(static_cast<int>(
      ::syscall(SYS_open_tree, AT_FDCWD, path.c_str(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)));
  if (!tree) throw_errno("open_tree " + path + " (userns auto needs open_tree, Linux 5.2 or later)");
  UniqueFd userns;
  struct mount_attr attr {};
  attr.propagation = MS_PRIVATE;
  if (idmap) {
    std::string ns = "/proc/" + std::to_string(pid) + "/ns/user";
    userns.reset(::open(ns.c_str(), O_RDONLY | O_CLOEXEC));
    if (!userns) throw_errno("open " + ns);
    attr.attr_set = MOUNT_ATTR_IDMAP;
    attr.userns_fd = static_cast<std::uint64_t>(userns.get());
  }
  if (::syscall(SYS_mount_setattr, tree.get(), "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) < 0) {
    int err = errno;
    std::string fs = fs_magic(path);
    fs = fs.empty() ? "" : " (" + fs + ")";
    if (idmap && (err == EINVAL || err == EOPNOTSUPP || err == ENOSYS))
      throw Error(
          "userns auto: the rootfs " + path + " cannot be mounted idmapped: its filesystem" + fs +
          " (or one mounted below it) or the kernel does not support idmapped mounts (mount_setattr: " +
          std::strerror(err) + ")");
    throw_errno("mount_setattr MOUNT_ATTR_IDMAP on " + path + fs, err);
  }
  return tree;
}

std::vector<UniqueFd> attach_and_open(pid_t pid, int tree, const std::string& rootfs,
                                      const std::vector<std::string>& sources,
                                      std::vector<std::string>* opened) {
  constexpr std::size_t kMax = 200;  // below SCM_MAX_FD (253), with the rootfs
  if (sources.size() > kMax)
    throw Error("userns auto: " + std::to_string(sources.size()) + " bind mounts; at most " +
                std::to_string(kMax));
  const std::string ns = "/proc/" + std::to_string(pid) + "/ns/mnt";
  UniqueFd nsfd(::open(ns.c_str(), O_RDONLY | O_CLOEXEC));
  if (!nsfd) throw_errno("open " + ns);
  auto pair = make_socketpair(SOCK_SEQPACKET);
  // Everything the child touches is prepared here: it only makes syscalls.
  std::vector<const char*> paths;
  for (const auto& src : sources) paths.push_back(src.c_str());
  std::vector<int> fds(sources.size() + 1, -1);
  std::vector<char> cbuf(CMSG_SPACE(sizeof(int) * fds.size()));
  char status[8 + kMax + 1] = {};
  pid_t child = ::fork();
  if (child < 0) throw_errno("fork (userns rootfs helper)");
  if (child == 0) {
    int err = 0;
    char stage = 'S';
    if (::setns(nsfd.get(), CLONE_NEWNS) < 0) {
      err = errno;
    } else if (tree < 0) {
      // The config's own id maps: the bind sources only.
    } else if (stage = 'M',
               ::syscall(SYS_move_mount, tree, "", AT_FDCWD, rootfs.c_str(), MOVE_MOUNT_F_EMPTY_PATH) < 0) {
      err = errno;
    } else if (stage = 'R', (fds[0] = ::open(rootfs.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0) {
      err = errno;
    }
    std::size_t n = 0;
    if (!err) {
      n = tree < 0 ? 0 : 1;
      for (std::size_t i = 0; i < paths.size(); i++) {
        int fd = ::open(paths[i], O_PATH | O_CLOEXEC);
        status[8 + i] = fd >= 0 ? '1' : '0';
        if (fd >= 0) fds[n++] = fd;
      }
    }
    status[0] = err ? stage : 'O';
    std::memcpy(status + 4, &err, sizeof err);
    struct iovec iov {};
    iov.iov_base = status;
    iov.iov_len = 8 + paths.size();
    struct msghdr msg {};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (n > 0) {
      msg.msg_control = cbuf.data();
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * n);
      struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * n);
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * n);
    }
    ::_exit(::sendmsg(pair.second.get(), &msg, MSG_NOSIGNAL) < 0 ? 1 : 0);
  }
  pair.second.reset();
  std::vector<UniqueFd> got;
  std::string payload;
  try {
    payload = recv_fds(pair.first.get(), got, 8 + kMax);
  } catch (...) {
    ::waitpid(child, nullptr, 0);
    throw;
  }
  ::waitpid(child, nullptr, 0);
  if (payload.size() < 8) throw Error("userns rootfs helper exited without an answer");
  int err = 0;
  std::memcpy(&err, payload.data() + 4, sizeof err);
  switch (payload[0]) {
    case 'O':
      break;
    case 'S':
      throw_errno("setns into the container's mount namespace (" + ns + ")", err);
    case 'M':
      throw_errno("move_mount the idmapped rootfs onto " + rootfs, err);
    default:
      throw_errno("open the idmapped rootfs " + rootfs, err);
  }
  const std::size_t first = tree < 0 ? 0 : 1;
  if (got.size() < first) throw Error("userns rootfs helper sent no rootfs descriptor");
  std::vector<std::string> ok;
  for (std::size_t i = 0; i < sources.size() && 8 + i < payload.size(); i++)
    if (payload[8 + i] == '1') ok.push_back(sources[i]);
  if (got.size() != first + ok.size())
    throw Error("userns rootfs helper sent " + std::to_string(got.size()) + " descriptors, expected " +
                std::to_string(first + ok.size()));
  if (opened) *opened = std::move(ok);
  return got;
}

void check_reachable(const std::string& rootfs, const std::vector<oci::IdMapping>& uids,
                     const std::vector<oci::IdMapping>& gids) {
  auto host_of_root = [](const std::vector<oci::IdMapping>& m) -> std::optional<std::uint64_t> {
    if (auto r = oci::root_ids(m)) return r->host;
    return std::nullopt;
  };
  auto mapped = [](const std::vector<oci::IdMapping>& m, std::uint64_t id) {
    for (const auto& e : m)
      if (id >= e.host_id && id - e.host_id < e.size) return true;
    return false;
  };
  const auto uid = host_of_root(uids), gid = host_of_root(gids);
  if (!uid || *uid == 0) return;
  std::string dir = rootfs;
  while (dir.size() > 1) {
    auto slash = dir.rfind('/');
    dir = slash == 0 ? "/" : dir.substr(0, slash);
    struct stat st {};
    if (::stat(dir.c_str(), &st) < 0) throw_errno("stat " + dir);
    bool ok;
    // The container's root holds CAP_DAC_OVERRIDE in its user namespace,
    // which covers an inode whose owner and group are both mapped there (a
    // 0700 directory of a mapped user is reachable, as under runc).
    if (mapped(uids, st.st_uid) && mapped(gids, st.st_gid))
      ok = true;
    else if (st.st_uid == *uid)
      ok = st.st_mode & S_IXUSR;
    else if (gid && st.st_gid == *gid)
      ok = st.st_mode & S_IXGRP;
    else
      ok = st.st_mode & S_IXOTH;
    if (!ok)
      throw Error(
          "the rootfs " + rootfs + " is not reachable by the container's root (host uid " +
          std::to_string(*uid) + ", in its own user namespace): the directory " + dir +
          " is not searchable by it (mode " +
          [&] {
            char m[8];
            std::snprintf(m, sizeof m, "%04o", st.st_mode & 07777);
            return std::string(m);
          }() +
          ", owner " + std::to_string(st.st_uid) + ":" + std::to_string(st.st_gid) +
          " not mapped); with a user namespace every directory above the rootfs needs o+x, or an owner "
          "mapped into the container, as with runc");
  }
}

void chown_stdio(std::uint64_t uid, std::uint64_t gid) {
  for (int fd = 0; fd < 3; fd++) {
    struct stat st {};
    if (::fstat(fd, &st) < 0) continue;
    if (!S_ISFIFO(st.st_mode) && !S_ISSOCK(st.st_mode)) continue;
    if (st.st_uid != 0 && st.st_uid != ::getuid()) continue;
    if (::fchown(fd, static_cast<uid_t>(uid), static_cast<gid_t>(gid)) < 0 && errno != EPERM)
      throw_errno("fchown stdio fd " + std::to_string(fd) + " to the container's root");
  }
}

}  // namespace agentshim::userns
