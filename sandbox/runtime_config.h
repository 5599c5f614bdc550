// Configuration that reaches agentshim without runtime flags.
//
// Clients drop flags: containerd's `BinaryName` passes no runtimeArgs, and
// podman's cleanup runs `delete --force` without the run's --runtime-flags.
// Two mechanisms make every command of one container see the same settings:
//  - a config file chosen by the name the binary is invoked as
//    (argv[0] `agentshim-strict` -> <config dir>/strict.json, required;
//    `agentshim` -> <config dir>/agentshim.json, if present); global flags
//    given on the command line win over it;
//  - a host-wide index, /run/agentshim.ids/<id> -> the state root the
//    container was created under, consulted when a command on an existing
//    container does not find it under the root it was given.
#pragma once

#include <optional>
#include <string>

namespace agentshim::runtime_config {

// The directory config files are looked up in: /etc/agentshim, or
// $AGENTSHIM_CONFIG_DIR (tests).
std::string config_dir();

// Global settings a config file may give. Absent keys are nullopt.
struct FileConfig {
  std::string path;  // the file read ("" when none applies)
  std::optional<std::string> policy;
  std::optional<std::string> audit_dir;
  std::optional<std::string> root;
  std::optional<bool> systemd_cgroup;
  std::optional<std::string> signing_key;  // --signing-key
  std::optional<std::string> key_type;     // --key-type: ed25519 or ecdsa-p256
};

// The config file for the name the binary was invoked as (argv[0]): its path,
// and whether it must exist. nullopt: this name has no config file.
struct Lookup {
  std::string path;
  bool required = false;
};
std::optional<Lookup> lookup_for(const std::string& argv0, const std::string& dir);

// Parses a config file's text (schema in docs/OPERATIONS.md). Unknown keys,
// wrong types and relative paths are errors naming the file and key.
FileConfig parse(const std::string& text, const std::string& path);

// lookup_for + read + parse. A required file that is missing is an error; an
// optional one yields an empty FileConfig.
FileConfig load_for(const std::string& argv0);

// The host-wide id -> root index.
std::string index_dir();  // /run/agentshim.ids
// Records that `id` lives under `root` (replaces an older entry).
void index_record(const std::string& root, const std::string& id);
// Drops the entry for `id` if it points at `root`.
void index_forget(const std::string& root, const std::string& id);
// The root for a command on an existing container: `root` itself when it
// holds `id`, else the indexed root if that holds it, else `root`.
std::string resolve_root(const std::string& root, const std::string& id);

}  // namespace agentshim::runtime_config
