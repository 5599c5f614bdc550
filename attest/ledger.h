// The host ledger: <audit-dir>/ledger.ndjson, one row per finalized run,
// each row hash-chained to the one before, so a run that is deleted or
// rewritten afterwards is detectable. Rows are canonical JSON:
//   {"attestation_sha256", "chain_head", "container_id", "event_count",
//    "index", "keyid", "merkle_root", "prev", "row_hash", "run_id", "time"}
//   row_hash = SHA-256("agentshim-ledger-v1\n" || canonical(row without row_hash))
//   prev     = row_hash of the previous row (64 zeros for the first)
// Appends take an exclusive flock on <audit-dir>/ledger.lock, so concurrent
// supervisors never interleave or fork the chain.
#pragma once

#include <nlohmann/json.hpp>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace agentshim::attest {

using json = nlohmann::json;

std::string ledger_row_hash(const json& row_without_hash);

// Append a row. Under the lock, `make_fields(index, prev)` is called with the
// position the row will take (so the attestation can name it before it is
// signed) and returns the row's fields (run_id, container_id,
// attestation_sha256, merkle_root, chain_head, event_count, keyid).
json ledger_append(const std::string& audit_dir,
                   const std::function<json(uint64_t index, const std::string& prev)>& make_fields);

struct LedgerCheck {
  std::vector<std::string> problems;
  std::vector<json> rows;  // rows that verified
};
LedgerCheck check_ledger(const std::string& path);

}  // namespace agentshim::attest
