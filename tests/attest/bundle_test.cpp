// A whole run record as the supervisor makes it (RunRecord), in the v2
// format: file subjects, the Sigstore bundle beside the envelope, both bound
// by the ledger; verify of the v2 record and of a kept v1 record; the
// signing key's type checked against the key type asked for.
#include "attest/bundle.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <functional>

#include "attest/canonical.h"
#include "attest/hash.h"
#include "attest/ledger.h"
#include "attest/record.h"
#include "attest/sign.h"
#include "attest/tsa.h"
#include "common/error.h"
#include "common/util.h"
#include "tests/attest/run_fixture.h"

using namespace agentshim;
using namespace agentshim::attest;
using json = nlohmann::json;

namespace {
using testutil::make_run;
using testutil::statement_of;
using testutil::TempDir;

void flip_byte(const std::string& path, std::size_t at) {
  std::string s = read_file(path);
  s[at % s.size()] ^= 0x01;
  write_file(path, s);
}

class RecordV2 : public ::testing::TestWithParam<KeyType> {};
}  // namespace

TEST_P(RecordV2, SubjectsAreTheFilesAndTheBundleIsTheEnvelope) {
  TempDir t;
  std::string rd = make_run(t.path, GetParam());
  auto v = verify_run(rd, {});
  EXPECT_TRUE(v.verified()) << (v.mismatches.empty() ? "" : v.mismatches[0]);
  EXPECT_EQ(v.report["predicate_type"], kPredicateType);

  json st = statement_of(rd);
  EXPECT_EQ(st["predicateType"], "https://agentshim.dev/attestation/run/v2");
  std::vector<std::string> names;
  for (const auto& s : st["subject"]) {
    names.push_back(s["name"]);
    EXPECT_EQ(s["digest"]["sha256"], hex(sha256(read_file(rd + "/" + s["name"].get<std::string>()))));
    EXPECT_EQ(s["digest"].size(), 1u);
  }
  EXPECT_EQ(names, (std::vector<std::string>{"events.ndjson", "changes.ndjson", "session.json"}));
  // The Merkle roots are in the predicate.
  EXPECT_EQ(st["predicate"]["event_log"]["merkle_root"],
            json::parse(read_file(rd + "/session.json"))["merkle_root"]);
  EXPECT_EQ(st["predicate"]["filesystem"]["trees"][0]["name"], "/workspace");
  EXPECT_FALSE(st["predicate"]["filesystem"].contains("changes_sha256"));
  EXPECT_FALSE(st["predicate"].contains("session_sha256"));

  std::string env_text = read_file(rd + "/attestation.intoto.json");
  std::string bundle_text = read_file(rd + "/attestation.sigstore.json");
  json b = json::parse(bundle_text);
  EXPECT_EQ(b["mediaType"], "application/vnd.dev.sigstore.bundle.v0.3+json");
  EXPECT_EQ(b["verificationMaterial"]["publicKey"]["hint"], st["predicate"]["signer"]["keyid"]);
  EXPECT_EQ(b["verificationMaterial"]["tlogEntries"], json::array());
  EXPECT_EQ(b["dsseEnvelope"], json::parse(env_text));
  EXPECT_EQ(b["dsseEnvelope"].dump(2), json::parse(env_text).dump(2));

  auto ledger = check_ledger(t.path + "/audit/ledger.ndjson");
  ASSERT_TRUE(ledger.problems.empty());
  ASSERT_EQ(ledger.rows.size(), 1u);
  EXPECT_EQ(ledger.rows[0]["bundle_sha256"], hex(sha256(bundle_text)));
  EXPECT_EQ(ledger.rows[0]["attestation_sha256"], hex(sha256(env_text)));
}

TEST_P(RecordV2, OneByteChangeOfAnyFileFailsVerify) {
  TempDir t;
  std::string rd = make_run(t.path, GetParam());
  for (std::string f : {"events.ndjson", "changes.ndjson", "session.json", "attestation.intoto.json",
                        "attestation.sigstore.json", "../../ledger.ndjson"}) {
    std::string p = rd + "/" + f;
    std::string orig = read_file(p);
    for (std::size_t at : {std::size_t(0), orig.size() / 3, orig.size() / 2, orig.size() - 2}) {
      flip_byte(p, at);
      EXPECT_FALSE(verify_run(rd, {}).verified()) << f << " byte " << at;
      write_file(p, orig);
    }
    ::unlink(p.c_str());
    EXPECT_FALSE(verify_run(rd, {}).verified()) << f << " removed";
    write_file(p, orig);
  }
  EXPECT_TRUE(verify_run(rd, {}).verified());
  // A bundle that names another key, or carries another envelope, is caught
  // even when the ledger is rewritten to match it.
  json b = json::parse(read_file(rd + "/attestation.sigstore.json"));
  b["verificationMaterial"]["publicKey"]["hint"] = std::string(64, 'a');
  auto problems = check_sigstore_bundle(b, json::parse(read_file(rd + "/attestation.intoto.json")),
                                        statement_of(rd)["predicate"]["signer"]["keyid"]);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("hint"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Keys, RecordV2, ::testing::Values(KeyType::ed25519, KeyType::ecdsa_p256));

TEST(RecordV1, AKeptV1RecordStillVerifies) {
  TempDir t;
  // tests/attest/data/v1-record: made by the v1 code path (predicate
  // run/v1: Merkle-root subjects, session_sha256, no bundle).
  std::string audit = t.path + "/audit";
  mkdir_p(audit, 0700);
  ASSERT_EQ(::system(("cp -r " AGENTSHIM_ATTEST_TEST_DATA "/v1-record/. " + audit + "/").c_str()), 0);
  std::string rd = audit + "/runs/20261203T073000Z-0123456789ab";
  auto v = verify_run(rd, {});
  EXPECT_TRUE(v.verified()) << (v.mismatches.empty() ? "" : v.mismatches[0]);
  EXPECT_EQ(v.report["predicate_type"], kPredicateTypeV1);
  EXPECT_EQ(statement_of(rd)["predicateType"], "https://agentshim.dev/attestation/run/v1");
  for (std::string f : {"events.ndjson", "changes.ndjson", "session.json", "attestation.intoto.json"}) {
    std::string p = rd + "/" + f;
    std::string orig = read_file(p);
    flip_byte(p, orig.size() / 2);
    EXPECT_FALSE(verify_run(rd, {}).verified()) << f;
    write_file(p, orig);
  }
  // Exported later: a bundle beside a v1 record is checked too.
  json env = json::parse(read_file(rd + "/attestation.intoto.json"));
  json b = sigstore_bundle(env, env["signatures"][0]["keyid"]);
  write_file(rd + "/attestation.sigstore.json", bundle_text(b));
  EXPECT_TRUE(verify_run(rd, {}).verified());
  b["dsseEnvelope"]["payloadType"] = "text/plain";
  write_file(rd + "/attestation.sigstore.json", bundle_text(b));
  EXPECT_FALSE(verify_run(rd, {}).verified());
}

TEST(Bundle, CarriesExactlyOneSignature) {
  json env = {{"payload", "e30="}, {"payloadType", kPayloadType}, {"signatures", json::array()}};
  EXPECT_THROW(sigstore_bundle(env, "k"), Error);
  env["signatures"] =
      json::array({json{{"keyid", "k"}, {"sig", "AA=="}}, json{{"keyid", "k"}, {"sig", "AA=="}}});
  EXPECT_THROW(sigstore_bundle(env, "k"), Error);
  env["signatures"].erase(1);
  json b = sigstore_bundle(env, "k");
  EXPECT_TRUE(check_sigstore_bundle(b, env, "k").empty());
  EXPECT_FALSE(check_sigstore_bundle(b, env, "other").empty());
}

TEST(SigningKey, ATypeThatDoesNotMatchTheKeyIsAnError) {
  TempDir t;
  auto ec = PrivateKey::generate(KeyType::ecdsa_p256);
  ec.save(t.path + "/ec.pem");
  EXPECT_EQ(load_signing_key(t.path + "/ec.pem", KeyType::ecdsa_p256).type(), KeyType::ecdsa_p256);
  try {
    (void)load_signing_key(t.path + "/ec.pem", KeyType::ed25519);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ecdsa-p256"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(t.path + "/ec.pem"), std::string::npos) << e.what();
  }
  // The record refuses before the run starts: no run directory is made.
  RecordConfig c;
  c.audit_dir = t.path + "/audit";
  c.run_id = "r1";
  c.key_path = t.path + "/ec.pem";
  c.key_type = KeyType::ed25519;
  EXPECT_THROW(RunRecord r(c), Error);
  EXPECT_FALSE(path_exists(t.path + "/audit/runs/r1"));
  c.key_path = t.path + "/missing.pem";
  EXPECT_THROW(RunRecord r(c), Error);
  // The host key too: an Ed25519 host key is not used for an ECDSA request.
  std::string rd = make_run(t.path, KeyType::ed25519);
  EXPECT_TRUE(verify_run(rd, {}).verified());
  EXPECT_THROW(make_run(t.path, KeyType::ecdsa_p256), Error);
  // The right type signs.
  TempDir t2;
  std::string rd2 = make_run(t2.path, KeyType::ecdsa_p256, t.path + "/ec.pem");
  EXPECT_EQ(statement_of(rd2)["predicate"]["signer"]["algorithm"], "ecdsa-p256-sha256");
}

TEST(Tsa, BadUrlsAndUnreachableTsasAreClearErrors) {
  for (const char* u : {"https://tsa.example/", "ftp://x", "http://", "http://h:port/", "http://h:1/a b"}) {
    try {
      (void)rfc3161_timestamp(u, "sig", 1000);
      ADD_FAILURE() << u;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(u), std::string::npos) << e.what();
    }
  }
  // Nothing listens on port 9 of loopback (discard is not run here).
  try {
    (void)rfc3161_timestamp("http://127.0.0.1:9/tsa", "sig", 2000);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("connect"), std::string::npos) << e.what();
  }
  EXPECT_THROW(rfc3161_check("", "sig"), Error);
  EXPECT_THROW(rfc3161_check(std::string("\x30\x03\x02\x01\x00", 5), "sig"), Error);
  // A bundle whose time-stamp is garbage is a mismatch, not a crash.
  json env = {{"payload", "e30="},
              {"payloadType", kPayloadType},
              {"signatures", json::array({json{{"keyid", "k"}, {"sig", "AA=="}}})}};
  json b = sigstore_bundle(env, "k", {std::string("not DER")});
  EXPECT_EQ(b["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"][0]["signedTimestamp"],
            base64_encode("not DER"));
  auto p = check_sigstore_bundle(b, env, "k");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_NE(p[0].find("timestampVerificationData"), std::string::npos);
}

namespace {
// A run of one tracked tree whose walks read `walk_path` (the supervisor's
// detached copy) while the record names `host_path`; `between` runs while
// "the container" runs.
std::string run_with_tree(const std::string& base, const std::string& host_path, const std::string& walk_path,
                          const std::function<void()>& between) {
  RecordConfig c;
  c.audit_dir = base + "/audit";
  c.run_id = new_run_id();
  c.container_id = "c1";
  c.key_type = KeyType::ed25519;
  c.hash_cache = false;
  RunRecord r(c);
  r.event("run.created", {{"run_id", c.run_id}, {"container_id", c.container_id}});
  r.snapshot_before({TrackedTree{"/workspace", host_path, {}, {}, walk_path}});
  r.event("run.started", {{"init_pid", 7}});
  r.event("process.exec", {{"pid", 7}, {"path", "/bin/true"}, {"argv", {"/bin/true"}}});
  between();
  r.event("run.exit", {{"code", 0}, {"signal", ""}});
  r.walk_after();
  r.snapshot_after();
  r.finalize({{"exit", {{"code", 0}}}});
  return r.dir();
}
}  // namespace

TEST(TrackedTree, TheWalksReadTheCopyAndTheRecordNamesTheSource) {
  TempDir t;
  std::string ws = t.path + "/ws";
  mkdir_p(ws, 0755);
  write_file(ws + "/a", "a\n");
  std::string rd =
      run_with_tree(t.path, "/the/source/as/configured", ws, [&] { write_file(ws + "/b", "b\n"); });
  auto v = verify_run(rd, {});
  EXPECT_TRUE(v.verified()) << (v.mismatches.empty() ? "" : v.mismatches[0]);
  json st = statement_of(rd);
  EXPECT_EQ(st["predicate"]["filesystem"]["trees"][0]["path"], "/the/source/as/configured");
  EXPECT_EQ(st["predicate"]["filesystem"]["trees"][0]["after"], hex(snapshot(ws, WalkOptions{}).root));
  EXPECT_NE(read_file(rd + "/changes.ndjson").find("\"added\""), std::string::npos);
}

TEST(TrackedTree, ATreeThatVanishesIsRecordedAndTheRunStillFinalizes) {
  // A client removed the source before the after walk (what the detached
  // copy and the walk-before-release prevent): the run is finalized,
  // signed and in the ledger, incomplete with the reason, and verify says so.
  TempDir t;
  std::string ws = t.path + "/ws";
  mkdir_p(ws, 0755);
  write_file(ws + "/a", "a\n");
  std::string rd = run_with_tree(t.path, ws, "", [&] {
    ::unlink((ws + "/a").c_str());
    ::rmdir(ws.c_str());
  });
  json session = json::parse(read_file(rd + "/session.json"));
  EXPECT_FALSE(session["complete"].get<bool>());
  ASSERT_EQ(session["incomplete_reasons"].size(), 1u);
  EXPECT_NE(session["incomplete_reasons"][0].get<std::string>().find("post-run root of tree /workspace"),
            std::string::npos);
  json st = statement_of(rd);
  EXPECT_FALSE(st["predicate"]["filesystem"]["trees"][0].contains("after"));
  bool failed_event = false;
  for (const auto& line : split(read_file(rd + "/events.ndjson"), '\n')) {
    if (line.empty()) continue;
    json e = json::parse(line);
    if (e["type"] == "fs.root" && e["data"]["phase"] == "after")
      failed_event = e["data"]["trees"][0]["walk"] == "failed" && e["data"]["trees"][0].contains("error");
  }
  EXPECT_TRUE(failed_event);
  auto v = verify_run(rd, {});
  ASSERT_FALSE(v.verified());
  EXPECT_NE(v.mismatches[0].find("incomplete run: post-run root of tree /workspace"), std::string::npos)
      << v.mismatches[0];
  EXPECT_TRUE(check_ledger(t.path + "/audit/ledger.ndjson").problems.empty());
}

TEST(TrackedTree, AConcurrentBeforeWalkThatFailsIsRecordedAndTheRunStillFinalizes) {
  // A tree the container cannot change is walked while it runs; if that
  // walk fails (a client unmounted it), the run is still finalized and
  // signed, incomplete with the reason.
  TempDir t;
  RecordConfig c;
  c.audit_dir = t.path + "/audit";
  c.run_id = new_run_id();
  c.container_id = "c1";
  c.key_type = KeyType::ed25519;
  c.hash_cache = false;
  std::string rd;
  {
    RunRecord r(c);
    r.event("run.created", {{"run_id", c.run_id}, {"container_id", c.container_id}});
    r.snapshot_before({TrackedTree{"rootfs", t.path + "/gone", {}, "read-only", {}}});
    r.event("run.started", {{"init_pid", 7}});
    r.event("run.exit", {{"code", 0}, {"signal", ""}});
    r.walk_after();
    r.snapshot_after();
    r.finalize({{"exit", {{"code", 0}}}});
    rd = r.dir();
  }
  json session = json::parse(read_file(rd + "/session.json"));
  EXPECT_FALSE(session["complete"].get<bool>());
  ASSERT_EQ(session["incomplete_reasons"].size(), 1u);
  EXPECT_NE(session["incomplete_reasons"][0].get<std::string>().find("pre-run root of tree rootfs"),
            std::string::npos);
  auto v = verify_run(rd, {});
  ASSERT_FALSE(v.verified());
  EXPECT_NE(v.mismatches[0].find("incomplete run: pre-run root of tree rootfs"), std::string::npos)
      << v.mismatches[0];
}

namespace {
json after_tree(const std::string& rd) {
  for (const auto& line : split(read_file(rd + "/events.ndjson"), '\n')) {
    if (line.empty()) continue;
    json e = json::parse(line);
    if (e["type"] == "fs.root" && e["data"]["phase"] == "after") return e["data"]["trees"][0];
  }
  return nullptr;
}
}  // namespace

// What the write watch reports reaches the after walk and the record: a
// written file over max_file_bytes with an unchanged leaf is an
// "unverified" line; a lost account reads every file and says so.
TEST(TrackedTree, WrittenFilesAndALostWriteAccountAreStated) {
  for (bool lost : {false, true}) {
    TempDir t;
    std::string ws = t.path + "/ws";
    mkdir_p(ws, 0755);
    write_file(ws + "/big", std::string(100, 'b'));
    write_file(ws + "/small", "s");
    struct stat st {};
    ASSERT_EQ(::stat((ws + "/big").c_str(), &st), 0);
    RecordConfig c;
    c.audit_dir = t.path + "/audit";
    c.run_id = new_run_id();
    c.container_id = "c1";
    c.hash_cache = true;
    c.max_file_bytes = 10;
    RunRecord r(c);
    r.event("run.created", {{"run_id", c.run_id}, {"container_id", c.container_id}});
    TrackedTree tree{"/workspace", ws, {}, {}, {}};
    tree.watch = "mount";
    r.snapshot_before({tree});
    r.event("run.started", {{"init_pid", 7}});
    // "The container" rewrites big in place, same size (no leaf change: no hash).
    write_file(ws + "/big", std::string(100, 'B'));
    r.event("run.exit", {{"code", 0}, {"signal", ""}});
    RunRecord::Writes w;
    w.dirty = [&](uint64_t dev, uint64_t ino) { return lost || (dev == st.st_dev && ino == st.st_ino); };
    w.dirty_dev = [&](uint64_t) { return true; };
    if (lost) w.lost = "the write event queue overflowed (FAN_Q_OVERFLOW)";
    r.set_writes(w);
    r.walk_after();
    r.snapshot_after();
    r.finalize({{"exit", {{"code", 0}}}});
    auto v = verify_run(r.dir(), {});
    EXPECT_TRUE(v.verified()) << (v.mismatches.empty() ? "" : v.mismatches[0]);
    std::string changes = read_file(r.dir() + "/changes.ndjson");
    ASSERT_FALSE(changes.empty());
    json line = json::parse(split(changes, '\n')[0]);
    EXPECT_EQ(line["change"], "unverified");
    EXPECT_EQ(line["path"], "big");
    EXPECT_EQ(line["old"], line["new"]);
    EXPECT_NE(
        line["reason"].get<std::string>().find(lost ? "may have been written" : "written during the run"),
        std::string::npos);
    json at = after_tree(r.dir());
    EXPECT_EQ(at["not_hashed"], 1);
    EXPECT_EQ(at["writes"]["watch"], "mount");
    if (lost) {
      EXPECT_EQ(at["writes"]["reread_all"], w.lost);
      EXPECT_EQ(at["writes"]["events_lost"], w.lost);
      EXPECT_EQ(at["writes"]["reread"], 1);  // small (big is over the limit: never read)
    } else {
      EXPECT_FALSE(at["writes"].contains("reread_all"));
    }
  }
}
