// agentshim's own commands over run records: verify, export, runs list/show,
// keygen.
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <thread>

#include "attest/bundle.h"
#include "attest/canonical.h"
#include "attest/eventlog.h"
#include "attest/fstree.h"
#include "attest/ledger.h"
#include "attest/record.h"
#include "attest/runstore.h"
#include "attest/sign.h"
#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "sandbox/policy.h"
#include "sandbox/state.h"
#include "shim/commands.h"

namespace agentshim::cli {
namespace {

using json = nlohmann::json;

// Exit status 2 for usage and I/O errors in the record commands.
struct UsageError : Error {
  using Error::Error;
};

// Where the records are: --audit-dir, else the policy's audit.dir (the
// choice `create` made), else the default.
attest::RunStore run_store(const container::Global& g) {
  if (!g.audit_dir.empty()) return attest::RunStore(g.audit_dir);
  return attest::RunStore(policy::audit_dir(policy::load(g.policy_path), ""));
}

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Ledger rows whose run directory is missing: records deleted after they
// were finalized. (A ledger that does not verify lists what verifies.)
std::vector<json> deleted_runs(const attest::RunStore& store) {
  std::vector<json> out;
  if (!try_read_file(store.audit_dir() + "/ledger.ndjson")) return out;
  for (const auto& row : attest::check_ledger(store.audit_dir() + "/ledger.ndjson").rows) {
    std::string id = row.value("run_id", "");
    if (!id.empty() && !is_dir(store.run_dir(id))) out.push_back(row);
  }
  return out;
}

// RUN is a run directory, a run id, or a container id (its latest run).
std::string resolve_run_dir(const container::Global& g, const std::string& run) {
  if (run.find('/') != std::string::npos) {
    if (!is_dir(run)) throw UsageError("run directory " + run + " does not exist");
    return run;
  }
  const attest::RunStore store = run_store(g);
  if (store.has(run)) return store.run_dir(run);
  try {
    auto st = state::load(g.root, run);
    if (!st.run_id.empty()) {
      const attest::RunStore its = st.audit_dir.empty() ? store : attest::RunStore(st.audit_dir);
      if (its.has(st.run_id)) return its.run_dir(st.run_id);
    }
  } catch (const std::exception&) {
  }
  if (auto id = store.latest_run_of(run)) return store.run_dir(*id);
  // Signed into the ledger once, gone from disk since: say so (a deleted
  // record is a finding, not a typo).
  for (const auto& row : deleted_runs(store))
    if (row.value("run_id", "") == run || row.value("container_id", "") == run)
      throw Error("run " + row.value("run_id", "") + " (container " + row.value("container_id", "") +
                  ") is in the ledger (index " + std::to_string(row.value("index", 0)) + ", finalized " +
                  row.value("time", "") + ") but its directory " + store.run_dir(row.value("run_id", "")) +
                  " is missing: the record was deleted");
  throw UsageError("no run record for \"" + run + "\" in " + store.runs_dir() +
                   " (give a run id, a container id or a run directory)");
}

// Whether the run's supervisor still holds its record (the container runs,
// or its record is being finalized).
bool in_progress(const std::string& rd) {
  return !attest::wait_finalized(rd, 0);
}

// A run whose record is still being finalized (its container just exited)
// is waited for, up to two minutes.
std::string resolve_run(const container::Global& g, const std::string& run) {
  std::string rd = resolve_run_dir(g, run);
  if (!attest::wait_finalized(rd, 120000))
    log::warn("the record in " + rd + " is still being finalized after 120 s; reading it as it is");
  return rd;
}

bool g_full_hashes = false;  // runs show --full
std::string short_hash(const std::string& h) {
  return h.size() > 16 && !g_full_hashes ? h.substr(0, 16) : h;
}

// Human output shows what a container chose (argv, paths, hosts, DNS names,
// reasons quoting them): every value goes through t() (escape_for_terminal),
// so no byte of it acts on the operator's terminal. --json stays exact.
std::string t(const std::string& s) {
  return escape_for_terminal(s);
}
std::string t(const json& j, const char* k) {
  return t(attest::pct_decode(j.value(k, "")));
}

std::string show_args(const json& args) {
  std::string out;
  for (const auto& a : args) {
    std::string s = t(a.is_string() ? attest::pct_decode(a.get<std::string>()) : a.dump());
    bool quote = s.empty() || s.find_first_of(" '\"\\$") != std::string::npos;
    if (!out.empty()) out += ' ';
    if (quote) {
      std::string q = "'";
      for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
      out += q + "'";
    } else {
      out += s;
    }
  }
  return out;
}

void print_account(const json& a, const attest::VerifyResult& v, bool running = false) {
  std::cout << "run        " << t(a, "run_id") << "\n";
  std::cout << "container  " << t(a, "container_id") << "\n";
  if (a.contains("kubernetes")) {
    // The CRI client's annotations: claims by the caller, not checked.
    const json& k = a["kubernetes"];
    std::cout << "pod        " << t(k, "namespace") << "/" << t(k, "pod_name") << " (uid " << t(k, "pod_uid")
              << ", sandbox " << t(k, "sandbox_id") << ")";
    if (k.contains("container_name")) std::cout << ", container " << t(k, "container_name");
    std::cout << "  [annotations: the caller's claims]\n";
  }
  std::cout << "command    " << show_args(a.value("command", json::array())) << "\n";
  std::cout << "created    " << t(a, "created") << "\n";
  if (a.contains("started")) std::cout << "started    " << t(a, "started") << "\n";
  if (a.contains("finished")) std::cout << "finished   " << t(a, "finished") << "\n";
  if (running) {
    std::cout << "status     running (the record is still being written: `runs show --follow` streams it)\n";
  } else if (a.contains("exit")) {
    const json& e = a["exit"];
    std::cout << "exit       code " << e.value("code", 0);
    if (!e.value("signal", "").empty()) std::cout << " (killed by " << t(e, "signal") << ")";
    if (e.value("oom_kills", 0) > 0) std::cout << " (OOM kills: " << e.value("oom_kills", 0) << ")";
    std::cout << "\n";
  } else {
    std::cout << "exit       (not recorded: the run did not finish)\n";
  }
  if (a.contains("sandbox")) {
    const json& s = a["sandbox"];
    std::cout << "sandbox    namespaces " << show_args(s.value("namespaces", json::array())) << "\n";
    std::cout << "           capabilities "
              << (s.value("capabilities", json::array()).empty() ? std::string("(none)")
                                                                 : show_args(s["capabilities"]))
              << "\n";
    std::cout << "           no_new_privs " << (s.value("no_new_privileges", false) ? "yes" : "no")
              << ", read-only root " << (s.value("readonly_root", false) ? "yes" : "no") << ", seccomp "
              << (s["seccomp"].value("config_profile", false) ||
                          s["seccomp"].value("agentshim_profile", false)
                      ? "yes"
                      : "no")
              << ", exec observer " << (s["seccomp"].value("exec_observer", false) ? "on" : "off") << "\n";
  }
  const json& procs = a["processes"];
  std::cout << "\nprocesses executed (" << procs.size() << ")\n";
  for (const auto& p : procs) {
    std::cout << "  " << t(p, "time") << "  pid " << p.value("pid", 0) << "  " << t(p, "path")
              << "  sha256:" << t(short_hash(p.value("sha256", "")));
    if (p.contains("session")) std::cout << "  session " << t(p["session"].dump());
    std::cout << "\n      argv: " << show_args(p.value("argv", json::array())) << "\n";
    // The interpreters of a #! script (one, or the chain), as recorded.
    json interps =
        p.contains("interpreters") && p["interpreters"].is_array() ? p["interpreters"] : json::array();
    if (p.contains("interpreter") && p["interpreter"].is_object()) interps.push_back(p["interpreter"]);
    for (const auto& i : interps)
      if (i.is_object())
        std::cout << "      interpreter: " << t(i, "path")
                  << "  sha256:" << t(short_hash(i.value("sha256", ""))) << "\n";
  }
  const json& failed = a["exec_attempts_failed"];
  if (!failed.empty()) {
    std::cout << "\nexec attempts that failed (" << failed.size() << ")\n";
    for (const auto& p : failed)
      std::cout << "  " << t(p, "time") << "  pid " << p.value("pid", 0) << "  " << t(p, "path") << "  "
                << t(p.value("errno", "")) << "\n";
  }
  if (!a["signals"].empty()) {
    std::cout << "\nsignals (" << a["signals"].size() << ")\n";
    for (const auto& s : a["signals"])
      std::cout << "  " << t(s.value("time", "")) << "  " << t(s.value("signal", "")) << "  from "
                << t(s.value("source", "caller")) << (s.value("all", false) ? "  (every process)" : "")
                << "\n";
  }
  if (!a["policy_changes"].empty() || !a["lifecycle"].empty()) {
    std::cout << "\nchanges by the caller\n";
    for (const auto& c : a["policy_changes"]) {
      std::cout << "  " << t(c.value("time", ""))
                << "  update: resources sha256:" << t(short_hash(c.value("resources_sha256", ""))) << "\n";
      for (const auto& d : c.value("policy_decisions", json::array()))
        if (d.is_object())
          std::cout << "      policy " << t(d.value("action", "")) << " " << t(d.value("path", "")) << ": "
                    << t(d.value("detail", "")) << "\n";
    }
    for (const auto& l : a["lifecycle"])
      std::cout << "  " << t(l.value("time", "")) << "  " << t(l.value("action", "")) << "\n";
  }
  if (!a["caller_execs"].empty()) {
    std::cout << "\nexec by the caller (" << a["caller_execs"].size() << ")\n";
    for (const auto& e : a["caller_execs"])
      std::cout << "  " << t(e, "time") << "  " << show_args(e["args"]) << "\n";
  }
  const json& net = a["network"];
  std::cout << "\nnetwork    allowed " << net["allowed"].size() << ", denied " << net["denied"].size()
            << ", DNS queries " << net.value("dns", json::array()).size();
  if (net.contains("namespace"))
    std::cout << "  (mode " << t(net["namespace"], "mode") << ", proxy " << t(net["namespace"], "proxy")
              << ")";
  std::cout << "\n";
  for (const auto& n : net["allowed"])
    std::cout << "  allowed  " << t(n, "method") << " " << t(n, "host") << ":" << n.value("port", 0) << " -> "
              << t(n, "resolved") << "  rule " << t(n, "rule") << "  up " << n.value("bytes_up", 0)
              << " B, down " << n.value("bytes_down", 0) << " B, " << n.value("duration_ms", 0) << " ms, "
              << t(n, "end") << "\n";
  for (const auto& n : net["denied"])
    std::cout << "  denied   " << t(n, "method") << " " << t(n, "host") << ":" << n.value("port", 0) << "  "
              << t(n, "reason") << "\n";
  for (const auto& n : net.value("dns", json::array()))
    if (n.contains("name"))
      std::cout << "  dns      " << t(n, "qtype") << " " << t(n, "name") << "  " << t(n, "rcode") << "\n";
  const json& f = a["files"];
  std::cout << "\nfiles      added " << f["added"].size() << ", modified " << f["modified"].size()
            << ", removed " << f["removed"].size() << "\n";
  for (const auto& p : f["added"]) std::cout << "  + " << t(attest::pct_decode(p.get<std::string>())) << "\n";
  for (const auto& p : f["modified"])
    std::cout << "  ~ " << t(attest::pct_decode(p.get<std::string>())) << "\n";
  for (const auto& p : f["removed"])
    std::cout << "  - " << t(attest::pct_decode(p.get<std::string>())) << "\n";
  for (const auto& p : f.value("unverified", json::array()))
    std::cout << "  ? " << t(attest::pct_decode(p.get<std::string>()))
              << "  (written or maybe written; over max_file_bytes: content not compared)\n";
  if (running) return;
  std::cout << "\nrecord     " << (v.verified() ? "VERIFIED" : "NOT VERIFIED") << "\n";
  for (const auto& m : v.mismatches) std::cout << "  MISMATCH: " << t(m) << "\n";
}

// `agentshim export`: the bytes of the record's envelope (dsse), one compact
// line of it (intoto-jsonl: the in-toto attestation bundle format), or the
// Sigstore bundle (the run's own file, else made from the envelope: the same
// JSON value, the signature's keyid as the key hint).
int export_record(const std::string& rd, const std::string& format, const std::string& output) {
  auto env_text = try_read_file(rd + "/" + attest::kEnvelopeFile);
  if (!env_text) throw UsageError(rd + ": no " + attest::kEnvelopeFile + " (the run was not finalized)");
  std::string out;
  if (format == "dsse") {
    out = *env_text;
  } else {
    json env;
    try {
      env = json::parse(*env_text);
    } catch (const json::exception&) {
      throw Error(rd + "/" + attest::kEnvelopeFile + ": not valid JSON");
    }
    if (format == "intoto-jsonl") {
      out = env.dump() + "\n";
    } else if (auto own = try_read_file(rd + "/" + attest::kBundleFile)) {
      out = *own;
    } else {
      const json& sigs = env.value("signatures", json::array());
      std::string keyid =
          sigs.is_array() && sigs.size() == 1 && sigs[0].is_object() ? sigs[0].value("keyid", "") : "";
      out = attest::bundle_text(attest::sigstore_bundle(env, keyid));
    }
  }
  if (output.empty() || output == "-") {
    std::cout << out << std::flush;
  } else {
    write_file_atomic(output, out, 0644);
  }
  return 0;
}

void add_verify(Commands& c) {
  struct Flags {
    std::string run, public_key, check_path;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd =
      c.app().add_subcommand("verify", "verify a run's record offline (event log, ledger, signature, roots)");
  cmd->add_option("run", f->run, "run id, container id or run directory")->required();
  cmd->add_option("--public-key", f->public_key, "pin the signer's public key (PEM)");
  cmd->add_option("--check-path", f->check_path,
                  "also re-hash this directory and compare it with the post-run root");
  cmd->add_flag("--json", f->json, "print the result as JSON");
  c.on(cmd, [f, &g = c.global()]() {
    try {
      std::string rd = resolve_run(g, f->run);
      attest::VerifyOptions o;
      o.public_key_path = f->public_key;
      o.check_path = f->check_path;
      if (!o.public_key_path.empty() && !path_exists(o.public_key_path))
        throw UsageError("--public-key " + o.public_key_path + ": no such file");
      if (!o.check_path.empty() && !is_dir(o.check_path))
        throw UsageError("--check-path " + o.check_path + ": not a directory");
      auto r = attest::verify_run(rd, o);
      if (f->json) {
        std::cout << json{{"run_dir", rd},
                          {"verified", r.verified()},
                          {"mismatches", r.mismatches},
                          {"notes", r.notes},
                          {"report", r.report}}
                         .dump(2)
                  << "\n";
      } else {
        for (const auto& n : r.notes) std::cerr << "note: " << n << "\n";
        if (r.verified())
          std::cout << "VERIFIED\n";
        else
          for (const auto& m : r.mismatches) std::cout << "MISMATCH: " << t(m) << "\n";
      }
      return r.verified() ? 0 : 1;
    } catch (const std::exception& e) {
      std::cerr << "agentshim verify: " << e.what() << "\n";
      return 2;
    }
  });
}

// export: a run's attestation in a standard format, for records made before
// attestation.sigstore.json existed and for tools that want DSSE or in-toto
// JSON Lines (docs/VERIFYING.md).
void add_export(Commands& c) {
  struct Flags {
    std::string run, format = "sigstore-bundle", output;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = c.app().add_subcommand(
      "export", "write a run's attestation as a Sigstore bundle, a DSSE envelope or in-toto JSON Lines");
  cmd->add_option("run", f->run, "run id, container id or run directory")->required();
  cmd->add_option("--format", f->format, "sigstore-bundle (default), dsse or intoto-jsonl")
      ->check(CLI::IsMember({"sigstore-bundle", "dsse", "intoto-jsonl"}));
  cmd->add_option("-o,--output", f->output, "write to this file (default: standard output)");
  c.on(cmd, [f, &g = c.global()]() {
    try {
      return export_record(resolve_run(g, f->run), f->format, f->output);
    } catch (const std::exception& e) {
      std::cerr << "agentshim export: " << e.what() << "\n";
      return 2;
    }
  });
}

void add_runs_list(Commands& c, CLI::App* runs) {
  struct Flags {
    bool json = false;
    // Filters on the Kubernetes identity (session.json's "kubernetes").
    std::map<std::string, std::string> kubernetes;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = runs->add_subcommand("list", "list the runs recorded on this host");
  cmd->add_flag("--json", f->json, "JSON output");
  // Each filter keeps the runs whose recorded Kubernetes identity has that
  // member equal to the value (the caller's claims: docs/PREDICATE.md).
  static const std::pair<const char*, const char*> kFilters[] = {{"--namespace", "namespace"},
                                                                 {"--pod", "pod_name"},
                                                                 {"--pod-uid", "pod_uid"},
                                                                 {"--sandbox-id", "sandbox_id"},
                                                                 {"--k8s-container", "container_name"}};
  for (const auto& [flag, member] : kFilters)
    cmd->add_option_function<std::string>(
        flag, [f, m = std::string(member)](const std::string& v) { f->kubernetes[m] = v; },
        std::string("only runs whose Kubernetes ") + member + " is this");
  c.on(cmd, [f, &g = c.global()]() {
    const attest::RunStore store = run_store(g);
    json out = json::array();
    for (const auto& id : store.run_ids()) {
      json row = {{"run_id", id}, {"container_id", store.container_of(id)}, {"complete", false}};
      if (auto s = try_read_file(store.run_dir(id) + "/session.json")) try {
          json sj = json::parse(*s);
          row["complete"] = sj.value("complete", false);
          row["events"] = sj.value("event_count", 0);
          row["finished"] = sj.value("finished", "");
          if (sj.contains("kubernetes") && sj["kubernetes"].is_object()) row["kubernetes"] = sj["kubernetes"];
        } catch (...) {
        }
      bool keep = true;
      for (const auto& [member, want] : f->kubernetes) {
        const json k = row.value("kubernetes", json::object());
        keep = keep && k.contains(member) && k[member].is_string() && k[member] == want;
      }
      if (keep) out.push_back(row);
    }
    if (f->kubernetes.empty())
      for (const auto& row : deleted_runs(store))
        out.push_back(json{{"run_id", row.value("run_id", "")},
                           {"container_id", row.value("container_id", "")},
                           {"complete", false},
                           {"deleted", true},
                           {"finished", row.value("time", "")}});
    if (f->json) {
      std::cout << out.dump(2) << "\n";
    } else {
      // POD (namespace/name, then the container's name) when a run has one.
      const bool pods =
          std::any_of(out.begin(), out.end(), [](const json& r) { return r.contains("kubernetes"); });
      auto pod = [](const json& r) {
        const json k = r.value("kubernetes", json::object());
        std::string s = k.value("namespace", "-") + "/" + k.value("pod_name", "-");
        if (k.contains("container_name")) s += " " + k.value("container_name", "");
        return r.contains("kubernetes") ? s : std::string("-");
      };
      const char* fmt = pods ? "%-38s %-20s %-9s %-32s %s\n" : "%-38s %-20s %-9s %s%s\n";
      std::printf(fmt, "RUN", "CONTAINER", "COMPLETE", "FINISHED", pods ? "POD" : "");
      for (const auto& r : out)
        std::printf(fmt, t(r["run_id"].get<std::string>()).c_str(),
                    t(r["container_id"].get<std::string>()).c_str(),
                    r.value("deleted", false)   ? "DELETED"
                    : r["complete"].get<bool>() ? "yes"
                                                : "no",
                    t(r.value("finished", "")).c_str(), pods ? t(pod(r)).c_str() : "");
    }
    return 0;
  });
}

// One event of a running record, one line (runs show --follow).
std::string event_summary(const attest::LoggedEvent& ev) {
  const json& d = ev.data;
  std::string s = t(ev.time) + "  " + t(ev.type);
  if (ev.type == "process.exec")
    s += "  " + t(d, "path") + "  argv: " + show_args(d.value("argv", json::array()));
  else if (ev.type == "process.exec_failed")
    s += "  " + t(d, "path") + "  " + t(d.value("errno", ""));
  else if (ev.type == "net.connection")
    s += "  " + t(d, "decision") + " " + t(d, "host") + ":" + std::to_string(d.value("port", 0)) + "  " +
         t(d, "reason");
  else if (ev.type == "run.exit")
    s += "  code " + std::to_string(d.value("code", 0)) + " " + t(d, "signal");
  else {
    std::string text = d.dump();
    s += "  " + t(text.size() > 200 ? text.substr(0, 200) + "..." : text);
  }
  return s;
}

// Print the events after the first `seen` as they are appended, until the
// run is finalized (or its supervisor is gone).
void follow(const std::string& rd, std::size_t seen) {
  for (;;) {
    bool done = !in_progress(rd);
    auto lc = attest::check_log(rd + "/events.ndjson");
    for (std::size_t i = seen; i < lc.events.size(); ++i)
      std::cout << "  " << event_summary(lc.events[i]) << "\n";
    std::cout.flush();
    seen = std::max(seen, lc.events.size());
    if (done || lc.finalized) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

void add_runs_show(Commands& c, CLI::App* runs) {
  struct Flags {
    std::string run;
    bool json = false;
    bool full = false;
    bool follow = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd =
      runs->add_subcommand("show", "what a run did: command, exit, processes, network, files, sandbox");
  cmd->add_option("run", f->run, "run id, container id or run directory")->required();
  cmd->add_flag("--json", f->json, "JSON output");
  cmd->add_flag("--full", f->full, "print whole SHA-256 hashes");
  cmd->add_flag("--follow", f->follow,
                "for a running container: stream its events until the run is finalized");
  c.on(cmd, [f, &g = c.global()]() {
    try {
      g_full_hashes = f->full;
      std::string rd = resolve_run_dir(g, f->run);
      // A container that still runs is shown at once, as far as its record
      // goes; one that has exited is waited for while its record is being
      // finalized (a moment).
      bool running = false;
      if (in_progress(rd)) running = !attest::run_account(rd).contains("exit");
      if (running && f->follow) {
        json a = attest::run_account(rd);
        print_account(a, attest::VerifyResult{}, true);
        std::cout << "\nevents (following)\n";
        follow(rd, a.value("events", std::size_t{0}));
        running = false;
      }
      if (!running && !attest::wait_finalized(rd, 120000))
        log::warn("the record in " + rd + " is still being finalized after 120 s; reading it as it is");
      json a = attest::run_account(rd);
      if (running) {
        if (f->json) {
          a["running"] = true;
          a["verified"] = false;
          a["mismatches"] = json::array();
          std::cout << a.dump(2) << "\n";
        } else {
          print_account(a, attest::VerifyResult{}, true);
        }
        return 0;
      }
      auto v = attest::verify_run(rd, attest::VerifyOptions{});
      if (f->json) {
        a["running"] = false;
        a["verified"] = v.verified();
        a["mismatches"] = v.mismatches;
        std::cout << a.dump(2) << "\n";
      } else {
        if (f->follow) std::cout << "\n";
        print_account(a, v);
      }
      return 0;
    } catch (const UsageError& e) {
      std::cerr << "agentshim runs show: " << e.what() << "\n";
      return 2;
    } catch (const std::exception& e) {
      std::cerr << "agentshim runs show: " << e.what() << "\n";
      return 1;
    }
  });
}

// fs-root: the filesystem root agentshim would record for a directory
// (operators compare trees with it; the benchmarks time it).
void add_fs_root(Commands& c) {
  struct Flags {
    std::string dir, cache;
    int threads = 0;
    bool json = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = c.app().add_subcommand("fs-root",
                                     "print the filesystem Merkle root of a directory (see docs/FORMATS.md)");
  cmd->add_option("dir", f->dir, "directory")->required();
  cmd->add_option(
      "--cache", f->cache,
      "hash cache store (LMDB file; default: none); with it, the stat-only check and overlay layers "
      "as the supervisor uses them");
  cmd->add_option("--threads", f->threads, "hashing threads (default: all cores)");
  cmd->add_flag("--json", f->json, "JSON output");
  c.on(cmd, [f]() {
    attest::WalkOptions o;
    o.cache_path = f->cache;
    if (!f->cache.empty()) o.tree_key = "tree:" + f->dir;
    o.threads = static_cast<unsigned>(std::max(0, f->threads));
    auto t0 = std::chrono::steady_clock::now();
    std::vector<attest::LayerUse> layers;
    auto s = attest::snapshot_root(f->dir, o, &layers);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    json out = {{"root", attest::hex(s.root)},
                {"entries", attest::entry_count(s)},
                {"files", s.files},
                {"bytes_hashed", s.bytes_hashed},
                {"cache_hits", s.cache_hits},
                {"reused", s.reused},
                {"seconds_x1000", static_cast<long long>(secs * 1000)}};
    if (!layers.empty()) {
      out["layers"] = json::array();
      for (const auto& l : layers) {
        json lj = {{"role", l.role}, {"path", l.path}, {"walk", l.walk}, {"entries", l.entries}};
        if (!l.identity.empty()) lj["identity"] = l.identity;
        out["layers"].push_back(std::move(lj));
      }
    }
    if (f->json)
      std::cout << out.dump() << "\n";
    else
      std::cout << attest::hex(s.root) << "  " << f->dir << "\n";
    return 0;
  });
}

void add_keygen(Commands& c) {
  struct Flags {
    std::string type = "ed25519", out;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = c.app().add_subcommand("keygen", "create a signing key pair (PKCS#8 PEM)");
  cmd->add_option("--type", f->type, "ed25519 (default) or ecdsa-p256");
  cmd->add_option("--out", f->out,
                  "directory for signing.pem and signing.pem.pub (default <audit-dir>/keys)");
  c.on(cmd, [f, &g = c.global()]() {
    auto type = attest::parse_key_type(f->type);
    std::string dir = f->out.empty() ? run_store(g).keys_dir() : f->out;
    mkdir_p(dir, 0700);
    std::string path = dir + "/signing.pem";
    auto key = attest::PrivateKey::generate(type);
    key.save(path);
    std::cout << "private key: " << path << " (0600)\npublic key:  " << path
              << ".pub\nkey id:      " << key.keyid() << "\nalgorithm:   " << key.algorithm() << "\n";
    return 0;
  });
}

}  // namespace

void add_record_commands(Commands& c) {
  add_verify(c);
  add_export(c);
  auto* runs = c.app().add_subcommand("runs", "list and show run records");
  runs->require_subcommand(1);
  add_runs_list(c, runs);
  add_runs_show(c, runs);
  add_fs_root(c);
  add_keygen(c);
}

}  // namespace agentshim::cli
