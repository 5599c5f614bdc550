// Canonical JSON, the event log (chain, Merkle root, batching, failures),
// DSSE and keys, the ledger.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "attest/canonical.h"
#include "attest/eventlog.h"
#include "attest/hash.h"
#include "attest/ledger.h"
#include "attest/sign.h"
#include "common/error.h"
#include "common/util.h"
#include "tests/temp_dir.h"

using namespace agentshim;
using namespace agentshim::attest;
using json = nlohmann::json;

namespace {
using testutil::TempDir;

std::vector<std::string> lines_of(const std::string& p) {
  std::vector<std::string> out;
  for (auto& l : split(read_file(p), '\n'))
    if (!l.empty()) out.push_back(l);
  return out;
}
void write_lines(const std::string& p, const std::vector<std::string>& ls) {
  std::string s;
  for (const auto& l : ls) s += l + "\n";
  write_file(p, s);
}
}  // namespace

TEST(Canonical, SortsKeysAndHasNoWhitespace) {
  json j = json::parse(R"({"b": 1, "a": [true, null, "x"], "c": {"z": -5, "y": "\n\u0001\"\\"}})");
  EXPECT_EQ(canonical(j), R"({"a":[true,null,"x"],"b":1,"c":{"y":"\n\u0001\"\\","z":-5}})");
}

TEST(Canonical, KeysSortByBytes) {
  json j = {{"é", 1}, {"z", 2}, {"A", 3}, {"_", 4}};
  EXPECT_EQ(canonical(j), "{\"A\":3,\"_\":4,\"z\":2,\"\xc3\xa9\":1}");
}

TEST(Canonical, RejectsFloatsAndInvalidUtf8) {
  EXPECT_THROW(canonical(json{{"x", 1.5}}), Error);
  EXPECT_THROW(canonical(json(std::string("\xff\xfe"))), Error);
  EXPECT_THROW(canonical(json(std::string("\xc0\x80"))), Error);  // overlong
  EXPECT_EQ(canonical(json(std::string("\xe2\x82\xac"))), "\"\xe2\x82\xac\"");
}

TEST(Canonical, FastScannerAgreesWithTheWriter) {
  using agentshim::attest::is_canonical;
  // What the writer produces, the scanner accepts.
  for (const json& v :
       {json::parse(R"({"a":[1,-2,true,false,null,"x\ny\u0001\"\\"],"b":{"c":{}},"d":[]})"),
        json(18446744073709551615ULL), json(-9223372036854775807LL - 1), json("\xc3\xa9\x7f")})
    EXPECT_TRUE(is_canonical(canonical(v))) << canonical(v);
  // Everything a byte-level edit can make that a parser would still read.
  for (const char* t : {R"({"b":1,"a":2})",
                        R"({"a":1,"a":1})",
                        R"({ "a":1})",
                        R"([1, 2])",
                        "-0",
                        "01",
                        "1.0",
                        "1e3",
                        "18446744073709551616",
                        "-9223372036854775809",
                        R"("\u0041")",
                        R"("\/")",
                        R"("\u001F")",
                        R"("\u0009")",
                        "\"\x01\"",
                        "\"\xc3\"",
                        R"([1,])",
                        "[1] ",
                        "tru",
                        R"({"a":1)",
                        "nul"})
    EXPECT_FALSE(is_canonical(t)) << t;
  // Escaped keys are left to the slow path (false), never wrongly accepted.
  EXPECT_FALSE(is_canonical(R"({"a\"":1})"));
}

TEST(Canonical, PctRoundTripsAnyBytes) {
  std::string raw("a b%c\n\xff\x00/\xc3\xa9", 11);
  std::string enc = pct_encode(raw);
  EXPECT_EQ(enc, "a%20b%25c%0A%FF%00/%C3%A9");
  EXPECT_EQ(pct_decode(enc), raw);
  EXPECT_THROW(pct_decode("%G1"), Error);
  EXPECT_THROW(pct_decode("%1"), Error);
}

TEST(Canonical, Base64) {
  EXPECT_EQ(base64_encode(""), "");
  EXPECT_EQ(base64_encode("f"), "Zg==");
  EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64_decode("Zm9vYg=="), "foob");
  EXPECT_THROW(base64_decode("Zm9"), Error);
  EXPECT_THROW(base64_decode("Zm9*"), Error);
}

TEST(EventLog, LeafAndChainFollowTheDocumentedFormulas) {
  std::string body = event_body(0, "2026-01-01T00:00:00.000000000Z", "run.created", json{{"k", "v"}});
  EXPECT_EQ(body,
            R"({"data":{"k":"v"},"seq":0,"time":"2026-01-01T00:00:00.000000000Z","type":"run.created"})");
  Digest leaf = event_leaf(body);
  EXPECT_EQ(leaf, sha256(std::string(1, '\0') + "agentshim-event-v1\n" + body));
  Digest zero{};
  zero.fill(0);
  std::string chain_input =
      "agentshim-chain-v1\n" + std::string(32, '\0') + std::string(leaf.begin(), leaf.end());
  EXPECT_EQ(chain_next(zero, leaf), sha256(chain_input));
}

TEST(EventLog, WritesVerifiableLinesAndBalancesCounts) {
  TempDir t;
  std::string p = t.path + "/events.ndjson";
  EventLog::Summary s;
  {
    EventLog log(p, nullptr);
    std::vector<std::thread> th;
    for (int k = 0; k < 4; ++k)
      th.emplace_back([&log, k] {
        for (int i = 0; i < 250; ++i) log.submit("test.event", json{{"thread", k}, {"i", i}});
      });
    for (auto& x : th) x.join();
    EXPECT_TRUE(log.sync());
    log.submit("run.finalized", json::object());
    s = log.close();
  }
  EXPECT_EQ(s.submitted, 1001u);
  EXPECT_EQ(s.written, 1001u);
  EXPECT_EQ(s.lost, 0u);
  EXPECT_EQ(s.event_count, 1001u);
  LogCheck c = check_log(p);
  EXPECT_TRUE(c.problems.empty()) << c.problems[0];
  EXPECT_EQ(c.events.size(), 1001u);
  EXPECT_TRUE(c.finalized);
  EXPECT_EQ(c.merkle_root, s.merkle_root);
  EXPECT_EQ(c.chain_head, s.chain_head);
  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(EventLog, AQuotaDropsWhatTheContainerFloodsButNeverTheRunsOwnEvents) {
  // An exec storm with 64 KiB argv: beyond the quota process.exec events are
  // lost and counted, a log.gap says why, run.* events are still written and
  // the log verifies.
  TempDir t;
  std::string p = t.path + "/events.ndjson";
  EventLog::Summary s;
  {
    EventLog log(p, nullptr);
    log.set_quota(1 << 20);
    log.submit("run.created", json::object());
    std::string argv(64 << 10, 'A');
    for (int i = 0; i < 100; ++i) log.submit("process.exec", json{{"argv", {argv}}, {"i", i}});
    log.submit("run.exit", json{{"code", 0}});
    log.submit("run.finalized", json::object());
    s = log.close();
  }
  EXPECT_EQ(s.submitted, 103u);
  EXPECT_GT(s.lost, 80u);
  EXPECT_EQ(s.written + s.lost, s.submitted);
  EXPECT_NE(s.first_error.find("audit.max_event_log_bytes"), std::string::npos) << s.first_error;
  LogCheck c = check_log(p);
  ASSERT_TRUE(c.problems.empty()) << c.problems[0];
  std::vector<std::string> types;
  for (const auto& e : c.events) types.push_back(e.type);
  ASSERT_GE(types.size(), 4u);
  EXPECT_EQ(types.front(), "run.created");
  EXPECT_EQ(types[types.size() - 3], "log.gap");
  EXPECT_EQ(types[types.size() - 2], "run.exit");
  EXPECT_EQ(types.back(), "run.finalized");
  // Drops are counted where they happen: one log.gap per run of drops the
  // writer saw together (more than one when it drained the queue between
  // them, as on a slow build), all between the events around them, and
  // together they count every lost event.
  uint64_t gap_lost = 0;
  for (const auto& e : c.events)
    if (e.type == "log.gap") gap_lost += e.data["lost"].get<uint64_t>();
  EXPECT_EQ(gap_lost, s.lost);
  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_LT(st.st_size, (1 << 20) + (70 << 10));
}

TEST(EventLog, RefusesToOverwriteAnExistingLog) {
  TempDir t;
  write_file(t.path + "/events.ndjson", "x\n");
  EXPECT_THROW(EventLog(t.path + "/events.ndjson", nullptr), SysError);
}

TEST(EventLog, WriteFailureIsCountedReportedAndLeavesAVerifiableLog) {
  TempDir t;
  std::string p = t.path + "/events.ndjson";
  std::string reported;
  EventLog log(p, [&](const std::string& m) { reported = m; });
  log.submit("a", json::object());
  ASSERT_TRUE(log.sync());
  log.inject_write_failures(1, ENOSPC);
  log.submit("b", json::object());
  log.submit("c", json::object());
  EXPECT_FALSE(log.sync());
  EXPECT_NE(reported.find("No space left on device"), std::string::npos) << reported;
  log.submit("d", json::object());
  auto s = log.close();
  EXPECT_EQ(s.submitted, 4u);
  EXPECT_EQ(s.written, 2u);
  EXPECT_EQ(s.lost, 2u);
  EXPECT_EQ(s.submitted, s.written + s.lost);
  LogCheck c = check_log(p);
  ASSERT_TRUE(c.problems.empty()) << c.problems[0];
  ASSERT_EQ(c.events.size(), 3u);  // a, log.gap, d
  EXPECT_EQ(c.events[1].type, "log.gap");
  EXPECT_EQ(c.events[1].data["lost"], 2);
  EXPECT_EQ(c.events[2].type, "d");
}

TEST(EventLog, RealDiskFullIsNeverSilent) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a tiny tmpfs (a real ENOSPC)";
  TempDir t;
  std::string mnt = t.path + "/small";
  mkdir_p(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=16k") != 0) GTEST_SKIP() << "cannot mount tmpfs here";
  std::string reported;
  {
    EventLog log(mnt + "/events.ndjson", [&](const std::string& m) { reported = m; });
    for (int i = 0; i < 10; ++i) log.submit("early", json{{"i", i}});
    EXPECT_TRUE(log.sync());
    for (int i = 0; i < 2000; ++i) log.submit("fill", json{{"pad", std::string(100, 'x')}, {"i", i}});
    auto s = log.close();
    EXPECT_GT(s.lost, 0u);
    EXPECT_EQ(s.submitted, s.written + s.lost);
  }
  EXPECT_NE(reported.find("No space left"), std::string::npos);
  LogCheck c = check_log(mnt + "/events.ndjson");
  EXPECT_TRUE(c.problems.empty()) << c.problems[0];
  EXPECT_GT(c.events.size(), 0u);
  ::umount2(mnt.c_str(), MNT_DETACH);
}

class Tamper : public ::testing::Test {
 protected:
  void SetUp() override {
    p = t.path + "/events.ndjson";
    EventLog log(p, nullptr);
    for (int i = 0; i < 6; ++i) log.submit("e", json{{"i", i}});
    log.submit("run.finalized", json::object());
    log.close();
    good = lines_of(p);
  }
  std::string first_problem() {
    auto c = check_log(p);
    return c.problems.empty() ? "" : c.problems[0];
  }
  TempDir t;
  std::string p;
  std::vector<std::string> good;
};

TEST_F(Tamper, IntactLogHasNoProblems) {
  EXPECT_EQ(first_problem(), "");
}

TEST_F(Tamper, EveryByteFlipIsDetected) {
  std::string orig = read_file(p);
  int undetected = 0;
  for (std::size_t i = 0; i < orig.size(); ++i) {
    std::string bad = orig;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    write_file(p, bad);
    auto c = check_log(p);
    bool detected = !c.problems.empty() || c.merkle_root != check_log(p).merkle_root;
    if (c.problems.empty()) ++undetected;
    (void)detected;
  }
  EXPECT_EQ(undetected, 0);
}

TEST_F(Tamper, DeletedLineIsDetected) {
  auto l = good;
  l.erase(l.begin() + 2);
  write_lines(p, l);
  EXPECT_NE(first_problem().find("line 3"), std::string::npos) << first_problem();
}

TEST_F(Tamper, SwappedLinesAreDetected) {
  auto l = good;
  std::swap(l[1], l[2]);
  write_lines(p, l);
  EXPECT_NE(first_problem().find("seq"), std::string::npos) << first_problem();
}

TEST_F(Tamper, TruncationIsDetected) {
  std::string orig = read_file(p);
  write_file(p, orig.substr(0, orig.size() - 10));
  auto c = check_log(p);
  EXPECT_TRUE(c.truncated_tail);
  EXPECT_FALSE(c.finalized);
}

TEST_F(Tamper, SplicedLogIsDetected) {
  TempDir other;
  std::string q = other.path + "/events.ndjson";
  {
    EventLog log(q, nullptr);
    for (int i = 0; i < 6; ++i) log.submit("e", json{{"i", 100 + i}});
    log.close();
  }
  auto l = good;
  l[3] = lines_of(q)[3];
  write_lines(p, l);
  EXPECT_NE(first_problem().find("line 4"), std::string::npos) << first_problem();
}

TEST(Dsse, PaeMatchesTheSpecExample) {
  // From the DSSE protocol document.
  EXPECT_EQ(dsse_pae("http://example.com/HelloWorld", "hello world"),
            "DSSEv1 29 http://example.com/HelloWorld 11 hello world");
  EXPECT_EQ(dsse_pae("", ""), "DSSEv1 0  0 ");
}

class Keys : public ::testing::TestWithParam<KeyType> {};

TEST_P(Keys, SignVerifyAndRejectTampering) {
  TempDir t;
  auto key = PrivateKey::generate(GetParam());
  key.save(t.path + "/k.pem");
  struct stat st {};
  ASSERT_EQ(::stat((t.path + "/k.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_THROW(key.save(t.path + "/k.pem"), SysError);  // never overwrites
  auto loaded = PrivateKey::load(t.path + "/k.pem");
  EXPECT_EQ(loaded.keyid(), key.keyid());
  std::string pub = read_file(t.path + "/k.pem.pub");
  EXPECT_EQ(keyid_of(pub), key.keyid());
  json env = dsse_sign("application/vnd.in-toto+json", "{\"x\":1}", loaded);
  std::string sig = base64_decode(env["signatures"][0]["sig"].get<std::string>());
  std::string pae = dsse_pae("application/vnd.in-toto+json", "{\"x\":1}");
  EXPECT_TRUE(verify_signature(pub, pae, sig));
  EXPECT_FALSE(verify_signature(pub, pae + " ", sig));
  std::string bad = sig;
  bad[bad.size() / 2] ^= 1;
  EXPECT_FALSE(verify_signature(pub, pae, bad));
  auto other = PrivateKey::generate(GetParam());
  EXPECT_FALSE(verify_signature(other.public_pem(), pae, sig));
  EXPECT_EQ(env["signatures"][0]["keyid"], key.keyid());
  EXPECT_EQ(base64_decode(env["payload"].get<std::string>()), "{\"x\":1}");
}

INSTANTIATE_TEST_SUITE_P(Both, Keys, ::testing::Values(KeyType::ed25519, KeyType::ecdsa_p256));

TEST(KeysErrors, GarbageKeysAreClearErrors) {
  TempDir t;
  write_file(t.path + "/bad.pem", "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n");
  try {
    PrivateKey::load(t.path + "/bad.pem");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.pem"), std::string::npos);
  }
  EXPECT_THROW(keyid_of("not a key"), Error);
  EXPECT_THROW(parse_key_type("rsa"), Error);
}

TEST(HostKey, CreatedOnceWithMode0600) {
  TempDir t;
  bool created = false;
  std::string p = ensure_host_key(t.path, KeyType::ed25519, &created);
  EXPECT_TRUE(created);
  std::string again = ensure_host_key(t.path, KeyType::ed25519, &created);
  EXPECT_FALSE(created);
  EXPECT_EQ(p, again);
  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_TRUE(path_exists(host_public_key_path(t.path)));
}

// Two supervisors creating their first runs at once on a fresh host (CI:
// one lost its attestation): each must get the same, whole key, and the
// public key beside it must be that key's. Processes, not threads: the
// real racers are separate supervisors. Many rounds, many racers: the
// window being closed was one write() wide.
TEST(HostKey, FirstRunsRacingAllSignWithTheSameWholeKey) {
  for (int round = 0; round < 40; ++round) {
    TempDir t;
    constexpr int kRacers = 6;
    int pipes[kRacers][2];
    std::vector<pid_t> kids;
    for (int i = 0; i < kRacers; ++i) {
      ASSERT_EQ(::pipe(pipes[i]), 0);
      pid_t pid = ::fork();
      ASSERT_GE(pid, 0);
      if (pid == 0) {
        ::close(pipes[i][0]);
        std::string out;
        try {
          std::string p = ensure_host_key(t.path, KeyType::ed25519, nullptr);
          auto k = load_signing_key(p, KeyType::ed25519);
          // The host's public key, as a verifier reads it, is this key's.
          out = k.keyid() + " " + keyid_of(read_file(host_public_key_path(t.path)));
        } catch (const std::exception& e) {
          out = std::string("ERROR ") + e.what();
        }
        (void)!::write(pipes[i][1], out.data(), out.size());
        ::_exit(0);
      }
      ::close(pipes[i][1]);
      kids.push_back(pid);
    }
    std::set<std::string> ids;
    for (int i = 0; i < kRacers; ++i) {
      std::string got;
      char buf[512];
      ssize_t n;
      while ((n = ::read(pipes[i][0], buf, sizeof buf)) > 0) got.append(buf, static_cast<size_t>(n));
      ::close(pipes[i][0]);
      int st = 0;
      ASSERT_EQ(::waitpid(kids[i], &st, 0), kids[i]);
      ASSERT_EQ(got.rfind("ERROR", 0), std::string::npos) << "round " << round << ": " << got;
      auto sp = got.find(' ');
      ASSERT_NE(sp, std::string::npos) << got;
      EXPECT_EQ(got.substr(0, sp), got.substr(sp + 1)) << "round " << round << ": the .pub is another key's";
      ids.insert(got.substr(0, sp));
    }
    EXPECT_EQ(ids.size(), 1u) << "round " << round << ": racers signed with different keys";
    struct stat st {};
    ASSERT_EQ(::stat((t.path + "/keys/signing.pem").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    // Nothing half-made is left beside the key.
    for (const auto& e : std::filesystem::directory_iterator(t.path + "/keys")) {
      std::string name = e.path().filename();
      EXPECT_TRUE(name == "signing.pem" || name == "signing.pem.pub") << name;
    }
  }
}

TEST(Ledger, ChainsRowsAndDetectsRewrites) {
  TempDir t;
  for (int i = 0; i < 5; ++i)
    ledger_append(t.path, [&](uint64_t index, const std::string& prev) {
      EXPECT_EQ(index, static_cast<uint64_t>(i));
      EXPECT_EQ(prev.size(), 64u);
      return json{{"run_id", "r" + std::to_string(i)}};
    });
  std::string p = t.path + "/ledger.ndjson";
  auto c = check_ledger(p);
  EXPECT_TRUE(c.problems.empty());
  EXPECT_EQ(c.rows.size(), 5u);
  auto l = lines_of(p);
  auto del = l;
  del.erase(del.begin() + 1);
  write_lines(p, del);
  EXPECT_FALSE(check_ledger(p).problems.empty());
  auto rew = l;
  rew[2].replace(rew[2].find("\"r2\""), 4, "\"rX\"");
  write_lines(p, rew);
  EXPECT_NE(check_ledger(p).problems.at(0).find("row_hash"), std::string::npos);
}

TEST(Ledger, ConcurrentAppendsNeverFork) {
  TempDir t;
  std::vector<std::thread> th;
  for (int k = 0; k < 4; ++k)
    th.emplace_back([&, k] {
      for (int i = 0; i < 25; ++i)
        ledger_append(t.path, [&](uint64_t, const std::string&) {
          return json{{"run_id", std::to_string(k * 100 + i)}};
        });
    });
  for (auto& x : th) x.join();
  auto c = check_ledger(t.path + "/ledger.ndjson");
  EXPECT_TRUE(c.problems.empty()) << c.problems[0];
  EXPECT_EQ(c.rows.size(), 100u);
}

namespace {
std::vector<LoggedEvent> evs(std::initializer_list<const char*> types) {
  std::vector<LoggedEvent> out;
  uint64_t seq = 0;
  for (const char* t : types) {
    LoggedEvent e{};
    e.seq = seq++;
    std::string s = t;
    if (s == "fs.root.before" || s == "fs.root.after") {
      e.data = {{"phase", s.substr(8)}};
      s = "fs.root";
    }
    e.type = s;
    out.push_back(e);
  }
  return out;
}
}  // namespace

// FORMATS.md "Mandatory events": a complete run's order.
TEST(RunEvents, MandatoryEventsInOrder) {
  EXPECT_TRUE(check_run_events(
                  evs({"run.created", "fs.root.before", "run.started", "process.exec", "caller.exec",
                       "process.exec_failed", "run.exit", "fs.root.after", "fs.changes", "run.finalized"}))
                  .empty());
  // Created and deleted without start: no run.started, no exec.
  EXPECT_TRUE(check_run_events(evs({"run.created", "fs.root.before", "run.exit", "fs.root.after",
                                    "fs.changes", "run.finalized"}))
                  .empty());
  auto one = [](std::initializer_list<const char*> t, const std::string& want) {
    auto p = check_run_events(evs(t));
    ASSERT_EQ(p.size(), 1u) << testing::PrintToString(p);
    EXPECT_NE(p[0].find(want), std::string::npos) << p[0];
  };
  one({"run.created", "process.exec", "run.started", "run.exit", "run.finalized"},
      "comes before run.started");
  one({"run.created", "process.exec", "run.exit", "run.finalized"}, "without run.started");
  one({"run.created", "run.started", "caller.exec", "run.finalized"}, "run.exit appears 0 times");
  one({"run.started", "run.created", "run.exit", "run.finalized"}, "run.created is not the first");
  one({"run.created", "run.exit", "run.finalized", "run.started"}, "run.finalized is not the last");
  one({"run.created", "run.started", "run.started", "run.exit", "run.finalized"}, "run.started appears 2");
  one({"run.created", "fs.root.after", "fs.root.before", "run.exit", "run.finalized"}, "after comes before");
  one({"run.created", "fs.changes", "fs.root.after", "run.exit", "run.finalized"}, "fs.changes comes before");
}
