#include "attest/eventlog.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>

#include "attest/canonical.h"
#include "common/error.h"
#include "common/log.h"
#include "common/util.h"

namespace agentshim::attest {

std::string event_body(uint64_t seq, const std::string& time, const std::string& type, const json& data) {
  return canonical(json{{"data", data}, {"seq", seq}, {"time", time}, {"type", type}});
}

Digest event_leaf(const std::string& body) {
  return merkle_leaf_hash(std::string(kEventDomain) + body);
}

Digest chain_next(const Digest& prev, const Digest& leaf) {
  Sha256 h;
  h.update(std::string_view(kChainDomain));
  h.update(prev.data(), prev.size());
  h.update(leaf.data(), leaf.size());
  return h.finish();
}

std::string event_line(uint64_t seq, const std::string& time, const std::string& type, const json& data,
                       const Digest& leaf, const Digest& chain) {
  return canonical(json{{"chain", hex(chain)},
                        {"data", data},
                        {"leaf", hex(leaf)},
                        {"seq", seq},
                        {"time", time},
                        {"type", type}});
}

EventLog::EventLog(const std::string& path, std::function<void(const std::string&)> on_failure)
    : path_(path), on_failure_(std::move(on_failure)) {
  fd_.reset(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600));
  if (!fd_) throw_errno("create event log " + path);
  chain_.fill(0);
  thread_ = std::thread([this] { writer_loop(); });
}

EventLog::~EventLog() {
  try {
    close();
  } catch (...) {
  }
}

void EventLog::set_quota(uint64_t max_bytes) {
  std::lock_guard<std::mutex> lk(mu_);
  quota_ = max_bytes;
}

bool EventLog::essential(const std::string& type) {
  return starts_with(type, "run.") || starts_with(type, "fs.") || starts_with(type, "log.");
}

void EventLog::submit(const std::string& type, json data) {
  // A line's size, near enough: the data, the type, and seq/time/leaf/chain.
  const uint64_t size = quota_ ? data.dump().size() + type.size() + 200 : 0;
  std::lock_guard<std::mutex> lk(mu_);
  ++submitted_;
  if (closed_) {
    ++lost_;
    ++unreported_lost_;
    return;
  }
  if (quota_ && accepted_bytes_ + size > quota_ && !essential(type)) {
    drop_locked("event log " + path_ + ": quota of " + std::to_string(quota_) +
                " bytes (policy audit.max_event_log_bytes) reached: later events dropped");
    return;
  }
  // The writer drains the queue every 100 ms, and at once when it grows;
  // past kMaxQueued events (a flood faster than the disk) events are counted
  // as lost and reported by a log.gap, so the recorder's memory stays bounded.
  if (queue_.size() >= kMaxQueued) {
    drop_locked("event log " + path_ + ": " + std::to_string(kMaxQueued) +
                " events waiting for the writer: later events dropped");
    return;
  }
  accepted_bytes_ += size;
  queue_.push_back({type, std::move(data), rfc3339_now()});
  if (queue_.size() == kWakeWriterAt) cv_.notify_all();
}

// A dropped event is counted where it was dropped: consecutive drops share
// one log.gap marker in the queue, so the gap sits between the events written
// before and after it (and the queue grows by at most one entry per run of
// drops).
void EventLog::drop_locked(const std::string& why) {
  ++lost_;
  if (first_error_.empty()) first_error_ = why;
  if (!queue_.empty() && queue_.back().gap) {
    queue_.back().data["lost"] = queue_.back().data["lost"].get<uint64_t>() + 1;
    return;
  }
  queue_.push_back({"log.gap", json{{"lost", 1}, {"reason", why}}, rfc3339_now(), true});
}

void EventLog::inject_write_failures(int n, int err) {
  std::lock_guard<std::mutex> lk(mu_);
  inject_n_ = n;
  inject_err_ = err;
}

void EventLog::writer_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    cv_.wait_for(lk, std::chrono::milliseconds(100));
    flush_locked(lk, false);
  }
}

void EventLog::flush_locked(std::unique_lock<std::mutex>& lk, bool do_fsync) {
  (void)lk;
  if (!fd_) return;
  if (queue_.empty() && !do_fsync) return;
  std::vector<Pending> batch;
  batch.swap(queue_);
  const uint64_t seq0 = next_seq_;
  const Digest chain0 = chain_;
  const MerkleFrontier leaves0 = leaves_;
  std::string buf;
  auto append = [&](const std::string& type, const json& data, const std::string& time) {
    std::string body = event_body(next_seq_, time, type, data);
    Digest leaf = event_leaf(body);
    chain_ = chain_next(chain_, leaf);
    leaves_.add(leaf);
    buf += event_line(next_seq_, time, type, data, leaf, chain_);
    buf.push_back('\n');
    ++next_seq_;
  };
  if (unreported_lost_ > 0 && !batch.empty())
    append("log.gap", json{{"lost", unreported_lost_}, {"reason", first_error_}}, rfc3339_now());
  for (const auto& p : batch) {
    try {
      append(p.type, p.data, p.time);
    } catch (const std::exception& e) {
      // An event whose data cannot be encoded (should not happen: producers
      // pct-encode foreign bytes) is recorded as such, never dropped silently.
      append("log.unencodable", json{{"type", pct_encode(p.type)}, {"error", e.what()}}, p.time);
    }
  }
  int err = 0;
  if (!buf.empty()) {
    if (inject_n_ > 0) {
      --inject_n_;
      err = inject_err_;
    } else {
      std::size_t off = 0;
      while (off < buf.size()) {
        ssize_t n = ::write(fd_.get(), buf.data() + off, buf.size() - off);
        if (n < 0) {
          if (errno == EINTR) continue;
          err = errno;
          break;
        }
        off += static_cast<std::size_t>(n);
      }
    }
  }
  if (!err && do_fsync && ::fdatasync(fd_.get()) < 0) err = errno;
  if (err) {
    // Cut back to the last complete, chained line; the batch is lost.
    if (::ftruncate(fd_.get(), good_size_) < 0) {
      // Nothing more can be done; the verifier will see a broken tail.
    }
    next_seq_ = seq0;
    chain_ = chain0;
    leaves_ = leaves0;
    for (const auto& p : batch) {
      if (p.gap) {
        unreported_lost_ += p.data["lost"].get<uint64_t>();  // counted in lost_ when dropped
      } else {
        ++lost_;
        ++unreported_lost_;
      }
    }
    std::string msg = "event log " + path_ + ": write failed: " + std::strerror(err);
    if (first_error_.empty()) first_error_ = msg;
    if (!failed_once_) {
      failed_once_ = true;
      if (on_failure_) on_failure_(msg);
    }
    return;
  }
  good_size_ += static_cast<off_t>(buf.size());
  for (const auto& p : batch)
    if (!p.gap) ++written_;
  if (!batch.empty()) unreported_lost_ = 0;
}

bool EventLog::sync() {
  std::unique_lock<std::mutex> lk(mu_);
  uint64_t before = lost_;
  flush_locked(lk, true);
  return lost_ == before;
}

EventLog::Summary EventLog::close(bool durable) {
  {
    std::unique_lock<std::mutex> lk(mu_);
    if (!stop_) {
      stop_ = true;
      cv_.notify_all();
    }
  }
  if (thread_.joinable()) thread_.join();
  std::unique_lock<std::mutex> lk(mu_);
  if (!closed_) {
    flush_locked(lk, durable);
    closed_ = true;
  }
  lk.unlock();
  return summary();
}

EventLog::Summary EventLog::summary() {
  std::lock_guard<std::mutex> lk(mu_);
  Summary s;
  s.submitted = submitted_;
  s.written = written_;
  s.lost = lost_;
  s.event_count = next_seq_;
  s.chain_head = chain_;
  s.merkle_root = leaves_.root();
  s.first_error = first_error_;
  return s;
}

namespace {
struct LineResult {
  std::string problem;  // empty: the line is well-formed and its leaf verifies
  uint64_t seq = 0;
  Digest leaf{}, chain{};
  std::string time, type;
  json data;
};

// The fast path: the line's shape is fixed (six members in canonical
// order), so instead of parsing and re-serialising it, scan it once for
// canonical form and take the body's parts as byte spans. Returns false
// when the line is not (or not provably) canonical; check_line then runs the
// slow path, which gives the exact verdict and message.
bool check_line_fast(std::string_view text, LineResult& r,
                     const std::function<bool(const std::string&)>& keep) {
  const char* p = text.data();
  const char* e = p + text.size();
  auto lit = [&](std::string_view l) {
    if (static_cast<std::size_t>(e - p) < l.size() || std::string_view(p, l.size()) != l) return false;
    p += l.size();
    return true;
  };
  auto hex64 = [&](Digest& out) {
    if (e - p < 64) return false;
    for (int i = 0; i < 64; ++i) {
      char c = p[i];
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    }
    try {
      out = from_hex(std::string_view(p, 64));
    } catch (const std::exception&) {
      return false;
    }
    p += 64;
    return true;
  };
  auto plain_string = [&](std::string& out, std::string_view& raw) {
    const char* s0 = p;
    if (!scan_canonical_value(p, e) || *s0 != '"') return false;
    raw = std::string_view(s0, static_cast<std::size_t>(p - s0));
    std::string_view inner = raw.substr(1, raw.size() - 2);
    if (inner.find('\\') != std::string_view::npos) return false;  // escapes: the slow path decodes
    out.assign(inner);
    return true;
  };
  if (!lit("{\"chain\":\"") || !hex64(r.chain) || !lit("\",\"data\":")) return false;
  const char* d0 = p;
  if (!scan_canonical_value(p, e)) return false;
  std::string_view data(d0, static_cast<std::size_t>(p - d0));
  if (!lit(",\"leaf\":\"") || !hex64(r.leaf) || !lit("\",\"seq\":")) return false;
  const char* s0 = p;
  if (p == e || *p < '0' || *p > '9' || !scan_canonical_value(p, e)) return false;
  std::string_view seq(s0, static_cast<std::size_t>(p - s0));
  try {
    std::size_t used = 0;
    r.seq = std::stoull(std::string(seq), &used, 10);
    if (used != seq.size()) return false;
  } catch (const std::exception&) {
    return false;
  }
  std::string_view time_raw, type_raw;
  if (!lit(",\"time\":") || !plain_string(r.time, time_raw)) return false;
  if (!lit(",\"type\":") || !plain_string(r.type, type_raw)) return false;
  if (!lit("}") || p != e) return false;
  std::string body;
  body.reserve(data.size() + seq.size() + time_raw.size() + type_raw.size() + 32);
  body.append("{\"data\":").append(data).append(",\"seq\":").append(seq);
  body.append(",\"time\":").append(time_raw).append(",\"type\":").append(type_raw).append("}");
  if (event_leaf(body) != r.leaf) {
    r.problem = "leaf hash does not match the event's content";
    return true;
  }
  if (!keep || keep(r.type)) {
    try {
      r.data = json::parse(data);
    } catch (const std::exception&) {
      return false;
    }
  }
  return true;
}

void check_line(std::string_view text, LineResult& r, const std::function<bool(const std::string&)>& keep) {
  if (check_line_fast(text, r, keep)) return;
  r = LineResult{};
  json ev;
  try {
    ev = json::parse(text);
  } catch (const std::exception&) {
    r.problem = "not valid JSON";
    return;
  }
  if (!ev.is_object() || ev.size() != 6 || !ev.contains("seq") || !ev["seq"].is_number_unsigned() ||
      !ev.contains("time") || !ev["time"].is_string() || !ev.contains("type") || !ev["type"].is_string() ||
      !ev.contains("data") || !ev.contains("leaf") || !ev["leaf"].is_string() || !ev.contains("chain") ||
      !ev["chain"].is_string()) {
    r.problem = "not an event (needs exactly seq, time, type, data, leaf, chain)";
    return;
  }
  std::string canon;
  try {
    canon = canonical(ev);
  } catch (const std::exception& e) {
    r.problem = e.what();
    return;
  }
  if (canon != text) {
    r.problem = "not in canonical form (bytes were altered)";
    return;
  }
  r.seq = ev["seq"].get<uint64_t>();
  try {
    r.leaf = from_hex(ev["leaf"].get<std::string>());
    r.chain = from_hex(ev["chain"].get<std::string>());
  } catch (const std::exception&) {
    r.problem = "leaf or chain is not a SHA-256 hex digest";
    return;
  }
  r.time = ev["time"];
  r.type = ev["type"];
  if (event_leaf(event_body(r.seq, r.time, r.type, ev["data"])) != r.leaf) {
    r.problem = "leaf hash does not match the event's content";
    return;
  }
  if (!keep || keep(r.type)) r.data = std::move(ev["data"]);
}
}  // namespace

LogCheck check_log(const std::string& path, const std::function<bool(const std::string& type)>& keep) {
  LogCheck c;
  c.chain_head.fill(0);
  c.merkle_root = merkle_root({});
  std::string text;
  try {
    text = read_file(path);
  } catch (const std::exception& e) {
    c.problems.push_back(std::string("events.ndjson: ") + e.what());
    return c;
  }
  // Split into lines; a last line without '\n' is a truncated tail.
  std::vector<std::string_view> lines;
  std::size_t pos = 0;
  bool tail = false;
  while (pos < text.size()) {
    auto nl = text.find('\n', pos);
    if (nl == std::string::npos) {
      tail = true;
      break;
    }
    lines.emplace_back(text.data() + pos, nl - pos);
    pos = nl + 1;
  }
  std::vector<LineResult> res(lines.size());
  unsigned n = std::max(1u, std::thread::hardware_concurrency());
  std::atomic<std::size_t> next{0};
  auto worker = [&] {
    for (;;) {
      std::size_t i = next.fetch_add(256);
      if (i >= lines.size()) return;
      for (std::size_t k = i; k < std::min(lines.size(), i + 256); ++k) check_line(lines[k], res[k], keep);
    }
  };
  std::vector<std::thread> th;
  for (unsigned t = 1; t < n && lines.size() > 1024; ++t) th.emplace_back(worker);
  worker();
  for (auto& t : th) t.join();

  std::vector<Digest> leaves;
  leaves.reserve(lines.size());
  Digest chain{};
  chain.fill(0);
  uint64_t lineno = 0;
  bool broken = false;
  for (auto& r : res) {
    ++lineno;
    std::string where = "events.ndjson line " + std::to_string(lineno);
    if (!r.problem.empty()) {
      c.problems.push_back(where + ": " + r.problem);
      broken = true;
      break;
    }
    if (r.seq != lineno - 1) {
      c.problems.push_back(where + ": seq " + std::to_string(r.seq) + " where " + std::to_string(lineno - 1) +
                           " was expected (events removed, reordered or spliced)");
      broken = true;
      break;
    }
    if (chain_next(chain, r.leaf) != r.chain) {
      c.problems.push_back(where + " (seq " + std::to_string(r.seq) +
                           "): chain hash does not follow from the previous line (spliced or reordered)");
      broken = true;
      break;
    }
    chain = r.chain;
    leaves.push_back(r.leaf);
    c.events.push_back({r.seq, std::move(r.time), std::move(r.type), std::move(r.data), r.leaf, r.chain});
  }
  c.lines = lines.size() + (tail ? 1 : 0);
  if (tail && !broken) {
    c.truncated_tail = true;
    c.problems.push_back("events.ndjson line " + std::to_string(lines.size() + 1) +
                         ": truncated (no newline; the writer stopped mid-line)");
  }
  c.chain_head = chain;
  c.merkle_root = merkle_root(leaves);
  c.finalized = !c.events.empty() && c.events.back().type == "run.finalized";
  return c;
}

std::vector<std::string> check_run_events(const std::vector<LoggedEvent>& events) {
  std::vector<std::string> out;
  auto at = [&](std::size_t i) {
    return "seq " + std::to_string(events[i].seq) + " (" + events[i].type + ")";
  };
  if (events.empty() || events.front().type != "run.created")
    out.push_back("run.created is not the first event");
  std::optional<std::size_t> started, exit, finalized, before, after, changes, first_exec;
  int n_started = 0, n_exit = 0, n_finalized = 0, n_before = 0, n_after = 0;
  for (std::size_t i = 0; i < events.size(); ++i) {
    const auto& t = events[i].type;
    if (t == "run.started") {
      n_started++;
      if (!started) started = i;
    } else if (t == "run.exit") {
      n_exit++;
      if (!exit) exit = i;
    } else if (t == "run.finalized") {
      n_finalized++;
      if (!finalized) finalized = i;
    } else if (t == "process.exec" || t == "process.exec_failed" || t == "caller.exec") {
      if (!first_exec) first_exec = i;
    } else if (t == "fs.root") {
      std::string phase = events[i].data.is_object() ? events[i].data.value("phase", "") : "";
      if (phase == "before") {
        n_before++;
        if (!before) before = i;
      } else if (phase == "after") {
        n_after++;
        if (!after) after = i;
      }
    } else if (t == "fs.changes" && !changes) {
      changes = i;
    }
  }
  if (n_finalized != 1 || events.empty() || events.back().type != "run.finalized")
    out.push_back("run.finalized is not the last event, once (" + std::to_string(n_finalized) + " of them)");
  if (n_exit != 1)
    out.push_back("run.exit appears " + std::to_string(n_exit) + " times (once in a complete run)");
  if (exit && finalized && *exit > *finalized) out.push_back("run.exit comes after run.finalized");
  if (n_started > 1) out.push_back("run.started appears " + std::to_string(n_started) + " times");
  if (first_exec && !started) out.push_back(at(*first_exec) + " in a run without run.started");
  if (first_exec && started && *first_exec < *started)
    out.push_back(at(*first_exec) + " comes before run.started (" + at(*started) + ")");
  if (n_before > 1 || n_after > 1) out.push_back("fs.root: more than one before or after");
  if (before && after && *after < *before) out.push_back("fs.root after comes before fs.root before");
  if (changes && (!after || *changes < *after)) out.push_back("fs.changes comes before fs.root after");
  return out;
}

}  // namespace agentshim::attest
