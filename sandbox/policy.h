// The policy: one JSON document deciding the sandbox and the record, and the
// engine that applies it to an OCI config before anything starts.
//
// The document (configs/policy/default.json is the built-in default,
// configs/policy/schema.json its JSON Schema, docs/POLICY.md the reference):
//
//   mode          "enforce" (tighten the config, record each change) |
//                 "refuse" (reject a config asking for more than allowed)
//   capabilities  {"allowed": ["CAP_CHOWN", ...]}
//   seccomp       {"profile": "builtin" | "/abs/path.json", "stack_on_config": true}
//   filesystem    {"readonly_root", "masked_paths", "readonly_paths",
//                  "tmpfs_max_size", "allow_bind_mounts", "forbidden_sources"}
//   namespaces    {"allow_join": ["ipc", "uts", "network", "pid"],
//                  "allow_host": ["network", ...]}  (missing namespaces that may stay the host's)
//   devices       {"allowed": [{"type": "c", "major": 10, "minor": 229, "path": "/dev/fuse"}],
//                  "allow_block_devices": false}
//   resources     {"defaults": {"memory", "pids", "cpus"}, "maximum": {...}}
//   limits        {"exec_time_seconds": 0}
//   network       {"mode": "internal" | "passthrough", "allow": ["host:port"],
//                  "dns": "refuse" | "allowlisted", "proxy_port", "limits": {...}}
//   annotations   {"may_widen": ["dev.agentshim.egress.allow"]}
//   credentials   {"<name>": {...}}  (netpolicy/credentials.h)
//   userns        "off" | "auto"
//   audit         {"dir", "signing_key", "key_type", "strict", "on_log_failure", "observe_exec"}
//
// A policy file may set only some sections, and only some keys of a section:
// what it leaves out keeps the built-in default; a list it gives replaces the
// default list. Unknown keys and wrong types are errors that name the key
// (a typo must never silently weaken the policy). The validated document is
// parsed once into policy::Policy; what the engine decides for the runtime
// is typed as well (Result::network, ExecSettings, Enforced, Saved): the code
// that acts reads those, never the document.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/network.h"
#include "sandbox/oci.h"
#include "sandbox/peers.h"

namespace agentshim::policy {

using json = nlohmann::json;

// The policy's audit section, with the --signing-key / --key-type
// overrides of `create`: what the record is made with (the supervisor's
// attest::RecordConfig comes from it).
struct AuditSettings {
  std::string dir;
  std::string signing_key;  // "" = <dir>/signing.key
  std::string key_type;     // "ed25519" | "ecdsa-p256"
  bool strict = false;
  bool stop_on_log_failure = true;  // on_log_failure "stop" (else "continue")
  bool observe_exec = true;
  std::uint64_t max_file_bytes = 0;  // 0: no limit
  std::uint64_t max_event_log_bytes = 0;
  std::string tsa_url;
};

// A character device the policy lets through (devices.allowed).
struct DeviceRule {
  long long major = -1;
  long long minor = -1;
};

// The policy, parsed once from its validated document (parse()): what every
// stage of the engine reads, never the document. Every field is set by
// parse() from the document merged onto the built-in default
// (configs/policy/default.json), so the defaults live in that one file.
struct Policy {
  json doc;             // the document as given to parse(): what `create` saves for `update`
  bool refuse = false;  // mode "refuse" (else "enforce")
  struct {
    std::vector<std::string> allowed;  // canonical names (CAP_...)
    bool no_new_privileges = true;
  } capabilities;
  struct {
    std::string profile;  // "builtin" or an absolute path
    bool stack_on_config = true;
    json loaded;  // the profile given by path, read by load() (OCI linux.seccomp); null otherwise
  } seccomp;
  struct {
    bool readonly_root = true;
    std::vector<std::string> masked_paths;
    std::vector<std::string> readonly_paths;
    long long tmpfs_max_size = 0;            // bytes
    std::vector<std::string> scratch_paths;  // absolute paths or "$HOME"
    std::optional<long long> scratch_size;   // bytes; nullopt: "memory" (the memory limit)
    bool allow_bind_mounts = true;
    std::vector<std::string> forbidden_sources;
  } filesystem;
  struct {
    std::vector<std::string> allow_join;
    std::vector<std::string> allow_host;
  } namespaces;
  struct {
    std::vector<DeviceRule> allowed;
    bool allow_block_devices = false;
  } devices;
  // resources.defaults (a limit the config does not set) and
  // resources.maximum (a cap on what it sets); absent: no rule.
  struct ResourceRule {
    std::optional<long long> memory;  // bytes
    std::optional<long long> pids;
    std::optional<double> cpus;
  };
  struct {
    ResourceRule defaults, maximum;
  } resources;
  long long exec_time_limit_s = 0;  // limits.exec_time_seconds (0: none)
  // The network section: mode, allow, dns, proxy_port, limits,
  // request_rules (the rest of network::Options is what the engine decides).
  network::Options network;
  std::vector<std::string> may_widen;  // annotations.may_widen
  // credentials: name -> definition (netpolicy/credentials.h).
  std::map<std::string, net::cred::Credential> credentials;
  bool userns_auto = false;  // userns "auto" (else "off")
  AuditSettings audit;
};

// The built-in default, as a document (also in configs/policy/default.json).
json builtin();
// Load `path` ("" = /etc/agentshim/policy.json when it exists, else the
// built-in default), fill in defaults, validate. Errors name the file and key.
// A seccomp profile given by path is read and compiled here, and kept in the
// returned document under "seccomp"."loaded".
json load(const std::string& path);
// A validated document (load(), validate(), builtin()) as the typed Policy:
// the one place its keys are read. A key it lacks (a document saved by an
// older version, read again by `update`) keeps the built-in default.
// Throws Error for a document validate() would not have given.
Policy parse(const json& doc);
// How messages name the policy load(path) uses: "policy /etc/x.json",
// "policy /etc/agentshim/policy.json" or "built-in policy".
std::string source_name(const std::string& path);
// Validate a policy document (defaults filled in); throws agentshim::Error.
json validate(const json& p, const std::string& where);
// Where run records go: --audit-dir (`flag`) when given, else the loaded
// policy's audit.dir. `create` and the record commands (runs, verify,
// export, keygen) all ask this, so they look in one place.
std::string audit_dir(const Policy& loaded_policy, const std::string& flag);
inline std::string audit_dir(const json& loaded_policy, const std::string& flag) {
  return audit_dir(parse(loaded_policy), flag);
}

// The environment of apply(): where the host's namespaces are (compared by
// device and inode with the config's namespace paths). /proc/1/ns may be
// unreadable (pid 1 outside our reach); the runtime's own namespaces are the
// host's too, so /proc/self/ns is checked as well.
// Something the runtime owns on the host (a forbidden bind source whatever
// the policy file says): `what` names it in messages ("agentshim's audit
// directory (run records, ledger, signing key)").
struct Owned {
  std::string path;
  std::string what;
};

struct ApplyContext {
  std::vector<std::string> host_ns_dirs = {"/proc/1/ns", "/proc/self/ns"};
  std::string policy_name = "policy";  // for messages: "policy /etc/agentshim/policy.json"
  // The bundle: relative bind sources are relative to it (OCI). Empty: a
  // relative source is an error.
  std::string bundle;
  // What the runtime owns on the host (runtime_owned()); a bind whose
  // source is one of them, contains one or lies inside one is refused,
  // compared by identity (device and inode), not by spelling.
  std::vector<Owned> owned;
  // A namespace path that names another agentshim container by its
  // --pid-file pid (/proc/<sentinel>/ns/<type>): that container and the
  // same namespace through its init (peers.h). Replaceable for tests.
  std::function<std::optional<peers::NamespaceTarget>(const std::string& path, const std::string& proc_name)>
      peer_namespace = peers::resolve_namespace_path;
};

// Everything the runtime in use owns on the host: the state root (--root),
// the audit directory, the signing key (wherever it is), the policy file
// (`policy_path`, "" = /etc/agentshim/policy.json when it exists), the
// runtime binary, the userns allocation directory.
std::vector<Owned> runtime_owned(const Policy& policy, const std::string& state_root,
                                 const std::string& audit_dir, const std::string& policy_path);

struct Result {
  json config;               // the enforced config
  json decisions;            // [{"rule","path","action","detail"}], in order
  json violations;           // the decisions whose action is "refused" (the config is rejected)
  json extra_seccomp;        // OCI linux.seccomp object stacked on the config's, or null
  network::Options network;  // the network the container gets (network.h)
  // The enforced config's mounts, normalised (oci::Mount), bind sources
  // resolved with the identity the policy checked: the mounting code
  // verifies it mounts that same file.
  std::vector<oci::Mount> mounts;
  // linux.namespaces joined by path -> the identity of the namespace the
  // policy decided on (it is not the host's); stage1 joins only that one.
  std::map<std::string, oci::FileId> joined_namespaces;
  // linux.namespaces joined from another agentshim container (type -> its
  // id): a network joined so is that container's, served by its proxy.
  std::map<std::string, std::string> peer_namespaces;
  long long exec_time_limit_s = 0;
  // userns "auto" added (or replaced) the user namespace: `create` allocates
  // a host uid/gid range for linux.uid/gidMappings (sandbox/userns.h) and
  // the rootfs is mounted idmapped.
  bool userns_auto = false;
  std::string mode;  // "enforce" | "refuse"
  // Everything but the config, as `policy check --json` prints it.
  json summary() const;
};

// Decide: the enforced config and every decision, never throwing for a
// violation (they are listed in Result::violations). Throws Error for a
// config or policy it cannot evaluate. (The json forms parse() the policy.)
Result evaluate(const Policy& policy, const json& caller_config, const ApplyContext& ctx = {});
Result evaluate(const json& policy, const json& caller_config, const ApplyContext& ctx = {});
// evaluate(), then throw Error listing every violation (one per line) when
// there is any.
Result apply(const Policy& policy, const json& caller_config, const ApplyContext& ctx = {});
Result apply(const json& policy, const json& caller_config, const ApplyContext& ctx = {});

// What an `exec` in the container is held to, decided by `create` so
// `exec` applies the same capabilities, no_new_privs, seccomp, proxy
// environment and exec observation as the init got.
struct ExecSettings {
  std::vector<std::string> capabilities_allowed;
  bool no_new_privileges = true;
  json extra_seccomp;            // OCI linux.seccomp stacked on the exec's, or null
  std::vector<std::string> env;  // proxy variables, credential placeholders, the run CA's variables
  bool observe_exec = false;     // exec sessions are observed as the init is
};
void to_json(json& j, const ExecSettings& e);
void from_json(const json& j, ExecSettings& e);
ExecSettings exec_settings(const Policy& policy, const Result& r);
// Tighten an exec's process (parsed as create parses config.process:
// oci::parse_process) with the saved settings; returns the decisions made
// (the same shape as Result::decisions).
json apply_exec(const ExecSettings& settings, oci::Process& process);

// What `create` saves as <state dir>/policy.json, the runtime's own file
// (docs/FORMATS.md): the exec settings (at the top level), the policy
// document in force ("policy") and its name, and what this container's own
// proxy serves for containers joining its network ("served_network").
struct Saved {
  ExecSettings exec;
  json policy;  // the validated document (parse() gives the Policy); null when the file has none
  std::string policy_name = "policy";
  std::optional<network::Served> served_network;
  static Saved read(const std::string& state_dir);  // throws Error naming the file
  void write(const std::string& state_dir) const;
};

// What the supervisor is handed by `create` (setup::Setup::policy): the
// record's settings, the decisions for the record, the network it serves,
// the time limit and the exec settings (bounding what an exec may hold).
struct Enforced {
  AuditSettings audit;
  json decisions = json::array();
  network::Options network;
  long long exec_time_limit_s = 0;
  ExecSettings exec;
};

// "64m", "1g", "512k", "1024" (bytes) -> bytes; nullopt when malformed.
std::optional<long long> parse_size(const json& v);

// Recognises a privileged container request by what it asks for, whatever
// the client calls it (docker/podman --privileged, a CRI `privileged: true`
// container even under containerd's privileged_without_host_devices). A
// config is privileged when all three hold:
//  1. capabilities: its bounding, effective or permitted set holds every
//     capability this kernel knows, or CAP_SYS_ADMIN;
//  2. no syscall confinement: linux.seccomp is absent or null, or its
//     defaultAction is SCMP_ACT_ALLOW with no syscall rules;
//  3. at least one host exposure a confined container never asks for: an
//     allow-all device rule (type "a" or none, no major/minor, r or w
//     access), a writable sysfs or cgroup mount (type sysfs/cgroup/cgroup2,
//     or destination /sys or /sys/fs/cgroup, not read-only after its
//     options: oci::Mount::readonly), or neither
//     maskedPaths nor readonlyPaths (both absent or empty).
// Returns the reason naming what matched, or nullopt. The policy refuses a
// privileged config in every mode (rule "privileged").
std::optional<std::string> privileged_request(const oci::Spec& config);

}  // namespace agentshim::policy
