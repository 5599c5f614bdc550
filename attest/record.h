// One run's record, as the supervisor builds it: the run directory
// <audit-dir>/runs/<run-id>/ with events.ndjson, changes.ndjson,
// session.json, attestation.intoto.json (DSSE) and attestation.sigstore.json
// (the same envelope as a Sigstore bundle), and the host ledger row.
// See docs/FORMATS.md for every format.
#pragma once

#include <exception>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "attest/eventlog.h"
#include "attest/fstree.h"
#include "attest/sign.h"
#include "common/fd.h"

namespace agentshim::attest {

using json = nlohmann::json;

inline constexpr const char* kStatementType = "https://in-toto.io/Statement/v1";
// The predicate agentshim writes (docs/PREDICATE.md); verify also reads v1.
inline constexpr const char* kPredicateType = "https://agentshim.dev/attestation/run/v2";
inline constexpr const char* kPredicateTypeV1 = "https://agentshim.dev/attestation/run/v1";
inline constexpr const char* kPayloadType = "application/vnd.in-toto+json";

struct TrackedTree {
  std::string name;       // "rootfs", or the mount's destination in the container ("/workspace")
  std::string host_path;  // where the supervisor reads it
  std::vector<std::string> exclude;
  // Non-empty: why the container cannot change this tree (a read-only root;
  // docs/FORMATS.md "fs.root"). Its before walk runs while the container
  // does (it need not delay `start`), and its after root is its before root,
  // without a walk.
  std::string unchanged_reason;
  // Where the walks read it, when not host_path: the supervisor's detached
  // copy of the mount tree ("/proc/self/fd/N/."), opened while the container
  // existed, so a client that unmounts or removes the source once the
  // container has exited (Podman's --rm and its shm) cannot take the tree
  // away from the after walk.
  std::string walk_path;
  // The filesystem type of the container's mount ("tmpfs", ...; "" when
  // not known), and what watches it for writes (docs/FORMATS.md "Write
  // tracking"): "" none, "mount" (FAN_CLOSE_WRITE), "mount+entries" (also
  // names created and removed). Non-empty `reread_all`: why every file of
  // the tree is read in full at the after walk (no write watch, say).
  std::string fstype = {};
  std::string watch = {};
  std::string reread_all = {};
  const std::string& read_path() const { return walk_path.empty() ? host_path : walk_path; }
};

// Files larger than this are recorded without a content hash (fstree.h).
inline constexpr uint64_t kDefaultMaxFileBytes = 64ULL << 30;

struct RecordConfig {
  std::string audit_dir;
  std::string run_id;
  std::string container_id;
  std::string key_path;  // "" = the host key under <audit-dir>/keys (made by the constructor if absent)
  KeyType key_type = KeyType::ed25519;
  bool hash_cache = true;                          // policy "strict" turns it off
  uint64_t max_file_bytes = kDefaultMaxFileBytes;  // policy audit.max_file_bytes (0: no limit)
  uint64_t max_event_log_bytes = 0;                // policy audit.max_event_log_bytes (0: no limit)
  std::string tsa_url;  // policy audit.tsa_url: RFC 3161 time-stamp for the Sigstore bundle ("" = none)
  // kubernetes_identity() of the config's annotations: null, or the pod and
  // container a CRI client named (the predicate's and session.json's
  // "kubernetes").
  json kubernetes;
  std::function<void(const std::string&)> on_log_failure;
};

std::string new_run_id();
// The per-host hash cache (attest/hashcache.h) under an audit directory.
std::string hash_cache_path(const std::string& audit_dir);

// The Kubernetes identity containerd's CRI plugin passes in a container's
// annotations (io.kubernetes.cri.sandbox-namespace, -name, -uid, -id,
// container-name, container-type) as {"namespace", "pod_name", "pod_uid",
// "sandbox_id", "container_name", "container_type"}; null when the config
// carries none of them. These are the caller's claims, recorded as such: a
// value that is not a string of printable ASCII of at most 253 bytes is left
// out.
json kubernetes_identity(const json& annotations);

class RunRecord {
 public:
  explicit RunRecord(RecordConfig c);
  ~RunRecord();

  const std::string& dir() const { return dir_; }
  const RecordConfig& config() const { return c_; }
  void event(const std::string& type, json data);
  bool sync();
  // Descriptors the record holds open (the supervisor must not close them).
  std::vector<int> fds() const { return {log_ ? log_->fd() : -1}; }
  // Mark the run incomplete (also done automatically when events are lost).
  void incomplete(const std::string& reason);

  // Filesystem roots before the user process runs, and after it exits
  // (which also writes changes.ndjson). Each emits an "fs.root" event.
  // snapshot_before walks the trees the container can change before it
  // returns, and those it cannot (unchanged_reason) on a thread of its own;
  // snapshot_after and finalize wait for that thread.
  void snapshot_before(const std::vector<TrackedTree>& trees);
  // The after walks of the trees the container can change, now, and the
  // end of the concurrent before walks: the supervisor calls it before the
  // container's exit is reported, so no client can remove or rewrite a
  // source first. A tree that cannot be
  // walked is recorded as such (the run is then incomplete, with the
  // reason), never a reason to lose the record. snapshot_after calls it when
  // nobody did.
  void walk_after();
  void snapshot_after();
  // What the write watch saw, for the after walk (before walk_after):
  // `dirty` names the files written during the run (read in full, never
  // from the cache); a non-empty `lost` says why the watch's account is
  // incomplete (every file of every watched tree is then read in full);
  // `entries_lost`: created/removed names were lost.
  struct Writes {
    std::function<bool(uint64_t dev, uint64_t ino)> dirty;
    std::function<bool(uint64_t dev)> dirty_dev;
    std::string lost;
    bool entries_lost = false;
  };
  void set_writes(Writes w) { writes_ = std::move(w); }
  // The run's content-hash cache (null with policy "strict"), for the exec
  // observer: a binary hashed by a walk (or an earlier run) is not re-read.
  std::shared_ptr<HashCache> hash_cache() const { return cache_; }

  // Close the log with "run.finalized", write session.json, sign the
  // attestation, append the ledger row. `facts` carries what the
  // supervisor knows (config digests, sandbox, entrypoint, exit, timings,
  // network totals). Returns the ledger row.
  json finalize(const json& facts);

 private:
  json fs_counts() const;
  void walk_before(std::size_t i);
  void before_done();  // the fs.root "before" event, once every before walk is done
  void wait_before();  // joins the concurrent before walk; rethrows its error
  RecordConfig c_;
  std::string dir_;
  std::unique_ptr<EventLog> log_;
  std::vector<TrackedTree> trees_;
  std::vector<FsSnapshot> before_, after_;
  std::vector<std::vector<LayerUse>> before_layers_, after_layers_;  // overlay roots assembled from layers
  std::vector<std::string> before_errors_;  // per tree: why its concurrent before walk failed
  std::vector<std::string> after_errors_;   // per tree: why its after walk failed ("" when it did not)
  bool after_walked_ = false;
  bool after_settled_ = false;  // snapshot_after completed: after_ holds every tree's root
  std::thread before_thread_;   // the walks of trees the container cannot change
  std::exception_ptr before_error_;
  json change_counts_ = json::object();
  Writes writes_;
  std::string reread_reason(std::size_t i) const;  // "" or why every file of tree i is read
  UniqueFd lock_;                     // the run directory, flock'ed (exclusive) until finalize is done
  std::shared_ptr<HashCache> cache_;  // made by the constructor, loaded by snapshot_before
  bool cache_loaded_ = false;
  void save_cache();
  std::string changes_sha256_;
  std::vector<std::string> incomplete_;
  bool finalized_ = false;
};

// Everything `agentshim verify` checks.
struct VerifyOptions {
  std::string public_key_path;  // pin; else the host key, else the embedded key (noted)
  std::string check_path;       // re-hash this directory now, compare with a recorded post-run root
  std::string audit_dir;        // for the ledger; default: the run dir's grandparent
};
struct VerifyResult {
  std::vector<std::string> mismatches;
  std::vector<std::string> notes;
  json report = json::object();
  bool verified() const { return mismatches.empty(); }
};
VerifyResult verify_run(const std::string& run_dir, const VerifyOptions& o);

// A readable account of a run, from its verified record.
json run_account(const std::string& run_dir);

// A run's supervisor holds an exclusive flock on the run directory until the
// record is finalized (signed, in the ledger). Wait (up to timeout_ms) until
// it is free: true when the record is final (or was never being written),
// false on timeout. Readers (verify, runs show, `run`) call this; the record
// is finalized after the container's exit is reported, so `delete` and a
// client's wait do not pay for it.
bool wait_finalized(const std::string& run_dir, int timeout_ms);

}  // namespace agentshim::attest
