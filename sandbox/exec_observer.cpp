#include "sandbox/exec_observer.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/fanotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
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

Hashed hash_fd(int fd, attest::HashCache* cache, uint64_t max_bytes) {
  Hashed h;
  struct stat st {};
  if (::fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    h.error = "not a regular file";
    return h;
  }
  // A huge (or sparse) program is named, not read: hashing a 1 PiB sparse
  // file would hold the exec and a supervisor CPU for ever.
  if (max_bytes && static_cast<uint64_t>(st.st_size) > max_bytes) {
    char head[256];
    ssize_t n;
    do n = ::pread(fd, head, sizeof head, 0);
    while (n < 0 && errno == EINTR);
    if (n > 0) h.head.assign(head, static_cast<std::size_t>(n));
    h.size = static_cast<uint64_t>(st.st_size);
    h.error = "larger than audit.max_file_bytes (" + std::to_string(max_bytes) + " bytes): not hashed";
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

int64_t now_ms() {
  struct timespec t {};
  ::clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<int64_t>(t.tv_sec) * 1000 + t.tv_nsec / 1000000;
}

// The thread group of thread `tid` (the pid the exec'd program will have).
pid_t tgid_of(pid_t tid) {
  std::string s;
  try {
    s = read_file("/proc/" + std::to_string(tid) + "/status");
  } catch (...) {
    return tid;
  }
  auto i = s.find("\nTgid:");
  if (i == std::string::npos) return tid;
  return static_cast<pid_t>(std::strtol(s.c_str() + i + 6, nullptr, 10));
}

bool exe_identity(pid_t pid, dev_t& dev, ino_t& ino) {
  struct stat st {};
  if (::stat(("/proc/" + std::to_string(pid) + "/exe").c_str(), &st) < 0) return false;
  dev = st.st_dev;
  ino = st.st_ino;
  return true;
}

// What /proc/TID/syscall says of a thread that asked to exec.
enum class InExec {
  inside,   // blocked inside execve/execveat: the exec is not over
  running,  // on a CPU right now: undecided
  left,     // in another system call, or in user mode ("-1 ..."): the call returned
  unknown,  // gone, or its system call cannot be read (not dumpable)
};
InExec in_exec(pid_t tid) {
  UniqueFd f(::open(("/proc/" + std::to_string(tid) + "/syscall").c_str(), O_RDONLY | O_CLOEXEC));
  if (!f) return InExec::unknown;
  char buf[64] = {};
  ssize_t n = ::read(f.get(), buf, sizeof buf - 1);
  if (n <= 0) return InExec::unknown;
  if (buf[0] == '-') return InExec::left;  // "-1 SP PC": not in a system call
  if (!std::isdigit(static_cast<unsigned char>(buf[0]))) return InExec::running;
  long nr = std::strtol(buf, nullptr, 10);
  if (nr == SYS_execve) return InExec::inside;
#ifdef SYS_execveat
  if (nr == SYS_execveat) return InExec::inside;
#endif
  return InExec::left;
}

// argv as the new image received it (bounded like the caller's).
bool read_cmdline(pid_t pid, json& argv, bool& truncated) {
  UniqueFd f(::open(("/proc/" + std::to_string(pid) + "/cmdline").c_str(), O_RDONLY | O_CLOEXEC));
  if (!f) return false;
  std::string all;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(f.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    all.append(buf, static_cast<std::size_t>(n));
    if (all.size() > kMaxArgBytes + kMaxArgs) break;
  }
  return parse_argv_area(all, argv, truncated);  // empty: a zombie, or the image's mm is gone
}

// "/proc/self/fd/N", "/proc/thread-self/fd/N", "/dev/fd/N",
// "/proc/<digits>/fd/N": the descriptor number N, or -1.
int fd_of_path(const std::string& p) {
  std::string rest;
  for (const char* pre : {"/proc/self/fd/", "/proc/thread-self/fd/", "/dev/fd/"})
    if (starts_with(p, pre)) rest = p.substr(std::strlen(pre));
  if (rest.empty() && starts_with(p, "/proc/")) {
    std::size_t i = 6;
    while (i < p.size() && std::isdigit(static_cast<unsigned char>(p[i]))) i++;
    if (i > 6 && p.compare(i, 4, "/fd/") == 0) rest = p.substr(i + 4);
  }
  if (rest.empty() || rest.size() > 9) return -1;
  for (char c : rest)
    if (!std::isdigit(static_cast<unsigned char>(c))) return -1;
  return std::atoi(rest.c_str());
}

// True when the ELF file at `fd` names an ELF interpreter (PT_INTERP): the
// kernel opens that one next, for the same exec.
bool elf_has_interp(int fd) {
  unsigned char eh[64];
  if (::pread(fd, eh, sizeof eh, 0) != static_cast<ssize_t>(sizeof eh) || eh[4] != 2)
    return false;  // ELFCLASS64
  uint64_t phoff = 0;
  uint16_t phentsize = 0, phnum = 0;
  std::memcpy(&phoff, eh + 32, 8);
  std::memcpy(&phentsize, eh + 54, 2);
  std::memcpy(&phnum, eh + 56, 2);
  if (phentsize < 4 || phnum > 128) return false;
  for (uint16_t i = 0; i < phnum; i++) {
    uint32_t type = 0;
    if (::pread(fd, &type, 4, static_cast<off_t>(phoff + static_cast<uint64_t>(i) * phentsize)) != 4)
      return false;
    if (type == 3) return true;  // PT_INTERP
  }
  return false;
}

// (arg_start, arg_end) of the process's memory (/proc/PID/stat fields 48,
// 49): a new image has new values (its stack is placed at random), so they
// tell the new image from the old one when both run the same file.
std::pair<unsigned long long, unsigned long long> arg_range(pid_t pid) {
  auto s = try_read_file("/proc/" + std::to_string(pid) + "/stat");
  if (!s) return {0, 0};
  auto p = s->rfind(')');
  if (p == std::string::npos) return {0, 0};
  const char* c = s->c_str() + p + 1;
  while (*c == ' ') c++;
  if (*c) c++;  // field 3, the state: a letter
  char* end = nullptr;
  unsigned long long v[50] = {};
  int n = 0;
  for (; n < 46; n++) {  // fields 4..49
    v[n] = std::strtoull(c, &end, 10);
    if (end == c) break;
    c = end;
  }
  if (n < 46) return {0, 0};
  return {v[44], v[45]};
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
                           std::shared_ptr<attest::HashCache> cache, pid_t init_pid)
    : wake_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      rootfs_(std::move(rootfs_host_path)),
      sink_(std::move(sink)),
      cache_(std::move(cache)) {
  if (!wake_) throw_errno("eventfd");
  if (listener) {
    pending_.push_back({std::move(listener), json::object()});
    active_ = 1;
  }
  if (init_pid > 0) {
    json w = json::object();
    try {
      watch_ = std::make_unique<ExecWatch>(init_pid);
      // A read lease makes its holder the file's owner for SIGIO, which a
      // writer's open would send: the supervisor must not die of it.
      struct sigaction sa {};
      if (::sigaction(SIGIO, nullptr, &sa) == 0 && sa.sa_handler == SIG_DFL) {
        sa.sa_handler = SIG_IGN;
        ::sigaction(SIGIO, &sa, nullptr);
      }
      w["mechanism"] = "fanotify";
      w["mounts"] = watch_->summary().marked;
      json un = json::array();
      for (const auto& u : watch_->summary().unmarked) un.push_back(attest::pct_encode(u));
      w["unmarked"] = un;
      // argv copied in the kernel when the new image is installed; without
      // it, /proc/PID/cmdline once the exec completed. Loaded on a thread
      // (off the create path); the loop waits for it before its first exec
      // and then emits exec.watch, still before the init's program runs.
      argv_load_ = std::async(std::launch::async, [this] { return ExecArgvBpf::open(argv_load_error_); });
      watch_event_ = std::move(w);
    } catch (const std::exception& e) {
      watch_.reset();
      w["mechanism"] = "seccomp";
      w["argv"] = "caller";
      w["error"] = attest::pct_encode(e.what());
      emit("exec.watch", std::move(w));
    }
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
  // The supervisor ends with _exit: the argv program's slot is left here.
  if (loop_.stop()) argv_bpf_.reset();
}

void ExecObserver::loop() {
  if (argv_load_.valid()) {
    argv_bpf_ = argv_load_.get();
    watch_event_["argv"] = argv_bpf_ ? "bpf" : "cmdline";
    if (!argv_bpf_) watch_event_["argv_error"] = attest::pct_encode(argv_load_error_);
    if (argv_bpf_) watch_event_["argv_program"] = argv_bpf_->obtained();
    if (argv_bpf_ && !argv_bpf_->pin_error().empty())
      watch_event_["argv_pin_error"] = attest::pct_encode(argv_bpf_->pin_error());
    emit("exec.watch", std::move(watch_event_));
  }
  struct seccomp_notif_sizes sizes {};
  if (::syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) < 0) {
    log::error(std::string("seccomp notif sizes: ") + std::strerror(errno));
    return;
  }
  std::vector<char> reqbuf(std::max<std::size_t>(sizes.seccomp_notif, sizeof(struct seccomp_notif)));
  std::vector<Source> sources;
  std::vector<struct pollfd> fds;
  const std::size_t ring = watch_ ? 3 : 2;  // index of the BPF ring buffer's fd, when there is one
  const std::size_t first = ring + (argv_bpf_ ? 1 : 0);
  for (;;) {
    {
      std::lock_guard<std::mutex> l(mu_);
      for (auto& p : pending_) sources.push_back(std::move(p));
      pending_.clear();
    }
    fds.assign({{loop_.stop_fd(), POLLIN, 0}, {wake_.get(), POLLIN, 0}});
    if (watch_) fds.push_back({watch_->fd(), POLLIN, 0});
    if (argv_bpf_) fds.push_back({argv_bpf_->fd(), POLLIN, 0});
    for (const auto& s : sources) fds.push_back({s.fd.get(), POLLIN, 0});
    // While an exec is in progress, look at it every 2 ms (sweep).
    int n = ::poll(fds.data(), fds.size(), attempts_.empty() ? -1 : 2);
    if (n < 0) {
      if (errno == EINTR) continue;
      log::error(std::string("exec observer: poll: ") + std::strerror(errno));
      return;
    }
    if (fds[0].revents & (POLLIN | POLLNVAL)) {
      if (watch_) handle_fanotify();
      sweep(true);
      return;
    }
    if (fds[1].revents & POLLIN) {
      uint64_t v;
      ssize_t r = ::read(wake_.get(), &v, sizeof v);
      (void)r;
    }
    if (watch_ && (fds[2].revents & POLLIN)) handle_fanotify();
    if (argv_bpf_ && (fds[ring].revents & POLLIN)) drain_argv();
    std::vector<bool> gone(sources.size(), false);
    for (std::size_t i = 0; i < sources.size(); i++) {
      short re = fds[i + first].revents;
      if (re & POLLIN) {
        std::memset(reqbuf.data(), 0, reqbuf.size());
        if (::ioctl(sources[i].fd.get(), SECCOMP_IOCTL_NOTIF_RECV, reqbuf.data()) == 0) {
          if (watch_)
            handle_seccomp(reqbuf.data(), sources[i].fd.get(), sources[i].tag);
          else
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
    if (watch_) sweep(false);
  }
}

void ExecObserver::handle_seccomp(void* reqp, int listener, const json& tag) {
  auto* req = static_cast<struct seccomp_notif*>(reqp);
  const pid_t tid = static_cast<pid_t>(req->pid);
  const pid_t tgid = tgid_of(tid);
  drain_argv();
  // A new exec of the same process: the previous one is over.
  if (auto it = attempts_.find(tgid); it != attempts_.end()) {
    Attempt prev = std::move(it->second);
    attempts_.erase(it);
    finalize(tgid, std::move(prev));
  }
  Attempt a;
  a.tid = tid;
  a.started_ms = a.last_ms = now_ms();
  a.ev = {{"pid", tgid}};
  for (const auto& [k, v] : tag.items()) a.ev[k] = v;
  bool is_at = false;
#ifdef __NR_execveat
  is_at = req->data.nr == __NR_execveat;
#endif
  a.ev["syscall"] = is_at ? "execveat" : "execve";
  unsigned long long path_addr = is_at ? req->data.args[1] : req->data.args[0];
  unsigned long long argv_addr = is_at ? req->data.args[2] : req->data.args[1];
  int dirfd = is_at ? static_cast<int>(req->data.args[0]) : AT_FDCWD;
  int flags = is_at ? static_cast<int>(req->data.args[4]) : 0;
  const std::string proc = "/proc/" + std::to_string(tid);
  UniqueFd mem(::open((proc + "/mem").c_str(), O_RDONLY | O_CLOEXEC));
  if (!mem || ::ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &req->id) != 0) {
    answer(listener, req->id, 0);
    return;  // gone before it could be looked at; a kernel open still reports it
  }
  // The caller's memory: what it asked for (another thread may rewrite it;
  // the record's identity and argv come from the kernel and the new image).
  bool trunc = false;
  std::string path = read_cstring(mem.get(), path_addr, kMaxPath, &trunc);
  a.ev["path"] = attest::pct_encode(path);
  if (trunc) a.ev["path_truncated"] = true;
  a.caller_argv = json::array();
  std::size_t total = 0;
  for (std::size_t i = 0; i < kMaxArgs && argv_addr; i++) {
    unsigned long long p = 0;
    if (::pread(mem.get(), &p, sizeof p, static_cast<off_t>(argv_addr + i * sizeof p)) != sizeof p || p == 0)
      break;
    bool t = false;
    std::string s = read_cstring(mem.get(), p, std::min<std::size_t>(4096, kMaxArgBytes - total), &t);
    total += s.size();
    a.caller_argv.push_back(attest::pct_encode(s));
    if (t || total >= kMaxArgBytes) {
      a.argv_truncated = true;
      break;
    }
  }
  // A PATH lookup's miss: answered with the kernel's errno, recorded apart.
  // (Not under /proc: its entries resolve by the caller's pid namespace, not ours.)
  if (!trunc && !path.empty() && path[0] == '/' && !starts_with(path, "/proc/") && fd_of_path(path) < 0) {
    UniqueFd root(::open((proc + "/root").c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    struct open_how how {};
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    errno = 0;
    UniqueFd f(root ? static_cast<int>(::syscall(SYS_openat2, root.get(), path.c_str(), &how, sizeof how))
                    : -1);
    if (root && !f && fails_without_file(path, errno)) {
      int e = errno;
      json ev = a.ev;
      ev["resolved"] = attest::pct_encode(path);
      ev["errno"] = errno_name(e);
      answer(listener, req->id, -e);
      observed_++;
      emit("process.exec_failed", std::move(ev));
      return;
    }
  }
  // A file named by descriptor may sit outside every marked mount (a
  // memfd): mark its inode before the kernel opens it.
  int nfd = ((flags & AT_EMPTY_PATH) && path.empty() && is_at) ? dirfd : fd_of_path(path);
  if (nfd >= 0) {
    UniqueFd o(::open((proc + "/fd/" + std::to_string(nfd)).c_str(), O_PATH | O_CLOEXEC));
    if (o && watch_->mark_inode(o.get())) a.marked.push_back(std::move(o));
  }
  a.have_before = exe_identity(tgid, a.before_dev, a.before_ino);
  a.before_args = arg_range(tgid);
  // Announced to the BPF program before the exec continues: it copies argv
  // when the new image is installed.
  if (argv_bpf_) {
    a.seq = ++seq_;
    a.bpf_expected = argv_bpf_->expect(tgid, a.seq);
    if (!a.bpf_expected) a.argv_fallback = "BPF expect map full";
  }
  attempts_[tgid] = std::move(a);
  answer(listener, req->id, 0);
}

void ExecObserver::handle_fanotify() {
  alignas(struct fanotify_event_metadata) char buf[4096];
  for (;;) {
    ssize_t n = ::read(watch_->fd(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    auto* md = reinterpret_cast<struct fanotify_event_metadata*>(buf);
    while (FAN_EVENT_OK(md, n)) {
      if (md->vers == FANOTIFY_METADATA_VERSION && md->fd >= 0) {
        if (md->mask & FAN_OPEN_EXEC_PERM)
          on_exec_open(static_cast<pid_t>(md->pid), md->fd);
        else
          ::close(md->fd);
      } else if (md->fd >= 0) {
        ::close(md->fd);
      }
      md = FAN_EVENT_NEXT(md, n);
    }
  }
}

void ExecObserver::on_exec_open(pid_t pid, int fd) {
  UniqueFd held(fd);
  if (!watch_->in_container(pid)) {  // a host process reaching a container mount
    watch_->respond(fd, 0);
    return;
  }
  auto it = attempts_.find(pid);
  if (it == attempts_.end()) {  // no notification seen (should not happen): still recorded
    Attempt a;
    a.tid = pid;
    a.started_ms = now_ms();
    a.ev = {{"pid", pid}, {"syscall", "unknown"}};
    it = attempts_.emplace(pid, std::move(a)).first;
  }
  Attempt& a = it->second;
  a.last_ms = now_ms();
  File f;
  std::string host = link("/proc/self/fd/" + std::to_string(fd));
  if (!rootfs_.empty() && starts_with(host, rootfs_ + "/")) host = host.substr(rootfs_.size());
  f.info = {{"path", attest::pct_encode(host)}};
  struct stat st {};
  struct statfs sf {};
  std::string fsname;
  if (::fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    f.info["error"] = "not a regular file";
  } else if (::fstatfs(fd, &sf) == 0 && kernel_fs(static_cast<long>(sf.f_type), fsname)) {
    f.info["error"] = "on a kernel filesystem (" + fsname + "): not read";
  } else if (a.files.size() >= 16) {
    f.info["error"] = "more than 16 files opened for one exec: not read";
  } else {
    f.dev = st.st_dev;
    f.ino = st.st_ino;
    // No writer may be open while the exec hashes and runs: a read lease
    // is refused (EAGAIN) when one is, and while held makes a new writer's
    // open wait (its write access then fails the exec's deny-write).
    int lease = ::fcntl(fd, F_SETLEASE, F_RDLCK);
    int lease_errno = lease < 0 ? errno : 0;
    if (lease == 0) ::fcntl(fd, F_SETOWN, 0);
    if (lease_errno == EAGAIN) {
      // Open for writing (a descriptor or a shared writable mapping): the
      // kernel's deny-write refuses the exec with ETXTBSY; so do we, now,
      // before a writer could close between our hash and its check.
      f.info["error"] = "open for writing: exec refused (ETXTBSY)";
      a.denied = ETXTBSY;
      a.files.push_back(std::move(f));
      watch_->respond(fd, ETXTBSY);
      return;
    }
    f.key = attest::HashCache::key_of(st);
    f.cacheable = lease == 0 && watch_->read_only_dev(st.st_dev);
    bool hit = false;
    if (cache_ && f.cacheable) {
      if (auto d = cache_->get(f.key)) {
        f.digest = *d;
        hit = true;
      }
    }
    // A huge (or sparse) program is named, not read: hashing a 1 PiB
    // sparse file would hold the exec and a supervisor CPU for ever.
    const uint64_t cap = max_hash_bytes_;
    const bool too_big = !hit && cap && static_cast<uint64_t>(st.st_size) > cap;
    attest::Sha256 sha;
    std::vector<char> buf(1 << 20);
    uint64_t size = 0;
    std::string head;
    for (off_t off = 0;;) {
      ssize_t n = ::pread(fd, buf.data(), hit || too_big ? 4 : buf.size(), off);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        f.info["error"] = std::string("read: ") + std::strerror(errno);
        break;
      }
      if (head.size() < 4) head.append(buf.data(), std::min<std::size_t>(static_cast<std::size_t>(n), 4));
      if (hit || too_big || n == 0) break;
      sha.update(buf.data(), static_cast<std::size_t>(n));
      size += static_cast<uint64_t>(n);
      off += n;
    }
    if (too_big && !f.info.contains("error")) {
      f.info["error"] = "larger than audit.max_file_bytes (" + std::to_string(cap) + " bytes): not hashed";
      f.info["size"] = static_cast<uint64_t>(st.st_size);
      f.elf = head.size() >= 4 && std::memcmp(head.data(),
                                              "\x7f"
                                              "ELF",
                                              4) == 0;
    } else if (!f.info.contains("error")) {
      if (!hit) f.digest = sha.finish();
      f.info["sha256"] = attest::hex(f.digest);
      f.info["size"] = hit ? static_cast<uint64_t>(st.st_size) : size;
      f.elf = head.size() >= 4 && std::memcmp(head.data(),
                                              "\x7f"
                                              "ELF",
                                              4) == 0;
      if (lease != 0) f.info["writers"] = "unknown";  // no lease here: cannot prove none
    }
  }
  watch_->respond(fd, 0);
  const bool last = f.elf && !elf_has_interp(fd);
  f.held = std::move(held);  // the lease lasts until the exec is over
  a.files.push_back(std::move(f));
  if (!last || a.bpf_expected) return;  // the BPF program copies argv
  // The kernel opens nothing more for this exec: it is about to run the
  // program. Read argv from the new image as soon as it is there (a
  // program may exit within microseconds); at most 2 ms.
  const File* prog = nullptr;
  for (const auto& x : a.files)
    if (x.elf) {
      prog = &x;
      break;
    }
  struct timespec t0 {};
  ::clock_gettime(CLOCK_MONOTONIC, &t0);
  const bool same_file = a.have_before && prog && prog->dev == a.before_dev && prog->ino == a.before_ino;
  while (prog) {
    dev_t d = 0;
    ino_t i = 0;
    if (!exe_identity(pid, d, i)) break;
    // The same file as before the exec: only a new argument area says the
    // new image is there (and without one it is not read).
    if (d == prog->dev && i == prog->ino &&
        (!same_file || (a.before_args.first != 0 && arg_range(pid) != a.before_args))) {
      json argv;
      bool trunc = false;
      if (read_cmdline(pid, argv, trunc)) {
        a.image_argv = std::move(argv);
        a.image_argv_truncated = trunc;
        break;
      }
    }
    struct timespec t {};
    ::clock_gettime(CLOCK_MONOTONIC, &t);
    if ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) > 2000000L) break;
    ::sched_yield();
  }
}

// Ends the attempts whose exec is over: the BPF program's record came, the
// process runs the new program (its /proc/PID/exe is the exec's ELF;
// without the BPF program), its thread left the exec call, it is gone, or
// 200 ms passed (2 s with the BPF program). `all`: every attempt (stopping).
void ExecObserver::sweep(bool all) {
  const int64_t now = now_ms();
  drain_argv();
  for (auto it = attempts_.begin(); it != attempts_.end();) {
    Attempt& a = it->second;
    // The BPF program's record comes once the new image is installed. An
    // exec it was told of ends with it, the thread's leaving the call or the
    // process's end: one can take longer than 200 ms (the init's, replacing
    // the runtime's large image on a loaded machine: seen), so only 2 s
    // without any of them give up.
    // A thread still inside the call (blocked in it, or on a CPU: the
    // kernel loading the new image; a failed exec's thread in user mode
    // says so once it is off the CPU) is waited for up to 10 s, whatever
    // the mechanism: ending its attempt after 200 ms recorded a successful
    // exec as failed ("unknown") and its interpreter as an exec of its own
    // (the init under load without the BPF program, 2 of 6 runs).
    const InExec ie = all || a.bpf_argv ? InExec::unknown : in_exec(a.tid);
    const int64_t idle = now - a.last_ms;
    const int64_t limit = ie == InExec::inside || ie == InExec::running ? 10000 : a.bpf_expected ? 2000 : 200;
    bool done = all || a.bpf_argv || idle >= limit;
    if (!done) {
      dev_t d = 0;
      ino_t i = 0;
      bool alive = exe_identity(it->first, d, i);
      if (!alive) {
        done = ::kill(it->first, 0) < 0;
      } else {
        // (With the BPF program expected: its record, which follows the
        // new executable's installation, or the thread's leaving the call.)
        for (const auto& f : a.files)
          if (f.elf && f.dev == d && f.ino == i &&
              (!a.have_before || d != a.before_dev || i != a.before_ino) && !a.bpf_expected)
            done = true;
      }
      if (!done) {
        // A thread whose system call cannot be read (a non-dumpable
        // process): 10 ms after the last event, unless the BPF program's
        // record, which a successful exec sends, is awaited.
        done = ie == InExec::left || (ie == InExec::unknown && !a.bpf_expected && idle >= 10);
      }
    }
    if (!done) {
      ++it;
      continue;
    }
    drain_argv();  // a record sent since the first drain (it only fills attempts)
    pid_t pid = it->first;
    Attempt taken = std::move(a);
    it = attempts_.erase(it);
    finalize(pid, std::move(taken));
  }
}

void ExecObserver::finalize(pid_t pid, Attempt a) {
  for (auto& m : a.marked) watch_->unmark_inode(m.get());
  if (argv_bpf_ && a.seq) argv_bpf_->forget(pid);
  json ev = std::move(a.ev);
  dev_t d = 0;
  ino_t i = 0;
  const bool alive = exe_identity(pid, d, i);
  bool ran = false;
  for (const auto& f : a.files)
    if (f.elf && (alive ? (f.dev == d && f.ino == i) : true)) ran = true;
  if (a.denied) {
    ev["errno"] = a.denied == ETXTBSY ? "ETXTBSY" : std::to_string(a.denied);
  } else if (a.files.empty() && alive && a.have_before && (d != a.before_dev || i != a.before_ino)) {
    // It runs something the watch did not see (a descriptor replaced
    // between the notification and the kernel's lookup, a file on a mount
    // made later): identified after the fact from its executable, which
    // the kernel keeps unwritable while it runs.
    std::string err;
    int fd = open_regular_link("/proc/" + std::to_string(pid) + "/exe", err);
    File f;
    f.info = {{"path", attest::pct_encode(link("/proc/" + std::to_string(pid) + "/exe"))}};
    if (fd >= 0) {
      UniqueFd u(fd);
      Hashed h = hash_fd(fd, nullptr, max_hash_bytes_);
      if (h.error.empty()) {
        f.info["sha256"] = h.sha256;
        f.info["size"] = h.size;
      } else {
        f.info["error"] = h.error;
      }
    } else {
      f.info["error"] = err;
    }
    ev["observed"] = "after";
    a.files.push_back(std::move(f));
    ran = true;
  }
  if (!ran) {
    // The kernel opened no program for it, or the process kept its old one.
    if (!ev.contains("errno")) ev["errno"] = "unknown";
    if (!a.files.empty()) {
      json chain = json::array();
      for (const auto& f : a.files) chain.push_back(f.info);
      ev["files"] = chain;
    }
    observed_++;
    emit("process.exec_failed", std::move(ev));
    return;
  }
  if (!ev.contains("observed")) ev["observed"] = "kernel";
  const json& first = a.files.front().info;
  ev["resolved"] = first.value("path", "");
  for (const char* k : {"sha256", "size", "error", "writers"})
    if (first.contains(k)) ev[k] = first[k];
  json chain = json::array();
  for (const auto& f : a.files) chain.push_back(f.info);
  if (a.files.size() > 1) {
    json ij = {{"path", a.files[1].info.value("path", "")}};
    if (a.files[1].info.contains("sha256")) ij["sha256"] = a.files[1].info["sha256"];
    ev["interpreter"] = ij;
  }
  ev["files"] = chain;
  json argv;
  bool trunc = false;
  if (a.bpf_expected && !a.bpf_argv && a.argv_fallback.empty()) {
    // The exec ran but the kernel's copy is not there: the ring buffer was
    // full (counted by the program), or it never came.
    const uint64_t lost = argv_bpf_->lost();
    if (lost > argv_lost_) {
      a.argv_fallback = "BPF ring buffer full (" + std::to_string(lost) + " records lost in this run)";
      argv_lost_ = lost;
    } else {
      a.argv_fallback = "no BPF record";
    }
  }
  if (!a.argv_fallback.empty()) ev["argv_fallback"] = a.argv_fallback;
  if (!a.image_argv.is_null()) {
    ev["argv"] = a.image_argv;
    ev["argv_source"] = a.bpf_argv ? "bpf" : "image";
    if (a.image_argv_truncated) ev["argv_truncated"] = true;
  } else if (alive && read_cmdline(pid, argv, trunc)) {
    ev["argv"] = argv;
    ev["argv_source"] = "image";
    if (trunc) ev["argv_truncated"] = true;
  } else {
    ev["argv"] = a.caller_argv;
    ev["argv_source"] = "caller";
    if (a.argv_truncated) ev["argv_truncated"] = true;
  }
  // Cached only now that the exec succeeded, and only files reached through
  // read-only mounts alone and read under a lease.
  if (cache_)
    for (const auto& f : a.files)
      if (f.cacheable && f.info.contains("sha256")) cache_->put(f.key, f.digest);
  observed_++;
  emit("process.exec", std::move(ev));
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
      Hashed h = hash_fd(fd, cache_.get(), max_hash_bytes_);
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
            Hashed ih = hash_fd(ifd, cache_.get(), max_hash_bytes_);
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
  ev["observed"] = "seccomp";
  emit("process.exec", std::move(ev));
}

void ExecObserver::drain_argv() {
  if (!argv_bpf_) return;
  argv_bpf_->drain([this](const ExecArgvBpf::Record& r) {
    auto it = attempts_.find(r.tgid);
    if (it == attempts_.end()) return;
    Attempt& a = it->second;
    if (!a.bpf_expected || a.bpf_argv || a.seq != r.seq) return;  // not this attempt's record
    if (r.fault) {
      a.argv_fallback = "argument area unreadable in the kernel";
      a.bpf_expected = false;  // the exec ran: decide as without BPF
      return;
    }
    json argv = json::array();
    bool trunc = false;
    parse_argv_area(r.area, argv, trunc);  // an empty area: no arguments
    a.image_argv = std::move(argv);
    a.image_argv_truncated = trunc || r.truncated;
    a.bpf_argv = true;
  });
}

void ExecObserver::emit(const std::string& type, json ev) {
  try {
    sink_(type, std::move(ev));
  } catch (const std::exception& e) {
    log::error(std::string("exec observer sink: ") + e.what());
  }
}

}  // namespace agentshim::observer
