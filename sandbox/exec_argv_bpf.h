// argv of every exec in the container as the new program received it,
// copied in the kernel (sandbox/bpf/exec_argv.bpf.c, a tp_btf program on
// sched_process_exec) into a BPF ring buffer the exec observer reads.
//
// The observer announces each exec it lets continue (expect(tgid, seq),
// from the seccomp notification, before the kernel runs the exec); the
// program copies mm->arg_start..arg_end of that thread group once the new
// image is installed, before it runs a single instruction, so a program
// that exits within microseconds is recorded with its own argv. Nothing
// else is copied: other execs cost one hash lookup.
//
// The program is loaded once per host and shared (sandbox/bpf_host.h); each
// supervisor has its own ring buffer, taken from a pool in the program's
// `rings` map, and its announcements carry its slot and that ring's index.
//
// Load failures (no BTF, no CAP_BPF, a kernel without tp_btf, the test hook
// AGENTSHIM_EXEC_ARGV_BPF=off) are reported by open(): the observer keeps
// reading /proc/PID/cmdline and says which mechanism it uses.
// AGENTSHIM_EXEC_ARGV_BPF=private (a test hook) loads a copy of the
// supervisor's own, as where bpffs cannot be used.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_set>

#include "sandbox/bpf_host.h"

extern "C" {
#include "sandbox/bpf/exec_argv.h"
}

struct ring_buffer;

namespace agentshim::observer {

// Splits a process's argument area (NUL-separated strings, as in
// /proc/PID/cmdline) into at most 256 arguments of at most 4096 bytes and
// 64 KiB in all, each pct-encoded; `truncated` when anything was cut. False
// when the area is empty. Its bytes are the container's.
bool parse_argv_area(std::string_view area, nlohmann::json& argv, bool& truncated);

class ExecArgvBpf {
 public:
  struct Record {
    pid_t tgid = 0;
    uint64_t seq = 0;
    std::string_view area;   // the copied argument area (valid during the callback)
    bool truncated = false;  // the area is longer than the copy
    bool fault = false;      // the area could not be read
  };
  // Opens the host's program (loads and pins it when it is not there);
  // nullptr with `error` set when it cannot.
  static std::unique_ptr<ExecArgvBpf> open(std::string& error);
  ~ExecArgvBpf();
  ExecArgvBpf(const ExecArgvBpf&) = delete;
  ExecArgvBpf& operator=(const ExecArgvBpf&) = delete;

  // "loaded", "pinned" or "private" (bpffs unusable: pin_error() says why).
  const char* obtained() const;
  const std::string& pin_error() const;

  // The next successful exec of thread group `tgid` (in this process's pid
  // namespace) is copied with `seq`. False when the map is full or this
  // supervisor has 4096 announcements out.
  bool expect(pid_t tgid, uint64_t seq);
  void forget(pid_t tgid);
  // Readable when records wait as poll(2) is called; the program does not
  // wake a poll already waiting (BPF_RB_NO_WAKEUP): drain() on a timer.
  int fd() const;
  // Calls `f` for every waiting record.
  void drain(const std::function<void(const Record&)>& f);
  // Records the kernel could not put into the ring buffer (it was full).
  uint64_t lost() const;
  // Records sent (for tests).
  uint64_t sent() const;

 private:
  ExecArgvBpf() = default;
  agentshim_argv_stats stats() const;
  struct RingFree {
    void operator()(ring_buffer* r) const;
  };
  std::unique_ptr<bpfhost::Host> host_;  // first: outlives the ring buffer
  UniqueFd ring_fd_;                     // this supervisor's ring buffer map
  uint32_t ring_index_ = 0;              // its index in the program's `rings`
  std::unique_ptr<ring_buffer, RingFree> ring_;
  int expect_fd_ = -1, stats_fd_ = -1;  // owned by host_
  std::unordered_set<pid_t> expected_;
  const std::function<void(const Record&)>* cb_ = nullptr;
};

}  // namespace agentshim::observer
