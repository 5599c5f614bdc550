// Observing every execve/execveat in the sandbox through a seccomp user
// notification listener held by the supervisor. For each call it reads the
// requested path and argv from the (hostile) caller's memory with hard
// limits, resolves the path inside the caller's root without following
// symlinks out of it, hashes the binary (and a "#!" interpreter), emits a
// "process.exec" event, and lets the call continue
// (SECCOMP_USER_NOTIF_FLAG_CONTINUE): the log observes, it never decides.
// One exception, which decides nothing the kernel would not: an absolute
// path under which the process's root holds nothing (ENOENT, ENOTDIR; the
// misses of a PATH lookup) is answered with that errno by the observer and
// recorded as a failed attempt ("process.exec_failed"), apart from the
// programs that ran.
//
// TOCTOU note: a process that rewrites the file between our hash and the
// kernel's open can make the recorded hash differ from what ran; the root
// filesystem is read-only by default and writable mounts are in the post-run
// filesystem root, so such a swap is itself visible in the record.
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "attest/fstree.h"
#include "common/fd.h"
#include "common/stoppable_loop.h"

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
  ExecObserver(UniqueFd listener, std::string rootfs_host_path, Sink sink,
               std::shared_ptr<attest::HashCache> cache = nullptr);
  ~ExecObserver();
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
  void loop();
  void handle(void* req, int listener, const json& tag);
  void emit(const std::string& type, json ev);

  std::mutex mu_;
  std::vector<Source> pending_;  // added, not yet taken by the loop (mu_)
  bool stopped_ = false;         // (mu_)
  UniqueFd wake_;                // eventfd: pending_ changed
  std::string rootfs_;
  Sink sink_;
  std::shared_ptr<attest::HashCache> cache_;
  StoppableLoop loop_{"exec observer"};  // common/stoppable_loop.h
  std::atomic<uint64_t> observed_{0};
  std::atomic<std::size_t> active_{0};
};

}  // namespace agentshim::observer
