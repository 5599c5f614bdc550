// agentshim's own commands over run records: verify, export, runs list/show,
// keygen.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <iostream>

#include "attest/bundle.h"
#include "attest/canonical.h"
#include "attest/eventlog.h"
#include "attest/fstree.h"
#include "attest/record.h"
#include "attest/sign.h"
#include "common/log.h"
#include "common/error.h"
#include "common/util.h"
#include "sandbox/state.h"
#include "shim/commands.h"

namespace agentshim::cli {
namespace {

using json = nlohmann::json;

// Exit status 2 for usage and I/O errors in the record commands.
struct UsageError : Error {
  using Error::Error;
};

std::string audit_dir_of(const container::Global& g) {
  return g.audit_dir.empty() ? std::string("/var/lib/agentshim") : g.audit_dir;
}

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<std::string> run_ids(const std::string& audit) {
  std::vector<std::string> out;
  DIR* d = ::opendir((audit + "/runs").c_str());
  if (!d) return out;
  while (auto* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// The container id a run was created for (first line of its log).
std::string container_of(const std::string& rd) {
  auto s = try_read_file(rd + "/session.json");
  if (s) try {
      return json::parse(*s).value("container_id", "");
    } catch (...) {
    }
  auto text = try_read_file(rd + "/events.ndjson");
  if (!text) return "";
  auto nl = text->find('\n');
  try {
    json ev = json::parse(text->substr(0, nl));
    return ev["data"].value("container_id", "");
  } catch (...) {
    return "";
  }
}

std::string resolve_run_dir(const container::Global& g, const std::string& run);

// RUN is a run directory, a run id, or a container id (its latest run). A
// run whose record is still being finalized (its container just exited) is
// waited for, up to two minutes.
std::string resolve_run(const container::Global& g, const std::string& run) {
  std::string rd = resolve_run_dir(g, run);
  if (!attest::wait_finalized(rd, 120000))
    log::warn("the record in " + rd + " is still being finalized after 120 s; reading it as it is");
  return rd;
}

std::string resolve_run_dir(const container::Global& g, const std::string& run) {
  if (run.find('/') != std::string::npos) {
    if (!is_dir(run)) throw UsageError("run directory " + run + " does not exist");
    return run;
  }
  std::string audit = audit_dir_of(g);
  if (!run.empty() && run != "." && run != ".." && is_dir(audit + "/runs/" + run)) return audit + "/runs/" + run;
  try {
    auto st = state::load(g.root, run);
    if (!st.run_id.empty()) {
      std::string a = st.audit_dir.empty() ? audit : st.audit_dir;
      if (is_dir(a + "/runs/" + st.run_id)) return a + "/runs/" + st.run_id;
    }
  } catch (const std::exception&) {
  }
  auto ids = run_ids(audit);
  for (auto it = ids.rbegin(); it != ids.rend(); ++it)
    if (container_of(audit + "/runs/" + *it) == run) return audit + "/runs/" + *it;
  throw UsageError("no run record for \"" + run + "\" in " + audit + "/runs (give a run id, a container id or a run directory)");
}

std::string short_hash(const std::string& h) { return h.size() > 16 ? h.substr(0, 16) : h; }

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

void print_account(const json& a, const attest::VerifyResult& v) {
  std::cout << "run        " << t(a, "run_id") << "\n";
  std::cout << "container  " << t(a, "container_id") << "\n";
  std::cout << "command    " << show_args(a.value("command", json::array())) << "\n";
  std::cout << "created    " << t(a, "created") << "\n";
  if (a.contains("started")) std::cout << "started    " << t(a, "started") << "\n";
  if (a.contains("finished")) std::cout << "finished   " << t(a, "finished") << "\n";
  if (a.contains("exit")) {
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
    std::cout << "           capabilities " << (s.value("capabilities", json::array()).empty() ? std::string("(none)") : show_args(s["capabilities"])) << "\n";
    std::cout << "           no_new_privs " << (s.value("no_new_privileges", false) ? "yes" : "no") << ", read-only root "
              << (s.value("readonly_root", false) ? "yes" : "no") << ", seccomp "
              << (s["seccomp"].value("config_profile", false) || s["seccomp"].value("agentshim_profile", false) ? "yes" : "no")
              << ", exec observer " << (s["seccomp"].value("exec_observer", false) ? "on" : "off") << "\n";
  }
  const json& procs = a["processes"];
  std::cout << "\nprocesses executed (" << procs.size() << ")\n";
  for (const auto& p : procs)
    std::cout << "  " << t(p, "time") << "  pid " << p.value("pid", 0) << "  " << t(p, "path")
              << "  sha256:" << t(short_hash(p.value("sha256", "")))
              << "\n      argv: " << show_args(p.value("argv", json::array())) << "\n";
  if (!a["caller_execs"].empty()) {
    std::cout << "\nexec by the caller (" << a["caller_execs"].size() << ")\n";
    for (const auto& e : a["caller_execs"])
      std::cout << "  " << t(e, "time") << "  " << show_args(e["args"]) << "\n";
  }
  const json& net = a["network"];
  std::cout << "\nnetwork    allowed " << net["allowed"].size() << ", denied " << net["denied"].size() << ", DNS queries "
            << net.value("dns", json::array()).size();
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
  std::cout << "\nfiles      added " << f["added"].size() << ", modified " << f["modified"].size() << ", removed "
            << f["removed"].size() << "\n";
  for (const auto& p : f["added"]) std::cout << "  + " << t(attest::pct_decode(p.get<std::string>())) << "\n";
  for (const auto& p : f["modified"])
    std::cout << "  ~ " << t(attest::pct_decode(p.get<std::string>())) << "\n";
  for (const auto& p : f["removed"])
    std::cout << "  - " << t(attest::pct_decode(p.get<std::string>())) << "\n";
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

}  // namespace

void Commands::add_agentshim_commands() {
  // verify
  auto* verify = app_.add_subcommand("verify", "verify a run's record offline (event log, ledger, signature, roots)");
  verify->add_option("run", id_, "run id, container id or run directory")->required();
  verify->add_option("--public-key", str_a_, "pin the signer's public key (PEM)");
  verify->add_option("--check-path", str_b_, "also re-hash this directory and compare it with the post-run root");
  verify->add_flag("--json", flag_a_, "print the result as JSON");
  handlers_.push_back({verify, [this]() {
                         try {
                           std::string rd = resolve_run(g_, id_);
                           attest::VerifyOptions o;
                           o.public_key_path = str_a_;
                           o.check_path = str_b_;
                           if (!o.public_key_path.empty() && !path_exists(o.public_key_path))
                             throw UsageError("--public-key " + o.public_key_path + ": no such file");
                           if (!o.check_path.empty() && !is_dir(o.check_path))
                             throw UsageError("--check-path " + o.check_path + ": not a directory");
                           auto r = attest::verify_run(rd, o);
                           if (flag_a_) {
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
                       }});

  // export: a run's attestation in a standard format, for records made
  // before attestation.sigstore.json existed and for tools that want DSSE or
  // in-toto JSON Lines (docs/VERIFYING.md).
  auto* exp = app_.add_subcommand(
      "export", "write a run's attestation as a Sigstore bundle, a DSSE envelope or in-toto JSON Lines");
  exp->add_option("run", id_, "run id, container id or run directory")->required();
  exp->add_option("--format", str_c_, "sigstore-bundle (default), dsse or intoto-jsonl")
      ->check(CLI::IsMember({"sigstore-bundle", "dsse", "intoto-jsonl"}));
  exp->add_option("-o,--output", str_d_, "write to this file (default: standard output)");
  handlers_.push_back({exp, [this]() {
                         try {
                           return export_record(resolve_run(g_, id_),
                                                str_c_.empty() ? "sigstore-bundle" : str_c_, str_d_);
                         } catch (const std::exception& e) {
                           std::cerr << "agentshim export: " << e.what() << "\n";
                           return 2;
                         }
                       }});

  // runs list / runs show
  auto* runs = app_.add_subcommand("runs", "list and show run records");
  runs->require_subcommand(1);
  auto* list = runs->add_subcommand("list", "list the runs recorded on this host");
  list->add_flag("--json", flag_a_, "JSON output");
  handlers_.push_back({list, [this]() {
                         std::string audit = audit_dir_of(g_);
                         json out = json::array();
                         for (const auto& id : run_ids(audit)) {
                           std::string rd = audit + "/runs/" + id;
                           json row = {{"run_id", id}, {"container_id", container_of(rd)}, {"complete", false}};
                           if (auto s = try_read_file(rd + "/session.json")) try {
                               json sj = json::parse(*s);
                               row["complete"] = sj.value("complete", false);
                               row["events"] = sj.value("event_count", 0);
                               row["finished"] = sj.value("finished", "");
                             } catch (...) {
                             }
                           out.push_back(row);
                         }
                         if (flag_a_) {
                           std::cout << out.dump(2) << "\n";
                         } else {
                           std::printf("%-38s %-20s %-9s %s\n", "RUN", "CONTAINER", "COMPLETE", "FINISHED");
                           for (const auto& r : out)
                             std::printf("%-38s %-20s %-9s %s\n", t(r["run_id"].get<std::string>()).c_str(),
                                         t(r["container_id"].get<std::string>()).c_str(),
                                         r["complete"].get<bool>() ? "yes" : "no",
                                         t(r.value("finished", "")).c_str());
                         }
                         return 0;
                       }});
  auto* show = runs->add_subcommand("show", "what a run did: command, exit, processes, network, files, sandbox");
  show->add_option("run", id_, "run id, container id or run directory")->required();
  show->add_flag("--json", flag_b_, "JSON output");
  handlers_.push_back({show, [this]() {
                         try {
                           std::string rd = resolve_run(g_, id_);
                           json a = attest::run_account(rd);
                           auto v = attest::verify_run(rd, attest::VerifyOptions{});
                           if (flag_b_) {
                             a["verified"] = v.verified();
                             a["mismatches"] = v.mismatches;
                             std::cout << a.dump(2) << "\n";
                           } else {
                             print_account(a, v);
                           }
                           return 0;
                         } catch (const std::exception& e) {
                           std::cerr << "agentshim runs show: " << e.what() << "\n";
                           return 2;
                         }
                       }});

  // fs-root: the filesystem root agentshim would record for a directory
  // (operators compare trees with it; the benchmarks time it).
  auto fsroot = app_.add_subcommand("fs-root", "print the filesystem Merkle root of a directory (see docs/FORMATS.md)");
  fsroot->add_option("dir", str_a_, "directory")->required();
  fsroot->add_option("--cache", str_b_, "hash cache file (default: none)");
  fsroot->add_option("--threads", int_a_, "hashing threads (default: all cores)");
  fsroot->add_flag("--json", flag_a_, "JSON output");
  handlers_.push_back({fsroot, [this]() {
                         attest::WalkOptions o;
                         o.cache_path = str_b_;
                         o.threads = static_cast<unsigned>(std::max(0, int_a_));
                         auto t0 = std::chrono::steady_clock::now();
                         auto s = attest::snapshot(str_a_, o);
                         double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                         json out = {{"root", attest::hex(s.root)},
                                     {"entries", s.entries.size()},
                                     {"files", s.files},
                                     {"bytes_hashed", s.bytes_hashed},
                                     {"cache_hits", s.cache_hits},
                                     {"seconds_x1000", static_cast<long long>(secs * 1000)}};
                         if (flag_a_)
                           std::cout << out.dump() << "\n";
                         else
                           std::cout << attest::hex(s.root) << "  " << str_a_ << "\n";
                         return 0;
                       }});

  // keygen
  auto* keygen = app_.add_subcommand("keygen", "create a signing key pair (PKCS#8 PEM)");
  keygen->add_option("--type", str_c_, "ed25519 (default) or ecdsa-p256");
  keygen->add_option("--out", str_d_, "directory for signing.pem and signing.pem.pub (default <audit-dir>/keys)");
  handlers_.push_back({keygen, [this]() {
                         auto type = attest::parse_key_type(str_c_.empty() ? "ed25519" : str_c_);
                         std::string dir = str_d_.empty() ? audit_dir_of(g_) + "/keys" : str_d_;
                         mkdir_p(dir, 0700);
                         std::string path = dir + "/signing.pem";
                         auto key = attest::PrivateKey::generate(type);
                         key.save(path);
                         std::cout << "private key: " << path << " (0600)\npublic key:  " << path << ".pub\nkey id:      "
                                   << key.keyid() << "\nalgorithm:   " << key.algorithm() << "\n";
                         return 0;
                       }});
}

}  // namespace agentshim::cli
