// The run's event log: events.ndjson, written only by the supervisor.
//
// Each line is the canonical JSON of {seq, time, type, data, leaf, chain}:
//   body    = canonical({"data","seq","time","type"})
//   leaf    = SHA-256(0x00 || "agentshim-event-v1\n" || body)    (RFC 6962 leaf)
//   chain_i = SHA-256("agentshim-chain-v1\n" || chain_{i-1} || leaf_i), chain_{-1} = 32 zero bytes
// The Merkle root is RFC 6962's tree hash over the leaves in seq order.
//
// Writing is batched: submit() queues, a writer thread appends a batch at
// most every 100 ms, sync() forces a flush + fsync (lifecycle boundaries).
// If a write fails (disk full, I/O error) the file is cut back to the last
// complete line, the batch is counted as lost, on_failure is told once, and
// when writing works again a "log.gap" event records how many were lost, so
// submitted == written + lost always holds and the loss is on the record.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "attest/hash.h"
#include "common/fd.h"

namespace agentshim::attest {

using json = nlohmann::json;

inline constexpr const char* kEventDomain = "agentshim-event-v1\n";
inline constexpr const char* kChainDomain = "agentshim-chain-v1\n";

std::string event_body(uint64_t seq, const std::string& time, const std::string& type, const json& data);
Digest event_leaf(const std::string& body);
Digest chain_next(const Digest& prev, const Digest& leaf);
// The full line (without the trailing newline).
std::string event_line(uint64_t seq, const std::string& time, const std::string& type, const json& data,
                       const Digest& leaf, const Digest& chain);

class EventLog {
 public:
  struct Summary {
    uint64_t submitted = 0, written = 0, lost = 0;
    uint64_t event_count = 0;  // lines in the file (written + gap markers)
    Digest chain_head{}, merkle_root{};
    std::string first_error;
  };

  // Creates (O_EXCL) the file. on_failure is called from the writer thread.
  EventLog(const std::string& path, std::function<void(const std::string&)> on_failure);
  ~EventLog();
  EventLog(const EventLog&) = delete;
  EventLog& operator=(const EventLog&) = delete;

  void submit(const std::string& type, json data);
  // At most about `max_bytes` of events the container can cause in numbers
  // (everything but run.*, fs.* and log.*, which a complete run needs and
  // which are few): beyond it they are counted as lost, with the reason,
  // and reported by a log.gap like any other loss. 0 = no quota.
  void set_quota(uint64_t max_bytes);
  static bool essential(const std::string& type);
  // Write everything queued and fsync; returns false if anything was lost.
  bool sync();
  // Final flush; no submit() after this. durable=false: written, not
  // synced (the caller syncs the file with others, DurableFiles).
  Summary close(bool durable = true);
  Summary summary();
  int fd() const { return fd_.get(); }
  // Test hook: make the next `n` writes fail with `err` (ENOSPC, EIO).
  void inject_write_failures(int n, int err);

 private:
  struct Pending {
    std::string type;
    json data;
    std::string time;
    bool gap = false;  // a log.gap marker for events dropped at this point (data.lost counts them)
  };
  void drop_locked(const std::string& why);
  static constexpr std::size_t kWakeWriterAt = 1024, kMaxQueued = 65536;
  void writer_loop();
  void flush_locked(std::unique_lock<std::mutex>& lk, bool do_fsync);

  std::string path_;
  UniqueFd fd_;
  std::function<void(const std::string&)> on_failure_;
  std::mutex mu_;
  std::mutex write_mu_;
  std::condition_variable cv_;
  std::vector<Pending> queue_;
  bool stop_ = false, closed_ = false, failed_once_ = false;
  uint64_t next_seq_ = 0, submitted_ = 0, written_ = 0, lost_ = 0, unreported_lost_ = 0;
  std::atomic<uint64_t> quota_{0};
  uint64_t accepted_bytes_ = 0;
  off_t good_size_ = 0;
  Digest chain_{};
  MerkleFrontier leaves_;  // O(log n): the recorder does not keep every leaf
  std::string first_error_;
  int inject_n_ = 0, inject_err_ = 0;
  std::thread thread_;
};

// ---- reading and checking ----
struct LoggedEvent {
  uint64_t seq;
  std::string time, type;
  json data;
  Digest leaf, chain;
};

// The mandatory events of a complete run and their order (FORMATS.md,
// "Mandatory events"): run.created first; run.finalized last and once;
// run.exit once, before it; run.started at most once and before every
// process.exec, process.exec_failed and caller.exec (a run with any of
// those was started); fs.root "before" and "after" at most once each, in
// that order, fs.changes after the "after". One problem string per rule
// broken (empty: the events are in order). `events` need only their types
// and, for fs.root, their data.
std::vector<std::string> check_run_events(const std::vector<struct LoggedEvent>& events);

struct LogCheck {
  std::vector<std::string> problems;  // empty = intact
  std::vector<LoggedEvent> events;    // the lines that verified, in order
  uint64_t lines = 0;
  bool truncated_tail = false;  // last line had no newline (a writer stopped mid-write)
  Digest chain_head{}, merkle_root{};
  bool finalized = false;  // last verified event is run.finalized
};

// Check every line: canonical form, seq, leaf, chain. Stops at the first
// broken line (everything after it cannot be trusted) and says which.
// Lines are parsed and hashed on all cores; the chain is then checked in
// order. `keep_data(type)` decides which events keep their data in the
// result (all when empty) — a million-event log need not stay in memory.
LogCheck check_log(const std::string& path,
                   const std::function<bool(const std::string& type)>& keep_data = nullptr);

}  // namespace agentshim::attest
