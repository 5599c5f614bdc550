#include "attest/record.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>

#include "attest/bundle.h"
#include "attest/canonical.h"
#include "attest/hash.h"
#include "attest/ledger.h"
#include "attest/runstore.h"
#include "attest/tsa.h"
#include "common/error.h"
#include "common/log.h"
#include "common/util.h"

namespace agentshim::attest {

std::string new_run_id() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm {};
  ::gmtime_r(&ts.tv_sec, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  unsigned char rnd[6];
  if (::getrandom(rnd, sizeof rnd, 0) != static_cast<ssize_t>(sizeof rnd)) throw_errno("getrandom");
  return std::string(buf) + "-" + to_hex(rnd, sizeof rnd);
}

json kubernetes_identity(const json& annotations) {
  static const std::pair<const char*, const char*> kKeys[] = {
      {"io.kubernetes.cri.sandbox-namespace", "namespace"},
      {"io.kubernetes.cri.sandbox-name", "pod_name"},
      {"io.kubernetes.cri.sandbox-uid", "pod_uid"},
      {"io.kubernetes.cri.sandbox-id", "sandbox_id"},
      {"io.kubernetes.cri.container-name", "container_name"},
      {"io.kubernetes.cri.container-type", "container_type"}};
  if (!annotations.is_object()) return nullptr;
  json out = json::object();
  for (const auto& [annotation, member] : kKeys) {
    auto it = annotations.find(annotation);
    if (it == annotations.end() || !it->is_string()) continue;
    const std::string& v = it->get_ref<const std::string&>();
    if (v.empty() || v.size() > 253 ||
        !std::all_of(v.begin(), v.end(), [](unsigned char c) { return c >= 0x20 && c < 0x7f; }))
      continue;
    out[member] = v;
  }
  if (out.empty()) return nullptr;
  return out;
}

std::string hash_cache_path(const std::string& audit_dir) {
  return audit_dir + "/cache/fs-hash.lmdb";
}

RunRecord::RunRecord(RecordConfig c) : c_(std::move(c)) {
  // A signing key that is missing, unreadable or not of the key type asked
  // for is an error now, before the run, not a lost record at its end; so
  // is a host key that cannot be made (it is made by the first run's
  // create, not at its end: concurrent first runs meet at ensure_host_key's
  // lock, never at finalization).
  // The path is resolved once: finalize() signs with the key checked here.
  if (c_.key_path.empty()) {
    bool created = false;
    c_.key_path = ensure_host_key(c_.audit_dir, c_.key_type, &created);
    if (created)
      log::info("created the host signing key " + c_.key_path + " (public key: " + c_.key_path + ".pub)");
  }
  (void)load_signing_key(c_.key_path, c_.key_type);
  const RunStore store(c_.audit_dir);
  mkdir_p(store.runs_dir(), 0700);
  ::chmod(c_.audit_dir.c_str(), 0700);
  dir_ = store.run_dir(c_.run_id);
  if (::mkdir(dir_.c_str(), 0700) < 0) throw_errno("create run directory " + dir_);
  lock_.reset(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!lock_ || ::flock(lock_.get(), LOCK_EX | LOCK_NB) < 0) throw_errno("lock run directory " + dir_);
  log_ = std::make_unique<EventLog>(dir_ + "/events.ndjson", c_.on_log_failure);
  log_->set_quota(c_.max_event_log_bytes);
  if (c_.hash_cache) cache_ = std::make_shared<HashCache>(hash_cache_path(c_.audit_dir));
}

RunRecord::~RunRecord() {
  if (before_thread_.joinable()) before_thread_.join();
}

void RunRecord::event(const std::string& type, json data) {
  log_->submit(type, std::move(data));
}
bool RunRecord::sync() {
  return log_->sync();
}
void RunRecord::incomplete(const std::string& reason) {
  incomplete_.push_back(reason);
}

namespace {
WalkOptions walk_options(const RecordConfig& c, const TrackedTree& t, std::shared_ptr<HashCache> cache) {
  WalkOptions o;
  // The tree store is kept per host path: a mount the container made
  // (tmpfs) has none, and is new every run.
  if (c.hash_cache && !t.host_path.empty()) {
    o.cache_path = hash_cache_path(c.audit_dir);
    o.tree_key = "tree:" + t.host_path;  // the stat-only check against this path's last walk
  }
  // A tree read only through the container (a tmpfs, say) lives on an
  // anonymous device whose number a later run's tmpfs may get again: its
  // hashes stay in this walk's memory, never in the per-host cache.
  o.cache = t.host_path.empty() ? std::make_shared<HashCache>("") : std::move(cache);
  o.exclude = t.exclude;
  o.max_file_bytes = c.max_file_bytes;
  return o;
}

json tree_json(const TrackedTree& t, const FsSnapshot& s, const std::vector<LayerUse>& layers = {}) {
  json j{{"name", t.name},
         {"path", pct_encode(t.host_path)},
         {"root", hex(s.root)},
         {"entries", entry_count(s)},
         {"files", s.files},
         {"bytes_hashed", s.bytes_hashed},
         {"cache_hits", s.cache_hits},
         {"reused", s.reused},
         {"not_hashed", not_hashed_count(s)}};
  if (!t.fstype.empty()) j["fstype"] = t.fstype;
  if (!layers.empty()) {
    // "stack": the root and counts of a layer stack stored by an earlier
    // run, no entry read; "merge": the layers' entries merged now.
    j["assembled"] = s.deferred ? "stack" : "merge";
    json arr = json::array();
    for (const auto& l : layers) {
      json x{{"path", pct_encode(l.path)}, {"role", l.role}, {"walk", l.walk}, {"entries", l.entries}};
      if (!l.identity.empty()) x["identity"] = l.identity;
      arr.push_back(x);
    }
    j["layers"] = arr;
  }
  return j;
}
}  // namespace

namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
std::string ms_text(double ms) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", ms);
  return b;
}
}  // namespace

void RunRecord::walk_before(std::size_t i) {
  auto t0 = std::chrono::steady_clock::now();
  before_[i] = snapshot_root(trees_[i].read_path(), walk_options(c_, trees_[i], cache_), &before_layers_[i],
                             trees_[i].host_path);
  const FsSnapshot& s = before_[i];
  log::debug("record phase " +
             std::string(trees_[i].unchanged_reason.empty() ? "before-walk" : "before-walk-concurrent") +
             " " + ms_text(ms_since(t0)) + " ms (" + trees_[i].name + ": " + std::to_string(entry_count(s)) +
             " entries, " + std::to_string(s.bytes_hashed) + " bytes hashed, " +
             std::to_string(s.cache_hits) + " cache hits, " + std::to_string(s.reused) + " reused)");
}

void RunRecord::before_done() {
  json arr = json::array();
  for (std::size_t i = 0; i < trees_.size(); ++i) {
    if (!before_errors_[i].empty()) {
      arr.push_back(json{{"name", trees_[i].name},
                         {"path", pct_encode(trees_[i].host_path)},
                         {"walk", "failed"},
                         {"error", before_errors_[i]}});
      continue;
    }
    json t = tree_json(trees_[i], before_[i], before_layers_[i]);
    if (!trees_[i].unchanged_reason.empty()) t["walk"] = "concurrent";
    arr.push_back(t);
  }
  // (The walks' store writes go on meanwhile; the after walk and
  // snapshot_after's save wait for them.)
  event("fs.root", json{{"phase", "before"}, {"trees", arr}, {"max_file_bytes", c_.max_file_bytes}});
}

void RunRecord::snapshot_before(const std::vector<TrackedTree>& trees) {
  trees_ = trees;
  before_.assign(trees_.size(), FsSnapshot{});
  before_errors_.assign(trees_.size(), "");
  before_layers_.assign(trees_.size(), {});
  if (!trees_.empty()) mkdir_p(c_.audit_dir + "/cache", 0700);
  // One cache for the run (loaded once): both walks and the exec observer.
  if (cache_ && !cache_loaded_) {
    auto t0 = std::chrono::steady_clock::now();
    cache_->load();
    cache_loaded_ = true;
    ::unlink((c_.audit_dir + "/cache/fs-hash-cache").c_str());  // the file format before the store
    log::debug("record phase cache-load " + ms_text(ms_since(t0)) + " ms");
  }
  // What the container can change is walked now, before it starts.
  std::vector<std::size_t> later;
  for (std::size_t i = 0; i < trees_.size(); ++i) {
    if (trees_[i].unchanged_reason.empty())
      walk_before(i);
    else
      later.push_back(i);
  }
  if (later.empty()) {
    before_done();
    return;
  }
  // What it cannot change, while it runs: the same root whenever it is taken
  // (before finalization).
  before_thread_ = std::thread([this, later] {
    try {
      // One tree that cannot be walked (a client unmounted it, say) is
      // recorded as such; the others and the record go on.
      for (std::size_t i : later) try {
          walk_before(i);
        } catch (const std::exception& e) {
          before_errors_[i] = e.what();
          log::error("run " + c_.run_id + ": the pre-run root of tree " + trees_[i].name + " (" +
                     trees_[i].host_path + ") could not be taken: " + e.what());
        }
      before_done();
    } catch (...) {
      before_error_ = std::current_exception();
    }
  });
}

void RunRecord::wait_before() {
  if (before_thread_.joinable()) before_thread_.join();
  if (before_error_) {
    auto e = before_error_;
    before_error_ = nullptr;
    std::rethrow_exception(e);
  }
}

std::string RunRecord::reread_reason(std::size_t i) const {
  if (!trees_[i].reread_all.empty()) return trees_[i].reread_all;
  if (!writes_.lost.empty()) return writes_.lost;
  return "";
}

void RunRecord::walk_after() {
  if (after_walked_) return;
  after_walked_ = true;
  // The concurrent before walk of a tree the container cannot change ends
  // here too, before the exit is reported: a client removes the container's
  // storage right after (podman --rm deletes the upper layer's files), and a
  // walk still running then would record a tree that never existed.
  if (before_thread_.joinable()) before_thread_.join();
  auto t0 = std::chrono::steady_clock::now();
  after_.assign(trees_.size(), FsSnapshot{});
  after_errors_.assign(trees_.size(), "");
  after_layers_.assign(trees_.size(), {});
  for (std::size_t i = 0; i < trees_.size(); ++i) {
    if (!trees_[i].unchanged_reason.empty()) continue;
    try {
      WalkOptions o = walk_options(c_, trees_[i], cache_);
      if (!reread_reason(i).empty()) {
        o.reread = [](uint64_t, uint64_t) { return true; };
        o.reread_dev = [](uint64_t) { return true; };
      } else {
        o.reread = writes_.dirty;
        o.reread_dev = writes_.dirty_dev;
      }
      after_[i] = snapshot_root(trees_[i].read_path(), o, &after_layers_[i], trees_[i].host_path);
    } catch (const std::exception& e) {
      after_errors_[i] = e.what();
      log::error("run " + c_.run_id + ": the post-run root of tree " + trees_[i].name + " (" +
                 trees_[i].host_path + ") could not be taken: " + e.what());
    }
  }
  log::debug("record phase after-walk " + ms_text(ms_since(t0)) + " ms");
}

void RunRecord::snapshot_after() {
  walk_after();
  wait_before();
  json arr = json::array();
  std::string changes;
  uint64_t added = 0, modified = 0, removed = 0, unverified = 0;
  for (std::size_t i = 0; i < trees_.size(); ++i) {
    if (!before_errors_[i].empty()) {
      // No pre-run root (its concurrent walk failed): no after root either.
      arr.push_back(json{{"name", trees_[i].name},
                         {"path", pct_encode(trees_[i].host_path)},
                         {"walk", "failed"},
                         {"error", "no pre-run root: " + before_errors_[i]}});
      incomplete_.push_back("pre-run root of tree " + trees_[i].name + ": " + before_errors_[i]);
      continue;
    }
    if (!trees_[i].unchanged_reason.empty()) {
      // The container could not change it: its after root is its before
      // root, and its change set is empty.
      after_[i] = before_[i];
      json t = tree_json(trees_[i], after_[i]);
      t["bytes_hashed"] = 0;
      t["cache_hits"] = 0;
      t["reused"] = 0;
      t["walk"] = "skipped";
      t["reason"] = trees_[i].unchanged_reason;
      arr.push_back(t);
      continue;
    }
    if (!after_errors_[i].empty()) {
      // No root, no changes: said in the event and in the run's reasons.
      arr.push_back(json{{"name", trees_[i].name},
                         {"path", pct_encode(trees_[i].host_path)},
                         {"walk", "failed"},
                         {"error", after_errors_[i]}});
      incomplete_.push_back("post-run root of tree " + trees_[i].name + ": " + after_errors_[i]);
      continue;
    }
    json tj = tree_json(trees_[i], after_[i], after_layers_[i]);
    const std::string all = reread_reason(i);
    json w{{"watch", trees_[i].watch.empty() ? "none" : trees_[i].watch}, {"reread", after_[i].reread}};
    if (!all.empty()) w["reread_all"] = all;
    if (!trees_[i].watch.empty() && !writes_.lost.empty()) w["events_lost"] = writes_.lost;
    if (trees_[i].watch == "mount+entries" && writes_.entries_lost)
      w["entries_lost"] = "the entry event queue overflowed";
    tj["writes"] = w;
    arr.push_back(tj);
    // A root assembled from a known layer stack has no entries read: the
    // change set and the unverified files need them only when the root
    // moved or has files without a content hash.
    if (before_[i].root != after_[i].root || not_hashed_count(after_[i]) > 0) {
      try {
        materialize(before_[i]);
        materialize(after_[i]);
      } catch (const std::exception& e) {
        arr.back() = json{{"name", trees_[i].name},
                          {"path", pct_encode(trees_[i].host_path)},
                          {"walk", "failed"},
                          {"error", e.what()}};
        after_errors_[i] = e.what();  // (no after root in the statement either)
        incomplete_.push_back("change set of tree " + trees_[i].name + ": " + e.what());
        continue;
      }
    }
    std::vector<std::pair<std::string, json>> lines;  // raw path, line
    for (const auto& ch : diff(before_[i], after_[i])) {
      json j = change_to_json(ch);
      j["tree"] = trees_[i].name;
      lines.emplace_back(ch.path, std::move(j));
      if (ch.kind == "added") ++added;
      if (ch.kind == "modified") ++modified;
      if (ch.kind == "removed") ++removed;
    }
    // A file over max_file_bytes that was written during the run (or may
    // have been: the write account was lost) but whose leaf did not change:
    // whether its content changed is not known, and the record says so.
    std::size_t bi = 0;
    for (const auto& e : after_[i].entries) {
      if (e.type != 'f' || e.error.find("not hashed: larger than") == std::string::npos) continue;
      while (bi < before_[i].entries.size() && before_[i].entries[bi].path < e.path) ++bi;
      if (bi >= before_[i].entries.size() || before_[i].entries[bi].path != e.path ||
          before_[i].entries[bi].leaf != e.leaf)
        continue;  // added or modified: already a line
      // (With the account lost or no watch, the written set says nothing.)
      const bool written = all.empty() && writes_.dirty && writes_.dirty(e.id.dev, e.id.ino);
      if (!written && all.empty()) continue;
      json j{{"path", pct_encode(e.path)},
             {"change", "unverified"},
             {"old", hex(e.leaf)},
             {"new", hex(e.leaf)},
             {"tree", trees_[i].name},
             {"reason",
              (written ? std::string("written during the run") : "may have been written (" + all + ")") +
                  "; content not hashed: larger than " + std::to_string(c_.max_file_bytes) + " bytes"}};
      lines.emplace_back(e.path, std::move(j));
      ++unverified;
    }
    std::stable_sort(lines.begin(), lines.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const auto& [path, j] : lines) changes += canonical(j) + "\n";
  }
  auto t0 = std::chrono::steady_clock::now();
  save_cache();
  log::debug("record phase cache-save " + ms_text(ms_since(t0)) + " ms");
  write_file_atomic(dir_ + "/changes.ndjson", changes, 0600, false);  // made durable at finalize()
  changes_sha256_ = hex(sha256(changes));
  change_counts_ = json{{"added", added}, {"modified", modified}, {"removed", removed}};
  event("fs.root", json{{"phase", "after"}, {"trees", arr}, {"max_file_bytes", c_.max_file_bytes}});
  event("fs.changes", json{{"added", added},
                           {"modified", modified},
                           {"removed", removed},
                           {"unverified", unverified},
                           {"changes_sha256", changes_sha256_}});
  after_settled_ = true;
}

void RunRecord::save_cache() {
  if (!cache_) return;
  try {
    cache_->save();
  } catch (const std::exception& e) {
    log::warn(std::string("hash cache: ") + e.what());
  }
}

json RunRecord::fs_counts() const {
  json trees = json::array();
  for (std::size_t i = 0; i < trees_.size(); ++i) {
    json t = {{"name", trees_[i].name}, {"path", pct_encode(trees_[i].host_path)}};
    const bool before_ok = i < before_.size() && before_errors_[i].empty();
    if (before_ok) t["before"] = hex(before_[i].root);
    if (before_ok && after_settled_ && after_errors_[i].empty()) t["after"] = hex(after_[i].root);
    trees.push_back(t);
  }
  // (changes.ndjson's SHA-256 is a subject of the statement.)
  return json{{"trees", trees}, {"changes", change_counts_}};
}

json RunRecord::finalize(const json& facts) {
  if (finalized_) throw Error("run record " + c_.run_id + " is already finalized");
  finalized_ = true;
  try {
    wait_before();  // (snapshot_after waited, unless it was never called)
  } catch (const std::exception& e) {
    incomplete_.push_back(std::string("pre-run filesystem roots: ") + e.what());
  }
  if (!trees_.empty() && !after_settled_) incomplete_.push_back("no post-run filesystem roots");
  event("run.finalized", json{{"incomplete", incomplete_}});
  // The record's files are made durable together, before the ledger row
  // that names them (one or two journal commits, not one per file).
  DurableFiles files;
  EventLog::Summary sum = log_->close(false);
  files.sync(dir_ + "/events.ndjson");
  if (sum.lost > 0)
    incomplete_.push_back(std::to_string(sum.lost) + " events could not be written (" + sum.first_error +
                          ")");
  bool complete = incomplete_.empty();
  // Every run directory has the same files: a run that never got to its
  // post-run walk has an empty change set.
  if (changes_sha256_.empty()) {
    files.write(dir_ + "/changes.ndjson", "", 0600);
    changes_sha256_ = hex(sha256(""));
  } else {
    files.sync(dir_ + "/changes.ndjson");  // written by snapshot_after()
  }

  json session = {{"run_id", c_.run_id},
                  {"container_id", c_.container_id},
                  {"hash_algorithm", "sha256"},
                  {"event_count", sum.event_count},
                  {"events_submitted", sum.submitted},
                  {"events_written", sum.written},
                  {"events_lost", sum.lost},
                  {"chain_head", hex(sum.chain_head)},
                  {"merkle_root", hex(sum.merkle_root)},
                  {"complete", complete},
                  {"incomplete_reasons", incomplete_},
                  {"finished", rfc3339_now()},
                  {"files",
                   {{"events", "events.ndjson"},
                    {"changes", "changes.ndjson"},
                    {"attestation", kEnvelopeFile},
                    {"bundle", kBundleFile}}}};
  if (c_.kubernetes.is_object()) session["kubernetes"] = c_.kubernetes;
  std::string session_text = canonical(session) + "\n";
  files.write(dir_ + "/session.json", session_text, 0600);
  // The statement's subjects: the plain SHA-256 of each record file's bytes
  // (the log is closed: its file is final).
  auto events_digest = sha256_file(dir_ + "/events.ndjson");
  if (!events_digest) throw Error("run record " + dir_ + ": events.ndjson is gone");
  json subjects =
      json::array({json{{"name", "events.ndjson"}, {"digest", {{"sha256", hex(*events_digest)}}}},
                   json{{"name", "changes.ndjson"}, {"digest", {{"sha256", changes_sha256_}}}},
                   json{{"name", "session.json"}, {"digest", {{"sha256", hex(sha256(session_text))}}}}});

  json row;
  try {
    PrivateKey key = load_signing_key(c_.key_path, c_.key_type);  // (resolved by the constructor)

    row = ledger_append(c_.audit_dir, [&](uint64_t index, const std::string& prev) {
      json pred = facts.is_object() ? facts : json::object();
      pred["run_id"] = c_.run_id;
      pred["container_id"] = c_.container_id;
      if (c_.kubernetes.is_object()) pred["kubernetes"] = c_.kubernetes;
      pred["filesystem"] = fs_counts();
      pred["event_log"] = {{"hash_algorithm", "sha256"},
                           {"event_count", sum.event_count},
                           {"merkle_root", hex(sum.merkle_root)},
                           {"chain_head", hex(sum.chain_head)},
                           {"submitted", sum.submitted},
                           {"written", sum.written},
                           {"lost", sum.lost}};
      pred["complete"] = complete;
      pred["incomplete_reasons"] = incomplete_;
      pred["ledger"] = {{"index", index}, {"prev", prev}};
      pred["signer"] = {
          {"keyid", key.keyid()}, {"algorithm", key.algorithm()}, {"public_key", key.public_pem()}};
      json statement = {{"_type", kStatementType},
                        {"subject", subjects},
                        {"predicateType", kPredicateType},
                        {"predicate", pred}};
      std::string payload = canonical(statement);
      auto t_sign = std::chrono::steady_clock::now();
      json env = dsse_sign(kPayloadType, payload, key);
      log::debug("record phase sign " + ms_text(ms_since(t_sign)) + " ms");
      std::string env_text = env.dump(2) + "\n";
      // An RFC 3161 time-stamp over the signature, when a TSA is configured.
      // Without one the record is still whole: the bundle then has no
      // time-stamp, which a verifier that requires one reports.
      std::vector<std::string> stamps;
      if (!c_.tsa_url.empty()) {
        try {
          stamps.push_back(
              rfc3161_timestamp(c_.tsa_url, base64_decode(env["signatures"][0]["sig"].get<std::string>())));
        } catch (const std::exception& e) {
          log::warn("run " + c_.run_id + ": no RFC 3161 time-stamp: " + e.what());
        }
      }
      std::string bundle = bundle_text(sigstore_bundle(env, key.keyid(), stamps));
      files.write(dir_ + "/" + kEnvelopeFile, env_text, 0600);
      files.write(dir_ + "/" + kBundleFile, bundle, 0600);
      files.commit();
      return json{{"run_id", c_.run_id},
                  {"container_id", c_.container_id},
                  {"attestation_sha256", hex(sha256(env_text))},
                  {"bundle_sha256", hex(sha256(bundle))},
                  {"merkle_root", hex(sum.merkle_root)},
                  {"chain_head", hex(sum.chain_head)},
                  {"event_count", sum.event_count},
                  {"keyid", key.keyid()}};
    });
  } catch (...) {
    // No signature or no ledger row (the key, the ledger): the record's
    // files are still written out, and the run says why it stops here.
    try {
      files.commit();
    } catch (const std::exception& e) {
      log::warn("run " + c_.run_id + ": writing the record's files: " + e.what());
    }
    throw;
  }
  lock_.reset();  // final: readers waiting in wait_finalized() go on
  return row;
}

bool wait_finalized(const std::string& run_dir, int timeout_ms) {
  UniqueFd d(::open(run_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d) return true;  // nothing to wait for; the reader reports what is missing
  // Every millisecond at first (`agentshim run` returns as soon as its
  // record is final), every 10 ms after half a second.
  for (int waited_us = 0;;) {
    if (::flock(d.get(), LOCK_SH | LOCK_NB) == 0) return true;
    if (errno != EWOULDBLOCK && errno != EINTR) return true;
    if (waited_us >= timeout_ms * 1000) return false;
    const int step = waited_us < 500000 ? 1000 : 10000;
    ::usleep(step);
    waited_us += step;
  }
}

// ---------------------------------------------------------------- verify

namespace {
std::optional<std::string> slurp(const std::string& p) {
  return try_read_file(p);
}
}  // namespace

namespace {
// v2: each subject is a file of the run directory, its digest the plain
// SHA-256 of the file's bytes; events.ndjson, changes.ndjson and
// session.json must be among them.
void check_file_subjects(const std::string& rd, const json& subjects,
                         const std::function<void(const std::string&)>& miss) {
  std::vector<std::string> need = {"events.ndjson", "changes.ndjson", "session.json"};
  for (const auto& s : subjects) {
    std::string name = s.value("name", "");
    std::string want = s.at("digest").value("sha256", "");
    std::erase(need, name);
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
      miss("subject \"" + name + "\": not a file of the run directory");
      continue;
    }
    std::optional<Digest> d;
    try {
      d = sha256_file(rd + "/" + name);
    } catch (const std::exception& e) {
      miss("subject " + name + ": " + e.what());
      continue;
    }
    if (!d)
      miss(name + " is missing");
    else if (hex(*d) != want)
      miss(name + ": its SHA-256 is not the subject digest the attestation signs (file altered)");
  }
  for (const auto& n : need) miss("statement: no subject for " + n);
}
}  // namespace

VerifyResult verify_run(const std::string& rd, const VerifyOptions& o) {
  VerifyResult r;
  auto miss = [&](const std::string& m) { r.mismatches.push_back(m); };
  std::string audit = o.audit_dir.empty() ? parent_dir(parent_dir(rd)) : o.audit_dir;
  uint64_t fs_max_file_bytes = 0;  // what the run's walks used (fs.root events); 0 in records that predate it

  // 1. The event log on its own.
  LogCheck lc = check_log(rd + "/events.ndjson", [](const std::string& type) { return type == "fs.root"; });
  for (const auto& p : lc.problems) miss(p);
  r.report["events_verified"] = lc.events.size();
  r.report["merkle_root"] = hex(lc.merkle_root);
  r.report["chain_head"] = hex(lc.chain_head);

  // 2. The session summary.
  auto session_text = slurp(rd + "/session.json");
  json session;
  if (!session_text) {
    if (!lc.finalized) {
      std::string last = lc.events.empty() ? "no event"
                                           : "seq " + std::to_string(lc.events.back().seq) + " (" +
                                                 lc.events.back().type + ", " + lc.events.back().time + ")";
      miss("incomplete run: the supervisor stopped before finalizing; the event log verifies up to " + last);
    } else {
      miss(
          "incomplete run: events.ndjson ends with run.finalized but session.json is missing (finalization "
          "did "
          "not complete: disk full or I/O error while writing the record?)");
    }
    r.report["complete"] = false;
    return r;
  }
  try {
    session = json::parse(*session_text);
  } catch (const std::exception&) {
    miss("session.json is not valid JSON");
  }
  if (session.is_object()) {
    if (session.value("event_count", uint64_t(0)) != lc.events.size() || lc.events.size() != lc.lines)
      miss("event count: session.json says " + std::to_string(session.value("event_count", uint64_t(0))) +
           ", events.ndjson has " + std::to_string(lc.lines) + " lines of which " +
           std::to_string(lc.events.size()) + " verify (log truncated or extended)");
    if (session.value("merkle_root", "") != hex(lc.merkle_root))
      miss("merkle root: session.json does not match the recomputed root of events.ndjson");
    if (session.value("chain_head", "") != hex(lc.chain_head))
      miss("chain head: session.json does not match events.ndjson");
    if (!session.value("complete", false)) {
      std::string reasons;
      if (session.contains("incomplete_reasons"))
        for (const auto& x : session["incomplete_reasons"])
          reasons += (reasons.empty() ? "" : "; ") + x.get<std::string>();
      miss("incomplete run: " + reasons);
    }
  }
  if (!lc.finalized && lc.problems.empty()) miss("events.ndjson does not end with run.finalized");
  // A complete run has its mandatory events, in order (FORMATS.md).
  if (lc.problems.empty() && session.is_object() && session.value("complete", false))
    for (const auto& p : check_run_events(lc.events)) miss("complete run: " + p);

  // 3. The attestation: envelope, signature, statement.
  auto env_text = slurp(rd + "/" + kEnvelopeFile);
  json statement, env;
  std::string signer_keyid;
  if (!env_text) {
    miss("attestation.intoto.json is missing");
  } else {
    try {
      env = json::parse(*env_text);
      if (env.value("payloadType", "") != kPayloadType)
        throw Error("payloadType is not " + std::string(kPayloadType));
      std::string payload = base64_decode(env.at("payload").get<std::string>());
      statement = json::parse(payload);
      const json& pred = statement.at("predicate");
      std::string embedded = pred.at("signer").at("public_key");
      std::string pem;
      std::string source;
      if (!o.public_key_path.empty()) {
        pem = read_file_limited(o.public_key_path, 64 * 1024);
        source = "pinned key " + o.public_key_path;
      } else if (auto host = try_read_file(host_public_key_path(audit))) {
        pem = *host;
        source = "host key " + host_public_key_path(audit);
      } else {
        pem = embedded;
        source = "the key embedded in the record";
        r.notes.push_back(
            "no --public-key and no host key: the signature was checked against the key embedded in "
            "the record; pin it with --public-key to rule out a re-signed record");
      }
      std::string kid = keyid_of(pem);
      if (keyid_of(embedded) != kid) miss("signer: the record's embedded public key is not " + source);
      if (pred.at("signer").value("keyid", "") != kid)
        miss("signer: the predicate's keyid is not that of " + source);
      bool any = false;
      std::string pae = dsse_pae(env["payloadType"].get<std::string>(), payload);
      for (const auto& sig : env.at("signatures")) {
        if (sig.value("keyid", "") != kid) continue;
        if (verify_signature(pem, pae, base64_decode(sig.at("sig").get<std::string>()))) any = true;
      }
      if (!any) miss("signature: no DSSE signature verifies with " + source);
      r.report["keyid"] = kid;
      signer_keyid = kid;
      r.report["signature_key"] = source;
    } catch (const std::exception& e) {
      miss(std::string("attestation.intoto.json: ") + e.what());
      statement = json();
    }
  }

  // 4. The statement against the recomputed record.
  if (statement.is_object()) {
    try {
      if (statement.value("_type", "") != kStatementType)
        miss("statement: _type is not " + std::string(kStatementType));
      std::string ptype = statement.value("predicateType", "");
      const bool v1 = ptype == kPredicateTypeV1;
      if (!v1 && ptype != kPredicateType)
        throw Error("predicateType \"" + ptype + "\" is not one this verifier knows (" + kPredicateTypeV1 +
                    ", " + kPredicateType + ")");
      r.report["predicate_type"] = ptype;
      const json& pred = statement.at("predicate");
      std::string run_id = pred.value("run_id", "");
      if (session.is_object() && session.value("run_id", "") != run_id)
        miss("run id: session.json and attestation differ");
      if (pred.value("complete", false) != (session.is_object() && session.value("complete", false)))
        miss("complete: session.json and attestation differ");
      if (!v1) check_file_subjects(rd, statement.at("subject"), miss);
      bool run_subject = !v1;  // v1: the run subject is the event log's Merkle root
      for (const auto& s : v1 ? statement.at("subject") : json::array()) {
        std::string name = s.value("name", "");
        std::string d = s.at("digest").value("sha256", "");
        if (name == "run:" + run_id) {
          run_subject = true;
          if (d != hex(lc.merkle_root))
            miss("subject " + name + ": digest is not the event log's recomputed Merkle root");
        } else if (starts_with(name, "fs:")) {
          bool found = false;
          for (const auto& t : pred.at("filesystem").at("trees"))
            if ("fs:" + t.value("name", "") == name) {
              found = true;
              if (t.value("after", "") != d)
                miss("subject " + name + ": digest differs from the predicate's post-run root");
            }
          if (!found) miss("subject " + name + ": no such tree in the predicate");
        }
      }
      if (!run_subject) miss("statement: no run subject");
      const json& el = pred.at("event_log");
      if (el.value("merkle_root", "") != hex(lc.merkle_root))
        miss("predicate event_log.merkle_root differs from the log");
      if (el.value("chain_head", "") != hex(lc.chain_head))
        miss("predicate event_log.chain_head differs from the log");
      if (el.value("event_count", uint64_t(0)) != lc.events.size())
        miss("predicate event_log.event_count differs from the log");
      if (v1 && session_text && pred.value("session_sha256", "") != hex(sha256(*session_text)))
        miss("session.json: its SHA-256 is not the one the attestation signs (session altered)");
      auto changes = slurp(rd + "/changes.ndjson");
      std::string want_changes = v1 ? pred.at("filesystem").value("changes_sha256", "") : "";
      if (!want_changes.empty()) {
        if (!changes)
          miss("changes.ndjson is missing");
        else if (hex(sha256(*changes)) != want_changes)
          miss("changes.ndjson: its SHA-256 is not the one the attestation signs (change set altered)");
      }
      // The roots the log recorded equal the signed ones.
      for (const auto& ev : lc.events) {
        if (ev.type != "fs.root") continue;
        std::string phase = ev.data.value("phase", "");
        if (ev.data.contains("max_file_bytes") && ev.data["max_file_bytes"].is_number_unsigned())
          fs_max_file_bytes = ev.data["max_file_bytes"].get<uint64_t>();
        for (const auto& t : ev.data.value("trees", json::array()))
          for (const auto& pt : pred.at("filesystem").at("trees"))
            if (pt.value("name", "") == t.value("name", "") && pt.value(phase, "") != t.value("root", ""))
              miss("filesystem root of " + t.value("name", "") + " (" + phase +
                   "): the log and the attestation differ");
      }
      // The Sigstore bundle (v2 records; a v1 record has one only if exported).
      auto bundle = slurp(rd + "/" + kBundleFile);
      if (!bundle && !v1) miss(std::string(kBundleFile) + " is missing");
      if (bundle) {
        try {
          for (const auto& p : check_sigstore_bundle(json::parse(*bundle), env, signer_keyid)) miss(p);
        } catch (const json::exception&) {
          miss(std::string(kBundleFile) + " is not valid JSON");
        }
      }
      // 5. The host ledger.
      LedgerCheck ledger = check_ledger(audit + "/ledger.ndjson");
      for (const auto& p : ledger.problems) miss(p);
      const json* row = nullptr;
      for (const auto& rw : ledger.rows)
        if (rw.value("run_id", "") == run_id) row = &rw;
      if (!row) {
        if (ledger.problems.empty()) miss("ledger: run " + run_id + " is not in the host ledger");
      } else {
        if (env_text && row->value("attestation_sha256", "") != hex(sha256(*env_text)))
          miss("ledger: the attestation file is not the one the ledger recorded (replaced or altered)");
        if (!v1 || row->contains("bundle_sha256")) {
          if (!row->contains("bundle_sha256"))
            miss("ledger: the run's row has no bundle_sha256");
          else if (bundle && row->value("bundle_sha256", "") != hex(sha256(*bundle)))
            miss("ledger: the Sigstore bundle is not the one the ledger recorded (replaced or altered)");
        }
        if (row->value("merkle_root", "") != hex(lc.merkle_root))
          miss("ledger: merkle root differs from the log");
        const json& lp = pred.at("ledger");
        if (lp.value("index", uint64_t(~0ULL)) != row->value("index", uint64_t(0)) ||
            lp.value("prev", "") != row->value("prev", ""))
          miss("ledger: the position the attestation names is not where the run's row is");
        if (r.report.contains("keyid") && row->value("keyid", "") != r.report["keyid"])
          miss("ledger: the run was recorded with a different signing key");
        r.report["ledger_index"] = row->value("index", uint64_t(0));
      }
      // 6. A tree as it is now.
      if (!o.check_path.empty()) {
        WalkOptions wo;
        wo.max_file_bytes = fs_max_file_bytes;  // as the run walked it
        FsSnapshot now = snapshot(o.check_path, wo);
        bool matched = false, named = false;
        std::string want;
        for (const auto& t : pred.at("filesystem").at("trees")) {
          std::string p = pct_decode(t.value("path", ""));
          if (p == o.check_path || t.value("name", "") == o.check_path) {
            named = true;
            want = t.value("after", "");
            matched = want == hex(now.root);
          }
        }
        if (!named)
          for (const auto& t : pred.at("filesystem").at("trees"))
            if (t.value("after", "") == hex(now.root)) matched = true;
        if (!matched)
          miss("--check-path " + o.check_path + ": its root now (" + hex(now.root) +
               ") is not the recorded post-run root" + (named ? " (" + want + ")" : " of any tracked tree"));
        r.report["check_path_root"] = hex(now.root);
      }
    } catch (const std::exception& e) {
      miss(std::string("attestation statement: ") + e.what());
    }
  }
  r.report["complete"] = session.is_object() && session.value("complete", false);
  return r;
}

json run_account(const std::string& rd) {
  LogCheck lc = check_log(rd + "/events.ndjson");
  json a = {{"processes", json::array()},
            {"exec_attempts_failed", json::array()},
            {"caller_execs", json::array()},
            {"network", {{"allowed", json::array()}, {"denied", json::array()}, {"dns", json::array()}}},
            {"files",
             {{"added", json::array()},
              {"modified", json::array()},
              {"removed", json::array()},
              {"unverified", json::array()}}},
            {"signals", json::array()},
            {"policy_changes", json::array()},
            {"lifecycle", json::array()},
            {"policy_decisions", json::array()},
            {"log_problems", lc.problems},
            {"events", lc.events.size()}};
  for (const auto& ev : lc.events) {
    const json& d = ev.data;
    if (ev.type == "run.created") {
      a["run_id"] = d.value("run_id", "");
      a["container_id"] = d.value("container_id", "");
      a["created"] = ev.time;
      if (d.contains("process")) a["command"] = d["process"].value("args", json::array());
      if (d.contains("sandbox")) a["sandbox"] = d["sandbox"];
      if (d.contains("policy_decisions")) a["policy_decisions"] = d["policy_decisions"];
    } else if (ev.type == "run.started") {
      a["started"] = ev.time;
    } else if (ev.type == "process.exec") {
      json p{{"time", ev.time},
             {"pid", d.value("pid", 0)},
             {"path", d.value("path", "")},
             {"argv", d.value("argv", json::array())},
             {"sha256", d.value("sha256", "")}};
      if (d.contains("session")) p["session"] = d["session"];
      for (const char* k : {"interpreter", "interpreters", "resolved", "error"})
        if (d.contains(k)) p[k] = d[k];
      a["processes"].push_back(std::move(p));
    } else if (ev.type == "process.exec_failed") {
      json p{{"time", ev.time},
             {"pid", d.value("pid", 0)},
             {"path", d.value("path", "")},
             {"errno", d.value("errno", "")}};
      if (d.contains("session")) p["session"] = d["session"];
      a["exec_attempts_failed"].push_back(std::move(p));
    } else if (ev.type == "caller.exec") {
      a["caller_execs"].push_back(json{{"time", ev.time}, {"args", d.value("args", json::array())}});
    } else if (ev.type == "net.connection") {
      json c = d;
      c["time"] = ev.time;
      a["network"][d.value("decision", "") == "allowed" ? "allowed" : "denied"].push_back(c);
    } else if (ev.type == "net.credential") {
      json c = d;  // a placeholder where its credential may not go
      c["time"] = ev.time;
      a["network"]["credentials_caught"].push_back(c);
    } else if (ev.type == "net.dns") {
      json c = d;
      c["time"] = ev.time;
      a["network"]["dns"].push_back(c);
    } else if (ev.type == "net.namespace") {
      a["network"]["namespace"] = d;
    } else if (ev.type == "signal") {
      json s = d;
      s["time"] = ev.time;
      a["signals"].push_back(std::move(s));
    } else if (ev.type == "run.updated") {
      json c = d;
      c["time"] = ev.time;
      a["policy_changes"].push_back(std::move(c));
    } else if (ev.type == "run.paused" || ev.type == "run.resumed") {
      a["lifecycle"].push_back(json{{"time", ev.time}, {"action", ev.type.substr(4)}});
    } else if (ev.type == "run.exit") {
      a["exit"] = d;
      a["finished"] = ev.time;
    }
  }
  if (auto s = try_read_file(rd + "/session.json")) {
    try {
      json sj = json::parse(*s);
      if (sj.contains("kubernetes") && sj["kubernetes"].is_object()) a["kubernetes"] = sj["kubernetes"];
    } catch (const std::exception&) {
    }
  }
  if (auto ch = try_read_file(rd + "/changes.ndjson")) {
    for (const auto& line : split(*ch, '\n')) {
      if (line.empty()) continue;
      try {
        json c = json::parse(line);
        std::string kind = c.value("change", "");
        if (a["files"].contains(kind))
          a["files"][kind].push_back(c.value("tree", "") + ":" + c.value("path", ""));
      } catch (const std::exception&) {
        a["log_problems"].push_back("changes.ndjson: a line is not valid JSON");
      }
    }
  }
  return a;
}

}  // namespace agentshim::attest
