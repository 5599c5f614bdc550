// A whole run record as the supervisor makes it (RunRecord), for the attest
// tests that need one: a tracked tree changed by "the workload", a few
// events, finalized and signed.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "attest/canonical.h"
#include "attest/record.h"
#include "common/util.h"
#include "tests/temp_dir.h"

namespace agentshim::testutil {

// `kubernetes` is RecordConfig::kubernetes (null: not a CRI run).
inline std::string make_run(const std::string& base, attest::KeyType kt, const std::string& key_path = "",
                            const nlohmann::json& kubernetes = nullptr) {
  std::string ws = base + "/ws";
  mkdir_p(ws, 0755);
  write_file(ws + "/keep.txt", "keep\n");
  write_file(ws + "/modify.txt", "modify\n");
  attest::RecordConfig c;
  c.audit_dir = base + "/audit";
  c.run_id = attest::new_run_id();
  c.container_id = "c1";
  c.key_type = kt;
  c.key_path = key_path;
  c.hash_cache = false;
  c.kubernetes = kubernetes;
  attest::RunRecord r(c);
  r.event("run.created", {{"run_id", c.run_id}, {"container_id", c.container_id}});
  r.snapshot_before({attest::TrackedTree{"/workspace", ws, {}, {}, {}}});
  r.event("run.started", {{"init_pid", 7}});
  r.event("process.exec", {{"pid", 7}, {"path", "/bin/true"}, {"argv", {"/bin/true"}}});
  write_file(ws + "/modify.txt", "modified\n");
  write_file(ws + "/added.txt", "new\n");
  r.event("run.exit", {{"code", 0}, {"signal", ""}});
  r.snapshot_after();
  r.finalize({{"exit", {{"code", 0}}}});
  return r.dir();
}

// The in-toto statement inside a run's DSSE envelope.
inline nlohmann::json statement_of(const std::string& run_dir) {
  nlohmann::json env = nlohmann::json::parse(read_file(run_dir + "/attestation.intoto.json"));
  return nlohmann::json::parse(attest::base64_decode(env["payload"].get<std::string>()));
}

}  // namespace agentshim::testutil
