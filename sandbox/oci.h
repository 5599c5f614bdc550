// The OCI runtime-spec config.json: loading, validation, and the small
// vocabularies (namespaces, mount options, signals) the runtime needs.
//
// The config is validated and parsed ONCE into an oci::Spec of typed structs
// (parse_spec); the code that acts reads the Spec and never the JSON. The raw
// JSON is kept (Spec::raw) only for digests and `state`; the policy engine
// decides on the caller's Spec and writes its changes into a copy of the
// caller's document (the enforced config, parsed again by `create`). Every
// validation error names the field.
#pragma once

#include <sys/types.h>

#include <compare>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace agentshim::oci {

using json = nlohmann::json;

inline constexpr const char* kOciVersion = "1.0.2-dev";
inline constexpr const char* kOciVersionMax = "1.1.0";

// Read <bundle>/config.json and validate it. Throws Error naming the bundle
// path and the offending field.
json load_config(const std::string& bundle);
// Validate an already-parsed config (used by load_config, policy check and tests).
void validate_config(const json& cfg);
// Validate a `process` object (config.process or `exec --process`); `where`
// prefixes error messages ("process", "exec --process").
void validate_process(const json& p, const std::string& where);

// Namespace types as spelled in config.json and their CLONE_* flag.
struct NamespaceType {
  const char* name;  // "pid"
  int flag;          // CLONE_NEWPID
  const char* proc;  // "pid" (entry under /proc/<pid>/ns/)
};
const std::vector<NamespaceType>& namespace_types();
std::optional<NamespaceType> namespace_by_name(const std::string& name);

struct Namespace {
  std::string type;
  std::string path;  // empty: create a new one
};
// A namespace of this type is created (listed without a path) by a config
// not parsed into a Spec (the enforced config the policy wrote).
bool has_new_namespace(const json& cfg, const std::string& type);
// linux.sysctl as runc validates it: each key (dots, or runc's '/' form,
// normalised to dots) must be isolated by a namespace of the container's —
// ipc for kernel.shm*/msg*/sem and fs.mqueue.*, network for net.*, uts for
// kernel.domainname (kernel.hostname conflicts with "hostname") — and every
// other key is refused (not namespaced: it would change the host). Throws
// Error with runc's wording. With check_paths, a namespace joined by path
// that is the runtime's own counts as the host's (done at create; the writer
// inside the container cannot tell). The writer uses exactly this list.
struct Sysctl {
  std::string key;  // dots form
  std::string value;
  std::string path;  // /proc/sys/...
};
struct Spec;
std::vector<Sysctl> sysctls(const Spec& spec, bool check_paths);
// "ipc", "network", "uts" for a namespaced sysctl key, "" otherwise.
std::string sysctl_namespace(const std::string& key);

// The host id of container id 0 in linux.uidMappings or gidMappings,
// and how many ids from there on are mapped; nullopt when 0 is unmapped.
struct RootIds {
  std::uint64_t host = 0;
  std::uint64_t size = 0;
};
struct IdMapping;
std::optional<RootIds> root_ids(const std::vector<IdMapping>& mappings);

// Mount options -> flags, propagation flags and the data string.
struct MountOptions {
  unsigned long flags = 0;                 // MS_* applied with the mount
  unsigned long clear = 0;                 // flags explicitly cleared (rw, suid, ...)
  std::vector<unsigned long> propagation;  // MS_PRIVATE|MS_REC, ...
  std::string data;                        // comma-joined filesystem options
  bool bind = false;
  bool rec = false;
  bool tmpcopyup = false;
  std::vector<std::string> unknown;  // not understood; passed in data
};
MountOptions parse_mount_options(const std::vector<std::string>& opts);

// A file's identity: what "is", "contains" and "lies inside" compare, so no
// spelling (symlinks, "..", bind-mounted aliases of a directory) changes the
// answer.
struct FileId {
  dev_t dev = 0;
  ino_t ino = 0;
  bool operator==(const FileId&) const = default;
  auto operator<=>(const FileId&) const = default;
};

// One entry of config.mounts, classified by what the kernel will do with it.
// The ONE reading of a mount: the policy decides on these values and the
// mounting code acts on them (a mount with no "type" and "bind" among its
// options is a bind, whatever else is spelled).
struct Mount {
  enum class Kind { Bind, Filesystem };
  std::size_t index = 0;         // position in config.mounts (for messages: "mounts[3]")
  std::string destination;       // absolute, lexically cleaned ("/a/./b/../c" -> "/a/c")
  Kind kind = Kind::Filesystem;  // Bind: MS_BIND after every option in order, or type "bind"
  std::string fstype;            // Filesystem: "proc", "tmpfs", "cgroup", ...; Bind: "bind"
  std::string source_given;      // config's "source", as written
  // Bind: absolute (a relative source is relative to the bundle, as the OCI
  // spec says), symlinks resolved, once resolve_source() ran; otherwise as given.
  std::string source;
  FileId source_id;         // Bind, after resolve_source(): the identity checked ({0,0}: missing)
  unsigned long flags = 0;  // effective MS_* after every option in order (last wins), no MS_BIND/MS_REC
  bool recursive = false;   // rbind
  std::vector<unsigned long> propagation;  // in order
  std::string data;                        // filesystem options
  bool tmpcopyup = false;
  std::vector<std::string> options;  // as given

  bool is_bind() const { return kind == Kind::Bind; }
  bool readonly() const;
  std::string where() const { return "mounts[" + std::to_string(index) + "]"; }
};

// Classify config.mounts[index] (no filesystem access). Throws Error naming
// the field: a mount with no "type" that is not a bind (runc fails the same
// config at mount time), a relative destination.
Mount parse_mount(const json& m, std::size_t index);
// Bind only: make m.source absolute (relative to `bundle`; "" = no bundle,
// a relative source is then an error), resolve its symlinks, and record its
// identity. Throws Error naming the mount, the source as given and errno.
void resolve_source(Mount& m, const std::string& bundle);
// The identity of `path` (following symlinks); nullopt when it cannot be stat'ed.
std::optional<FileId> file_id(const std::string& path);
// `path`'s identity and those of every directory above it up to "/"
// (walked with "..", so mount points and symlinks are crossed as the kernel
// does). Empty when `path` does not exist.
std::vector<FileId> identity_chain(const std::string& path);
// `p` with its symlinks resolved; a part that does not exist is appended
// lexically cleaned to the resolved part above it.
std::string canonical_path(const std::string& p);
// When `checked` has an identity for `key`, throw Error unless `fd` is that
// file ("`what` is no longer the file the policy checked").
void check_identity(int fd, const std::map<std::string, FileId>& checked, const std::string& key,
                    const std::string& what);
// Lexical clean of an absolute path: "//a/./b/../c/" -> "/a/c".
std::string clean_path(const std::string& p);

// "SIGTERM", "TERM", "15", "sigterm" -> 15. Throws Error("invalid signal ...").
int parse_signal(const std::string& s);
std::string signal_name(int sig);

// "CAP_SYS_ADMIN" -> 21; nullopt when unknown to this kernel/libcap.
std::optional<int> capability_from_name(const std::string& name);
std::string capability_name(int cap);
int last_capability();

// runc's container id rule: ^[\w+\-\.]+$, not "." or "..", <= 1024 bytes.
void validate_container_id(const std::string& id);

// ---- The typed config --------------------------------------------------

struct IdMapping {
  std::uint64_t container_id = 0;
  std::uint64_t host_id = 0;
  std::uint64_t size = 0;
};

struct User {
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
  std::optional<std::uint32_t> umask;  // nullopt: the runtime's default (022)
  std::optional<std::vector<std::uint32_t>> additional_gids;
};

struct Capabilities {
  std::vector<std::string> bounding, effective, inheritable, permitted, ambient;
  // A set by its config name ("bounding", ...); nullptr for another name.
  const std::vector<std::string>* set(const std::string& name) const;
  std::vector<std::string>* set(const std::string& name);
};

struct Rlimit {
  std::string type;  // "RLIMIT_NOFILE" (validated: one of the kernel's)
  std::uint64_t hard = 0;
  std::uint64_t soft = 0;
};

struct ConsoleSize {
  unsigned height = 0;
  unsigned width = 0;
};

// config.process, or `exec --process` (parse_process).
struct Process {
  bool terminal = false;
  std::optional<ConsoleSize> console_size;
  std::optional<User> user;       // nullopt: not given (uid/gid 0)
  std::vector<std::string> args;  // non-empty
  std::vector<std::string> env;
  std::string cwd;  // absolute; "" when not given (the runtime uses "/")
  std::optional<Capabilities> capabilities;
  std::vector<Rlimit> rlimits;
  std::optional<bool> no_new_privileges;  // nullopt: not given (off; `exec` inherits the container's)
  std::optional<int> oom_score_adj;
  std::string apparmor_profile;
  std::string selinux_label;

  std::uint32_t uid() const { return user ? user->uid : 0; }
  // The value of `key` in env ("" when unset).
  std::string env_value(const std::string& key) const;
  std::string cwd_or_root() const { return cwd.empty() ? "/" : cwd; }
};

struct Device {
  std::string path;
  char type = 'c';  // c, b, u or p
  std::int64_t major = 0;
  std::int64_t minor = 0;
  std::uint32_t file_mode = 0666;
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
};

// One rule of linux.resources.devices, as the cgroup drivers apply it.
struct DeviceRule {
  bool allow = false;          // "allow" (false when not given)
  char type = 'a';             // 'a' (also when not given), 'c' or 'b'
  std::int64_t major = -1;     // -1: every major (not given, null or negative)
  std::int64_t minor = -1;     // -1: every minor
  std::string access = "rwm";  // a subset of "rwm"; "rwm" when not given or empty
  bool operator==(const DeviceRule&) const = default;
  // Every device: type "a" and no major or minor.
  bool every_device() const { return type == 'a' && major < 0 && minor < 0; }
  // Only mknod ("m"): harmless without CAP_MKNOD (runc and Docker allow "c *:* m").
  bool mknod_only() const { return access.find_first_not_of('m') == std::string::npos; }
  // Read or write access.
  bool reads_or_writes() const { return access.find_first_of("rw") != std::string::npos; }
};
// The rule as linux.resources.devices spells it (major/minor only when set).
json to_json(const DeviceRule& r);

// linux.resources, typed (the runtime-spec's LinuxResources), validated
// once by parse_resources: a wrong type is an error naming the field. Each
// field is "not given" as nullopt, an empty string, list or map; the cgroup
// drivers (sandbox/cgroups) write only what is given, so `update` passes a
// partial Resources, and update() merges one into the container's.
struct Resources {
  struct Memory {
    std::optional<std::int64_t> limit, reservation, swap;  // bytes; -1: unlimited
    std::optional<std::int64_t> kernel, kernel_tcp;        // kernel: deprecated, ignored
    std::optional<std::uint64_t> swappiness;               // 0..100 (v1 only)
    std::optional<bool> disable_oom_killer, use_hierarchy, check_before_update;
    bool operator==(const Memory&) const = default;
  };
  struct Cpu {
    std::optional<std::uint64_t> shares;
    std::optional<std::int64_t> quota;  // microseconds per period; -1 or 0 given: no limit
    std::optional<std::uint64_t> burst, period;
    std::optional<std::int64_t> realtime_runtime;
    std::optional<std::uint64_t> realtime_period;
    std::string cpus, mems;  // cpuset lists ("0-3,6"); "" not given
    std::optional<std::int64_t> idle;
    bool operator==(const Cpu&) const = default;
  };
  struct Pids {
    std::optional<std::int64_t> limit;  // <= 0: unlimited
    bool operator==(const Pids&) const = default;
  };
  struct WeightDevice {
    std::int64_t major = 0, minor = 0;
    std::optional<std::uint16_t> weight, leaf_weight;
    bool operator==(const WeightDevice&) const = default;
  };
  struct ThrottleDevice {
    std::int64_t major = 0, minor = 0;
    std::uint64_t rate = 0;  // bytes or operations per second; 0: no limit
    bool operator==(const ThrottleDevice&) const = default;
  };
  struct BlockIO {
    std::optional<std::uint16_t> weight, leaf_weight;  // 10..1000
    std::vector<WeightDevice> weight_device;
    std::vector<ThrottleDevice> throttle_read_bps, throttle_write_bps, throttle_read_iops,
        throttle_write_iops;
    bool operator==(const BlockIO&) const = default;
  };
  struct HugepageLimit {
    std::string page_size;  // "2MB"
    std::uint64_t limit = 0;
    bool operator==(const HugepageLimit&) const = default;
  };
  struct InterfacePriority {
    std::string name;
    std::uint32_t priority = 0;
    bool operator==(const InterfacePriority&) const = default;
  };
  struct Network {
    std::optional<std::uint32_t> class_id;
    std::vector<InterfacePriority> priorities;
    bool operator==(const Network&) const = default;
  };
  struct Rdma {
    std::optional<std::uint32_t> hca_handles, hca_objects;
    bool operator==(const Rdma&) const = default;
  };

  std::vector<DeviceRule> devices;  // in order
  Memory memory;
  Cpu cpu;
  Pids pids;
  BlockIO block_io;
  std::vector<HugepageLimit> hugepage_limits;
  Network network;
  std::map<std::string, Rdma> rdma;            // device name -> limits
  std::map<std::string, std::string> unified;  // v2 file name (no '/', not "." or "..") -> value
  bool operator==(const Resources&) const = default;

  // runc's `update`: every field `given` has replaces this one's (a list as
  // a whole, a map key by key); the rest stays.
  void update(const Resources& given);
};
// Read and validate a linux.resources object; `where` names it in errors
// ("config.json: linux.resources" -> "config.json: linux.resources.memory.limit:
// expected integer, got string").
Resources parse_resources(const json& r, const std::string& where);
// As linux.resources spells it, only the fields given: parse_resources of
// the result is equal to `r`.
json to_json(const Resources& r);

struct Hook {
  std::string path;  // absolute
  std::vector<std::string> args;
  std::optional<std::vector<std::string>> env;  // nullopt: the runtime's environment
  std::optional<long long> timeout;             // seconds, positive
};

struct Linux {
  std::vector<Namespace> namespaces;
  std::vector<IdMapping> uid_mappings;
  std::vector<IdMapping> gid_mappings;
  std::string cgroups_path;
  // linux.resources: what the policy decides on and the cgroup drivers apply.
  Resources resources;
  // linux.seccomp as given: seccomp::compile parses the profile (the same
  // format as the policy's built-in profile). nullopt: none.
  std::optional<json> seccomp;
  std::vector<std::string> masked_paths;
  std::vector<std::string> readonly_paths;
  std::map<std::string, std::string> sysctl;  // as given; sysctls() normalises and checks
  std::string rootfs_propagation;             // "" or one of rootfs's propagation names
  std::vector<Device> devices;
  // No syscall confinement: no linux.seccomp, or one whose defaultAction is
  // SCMP_ACT_ALLOW with no syscall rules.
  bool seccomp_unconfined() const;
  std::string listener_path() const;      // linux.seccomp.listenerPath ("" when none)
  std::string listener_metadata() const;  // linux.seccomp.listenerMetadata
};

struct Root {
  std::string path;  // as given (rootfs_path() resolves it)
  bool readonly = false;
};

struct Spec {
  json raw;  // the document parsed: for digests and `state` only
  std::string oci_version;
  Root root;
  Process process;
  std::string hostname;
  std::string domainname;
  std::vector<Mount> mounts;
  Linux linux;
  std::map<std::string, std::vector<Hook>> hooks;  // kind -> hooks in order
  json annotations = json::object();               // string -> string, as given

  // Namespaces created (no path) and joined (path).
  std::vector<Namespace> new_namespaces() const;
  std::vector<Namespace> joined_namespaces() const;
  bool has_namespace(const std::string& type) const;
  bool has_new_namespace(const std::string& type) const;
  // linux.seccomp, nullptr when the config has none.
  const json* seccomp() const { return linux.seccomp ? &*linux.seccomp : nullptr; }
  bool has_bind_mount() const;
  const std::vector<Hook>& hooks_of(const std::string& kind) const;
};

// Validate `cfg` (as validate_config, except that namespace paths named by
// sysctl checks are not stat'ed) and read it into a Spec. Throws Error
// naming the field.
Spec parse_spec(const json& cfg);
// Validate and read a `process` object; `where` prefixes error messages.
Process parse_process(const json& p, const std::string& where);
// The user object as the record shows it (only the fields given; {} when
// the process names no user).
json to_json(const User& u);
json user_json(const Process& p);

// Resolve the rootfs path (relative to the bundle when not absolute).
std::string rootfs_path(const Spec& spec, const std::string& bundle);

// The runtime's own edits of the enforced config document (its mounts and
// variables), next to the parser that reads them back. A bind mount of
// `source` at `destination`, read-only, nosuid, nodev, noexec:
json runtime_bind(const std::string& source, const std::string& destination);
// Put `mount` at its destination: kLast removes every mount there and
// appends it (nothing given later covers it); kInPlace takes the place of
// the first one there (the others are removed), appended when there is
// none (the mounts after it keep covering it, as they did the caller's).
// Returns whether the config had a mount there.
enum class MountPlace { kLast, kInPlace };
bool put_mount(json& config, const json& mount, MountPlace where);
// process.env without the entries named in `names` ("NAME=..."), then
// `entries` appended. Returns the names that were present.
std::vector<std::string> put_env(json& config, const std::vector<std::string>& names,
                                 const std::vector<std::string>& entries);

}  // namespace agentshim::oci
