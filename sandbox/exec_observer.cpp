#include "sandbox/exec_observer.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "attest/canonical.h"
#include "attest/hash.h"
#include "common/error.h"
#include "common/log.h"
#include "common/util.h"

namespace agentshim::observer {
namespace {

constexpr std::size_t kMaxPath = 4096;
constexpr std::size_t kMaxArgs = 256;
constexpr std::size_t kMaxArgBytes = 64 * 1024;

int openat2_(int dirfd, const std::string& path, int flags, unsigned long long resolve) {
  struct open_how how {};
  how.flags = static_cast<unsigned long long>(flags);
  how.resolve = resolve;
  return static_cast<int>(::syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof how));
}

std::string link(const std::string& p) {
  char buf[kMaxPath + 1];
  ssize_t n = ::readlink(p.c_str(), buf, kMaxPath);
  if (n < 0) return "";
  return std::string(buf, static_cast<std::size_t>(n));
}

struct Hashed {
  std::string sha256;
  std::string head;
  uint64_t size = 0;
  std::string error;
};

Hashed hash_fd(int fd, attest::HashCache* cache) {
  Hashed h;
  struct stat st {};
  if (::fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    h.error = "not a regular file";
    return h;
  }
  const auto key = attest::HashCache::key_of(st);
  if (cache) {
    if (auto d = cache->get(key)) {
      // Known content (same identity and times): only the head for #!.
      char head[256];
      ssize_t n;
      do n = ::pread(fd, head, sizeof head, 0);
      while (n < 0 && errno == EINTR);
      if (n >= 0) {
        h.head.assign(head, static_cast<std::size_t>(n));
        h.sha256 = attest::hex(*d);
        h.size = static_cast<uint64_t>(st.st_size);
        return h;
      }
    }
  }
  attest::Sha256 sha;
  std::vector<char> buf(1 << 20);
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      h.error = std::string("read: ") + std::strerror(errno);
      return h;
    }
    if (n == 0) break;
    if (h.head.size() < 256)
      h.head.append(buf.data(), std::min<std::size_t>(static_cast<std::size_t>(n), 256 - h.head.size()));
    sha.update(buf.data(), static_cast<std::size_t>(n));
    h.size += static_cast<uint64_t>(n);
  }
  attest::Digest d = sha.finish();
  h.sha256 = attest::hex(d);
  // Cached only when the file did not change while it was read, and not
  // when it changed in the last two seconds: a rewrite within the same
  // timestamp tick could keep (size, mtime, ctime) and must not find this
  // digest (the "racy" case of content caches keyed on stat data).
  struct stat after {};
  struct timespec now {};
  ::clock_gettime(CLOCK_REALTIME, &now);
  if (cache && ::fstat(fd, &after) == 0 && h.size == static_cast<uint64_t>(st.st_size) &&
      attest::HashCache::key_of(after) == key && now.tv_sec - after.st_ctim.tv_sec >= 2)
    cache->put(key, d);
  return h;
}

// Open `path` as seen by process `pid` (relative to its cwd, or to dirfd for
// execveat), never leaving its root, and only a regular file (open_regular).
// Returns -1 with `error` on failure.
int open_as(pid_t pid, int dirfd_num, const std::string& path, std::string& container_path,
            std::string& error, int* open_errno = nullptr) {
  std::string proc = "/proc/" + std::to_string(pid);
  UniqueFd root(::open((proc + "/root").c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root) {
    error = std::string("open ") + proc + "/root: " + std::strerror(errno);
    return -1;
  }
  std::string abs = path;
  if (path.empty() || path[0] != '/') {
    std::string base =
        dirfd_num == AT_FDCWD ? link(proc + "/cwd") : link(proc + "/fd/" + std::to_string(dirfd_num));
    // The link reads as a path from the process's root when that root is
    // its mount namespace's (after pivot_root); else strip the root's path.
    std::string r = link(proc + "/root");
    if (!r.empty() && r != "/" && starts_with(base, r + "/")) base = base.substr(r.size());
    if (base.empty() || base[0] != '/') base = "/";
    abs = path.empty() ? base : (base == "/" ? "/" + path : base + "/" + path);
  }
  container_path = abs;
  // A process re-executing itself (busybox applets, many runtimes) names
  // /proc/self/exe: a magic link the in-root resolution refuses. It is the
  // caller's current executable, which the host's /proc gives directly.
  if (abs == "/proc/self/exe" || abs == "/proc/thread-self/exe") {
    container_path = link(proc + "/exe");
    return open_regular_link(proc + "/exe", error);
  }
  return open_regular(root.get(), abs, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS, error, open_errno);
}

// The exec cannot succeed whoever asks: an absolute path (so no cwd or
// dirfd the observer might read wrong) under which the process's root holds
// nothing (ENOENT) or a non-directory stands where a directory is needed
// (ENOTDIR). Other failures (EACCES, ENOEXEC, ETXTBSY, ...) depend on the
// caller's credentials or on the kernel's loaders: those execs continue and
// are recorded as process.exec.
bool fails_without_file(const std::string& path, int open_errno) {
  return !path.empty() && path[0] == '/' && (open_errno == ENOENT || open_errno == ENOTDIR);
}

std::string errno_name(int e) {
  switch (e) {
    case ENOENT:
      return "ENOENT";
    case ENOTDIR:
      return "ENOTDIR";
    default:
      return std::to_string(e);
  }
}

// error 0: let the kernel run the call; else fail it with -error.
void answer(int listener, unsigned long long id, int error) {
  struct seccomp_notif_resp resp {};
  resp.id = id;
  if (error == 0)
    resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
  else
    resp.error = error;
  ::ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

// fstatfs f_type values of filesystems whose files are kernel interfaces.
bool kernel_fs(long type, std::string& name) {
  static const std::pair<long, const char*> k[] = {
      {0x9fa0, "proc"},        {0x62656572, "sysfs"},      {0x64626720, "debugfs"},
      {0x74726163, "tracefs"}, {0x73636673, "securityfs"}, {0x27e0eb, "cgroup"},
      {0x63677270, "cgroup2"}, {0x62656570, "configfs"},   {0xcafe4a11, "bpf"},
      {0x6165676c, "pstore"},  {0xde5e81e4, "efivarfs"},   {0x1cd1, "devpts"},
      {0x6e736673, "nsfs"},    {0x19800202, "mqueue"},     {0x42494e4d, "binfmt_misc"},
      {0x65735543, "fusectl"}, {0x50494446, "pidfs"},      {0x73717368, "selinuxfs"},
      {0x534f434b, "sockfs"},  {0x50495045, "pipefs"},     {0x09041934, "anon_inode"}};
  for (const auto& [t, n] : k)
    if (static_cast<unsigned long>(type) == static_cast<unsigned long>(t)) {
      name = n;
      return true;
    }
  return false;
}

const char* kind_of(mode_t m) {
  if (S_ISDIR(m)) return "directory";
  if (S_ISFIFO(m)) return "fifo";
  if (S_ISCHR(m)) return "character device";
  if (S_ISBLK(m)) return "block device";
  if (S_ISSOCK(m)) return "socket";
  if (S_ISLNK(m)) return "symlink";
  return "not a file";
}

// Check an O_PATH descriptor and reopen it for reading.
int reopen_regular(UniqueFd opath, std::string& error) {
  struct stat st {};
  if (::fstat(opath.get(), &st) < 0) {
    error = std::string("fstat: ") + std::strerror(errno);
    return -1;
  }
  if (!S_ISREG(st.st_mode)) {
    error = std::string("not a regular file (") + kind_of(st.st_mode) + "): not opened";
    return -1;
  }
  struct statfs sf {};
  if (::fstatfs(opath.get(), &sf) < 0) {
    error = std::string("fstatfs: ") + std::strerror(errno);
    return -1;
  }
  std::string fs;
  if (kernel_fs(static_cast<long>(sf.f_type), fs)) {
    error = "on a kernel filesystem (" + fs + "): not opened";
    return -1;
  }
  std::string again = "/proc/self/fd/" + std::to_string(opath.get());
  int fd = ::open(again.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) error = std::string("reopen for reading: ") + std::strerror(errno);
  return fd;
}

}  // namespace

std::string read_cstring(int mem_fd, unsigned long long addr, std::size_t max, bool* truncated) {
  std::string out;
  if (truncated) *truncated = false;
  if (addr == 0) return out;
  char buf[256];
  while (out.size() < max) {
    std::size_t want = std::min(sizeof buf, max - out.size());
    ssize_t n = ::pread(mem_fd, buf, want, static_cast<off_t>(addr + out.size()));
    if (n <= 0) {
      // A string that ends right before an unmapped page: retry byte by byte.
      if (want > 1) {
        ssize_t m = ::pread(mem_fd, buf, 1, static_cast<off_t>(addr + out.size()));
        if (m == 1) {
          if (buf[0] == 0) return out;
          out.push_back(buf[0]);
          continue;
        }
      }
      return out;
    }
    void* nul = std::memchr(buf, 0, static_cast<std::size_t>(n));
    if (nul) {
      out.append(buf, static_cast<std::size_t>(static_cast<char*>(nul) - buf));
      return out;
    }
    out.append(buf, static_cast<std::size_t>(n));
  }
  if (truncated) *truncated = true;
  return out;
}

int open_regular(int dirfd, const std::string& path, unsigned long long resolve, std::string& error,
                 int* open_errno) {
  int fd = openat2_(dirfd, path, O_PATH | O_CLOEXEC, resolve);
  if (fd < 0) {
    if (open_errno) *open_errno = errno;
    error = std::string("open: ") + std::strerror(errno);
    return -1;
  }
  return reopen_regular(UniqueFd(fd), error);
}

int open_regular_link(const std::string& proc_link, std::string& error) {
  int fd = ::open(proc_link.c_str(), O_PATH | O_CLOEXEC);
  if (fd < 0) {
    error = "open " + proc_link + ": " + std::strerror(errno);
    return -1;
  }
  return reopen_regular(UniqueFd(fd), error);
}

std::string shebang_interpreter(const std::string& head) {
  if (head.size() < 3 || head[0] != '#' || head[1] != '!') return "";
  std::size_t i = 2;
  while (i < head.size() && (head[i] == ' ' || head[i] == '\t')) i++;
  std::size_t j = i;
  while (j < head.size() && head[j] != ' ' && head[j] != '\t' && head[j] != '\n' && head[j] != '\r' &&
         head[j] != 0)
    j++;
  if (j == head.size() && head.size() >= 256) return "";  // unterminated, too long
  return head.substr(i, j - i);
}

bool is_seccomp_listener(int fd) {
  // The listener's anonymous inode is named "seccomp notify"; a notification
  // id that was never issued is ENOENT only on a listener.
  std::string l = link("/proc/self/fd/" + std::to_string(fd));
  if (l != "anon_inode:seccomp notify") return false;
  unsigned long long id = 0;
  return ::ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) < 0 && errno == ENOENT;
}

ExecObserver::ExecObserver(UniqueFd listener, std::string rootfs_host_path, Sink sink,
                           std::shared_ptr<attest::HashCache> cache)
    : wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      rootfs_(std::move(rootfs_host_path)),
      sink_(std::move(sink)),
      cache_(std::move(cache)) {
  if (!wake_) throw_errno("eventfd");
  if (listener) {
    pending_.push_back({std::move(listener), json::object()});
    active_ = 1;
  }
  loop_.start([this] { loop(); });
}

ExecObserver::~ExecObserver() {
  stop();
}

bool ExecObserver::add(UniqueFd listener, json tag) {
  if (!listener) return false;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopped_ || active_ >= kMaxListeners) return false;
    pending_.push_back({std::move(listener), tag.is_object() ? std::move(tag) : json::object()});
    active_++;
  }
  uint64_t one = 1;
  ssize_t w = ::write(wake_.get(), &one, sizeof one);
  (void)w;
  return true;
}

void ExecObserver::stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopped_ = true;
  }
  loop_.stop();
}

void ExecObserver::loop() {
  struct seccomp_notif_sizes sizes {};
  if (::syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) < 0) {
    log::error(std::string("seccomp notif sizes: ") + std::strerror(errno));
    return;
  }
  std::vector<char> reqbuf(std::max<std::size_t>(sizes.seccomp_notif, sizeof(struct seccomp_notif)));
  std::vector<Source> sources;
  std::vector<struct pollfd> fds;
  for (;;) {
    {
      std::lock_guard<std::mutex> l(mu_);
      for (auto& p : pending_) sources.push_back(std::move(p));
      pending_.clear();
    }
    fds.assign({{loop_.stop_fd(), POLLIN, 0}, {wake_.get(), POLLIN, 0}});
    for (const auto& s : sources) fds.push_back({s.fd.get(), POLLIN, 0});
    int n = ::poll(fds.data(), fds.size(), -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      log::error(std::string("exec observer: poll: ") + std::strerror(errno));
      return;
    }
    if (fds[0].revents & (POLLIN | POLLNVAL)) return;
    if (fds[1].revents & POLLIN) {
      uint64_t v;
      ssize_t r = ::read(wake_.get(), &v, sizeof v);
      (void)r;
    }
    std::vector<bool> gone(sources.size(), false);
    for (std::size_t i = 0; i < sources.size(); i++) {
      short re = fds[i + 2].revents;
      if (re & POLLIN) {
        std::memset(reqbuf.data(), 0, reqbuf.size());
        if (::ioctl(sources[i].fd.get(), SECCOMP_IOCTL_NOTIF_RECV, reqbuf.data()) == 0) {
          handle(reqbuf.data(), sources[i].fd.get(), sources[i].tag);
          continue;
        }
        // EINTR, or ENOENT: the caller went away. With HUP too, nobody is left.
        if (errno == EINTR || (errno == ENOENT && !(re & (POLLHUP | POLLERR)))) continue;
        gone[i] = true;
        continue;
      }
      // The listener reports HUP when every filter user is gone.
      if (re & (POLLHUP | POLLERR | POLLNVAL)) gone[i] = true;
    }
    for (std::size_t i = sources.size(); i-- > 0;) {
      if (!gone[i]) continue;
      sources.erase(sources.begin() + static_cast<std::ptrdiff_t>(i));
      active_--;
    }
  }
}

void ExecObserver::handle(void* reqp, int listener, const json& tag) {
  auto* req = static_cast<struct seccomp_notif*>(reqp);
  pid_t pid = static_cast<pid_t>(req->pid);
  json ev = {{"pid", pid}};
  for (const auto& [k, v] : tag.items()) ev[k] = v;
  bool is_at = false;
#ifdef __NR_execveat
  is_at = req->data.nr == __NR_execveat;
#endif
  ev["syscall"] = is_at ? "execveat" : "execve";
  unsigned long long path_addr = is_at ? req->data.args[1] : req->data.args[0];
  unsigned long long argv_addr = is_at ? req->data.args[2] : req->data.args[1];
  int dirfd = is_at ? static_cast<int>(req->data.args[0]) : AT_FDCWD;
  int flags = is_at ? static_cast<int>(req->data.args[4]) : 0;

  std::string proc = "/proc/" + std::to_string(pid);
  UniqueFd mem(::open((proc + "/mem").c_str(), O_RDONLY | O_CLOEXEC));
  // Check the notification is still live before trusting what we read.
  bool valid = ::ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &req->id) == 0;
  if (mem && valid) {
    bool trunc = false;
    std::string path = read_cstring(mem.get(), path_addr, kMaxPath, &trunc);
    ev["path"] = attest::pct_encode(path);
    if (trunc) ev["path_truncated"] = true;
    json argv = json::array();
    std::size_t total = 0;
    for (std::size_t i = 0; i < kMaxArgs && argv_addr; i++) {
      unsigned long long p = 0;
      if (::pread(mem.get(), &p, sizeof p, static_cast<off_t>(argv_addr + i * sizeof p)) != sizeof p ||
          p == 0)
        break;
      bool t = false;
      std::string a = read_cstring(mem.get(), p, std::min<std::size_t>(4096, kMaxArgBytes - total), &t);
      total += a.size();
      argv.push_back(attest::pct_encode(a));
      if (t || total >= kMaxArgBytes) {
        ev["argv_truncated"] = true;
        break;
      }
    }
    ev["argv"] = argv;
    std::string cpath, open_error;
    int fd = -1, open_errno = 0;
    if ((flags & AT_EMPTY_PATH) && path.empty() && is_at) {
      fd = open_regular_link(proc + "/fd/" + std::to_string(dirfd), open_error);
      cpath = "fd:" + std::to_string(dirfd);
    } else {
      fd = open_as(pid, dirfd, path, cpath, open_error, &open_errno);
    }
    if (fd < 0 && !trunc && fails_without_file(path, open_errno)) {
      // Nothing at that path (a PATH lookup's miss): the process gets the
      // kernel's answer from us, and the record says an attempt failed.
      ev.erase("argv");
      ev.erase("argv_truncated");
      ev["errno"] = errno_name(open_errno);
      answer(listener, req->id, -open_errno);
      observed_++;
      emit("process.exec_failed", std::move(ev));
      return;
    }
    ev["resolved"] = attest::pct_encode(cpath);
    if (fd >= 0) {
      UniqueFd f(fd);
      std::string host = link("/proc/self/fd/" + std::to_string(fd));
      if (!rootfs_.empty() && starts_with(host, rootfs_ + "/"))
        ev["resolved"] = attest::pct_encode(host.substr(rootfs_.size()));
      Hashed h = hash_fd(fd, cache_.get());
      if (h.error.empty()) {
        ev["sha256"] = h.sha256;
        ev["size"] = h.size;
        std::string interp = shebang_interpreter(h.head);
        if (!interp.empty()) {
          std::string ipath, ierr;
          int ifd = open_as(pid, AT_FDCWD, interp, ipath, ierr);
          json ij = {{"path", attest::pct_encode(interp)}};
          if (ifd >= 0) {
            UniqueFd i(ifd);
            Hashed ih = hash_fd(ifd, cache_.get());
            if (ih.error.empty()) ij["sha256"] = ih.sha256;
          }
          ev["interpreter"] = ij;
        }
      } else {
        ev["error"] = h.error;
      }
    } else {
      ev["error"] = open_error;
    }
  } else {
    ev["error"] = "process went away before it could be inspected";
  }
  answer(listener, req->id, 0);
  observed_++;
  emit("process.exec", std::move(ev));
}

void ExecObserver::emit(const std::string& type, json ev) {
  try {
    sink_(type, std::move(ev));
  } catch (const std::exception& e) {
    log::error(std::string("exec observer sink: ") + e.what());
  }
}

}  // namespace agentshim::observer
