// Observing every execve/execveat in the sandbox.
//
// What ran comes from the kernel: a fanotify group (sandbox/fanotify_exec)
// with FAN_OPEN_EXEC_PERM marks on the container's mounts hands the
// supervisor a descriptor of each file the kernel opens for an exec (the
// program, every "#!" interpreter, the ELF interpreter), while the exec
// waits; the observer hashes that descriptor, holding a read lease on it
// (no writer can be open: with one, the exec is answered ETXTBSY, what the
// kernel's deny-write would answer) until the exec is over. argv is read
// as the new program received it: copied in the kernel when the new image
// is installed (sandbox/exec_argv_bpf, a BPF program on sched_process_exec,
// for the execs the seccomp notification announced), else read from
// /proc/PID/cmdline once the exec completed.
//
// The seccomp user notification on execve/execveat (the listener held by
// the supervisor) still adds: the exec session's tag, the path as
// requested, the failed attempts (an absolute path under which the
// process's root holds nothing, ENOENT/ENOTDIR, the misses of a PATH
// lookup, is answered with that errno by the observer and recorded as
// "process.exec_failed"), and an inode mark on a file named by descriptor
// (a memfd through /proc/self/fd/N or execveat AT_EMPTY_PATH: no mount
// mark covers it) placed before the call continues.
//
// Without fanotify (ExecWatch could not be set up) the observer falls back
// to the seccomp-only mode: path and argv from the caller's memory, the
// file resolved again and hashed (racy; the record says "observed":
// "seccomp").
#pragma once

#include <atomic>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "attest/fstree.h"
#include "common/fd.h"
#include "common/stoppable_loop.h"
#include "sandbox/exec_argv_bpf.h"
#include "sandbox/fanotify_exec.h"

namespace agentshim::observer {

using json = nlohmann::json;

// Parsing helpers, exposed for tests and fuzzing.
// Reads a NUL-terminated string of at most `max` bytes at `addr` in `mem_fd`.
std::string read_cstring(int mem_fd, unsigned long long addr, std::size_t max, bool* truncated);
// Extracts the interpreter path from the first bytes of a file ("#!/bin/sh -e\n" -> "/bin/sh").
std::string shebang_interpreter(const std::string& head);

// The only way the observer opens a file the container named: `path`
// resolved by openat2 from `dirfd` with `resolve` (RESOLVE_IN_ROOT |
// RESOLVE_NO_MAGICLINKS from the process's root for a container path), as
// O_PATH first (opening an O_PATH descriptor runs no driver's open, reads
// nothing, never blocks on a FIFO); then fstat must say a regular file and
// fstatfs a filesystem that holds files (not proc, sysfs, debugfs, tracefs,
// securityfs, cgroup, configfs, bpf, pstore, efivarfs, devpts, nsfs: their
// "regular files" are kernel interfaces, e.g. /proc/kmsg whose read
// consumes the kernel log); only then it is reopened for reading through
// /proc/self/fd/N. Returns the read-only fd, or -1 with `error` set ("not a
// regular file (fifo)", "on a kernel filesystem (proc)", "open: ...").
// `open_errno` (optional) receives the resolution's errno when it fails.
int open_regular(int dirfd, const std::string& path, unsigned long long resolve, std::string& error,
                 int* open_errno = nullptr);
// The same for a descriptor the container holds (/proc/<pid>/fd/N, execveat
// with AT_EMPTY_PATH) or its executable (/proc/<pid>/exe): the magic link is
// opened O_PATH, then checked and reopened the same way.
int open_regular_link(const std::string& proc_link, std::string& error);

// True if `fd` is a seccomp user-notification listener (anything else
// handed to the supervisor is refused).
bool is_seccomp_listener(int fd);

// One thread serves every listener of a run: the init's (no tag) and one per
// exec session (`agentshim exec`: its process installs the same filter and
// the listener reaches the supervisor over the control socket), whose events
// carry the session's tag ({"session": id}). A listener is dropped when the
// kernel reports HUP (every process under its filter is gone).
class ExecObserver {
 public:
  using Sink = std::function<void(const std::string& type, json data)>;
  // At most this many listeners at once; add() refuses more (the exec
  // session's execve then fails with ENOSYS: nothing runs unrecorded).
  static constexpr std::size_t kMaxListeners = 1024;
  // `listener` may be empty (no init listener, only exec sessions later).
  // `cache` (may be null: policy "strict"): the run's content-hash cache; a
  // binary whose (dev, ino, size, mtime, ctime) it knows is not re-read.
  // `init_pid` (> 0): the container's init, whose mounts get the fanotify
  // marks (an "exec.watch" event says how many, and which could not be).
  ExecObserver(UniqueFd listener, std::string rootfs_host_path, Sink sink,
               std::shared_ptr<attest::HashCache> cache = nullptr, pid_t init_pid = 0);
  ~ExecObserver();
  // Programs larger than this are recorded with `error` instead of a hash
  // (policy audit.max_file_bytes; 0 = no limit).
  void set_max_hash_bytes(uint64_t n) { max_hash_bytes_ = n; }
  ExecObserver(const ExecObserver&) = delete;
  ExecObserver& operator=(const ExecObserver&) = delete;
  // Serve another listener; its events get the members of `tag` (an
  // object). Thread-safe. False (and the fd closed) when full or stopped.
  bool add(UniqueFd listener, json tag);
  // Stops the thread.
  void stop();
  uint64_t observed() const { return observed_; }
  // Listeners being served (for tests).
  std::size_t listeners() const { return active_; }

 private:
  struct Source {
    UniqueFd fd;
    json tag;
  };
  // One file the kernel opened for an exec.
  struct File {
    json info;  // path, sha256, size | error
    dev_t dev = 0;
    ino_t ino = 0;
    bool elf = false;
    bool cacheable = false;  // on a read-only device, read under a lease
    attest::HashCache::Key key{};
    attest::Digest digest{};
    UniqueFd held;  // the event's descriptor: its read lease, until the exec is over
  };
  // An exec in progress, by thread-group id (loop thread only).
  struct Attempt {
    json ev;  // pid, syscall, path, session
    json caller_argv;
    bool argv_truncated = false;
    json image_argv;  // read right after the exec, when it could be
    bool image_argv_truncated = false;
    uint64_t seq = 0;           // its number for the BPF program's record
    bool bpf_expected = false;  // announced to the BPF program
    bool bpf_argv = false;      // image_argv is the BPF program's copy
    std::string argv_fallback;  // why not, when it was expected
    pid_t tid = 0;
    std::vector<File> files;
    std::vector<UniqueFd> marked;  // inode marks placed for this attempt
    bool have_before = false;
    dev_t before_dev = 0;
    ino_t before_ino = 0;
    std::pair<unsigned long long, unsigned long long> before_args{0, 0};
    int denied = 0;  // errno the observer answered
    int64_t started_ms = 0, last_ms = 0;
  };
  void loop();
  void handle(void* req, int listener, const json& tag);
  void handle_seccomp(void* req, int listener, const json& tag);
  void handle_fanotify();
  void on_exec_open(pid_t pid, int fd);
  void sweep(bool all);
  void finalize(pid_t tgid, Attempt a);
  void emit(const std::string& type, json ev);
  // Takes the BPF program's waiting records into their attempts.
  void drain_argv();

  std::unique_ptr<ExecWatch> watch_;
  std::unique_ptr<ExecArgvBpf> argv_bpf_;  // null: argv from /proc/PID/cmdline
  // Loading the program takes 10-15 ms (the kernel's BTF, the verifier):
  // started by the constructor, taken by the loop before it serves any
  // exec, which then also emits exec.watch (`watch_event_`).
  std::string argv_load_error_;  // set by the loading thread, read after get() (outlives argv_load_)
  std::future<std::unique_ptr<ExecArgvBpf>> argv_load_;
  nlohmann::json watch_event_;
  uint64_t seq_ = 0;
  uint64_t argv_lost_ = 0;  // ring buffer losses already accounted
  std::map<pid_t, Attempt> attempts_;
  std::mutex mu_;
  std::vector<Source> pending_;  // added, not yet taken by the loop (mu_)
  bool stopped_ = false;         // (mu_)
  UniqueFd wake_;                // eventfd: pending_ changed
  std::string rootfs_;
  Sink sink_;
  std::shared_ptr<attest::HashCache> cache_;
  std::atomic<uint64_t> max_hash_bytes_{0};
  StoppableLoop loop_{"exec observer"};  // common/stoppable_loop.h
  std::atomic<uint64_t> observed_{0};
  std::atomic<std::size_t> active_{0};
};

}  // namespace agentshim::observer
