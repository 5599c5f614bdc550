#include "shim/install_cmd.h"

#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <iostream>
#include <nlohmann/json.hpp>
#include <regex>

#include "common/error.h"
#include "common/util.h"
#include "sandbox/runtime_config.h"

namespace agentshim::cli {

using json = nlohmann::json;

namespace {

constexpr const char* kHandlerTable =
    R"([plugins."io.containerd.grpc.v1.cri".containerd.runtimes.agentshim])";
constexpr const char* kOptionsTable =
    R"([plugins."io.containerd.grpc.v1.cri".containerd.runtimes.agentshim.options])";
constexpr const char* kBegin = "# BEGIN agentshim runtime handler (added by `agentshim install containerd`)";
constexpr const char* kEnd = "# END agentshim runtime handler";

json docker_entries(const std::string& binary, const std::string& policy_dir) {
  return {{"agentshim", {{"path", binary}, {"runtimeArgs", {"--policy", policy_dir + "/policy.json"}}}},
          {"agentshim-strict",
           {{"path", binary}, {"runtimeArgs", {"--policy", policy_dir + "/policy.strict.json"}}}}};
}

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
}

// The `version = N` of a containerd config (1 when absent, as containerd reads it).
int toml_version(const std::string& text) {
  static const std::regex re(R"(^\s*version\s*=\s*([0-9]+)\s*(#.*)?$)");
  for (const auto& line : split(text, '\n')) {
    std::smatch m;
    if (trim(line).rfind('[', 0) == 0) break;  // top-level keys only
    if (std::regex_match(line, m, re)) return std::stoi(m[1]);
  }
  return 1;
}

// Whether a table header for the agentshim handler (or a sub-table of it) appears,
// in any quoting or spacing TOML allows for these keys.
bool has_agentshim_table(const std::string& text) {
  static const std::regex re(
      R"re(^\s*\[\s*plugins\s*\.\s*["']io\.containerd\.grpc\.v1\.cri["']\s*\.\s*containerd\s*\.\s*runtimes\s*\.\s*["']?agentshim["']?\s*[\].])re");
  for (const auto& line : split(text, '\n'))
    if (std::regex_search(line, re)) return true;
  return false;
}

void backup_and_write(const std::string& path, const std::string& old_text, const std::string& new_text,
                      bool existed) {
  mode_t mode = 0644;
  if (existed) {
    struct stat st {};
    if (::stat(path.c_str(), &st) < 0) throw_errno("stat " + path);
    mode = st.st_mode & 07777;
    char stamp[32];
    std::time_t now = std::time(nullptr);
    std::strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", std::gmtime(&now));
    std::string backup = path + ".agentshim-backup-" + stamp;
    if (path_exists(backup)) throw Error("backup " + backup + " already exists; not overwriting it");
    write_file(backup, old_text, mode);
    std::cout << "backed up " << path << " to " << backup << "\n";
  } else {
    auto slash = path.rfind('/');
    if (slash != std::string::npos && slash > 0) mkdir_p(path.substr(0, slash), 0755);
  }
  write_file_atomic(path, new_text, mode);
}

std::string self_path() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n < 0) throw_errno("readlink /proc/self/exe");
  return std::string(buf, static_cast<std::size_t>(n));
}

}  // namespace

std::string merge_docker_config(const std::string& existing, const std::string& binary,
                                const std::string& policy_dir) {
  json cfg = json::object();
  if (!trim(existing).empty()) {
    try {
      cfg = json::parse(existing);
    } catch (const json::exception& e) {
      throw Error(std::string("daemon.json is not valid JSON, not editing it: ") + e.what());
    }
    if (!cfg.is_object()) throw Error("daemon.json is not a JSON object, not editing it");
  }
  if (cfg.contains("runtimes") && !cfg["runtimes"].is_object())
    throw Error("daemon.json: \"runtimes\" is not an object, not editing it");
  bool changed = false;
  const json entries = docker_entries(binary, policy_dir);
  for (const auto& [name, entry] : entries.items()) {
    if (cfg.contains("runtimes") && cfg["runtimes"].contains(name)) {
      if (cfg["runtimes"][name] != entry)
        throw Error("daemon.json already has a runtime \"" + name + "\" that differs from agentshim's (" +
                    cfg["runtimes"][name].dump() + " vs " + entry.dump() +
                    "); not changing it, edit it by hand");
      continue;
    }
    cfg["runtimes"][name] = entry;
    changed = true;
  }
  return changed ? cfg.dump(2) + "\n" : existing;
}

// The two handlers: agentshim, and agentshim-strict (a symlink next to the
// binary; its name selects /etc/agentshim/strict.json, since BinaryName
// passes no flags).
static std::string strict_binary(const std::string& binary) {
  return binary.substr(0, binary.find_last_of('/') + 1) + "agentshim-strict";
}

std::string containerd_block(const std::string& binary) {
  const std::string strict = R"([plugins."io.containerd.grpc.v1.cri".containerd.runtimes.agentshim-strict])";
  return std::string(kBegin) + "\n" + kHandlerTable +
         "\n"
         "  runtime_type = \"io.containerd.runc.v2\"\n"
         "  pod_annotations = [\"dev.agentshim.*\"]\n"
         "  privileged_without_host_devices = true\n" +
         kOptionsTable +
         "\n"
         "    BinaryName = " +
         json(binary).dump() + "\n" + strict +
         "\n"
         "  runtime_type = \"io.containerd.runc.v2\"\n"
         "  pod_annotations = [\"dev.agentshim.*\"]\n"
         "  privileged_without_host_devices = true\n" +
         strict.substr(0, strict.size() - 1) + ".options]\n" +
         "    BinaryName = " + json(strict_binary(binary)).dump() + "\n" + kEnd + "\n";
}

std::string merge_containerd_config(const std::string& existing, const std::string& binary) {
  std::string block = containerd_block(binary);
  if (trim(existing).empty()) return "version = 2\n\n" + block;
  int version = toml_version(existing);
  if (version != 2)
    throw Error("config.toml has version = " + std::to_string(version) +
                "; agentshim's handler is written for version 2 (containerd 1.5-1.7): add it by hand, see "
                "docs/KUBERNETES.md");
  if (has_agentshim_table(existing)) {
    if (existing.find(block) != std::string::npos) return existing;  // ours, unchanged
    throw Error(
        "config.toml already registers an \"agentshim\" runtime handler that differs from this one; not "
        "changing "
        "it, edit it by hand");
  }
  std::string out = existing;
  if (out.back() != '\n') out += "\n";
  return out + "\n" + block;
}

namespace {

// What the agentshim-strict handler needs besides config.toml: the symlink
// whose name selects its config file, and that file (never overwritten).
// The plain handler needs no file (without /etc/agentshim/agentshim.json it
// uses /etc/agentshim/policy.json or the built-in policy), so none is
// written: a file naming a policy that is not installed would stop every
// container.
void install_handler_files(const std::string& binary) {
  const std::string link = strict_binary(binary);
  if (::symlink(binary.c_str(), link.c_str()) < 0 && errno != EEXIST) throw_errno("symlink " + link);
  const std::string dir = runtime_config::config_dir();
  mkdir_p(dir, 0755);
  const std::pair<const char*, const char*> files[] = {
      {"strict.json",
       R"({"policy": "/etc/agentshim/policy.strict.json", "audit_dir": "/var/lib/agentshim/strict"})"}};
  for (const auto& [name, text] : files)
    if (!path_exists(dir + "/" + name)) {
      write_file_atomic(dir + "/" + name, std::string(text) + "\n");
      std::cout << "wrote " << dir << "/" << name << "\n";
    }
}

}  // namespace

InstallCommand::InstallCommand(CLI::App& app) {
  auto* inst =
      app.add_subcommand("install", "register agentshim with Docker or containerd (backs up, merges)");
  inst->require_subcommand(1);
  docker_ = inst->add_subcommand("docker", "add agentshim and agentshim-strict to daemon.json");
  containerd_ = inst->add_subcommand("containerd", "append the agentshim runtime handler to config.toml");
  for (auto* c : {docker_, containerd_}) {
    c->add_option("--config", config_, "the daemon's config file");
    c->add_option("--binary", binary_, "agentshim's installed path (default: this binary)");
    c->add_flag("--dry-run", dry_run_, "print the merged file, change nothing");
  }
  docker_->add_option("--policy-dir", policy_dir_, "where the policies live")->capture_default_str();
}

bool InstallCommand::parsed() const {
  return docker_->parsed() || containerd_->parsed();
}

int InstallCommand::run() {
  bool docker = docker_->parsed();
  std::string path = !config_.empty() ? config_
                     : docker         ? "/etc/docker/daemon.json"
                                      : "/etc/containerd/config.toml";
  std::string binary = binary_.empty() ? self_path() : binary_;
  if (binary.empty() || binary[0] != '/') throw Error("--binary must be an absolute path: " + binary);
  auto old_text = try_read_file(path);
  std::string before = old_text.value_or("");
  std::string after =
      docker ? merge_docker_config(before, binary, policy_dir_) : merge_containerd_config(before, binary);
  if (after == before && old_text) {
    std::cout << path << " already registers agentshim; nothing to do\n";
    return 0;
  }
  if (dry_run_) {
    std::cout << after;
    return 0;
  }
  backup_and_write(path, before, after, old_text.has_value());
  if (!docker) install_handler_files(binary);
  std::cout
      << "registered agentshim in " << path << "\n"
      << (docker ? "reload dockerd (kill -HUP $(pidof dockerd)) and use: docker run --runtime=agentshim ...\n"
                 : "restart containerd and create a RuntimeClass with handler \"agentshim\" (or "
                   "\"agentshim-strict\")\n");
  return 0;
}

}  // namespace agentshim::cli
