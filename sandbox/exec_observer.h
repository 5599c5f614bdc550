// Observing every execve/execveat in the sandbox through a seccomp user
// notification listener held by the supervisor. For each call it reads the
// requested path and argv from the (hostile) caller's memory with hard
// limits, resolves the path inside the caller's root without following
// symlinks out of it, hashes the binary (and a "#!" interpreter), emits a
// "process.exec" event, and lets the call continue
// (SECCOMP_USER_NOTIF_FLAG_CONTINUE): the log observes, it never decides.
//
// TOCTOU note: a process that rewrites the file between our hash and the
// kernel's open can make the recorded hash differ from what ran; the root
// filesystem is read-only by default and writable mounts are in the post-run
// filesystem root, so such a swap is itself visible in the record.
#pragma once

#include <atomic>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "attest/fstree.h"
#include "common/fd.h"

namespace agentshim::observer {

using json = nlohmann::json;

// Parsing helpers, exposed for tests and fuzzing.
// Reads a NUL-terminated string of at most `max` bytes at `addr` in `mem_fd`.
std::string read_cstring(int mem_fd, unsigned long long addr, std::size_t max, bool* truncated);
// Extracts the interpreter path from the first bytes of a file ("#!/bin/sh -e\n" -> "/bin/sh").
std::string shebang_interpreter(const std::string& head);

class ExecObserver {
 public:
  using Sink = std::function<void(const std::string& type, json data)>;
  // `cache` (may be null: policy "strict"): the run's content-hash cache; a
  // binary whose (dev, ino, size, mtime, ctime) it knows is not re-read.
  ExecObserver(UniqueFd listener, std::string rootfs_host_path, Sink sink,
               std::shared_ptr<attest::HashCache> cache = nullptr);
  ~ExecObserver();
  ExecObserver(const ExecObserver&) = delete;
  ExecObserver& operator=(const ExecObserver&) = delete;
  // Stops the thread after handling pending notifications.
  void stop();
  uint64_t observed() const { return observed_; }
  // Descriptors the observer owns (its owner must not close them).
  std::vector<int> fds() const { return {listener_.get(), stop_.get()}; }

 private:
  void loop();
  void handle(void* req);

  UniqueFd listener_;
  UniqueFd stop_;  // eventfd
  std::string rootfs_;
  Sink sink_;
  std::shared_ptr<attest::HashCache> cache_;
  std::thread thread_;
  std::atomic<uint64_t> observed_{0};
};

}  // namespace agentshim::observer
