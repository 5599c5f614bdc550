#include "sandbox/policy.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "common/util.h"
#include "netpolicy/allowlist.h"
#include "netpolicy/credentials.h"
#include "netpolicy/request_rules.h"
#include "sandbox/embedded.h"
#include "sandbox/oci.h"
#include "sandbox/seccomp.h"
#include "sandbox/seccomp_profile.h"

namespace agentshim::policy {
namespace {

using Str = std::string;

[[noreturn]] void fail(const Str& where, const Str& key, const Str& what) {
  throw Error(where + ": " + key + ": " + what);
}

bool is_abs(const json& v) {
  return v.is_string() && !v.get<Str>().empty() && v.get<Str>()[0] == '/';
}

void expect_bool(const json& v, const Str& where, const Str& key) {
  if (!v.is_boolean()) fail(where, key, "must be true or false");
}

void expect_one_of(const json& v, const std::vector<const char*>& ok, const Str& where, const Str& key) {
  Str list;
  for (const char* o : ok) {
    if (v.is_string() && v.get<Str>() == o) return;
    list += (list.empty() ? "" : " or ") + Str("\"") + o + "\"";
  }
  fail(where, key, "must be " + list + (v.is_string() ? ", got \"" + v.get<Str>() + "\"" : ""));
}

json path_list(const json& v, const Str& where, const Str& key) {
  if (!v.is_array()) fail(where, key, "must be an array of absolute paths");
  for (std::size_t i = 0; i < v.size(); i++)
    if (!is_abs(v[i])) fail(where, key + "[" + std::to_string(i) + "]", "must be an absolute path");
  return v;
}

long long positive_int(const json& v, const Str& where, const Str& key, long long min = 1,
                       long long max = std::numeric_limits<long long>::max()) {
  if (!v.is_number_integer() || v.get<long long>() < min || v.get<long long>() > max)
    fail(where, key, "must be an integer from " + std::to_string(min) + " to " + std::to_string(max));
  return v.get<long long>();
}

std::optional<double> parse_cpus(const json& v) {
  double d = 0;
  if (v.is_number()) {
    d = v.get<double>();
  } else if (v.is_string()) {
    const Str s = v.get<Str>();
    if (s.empty() || s.size() > 16) return std::nullopt;
    char* end = nullptr;
    d = std::strtod(s.c_str(), &end);
    if (!end || *end != 0) return std::nullopt;
  } else {
    return std::nullopt;
  }
  if (!(d > 0) || d > 4096) return std::nullopt;
  return d;
}

// An egress rule exactly as the proxy's allowlist reads it (netpolicy/
// allowlist.h): "api.example.com", "api.example.com:443", "*.pypi.org:443",
// "10.0.0.1:80", "[2001:db8::1]:443", "192.0.2.0/24:443".
bool valid_egress_rule(const Str& r, Str* why) {
  try {
    (void)net::Allowlist::parse({r}, "rule");
    return true;
  } catch (const std::exception& e) {
    *why = e.what();
    return false;
  }
}

const std::set<Str>& widening_annotations() {
  static const std::set<Str> s = {"dev.agentshim.egress.allow"};
  return s;
}

// Annotations that ask for something the policy itself defines (no
// may_widen): dev.agentshim.credentials names credentials of the policy's
// "credentials" section.
constexpr const char* kCredentialsAnnotation = "dev.agentshim.credentials";

// One policy key's check: validates `x` (named `key` in messages) and
// stores what the policy keeps in `slot`, which holds the default.
using Check = std::function<void(const json& x, json& slot, const Str& where, const Str& key)>;

Check boolean() {
  return [](const json& x, json& slot, const Str& where, const Str& key) {
    expect_bool(x, where, key);
    slot = x;
  };
}
Check one_of(std::vector<const char*> ok) {
  return [ok](const json& x, json& slot, const Str& where, const Str& key) {
    expect_one_of(x, ok, where, key);
    slot = x;
  };
}
Check integer(long long min, long long max = std::numeric_limits<long long>::max()) {
  return [=](const json& x, json& slot, const Str& where, const Str& key) {
    positive_int(x, where, key, min, max);
    slot = x;
  };
}
Check paths() {
  return [](const json& x, json& slot, const Str& where, const Str& key) { slot = path_list(x, where, key); };
}
Check list_of(std::vector<const char*> ok, const char* what) {
  return [ok, what](const json& x, json& slot, const Str& where, const Str& key) {
    if (!x.is_array()) fail(where, key, Str("must be an array of ") + what);
    for (std::size_t i = 0; i < x.size(); i++)
      expect_one_of(x[i], ok, where, key + "[" + std::to_string(i) + "]");
    slot = x;
  };
}
// An object whose members are checked one by one and merged into the default.
Check members(std::map<Str, Check> keys, const char* what) {
  return [keys = std::move(keys), what](const json& x, json& slot, const Str& where, const Str& key) {
    if (!x.is_object()) fail(where, key, Str("must be an object") + what);
    for (const auto& [k, v] : x.items()) {
      auto c = keys.find(k);
      if (c == keys.end()) throw Error(where + ": unknown key " + key + "." + k);
      c->second(v, slot[k], where, key + "." + k);
    }
  };
}
// Leaves of a members() object that are stored as given.
Check valid_if(std::function<void(const json&, const Str&, const Str&)> check) {
  return [check = std::move(check)](const json& x, json& slot, const Str& where, const Str& key) {
    check(x, where, key);
    slot = x;
  };
}

Check capability_names() {
  return [](const json& x, json& slot, const Str& where, const Str& key) {
    if (!x.is_array()) fail(where, key, "must be an array of capability names");
    json caps = json::array();
    for (std::size_t i = 0; i < x.size(); i++) {
      const Str ik = key + "[" + std::to_string(i) + "]";
      if (!x[i].is_string()) fail(where, ik, "must be a capability name");
      auto c = oci::capability_from_name(x[i].get<Str>());
      if (!c) fail(where, ik, "unknown capability \"" + x[i].get<Str>() + "\"");
      caps.push_back(oci::capability_name(*c));
    }
    slot = caps;
  };
}

void device_rules(const json& x, const Str& where, const Str& key) {
  if (!x.is_array()) fail(where, key, "must be an array of {\"type\",\"major\",\"minor\"} objects");
  for (std::size_t i = 0; i < x.size(); i++) {
    const Str ik = key + "[" + std::to_string(i) + "]";
    const json& d = x[i];
    if (!d.is_object()) fail(where, ik, "must be an object {\"type\": \"c\", \"major\": N, \"minor\": N}");
    for (const auto& [dk, dv] : d.items()) {
      if (dk == "type") {
        if (dv == "b")
          fail(where, ik + ".type",
               "block devices are not listed here; devices.allow_block_devices lets the config's through");
        expect_one_of(dv, {"c"}, where, ik + ".type");
      } else if (dk == "major" || dk == "minor") {
        positive_int(dv, where, ik + "." + dk, 0, 0xfffff);
      } else if (dk == "path") {
        if (!dv.is_string() || !starts_with(dv.get<Str>(), "/dev/"))
          fail(where, ik + ".path", "must be a path under /dev/");
      } else {
        throw Error(where + ": unknown key " + ik + "." + dk);
      }
    }
    if (!d.contains("type") || !d.contains("major") || !d.contains("minor"))
      fail(where, ik, "needs \"type\", \"major\" and \"minor\"");
  }
}

void egress_rules(const json& x, const Str& where, const Str& key) {
  if (!x.is_array()) fail(where, key, "must be an array of \"host:port\" rules");
  for (std::size_t i = 0; i < x.size(); i++) {
    Str why;
    const Str ik = key + "[" + std::to_string(i) + "]";
    if (!x[i].is_string()) fail(where, ik, "must be a \"host:port\" string");
    if (!valid_egress_rule(x[i].get<Str>(), &why)) fail(where, ik, "\"" + x[i].get<Str>() + "\": " + why);
  }
}

// What each section of a policy file may hold (configs/policy/schema.json
// says the same for editors; the messages here name the key and what was
// wrong). "mode" and "userns" are plain strings, checked in validate_section.
const std::map<Str, Check>& sections() {
  static const std::map<Str, Check> s = [] {
    std::map<Str, Check> m;
    const char* kNs[] = {"pid", "ipc", "uts", "network", "mount", "cgroup"};
    m["capabilities"] = members({{"allowed", capability_names()}, {"no_new_privileges", boolean()}}, "");
    m["seccomp"] = members(
        {{"profile", valid_if([](const json& x, const Str& where, const Str& key) {
            if (!x.is_string() || (x != "builtin" && !is_abs(x)))
              fail(where, key, "must be \"builtin\" or an absolute path to an OCI linux.seccomp JSON file");
          })},
         {"stack_on_config", boolean()}},
        "");
    m["filesystem"] = members(
        {{"readonly_root", boolean()},
         {"allow_bind_mounts", boolean()},
         {"masked_paths", paths()},
         {"readonly_paths", paths()},
         {"forbidden_sources", paths()},
         {"tmpfs_max_size", valid_if([](const json& x, const Str& where, const Str& key) {
            auto sz = parse_size(x);
            if (!sz || *sz <= 0)
              fail(where, key, "must be a size such as \"64m\", \"1g\", \"512k\" or a byte count");
          })},
         {"scratch", members({{"paths", valid_if([](const json& x, const Str& where, const Str& key) {
                                 if (!x.is_array())
                                   fail(where, key, "must be an array of absolute paths or \"$HOME\"");
                                 for (std::size_t i = 0; i < x.size(); i++)
                                   if (!x[i].is_string() || (x[i] != "$HOME" && !is_abs(x[i])))
                                     fail(where, key + "[" + std::to_string(i) + "]",
                                          "must be an absolute path or \"$HOME\"");
                               })},
                              {"size", valid_if([](const json& x, const Str& where, const Str& key) {
                                 if (x == "memory") return;
                                 auto sz = parse_size(x);
                                 if (!sz || *sz <= 0)
                                   fail(where, key,
                                        "must be \"memory\" (the container's memory limit) or a size");
                               })}},
                             "")}},
        "");
    m["namespaces"] = members(
        {{"allow_join", list_of(std::vector<const char*>(std::begin(kNs), std::end(kNs)), "namespace types")},
         {"allow_host",
          list_of({"pid", "ipc", "uts", "network", "mount", "cgroup", "user"}, "namespace types")}},
        "");
    m["devices"] = members({{"allow_block_devices", boolean()}, {"allowed", valid_if(device_rules)}}, "");
    Check resource =
        members({{"memory", valid_if([](const json& x, const Str& where, const Str& key) {
                    auto sz = parse_size(x);
                    if (!sz || *sz < (4 << 20))
                      fail(where, key, "must be a size of at least 4m, such as \"1g\"");
                  })},
                 {"pids", integer(1, 1 << 22)},
                 {"cpus", valid_if([](const json& x, const Str& where, const Str& key) {
                    if (!parse_cpus(x))
                      fail(where, key, "must be a positive number of CPUs, such as \"2\" or \"0.5\"");
                  })}},
                " {\"memory\", \"pids\", \"cpus\"}");
    m["resources"] = members({{"defaults", resource}, {"maximum", resource}}, "");
    m["limits"] = members({{"exec_time_seconds", integer(0)}}, "");
    std::map<Str, Check> proxy_limits;
    for (const char* k : {"max_connections", "max_pending", "max_header_bytes", "max_headers",
                          "header_timeout_seconds", "connect_timeout_seconds", "idle_timeout_seconds",
                          "total_timeout_seconds", "max_requests_per_connection"})
      proxy_limits[k] = integer(1, 1LL << 31);
    m["network"] =
        members({{"mode", one_of({"confined", "internal", "passthrough"})},
                 {"dns", one_of({"refuse", "allowlisted"})},
                 {"proxy_port", integer(1, 65535)},
                 {"allow", valid_if(egress_rules)},
                 {"request_rules", [](const json& x, json& slot, const Str& where,
                                      const Str&) { slot = net::RequestRules::parse(x, where).to_json(); }},
                 {"limits", members(std::move(proxy_limits), "")}},
                "");
    m["annotations"] = members({{"may_widen", valid_if([](const json& x, const Str& where, const Str& key) {
                                   if (!x.is_array())
                                     fail(where, key, "must be an array of annotation names");
                                   for (std::size_t i = 0; i < x.size(); i++)
                                     if (!x[i].is_string() || !widening_annotations().count(x[i].get<Str>()))
                                       fail(where, key + "[" + std::to_string(i) + "]",
                                            "not an annotation that can widen the policy (known: "
                                            "dev.agentshim.egress.allow)");
                                 })}},
                               "");
    // The credentials section: name -> definition (netpolicy/credentials.h
    // parses and normalises); a policy file's section replaces the default's.
    m["credentials"] = [](const json& x, json& slot, const Str& where, const Str& key) {
      if (!x.is_object()) fail(where, key, "must be an object of named credentials");
      json out = json::object();
      for (const auto& [name, def] : x.items())
        out[name] = net::cred::to_json(net::cred::parse(name, def, where));
      slot = out;
    };
    auto abs_or_empty = valid_if([](const json& x, const Str& where, const Str& key) {
      if (!x.is_string()) fail(where, key, "must be a string");
      if (!x.get<Str>().empty() && x.get<Str>()[0] != '/') fail(where, key, "must be an absolute path");
    });
    m["audit"] = members(
        {{"dir", abs_or_empty},
         {"signing_key", abs_or_empty},
         {"tsa_url", valid_if([](const json& x, const Str& where, const Str& key) {
            if (!x.is_string() || (!x.get<Str>().empty() && x.get<Str>().rfind("http://", 0) != 0))
              fail(where, key, "must be \"\" or an http:// URL of an RFC 3161 time-stamping authority");
          })},
         {"key_type", valid_if([](const json& x, const Str& where, const Str& key) {
            if (!x.is_string() || (x != "ed25519" && x != "ecdsa-p256"))
              fail(where, key, "must be \"ed25519\" or \"ecdsa-p256\"");
          })},
         {"strict", boolean()},
         {"observe_exec", boolean()},
         {"on_log_failure", valid_if([](const json& x, const Str& where, const Str& key) {
            if (!x.is_string() || (x != "stop" && x != "continue"))
              fail(where, key, "must be \"stop\" or \"continue\"");
          })},
         {"max_file_bytes", valid_if([](const json& x, const Str& where, const Str& key) {
            if (!x.is_number_unsigned()) fail(where, key, "must be a byte count (0 = no limit)");
          })},
         {"max_event_log_bytes", valid_if([](const json& x, const Str& where, const Str& key) {
            if (!x.is_number_unsigned()) fail(where, key, "must be a byte count (0 = no limit)");
          })}},
        "");
    return m;
  }();
  return s;
}

json validate_section(const Str& sec, const json& v, const json& def, const Str& where) {
  if (sec == "mode") {
    expect_one_of(v, {"enforce", "refuse"}, where, "mode");
    return v;
  }
  if (sec == "userns") {
    expect_one_of(v, {"off", "auto"}, where, "userns");
    return v;
  }
  json out = def;
  sections().at(sec)(v, out, where, sec);
  return out;
}

json load_profile(const Str& path, const Str& where) {
  Str text;
  try {
    text = read_file_limited(path, 4 << 20);
  } catch (const std::exception& e) {
    throw Error(where + ": seccomp.profile: " + e.what());
  }
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(where + ": seccomp.profile: " + path + " is not valid JSON (" + e.what() + ")");
  }
  try {
    (void)seccomp::compile(j);
  } catch (const std::exception& e) {
    throw Error(where + ": seccomp.profile: " + path + ": " + e.what());
  }
  return j;
}

// ---- the engine ----

struct DefaultDev {
  char type;
  long long major, minor;  // -1: any
};
const std::vector<DefaultDev>& default_devices() {
  static const std::vector<DefaultDev> d = {{'c', 1, 3}, {'c', 1, 5}, {'c', 1, 7}, {'c', 1, 8},   {'c', 1, 9},
                                            {'c', 5, 0}, {'c', 5, 1}, {'c', 5, 2}, {'c', 136, -1}};
  return d;
}

Str human_size(long long b) {
  const char* units[] = {"", "k", "m", "g", "t"};
  int u = 0;
  while (u < 4 && b >= 1024 && b % 1024 == 0) {
    b /= 1024;
    u++;
  }
  return std::to_string(b) + units[u];
}

Str fmt_cpus(double c) {
  std::ostringstream o;
  o << c;
  return o.str();
}

}  // namespace

// ---- privileged requests (issue 14.7): see policy.h for the definition ----
std::optional<Str> privileged_request(const oci::Spec& s) {
  // 1. capabilities
  std::set<int> caps;
  if (s.process.capabilities)
    for (const char* set : {"bounding", "effective", "permitted"})
      for (const auto& n : *s.process.capabilities->set(set))
        if (auto v = oci::capability_from_name(n)) caps.insert(*v);
  const bool all_caps = static_cast<int>(caps.size()) > oci::last_capability();
  if (!all_caps && !caps.count(CAP_SYS_ADMIN)) return std::nullopt;
  // 2. syscall confinement
  if (!s.linux.seccomp_unconfined()) return std::nullopt;
  // 3. host exposure
  std::vector<Str> exposed;
  for (const auto& d : s.linux.resources.devices)
    if (d.allow && d.every_device() && d.reads_or_writes()) {
      exposed.push_back("every device allowed");
      break;
    }
  for (const auto& m : s.mounts) {
    const bool sysfs = m.fstype == "sysfs" || m.destination == "/sys";
    const bool cgroup = m.fstype == "cgroup" || m.fstype == "cgroup2" || m.destination == "/sys/fs/cgroup";
    if ((!sysfs && !cgroup) || m.readonly()) continue;
    Str what = Str("a writable ") + (sysfs ? "sysfs" : "cgroup") + " mount at " + m.destination;
    if (std::find(exposed.begin(), exposed.end(), what) == exposed.end()) exposed.push_back(what);
  }
  if (s.linux.masked_paths.empty() && s.linux.readonly_paths.empty())
    exposed.push_back("no masked or read-only paths");
  if (exposed.empty()) return std::nullopt;
  Str why = Str("the config asks for a privileged container: ") +
            (all_caps ? "every capability" : "CAP_SYS_ADMIN") + ", no seccomp filter";
  for (const auto& e : exposed) why += ", " + e;
  return why;
}

namespace {

class Engine {
 public:
  // The caller's config is validated and read once (oci::parse_spec: a
  // config error names the field, as `create` reports it); every decision
  // reads spec_, and every change is written to both spec_ (what later
  // decisions read) and r_.config (the enforced document `create` parses
  // again with the same parser).
  Engine(const Policy& pol, const json& caller, const ApplyContext& ctx)
      : pol_(pol), spec_(oci::parse_spec(caller)), ctx_(ctx), refuse_(pol.refuse) {
    r_.config = caller;
    r_.decisions = json::array();
    r_.mode = refuse_ ? "refuse" : "enforce";
  }

  Result run() {
    if (!r_.config["linux"].is_object()) r_.config["linux"] = json::object();
    privileged();
    namespaces();
    userns();
    capabilities();
    no_new_privs();
    seccomp_profile();
    filesystem();
    mounts();
    devices();
    resources();
    scratch();  // sized from the memory limit resources() decided
    process_limits();
    annotations();
    network();
    r_.exec_time_limit_s = pol_.exec_time_limit_s;
    r_.violations = json::array();
    for (const auto& d : r_.decisions)
      if (d["action"] == "refused") r_.violations.push_back(d);
    return std::move(r_);
  }

 private:
  void decide(const Str& rule, const Str& path, const Str& action, const Str& detail) {
    r_.decisions.push_back({{"rule", rule}, {"path", path}, {"action", action}, {"detail", detail}});
  }
  // A caller request beyond the policy: tightened in enforce mode, a
  // violation in refuse mode. Returns true when the caller's config must be
  // changed (enforce mode).
  bool beyond(const Str& rule, const Str& path, const Str& action, const Str& asked, const Str& done) {
    if (refuse_) {
      decide(rule, path, "refused", asked + "; refused by policy rule " + rule);
      return false;
    }
    decide(rule, path, action, asked + "; " + done + " by policy rule " + rule);
    return true;
  }
  void hard(const Str& rule, const Str& path, const Str& detail) { decide(rule, path, "refused", detail); }

  json& linux_() { return r_.config["linux"]; }
  json& proc() { return r_.config["process"]; }

  void privileged() {
    if (auto why = privileged_request(spec_))
      hard("privileged", "process.capabilities",
           *why + "; the policy forbids privileged containers: refused by policy rule privileged");
  }

  bool same_file(const Str& a, const Str& b) {
    struct stat sa {
    }, sb{};
    if (::stat(a.c_str(), &sa) < 0 || ::stat(b.c_str(), &sb) < 0) return false;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
  }

  bool host_allowed(const Str& t) const {
    return std::ranges::find(pol_.namespaces.allow_host, t) != pol_.namespaces.allow_host.end();
  }

  // linux.namespaces[i] (the document's entries are the Spec's, in order).
  void set_namespace_path(std::size_t i, const Str& path) {
    spec_.linux.namespaces[i].path = path;
    if (path.empty())
      linux_()["namespaces"][i].erase("path");
    else
      linux_()["namespaces"][i]["path"] = path;
  }
  void add_namespace(const Str& type) {
    spec_.linux.namespaces.push_back({type, ""});
    linux_()["namespaces"].push_back({{"type", type}});
  }

  void namespaces() {
    if (!linux_()["namespaces"].is_array()) linux_()["namespaces"] = json::array();
    const std::vector<Str>& allow_join = pol_.namespaces.allow_join;
    auto joinable = [&](const Str& t) { return std::ranges::find(allow_join, t) != allow_join.end(); };
    const Str& netmode = pol_.network.mode;
    for (std::size_t i = 0; i < spec_.linux.namespaces.size(); i++) {
      const oci::Namespace& n = spec_.linux.namespaces[i];
      if (n.path.empty()) continue;
      const Str t = n.type;
      const Str asked_path = n.path;
      const Str where = "linux.namespaces[" + std::to_string(i) + "].path";
      auto nt = oci::namespace_by_name(t);
      if (!nt) continue;
      // Another agentshim container named by its --pid-file pid (a pod's
      // sandbox, `--network container:X`): its namespace, through its init.
      std::optional<peers::NamespaceTarget> peer;
      if (ctx_.peer_namespace) peer = ctx_.peer_namespace(asked_path, nt->proc);
      if (peer) set_namespace_path(i, peer->path);
      const Str path = n.path;
      bool host = false;
      for (const auto& dir : ctx_.host_ns_dirs) host = host || same_file(path, dir + "/" + nt->proc);
      if (host) {
        hard("namespaces", where,
             "caller asked to join " + path + ", the host's " + t +
                 " namespace; refused by policy rule namespaces (host namespaces are never allowed)");
        continue;
      }
      if (t == "user" || t == "time") continue;
      if (peer && (t != "network" || peer->peer.network_mode == netmode)) {
        Str shares;
        if (t == "network")
          shares = "; the containers share one network (loopback between them; egress through container " +
                   peer->peer.id + "'s proxy and DNS stub, with its allowlist)";
        else if (t == "pid")
          shares = "; the containers see and can signal each other's processes";
        decide("namespaces", where, "kept",
               "caller asked to join " + asked_path + ", the " + t + " namespace of agentshim container " +
                   peer->peer.id + " (its --pid-file pid); joined through its init, " + path + shares);
        r_.peer_namespaces[t] = peer->peer.id;
        if (t == "network") net_peer_ = peer->peer;
        continue;
      }
      if (peer && t == "network") {
        // Another container's network under another mode: joining it would
        // give this one that mediation (or none), or confine the other.
        if (beyond("network.mode", where, "replaced",
                   "caller asked to join the network namespace of agentshim container " + peer->peer.id +
                       ", whose network mode is \"" + peer->peer.network_mode + "\" (this policy's is \"" +
                       netmode + "\")",
                   "replaced by a new namespace"))
          set_namespace_path(i, "");
        continue;
      }
      if (t == "network" && netmode == "confined") {
        decide(
            "network.mode", where, "kept",
            "caller asked to join the network namespace " + path +
                "; kept (its interfaces and inbound connections stay) and confined by policy rule "
                "network.mode (confined): new outbound connections leave only through the egress proxy and "
                "the DNS stub on loopback");
        continue;
      }
      if (t == "network" && netmode == "internal") {
        decide("network.mode", where, "replaced",
               "caller asked to join the network namespace " + path +
                   "; replaced by a new one with only loopback by policy rule network.mode (internal)");
        set_namespace_path(i, "");
        continue;
      }
      if (joinable(t)) continue;
      if (beyond("namespaces.allow_join", where, "replaced",
                 "caller asked to join the " + t + " namespace " + path,
                 "replaced by a new " + t + " namespace"))
        set_namespace_path(i, "");
    }
    // The namespaces still joined by path: the identity decided on, which
    // stage1 compares with what it opens (a path swapped since is refused).
    for (const auto& n : spec_.joined_namespaces())
      if (auto id = oci::file_id(n.path)) r_.joined_namespaces[n.type] = *id;
    for (const char* t : {"pid", "ipc", "uts", "mount", "network", "cgroup"}) {
      if (spec_.has_namespace(t)) continue;
      if (host_allowed(t)) {
        // Kubernetes' hostNetwork/hostPID/hostIPC, docker run --network host:
        // the operator's escape hatch, recorded with what it costs.
        Str cost;
        if (Str(t) == "network")
          cost = "; egress is not mediated (no egress proxy, no DNS stub, no network events in the record)";
        else if (Str(t) == "mount")
          cost =
              "; the process is chrooted into the rootfs (as runc does), so the config's mounts and devices, "
              "the read-only root and the masked and read-only paths are not set up";
        else if (Str(t) == "pid")
          cost = "; the container's processes see, and with the capabilities can signal or trace, the host's";
        decide("namespaces.allow_host", "linux.namespaces", "kept",
               Str("the config has no ") + t +
                   " namespace: the container shares the host's, allowed by policy " +
                   "rule namespaces.allow_host" + cost);
        continue;
      }
      const Str asked = Str("the config has no ") + t + " namespace (the container would share the host's)";
      // A missing pid/ipc/uts/mount/network namespace is an explicit request
      // for the host's (docker run --pid host, --network host, --ipc host,
      // --uts host): refused in both modes, naming it, unless allow_host
      // lets it through (above). A missing cgroup
      // namespace is how runc's spec and Docker on cgroup v1 are written
      // by default, so enforce mode adds one.
      if (refuse_ || Str(t) != "cgroup") {
        hard(
            "namespaces", "linux.namespaces",
            asked +
                "; refused by policy rule namespaces (sharing a host namespace needs namespaces.allow_host)");
      } else {
        decide("namespaces", "linux.namespaces", "added",
               asked + "; a new one is created by policy rule namespaces");
        add_namespace(t);
      }
    }
  }

  // userns "auto": the container's root runs as an unprivileged host uid
  // range. A config without a user namespace gets one (its id maps are
  // allocated at create, the rootfs is idmapped); a config whose own maps
  // would make a host root of the container's root is tightened (enforce)
  // or refused; one whose maps stay clear of host uid/gid 0 is kept.
  void userns() {
    if (!pol_.userns_auto) return;
    const oci::Namespace* user = nullptr;
    for (const auto& n : spec_.linux.namespaces)
      if (n.type == "user") user = &n;
    if (user && !user->path.empty()) {
      decide("userns", "linux.namespaces", "kept",
             "caller joins the user namespace " + user->path + " (its id maps are the caller's)");
      return;
    }
    auto maps_host_root = [](const std::vector<oci::IdMapping>& maps) {
      return maps.empty() ||
             std::ranges::any_of(maps, [](const oci::IdMapping& m) { return m.host_id == 0 && m.size > 0; });
    };
    if (user) {
      bool root = maps_host_root(spec_.linux.uid_mappings) || maps_host_root(spec_.linux.gid_mappings);
      if (!root) {
        decide("userns", "linux.uidMappings", "kept",
               "caller's user namespace maps no container id to host uid or gid 0");
        return;
      }
      if (!beyond("userns", "linux.uidMappings", "replaced",
                  "caller's user namespace maps a container id to host uid/gid 0",
                  "replaced by an unprivileged host range allocated at create"))
        return;
    } else if (host_allowed("user")) {
      decide(
          "namespaces.allow_host", "linux.namespaces", "kept",
          "the config has no user namespace: the container's root is the host's root, allowed by policy rule "
          "namespaces.allow_host (userns auto is not applied to it)");
      return;
    } else {
      decide(
          "userns", "linux.namespaces", "added",
          "the config has no user namespace (the container's root would be the host's root); a new one whose "
          "root is an unprivileged host uid range allocated at create, with the rootfs idmapped, by policy "
          "rule "
          "userns (auto)");
      add_namespace("user");
    }
    json& l = linux_();
    l.erase("uidMappings");
    l.erase("gidMappings");
    spec_.linux.uid_mappings.clear();
    spec_.linux.gid_mappings.clear();
    r_.userns_auto = true;
    // Docker asks for ping sockets for every gid ("0 2147483647"); inside
    // the user namespace only the mapped gids exist and the kernel refuses
    // the rest: narrow it to them.
    if (auto it = spec_.linux.sysctl.find("net.ipv4.ping_group_range"); it != spec_.linux.sysctl.end()) {
      const Str asked = it->second;
      auto f = split(trim(asked), ' ');
      f.erase(std::remove(f.begin(), f.end(), ""), f.end());
      auto lo = f.size() == 2 ? parse_uint(f[0]) : std::nullopt,
           hi = f.size() == 2 ? parse_uint(f[1]) : std::nullopt;
      const unsigned long long last = 65535;
      if (lo && hi && *hi > last) {
        Str now = *lo > last ? "1 0" : std::to_string(*lo) + " " + std::to_string(last);
        l["sysctl"]["net.ipv4.ping_group_range"] = now;
        it->second = now;
        decide("userns", "linux.sysctl.net.ipv4.ping_group_range", "narrowed",
               "caller asked for ping sockets for gids \"" + asked +
                   "\"; only gids 0-65535 exist in the "
                   "container's user namespace, so \"" +
                   now + "\" by policy rule userns (auto)");
      }
    }
  }

  static constexpr const char* kCapSets[] = {"bounding", "effective", "permitted", "inheritable", "ambient"};

  void capabilities() {
    std::set<int> allowed;
    for (const auto& a : pol_.capabilities.allowed)
      if (auto v = oci::capability_from_name(a)) allowed.insert(*v);
    if (!spec_.process.capabilities) return;
    oci::Capabilities& caps = *spec_.process.capabilities;
    // (Names are known capabilities: oci validated them.)
    auto is_allowed = [&](const Str& n) { return allowed.count(*oci::capability_from_name(n)) > 0; };
    std::vector<Str> order;
    std::map<Str, std::vector<Str>> sets_of;
    for (const char* set : kCapSets)
      for (const auto& n : *caps.set(set)) {
        if (is_allowed(n)) continue;
        Str name = oci::capability_name(*oci::capability_from_name(n));
        if (!sets_of.count(name)) order.push_back(name);
        sets_of[name].push_back(set);
      }
    bool change = false;
    for (const auto& name : order) {
      const auto& sets = sets_of[name];
      change |= beyond("capabilities.allowed", "process.capabilities." + sets.front(), "dropped",
                       "caller asked for " + name + " (" + join(sets, ", ") + ")", "dropped");
    }
    if (!change) return;
    for (const char* set : kCapSets) {
      std::vector<Str>& names = *caps.set(set);
      if (names.empty()) continue;  // (absent or empty: nothing to drop)
      std::erase_if(names, [&](const Str& n) { return !is_allowed(n); });
      proc()["capabilities"][set] = names;
    }
  }

  void no_new_privs() {
    std::optional<bool>& nnp = spec_.process.no_new_privileges;
    if (nnp == true) return;
    // A policy may leave the caller's choice alone (a permissive one, e.g.
    // for conformance runs); the default sets it.
    if (!pol_.capabilities.no_new_privileges) return;
    const bool had = nnp.has_value();
    decide("no_new_privs", "process.noNewPrivileges", had ? "replaced" : "added",
           Str(had ? "caller asked for noNewPrivileges=false" : "the config leaves noNewPrivileges unset") +
               "; set to true by policy rule capabilities.no_new_privileges");
    proc()["noNewPrivileges"] = true;
    nnp = true;
  }

  void seccomp_profile() {
    const auto& s = pol_.seccomp;
    const Str& prof = s.profile;
    r_.extra_seccomp = prof == "builtin"    ? seccomp_profile::builtin()
                       : s.loaded.is_null() ? load_profile(prof, ctx_.policy_name)
                                            : s.loaded;
    const bool has = spec_.seccomp() != nullptr;
    const Str what =
        prof == "builtin" ? "agentshim's default seccomp profile" : "the seccomp profile " + prof;
    if (s.stack_on_config || !has) {
      decide("seccomp.profile", "linux.seccomp", "added",
             what +
                 (has ? " is stacked on top of the config's own filter"
                      : " is applied (the config has no seccomp filter)") +
                 " by policy rule seccomp.profile");
    } else {
      decide("seccomp.stack_on_config", "linux.seccomp", "replaced",
             "the config's seccomp filter is replaced by " + what +
                 " by policy rule seccomp.stack_on_config (false)");
      linux_().erase("seccomp");
      spec_.linux.seccomp.reset();
    }
  }

  void filesystem() {
    const auto& fs = pol_.filesystem;
    if (fs.readonly_root && !spec_.root.readonly) {
      decide("filesystem.readonly_root", "root.readonly", "replaced",
             "caller asked for a writable root filesystem; made read-only by policy rule "
             "filesystem.readonly_root");
      r_.config["root"]["readonly"] = true;
      spec_.root.readonly = true;
    }
    json& l = linux_();
    for (auto [key, rule, have, want] :
         {std::tuple<Str, Str, std::vector<Str>*, const std::vector<Str>*>{
              "maskedPaths", "filesystem.masked_paths", &spec_.linux.masked_paths, &fs.masked_paths},
          {"readonlyPaths", "filesystem.readonly_paths", &spec_.linux.readonly_paths, &fs.readonly_paths}}) {
      if (!l[key].is_array()) l[key] = json::array();
      std::vector<Str> added;
      for (const auto& x : *want) {
        if (std::find(have->begin(), have->end(), x) != have->end()) continue;
        have->push_back(x);
        l[key].push_back(x);
        added.push_back(x);
      }
      if (!added.empty())
        decide(rule, "linux." + key, "added", "added " + join(added, ", ") + " by policy rule " + rule);
    }
  }

  // A place no bind may expose: the policy's filesystem.forbidden_sources
  // and everything the runtime owns (ctx_.owned). Compared by identity: the
  // chain of (device, inode) from the place up to "/".
  struct Place {
    Str path, canonical, what, rule;
    std::vector<oci::FileId> chain;  // empty: does not exist
    bool runtime = false;
  };
  std::vector<Place> forbidden_places() const {
    std::vector<Place> out;
    // The runtime's own first: the rule a policy file cannot remove.
    for (const auto& o : ctx_.owned) {
      if (o.path.empty()) continue;
      out.push_back({o.path, oci::canonical_path(o.path), o.what + " " + o.path, "runtime_owned",
                     oci::identity_chain(o.path), true});
    }
    for (const Str& fb : pol_.filesystem.forbidden_sources) {
      out.push_back({fb, oci::canonical_path(fb), "the forbidden source " + fb,
                     "filesystem.forbidden_sources", oci::identity_chain(fb), false});
    }
    return out;
  }

  // Why binding `m` (source resolved) would expose `f`; "" when it does not.
  static Str exposes(const oci::Mount& m, const std::vector<oci::FileId>& chain, const Place& f) {
    const Str& src = m.source;
    auto has = [](const std::vector<oci::FileId>& c, const oci::FileId& id) {
      return std::find(c.begin(), c.end(), id) != c.end();
    };
    auto under = [](const Str& a, const Str& b) { return a == b || starts_with(a, b == "/" ? b : b + "/"); };
    // "/" forbids binding the root itself, not everything below it.
    bool root = f.canonical == "/";
    if (!chain.empty() && !f.chain.empty()) {
      if (chain[0] == f.chain[0]) return "is";
      if (!root && has(chain, f.chain[0])) return "lies inside";
      if (!root && has(f.chain, chain[0])) return "contains";
    } else if (!chain.empty() && f.chain.empty() && !root) {
      // The place does not exist yet: binding what would contain it exposes
      // it once the runtime creates it.
      if (under(f.canonical, src)) return "contains";
    }
    // By spelling too (a source that does not exist yet).
    if (src == f.canonical) return "is";
    if (!root && under(src, f.canonical)) return "lies inside";
    if (!root && under(f.canonical, src)) return "contains";
    return "";
  }

  void check_source(const oci::Mount& m, const std::vector<Place>& places) {
    auto chain = m.source_id == oci::FileId{} ? std::vector<oci::FileId>{} : oci::identity_chain(m.source);
    const Str given = m.source_given == m.source ? m.source_given : m.source_given + " (" + m.source + ")";
    // Every runtime-owned place it exposes, in one decision; else the first
    // forbidden source.
    std::vector<Str> owned;
    for (const auto& f : places) {
      Str how = exposes(m, chain, f);
      if (how.empty()) continue;
      if (f.runtime) {
        owned.push_back(how + " " + f.what);
        continue;
      }
      if (!owned.empty()) break;
      hard("filesystem.forbidden_sources", m.where() + ".source",
           "caller asked to bind " + given + " at " + m.destination + ", which " + how + " " + f.what +
               "; refused by policy rule filesystem.forbidden_sources");
      return;
    }
    if (!owned.empty())
      hard("runtime_owned", m.where() + ".source",
           "caller asked to bind " + given + " at " + m.destination + ", which " + join(owned, ", ") +
               "; refused by policy rule runtime_owned (the runtime's own files never enter a container)");
  }

  void mounts() {
    if (spec_.mounts.empty()) return;
    const auto& fs = pol_.filesystem;
    const long long tmax = fs.tmpfs_max_size;
    const auto places = forbidden_places();
    json kept = json::array();
    for (std::size_t i = 0; i < spec_.mounts.size(); i++) {
      json m = r_.config["mounts"][i];  // (config.mounts[i], rewritten below)
      oci::Mount mt = spec_.mounts[i];
      const Str where = mt.where();
      const Str& dest = mt.destination;
      const Str& type = mt.fstype;
      if (mt.is_bind()) {
        if (!fs.allow_bind_mounts &&
            beyond("filesystem.allow_bind_mounts", where, "dropped",
                   "caller asked to bind " + mt.source_given + " at " + dest, "mount dropped"))
          continue;
        oci::resolve_source(mt, ctx_.bundle);
        check_source(mt, places);
        // The enforced config says what the kernel will do: an explicit
        // bind of the resolved source.
        m["type"] = "bind";
        m["source"] = mt.source;
      }
      if (type == "tmpfs") {
        std::vector<Str> opts = mt.options;
        std::optional<std::size_t> at;
        for (std::size_t j = 0; j < opts.size(); j++)
          if (starts_with(opts[j], "size=")) at = j;
        const Str cap = "size=" + human_size(tmax);
        if (!at) {
          decide("filesystem.tmpfs_max_size", where + ".options", "added",
                 "tmpfs at " + dest + " has no size limit; " + cap +
                     " added by policy rule filesystem.tmpfs_max_size");
          opts.push_back(cap);
        } else {
          Str v = opts[*at].substr(5);
          auto sz = parse_size(json(v));
          if (!sz || *sz <= 0 || *sz > tmax) {
            if (beyond("filesystem.tmpfs_max_size", where + ".options", "capped",
                       "caller asked for a tmpfs of size=" + v + " at " + dest, "capped to " + cap))
              opts[*at] = cap;
          }
        }
        m["options"] = opts;
      }
      // The kernel's own filesystems show (and change) the host: read-only,
      // decided on the effective flags (options apply in order, the last
      // of "ro"/"rw" wins).
      if (!mt.is_bind() && (type == "cgroup" || type == "cgroup2" || type == "sysfs") && !mt.readonly()) {
        const bool asked_rw = std::find(mt.options.begin(), mt.options.end(), "rw") != mt.options.end();
        const Str asked =
            type + " at " + dest + " would be writable (options " + json(mt.options).dump() + ")";
        if (asked_rw) {
          if (beyond("filesystem.readonly_paths", where + ".options", "neutralised", asked,
                     "made read-only")) {
            std::vector<Str> no;
            for (const auto& x : mt.options)
              if (x != "rw" && x != "ro") no.push_back(x);
            no.push_back("ro");
            m["options"] = no;
          }
        } else {
          decide("filesystem.readonly_paths", where + ".options", "added",
                 type + " at " + dest + " made read-only by policy rule filesystem.readonly_paths");
          std::vector<Str> no = mt.options;
          no.push_back("ro");
          m["options"] = no;
        }
      }
      oci::Mount done = oci::parse_mount(m, kept.size());
      done.source = mt.source;
      done.source_id = mt.source_id;
      r_.mounts.push_back(std::move(done));
      kept.push_back(m);
    }
    r_.config["mounts"] = kept;
    spec_.mounts = r_.mounts;
  }

  // A read-only root gets writable scratch space where agent tools expect
  // it (filesystem.scratch: /tmp, /var/tmp, $HOME by default), so pip,
  // npm, apt's lists and compilers work without the user finding out which
  // flag to add (issue 16). Each is a tmpfs, sized by default to the
  // container's memory limit: its pages are charged to the container's
  // memory cgroup, so that limit is what bounds it, whichever is written.
  // A path where the caller already mounts something, at, above or below
  // it, is left to the caller's mount. Appended after the caller's mounts
  // (indexes of theirs unchanged); the record tracks them as any tmpfs.
  // Whether `dir` inside the container's root filesystem is missing or
  // empty (resolved inside the root: the image's symlinks cannot point it
  // at the host). Unknown (no bundle, unreadable): not empty.
  bool image_dir_empty(const Str& dir) const {
    if (ctx_.bundle.empty()) return false;
    try {
      UniqueFd root(::open(oci::rootfs_path(spec_, ctx_.bundle).c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
      if (!root) return false;
      open_how how{};
      how.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
      how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
      const Str rel = dir.substr(1);
      int fd = static_cast<int>(::syscall(SYS_openat2, root.get(), rel.c_str(), &how, sizeof how));
      if (fd < 0) return errno == ENOENT;
      std::unique_ptr<DIR, int (*)(DIR*)> d(::fdopendir(fd), ::closedir);
      if (!d) {
        ::close(fd);
        return false;
      }
      while (dirent* e = ::readdir(d.get()))
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) return false;
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }

  void scratch() {
    json& c = r_.config;
    if (!spec_.root.readonly) return;
    const std::vector<Str>& paths = pol_.filesystem.scratch_paths;
    if (paths.empty()) return;
    long long size = 0;
    if (!pol_.filesystem.scratch_size) {  // "memory"
      size = spec_.linux.resources.memory.limit.value_or(0);
      if (size <= 0) size = pol_.filesystem.tmpfs_max_size;  // no limit at all
    } else {
      size = *pol_.filesystem.scratch_size;
    }
    const oci::Process& proc = spec_.process;
    const long long uid = proc.uid(), gid = proc.user ? proc.user->gid : 0;
    Str home = proc.env_value("HOME");
    if (home.empty() && uid == 0) home = "/root";
    if (!c["mounts"].is_array()) c["mounts"] = json::array();
    auto within = [](const Str& a, const Str& b) {  // a is b or below it
      return a == b || (b == "/" ? true : starts_with(a, b + "/"));
    };
    std::vector<Str> done;
    for (const auto& p : paths) {
      const bool is_home = p == "$HOME";
      Str dest = is_home ? home : p;
      if (dest.empty() || !is_abs(dest)) continue;  // no $HOME for this user
      dest = oci::clean_path(dest);
      if (dest == "/" || within(dest, "/proc") || within(dest, "/sys") || within(dest, "/dev")) continue;
      if (std::find(done.begin(), done.end(), dest) != done.end()) continue;
      const oci::Mount* taken = nullptr;
      for (const auto& m : r_.mounts)
        if (within(m.destination, dest) || within(dest, m.destination)) {
          taken = &m;
          break;
        }
      if (taken) {
        decide("filesystem.scratch", "mounts", "kept",
               "no scratch tmpfs at " + dest + ": the config mounts " + taken->destination +
                   " there (policy rule filesystem.scratch)");
        continue;
      }
      // A tmpfs would hide what the image keeps in the home directory
      // (dotfiles, tools installed per user): only an empty or missing one
      // gets it; otherwise the decision says what to mount.
      if (is_home && !image_dir_empty(dest)) {
        decide("filesystem.scratch", "mounts", "kept",
               "no scratch tmpfs at $HOME (" + dest +
                   "): the image has files there that a tmpfs would hide; it stays read-only (mount a "
                   "volume there for a writable home; policy rule filesystem.scratch)");
        continue;
      }
      json opts = json::array({"nosuid", "nodev", "size=" + std::to_string(size)});
      if (is_home) {
        opts.push_back("mode=0700");
        opts.push_back("uid=" + std::to_string(uid));
        opts.push_back("gid=" + std::to_string(gid));
      } else {
        opts.push_back("mode=1777");
      }
      json m = {{"destination", dest}, {"type", "tmpfs"}, {"source", "tmpfs"}, {"options", opts}};
      r_.mounts.push_back(oci::parse_mount(m, c["mounts"].size()));
      spec_.mounts.push_back(r_.mounts.back());
      c["mounts"].push_back(m);
      done.push_back(dest);
      decide("filesystem.scratch", "mounts", "added",
             "the root is read-only: a writable tmpfs of " + human_size(size) + " at " + dest +
                 (is_home ? " ($HOME)" : "") + " by policy rule filesystem.scratch");
    }
  }

  // minor < 0: every minor of `major` (a cgroup rule's wildcard); only the
  // default set has such an entry (the pts devices).
  bool block_allowed(char type, long long major) const {
    return type == 'b' && major >= 0 && pol_.devices.allow_block_devices;
  }

  bool device_allowed(char type, long long major, long long minor) {
    if (type == 'u') type = 'c';
    if (type == 'p') return true;
    if (type != 'c') return false;
    for (const auto& d : default_devices())
      if (d.type == type && d.major == major && (d.minor < 0 || d.minor == minor)) return true;
    if (minor < 0) return false;
    for (const auto& d : pol_.devices.allowed)
      if (d.major == major && d.minor == minor) return true;
    return false;
  }

  void devices() {
    json& l = linux_();
    if (!spec_.linux.devices.empty()) {
      json kept = json::array();
      std::vector<oci::Device> kept_typed;
      for (std::size_t i = 0; i < spec_.linux.devices.size(); i++) {
        const oci::Device& d = spec_.linux.devices[i];
        auto keep = [&] {
          kept.push_back(l["devices"][i]);
          kept_typed.push_back(d);
        };
        const Str t(1, d.type);
        Str desc = (d.type == 'b' ? "block device " : "device ") + d.path + " (" + t + " " +
                   std::to_string(d.major) + ":" + std::to_string(d.minor) + ")";
        if (device_allowed(d.type, d.major, d.minor)) {
          keep();
          continue;
        }
        if (block_allowed(d.type, d.major)) {
          decide("devices.allow_block_devices", "linux.devices[" + std::to_string(i) + "]", "kept",
                 "caller asked for " + desc + "; allowed by policy rule devices.allow_block_devices");
          keep();
          continue;
        }
        if (!beyond("devices.allowed", "linux.devices[" + std::to_string(i) + "]", "dropped",
                    "caller asked for " + desc, "dropped"))
          keep();
      }
      l["devices"] = kept;
      spec_.linux.devices = kept_typed;
    }
    if (!l["resources"].is_object()) l["resources"] = json::object();
    json& res = l["resources"];
    std::vector<oci::DeviceRule>& rules = spec_.linux.resources.devices;
    json kept = json::array();
    std::vector<oci::DeviceRule> kept_typed;
    for (std::size_t i = 0; i < rules.size(); i++) {
      const oci::DeviceRule& r = rules[i];
      auto keep = [&] {
        kept.push_back(res["devices"][i]);  // (the rule as given)
        kept_typed.push_back(r);
      };
      const Str t(1, r.type);
      // "m" alone (mknod) is harmless without CAP_MKNOD; runc and Docker allow
      // "c *:* m" and "b *:* m" by default.
      if (!r.allow || r.mknod_only() ||
          (r.type != 'a' && r.major >= 0 && device_allowed(r.type, r.major, r.minor))) {
        keep();
        continue;
      }
      Str desc = "access \"" + r.access + "\" to " +
                 (r.type == 'a' ? "every device"
                                : t + " " + (r.major < 0 ? Str("*") : std::to_string(r.major)) + ":" +
                                      (r.minor < 0 ? Str("*") : std::to_string(r.minor)));
      if (block_allowed(r.type, r.major)) {
        decide("devices.allow_block_devices", "linux.resources.devices[" + std::to_string(i) + "]", "kept",
               "caller asked for a device cgroup rule allowing " + desc +
                   "; allowed by policy rule devices.allow_block_devices");
        keep();
        continue;
      }
      if (!beyond("devices.allowed", "linux.resources.devices[" + std::to_string(i) + "]", "dropped",
                  "caller asked for a device cgroup rule allowing " + desc, "dropped"))
        keep();
    }
    const bool deny_first = !kept_typed.empty() && !kept_typed[0].allow && kept_typed[0].every_device();
    if (!deny_first) {
      decide("devices.allowed", "linux.resources.devices", "added",
             "a deny-all device cgroup rule is put first by policy rule devices.allowed (only the default "
             "devices and "
             "the policy's allowed ones stay accessible)");
      kept.insert(kept.begin(), json{{"allow", false}, {"access", "rwm"}});
      kept_typed.insert(kept_typed.begin(), oci::DeviceRule{});
    }
    res["devices"] = kept;
    rules = kept_typed;
  }

  // Decided on the typed linux.resources (spec_); the groups decided on are
  // written back into the enforced config as oci::to_json spells them, so
  // `create` parses back exactly these values.
  void resources() {
    oci::Resources& r = spec_.linux.resources;
    const Policy::ResourceRule& def = pol_.resources.defaults;
    const Policy::ResourceRule& max = pol_.resources.maximum;
    // memory
    if (def.memory || max.memory) {
      const long long lim = r.memory.limit.value_or(0);
      // Plain integers (-1: not set), not std::optional: GCC 12 at -O3
      // (CMAKE_BUILD_TYPE=Release) reports a false -Wmaybe-uninitialized on
      // the optional's payload here, which -Werror turns into a build failure.
      const long long d = def.memory.value_or(-1);
      const long long x = max.memory.value_or(-1);
      long long limit = lim;
      if (lim <= 0) {
        const long long v = d >= 0 ? d : x >= 0 ? x : 1LL << 30;
        decide(d >= 0 ? "resources.defaults.memory" : "resources.maximum.memory",
               "linux.resources.memory.limit", "added",
               "the config sets no memory limit; " + human_size(v) + " by policy rule " +
                   (d >= 0 ? "resources.defaults.memory" : "resources.maximum.memory"));
        limit = v;
      } else if (x >= 0 && lim > x) {
        if (beyond("resources.maximum.memory", "linux.resources.memory.limit", "capped",
                   "caller asked for a memory limit of " + human_size(lim), "capped to " + human_size(x)))
          limit = x;
      }
      r.memory.limit = limit;
      if (r.memory.reservation.value_or(0) > limit) r.memory.reservation = limit;
    }
    // pids
    if (def.pids || max.pids) {
      const long long lim = r.pids.limit.value_or(0);
      long long d = def.pids.value_or(0), x = max.pids.value_or(0);
      if (lim <= 0) {
        long long v = d > 0 ? d : x;
        decide(d > 0 ? "resources.defaults.pids" : "resources.maximum.pids", "linux.resources.pids.limit",
               "added",
               "the config sets no pids limit; " + std::to_string(v) + " by policy rule " +
                   (d > 0 ? "resources.defaults.pids" : "resources.maximum.pids"));
        r.pids.limit = v;
      } else if (x > 0 && lim > x) {
        if (beyond("resources.maximum.pids", "linux.resources.pids.limit", "capped",
                   "caller asked for a pids limit of " + std::to_string(lim),
                   "capped to " + std::to_string(x)))
          r.pids.limit = x;
      }
    }
    // cpus (CFS quota over period)
    if (def.cpus || max.cpus) {
      const long long period = r.cpu.period.value_or(0) > 0 && *r.cpu.period <= (1ULL << 62)
                                   ? static_cast<long long>(*r.cpu.period)
                                   : 100000;
      const long long quota = r.cpu.quota.value_or(0);
      auto set_cpu = [&](double cpus) {
        r.cpu.period = static_cast<std::uint64_t>(period);
        // (A period beyond any kernel's 1 s must not overflow the quota.)
        r.cpu.quota = static_cast<long long>(std::min(cpus * static_cast<double>(period), 0x1p62));
      };
      const std::optional<double> d = def.cpus, x = max.cpus;
      if (quota <= 0) {
        double v = d ? *d : x.value_or(1.0);
        decide(d ? "resources.defaults.cpus" : "resources.maximum.cpus", "linux.resources.cpu.quota", "added",
               "the config sets no CPU limit; " + fmt_cpus(v) + " CPUs by policy rule " +
                   (d ? "resources.defaults.cpus" : "resources.maximum.cpus"));
        set_cpu(v);
      } else if (x && static_cast<double>(quota) / static_cast<double>(period) > *x + 1e-9) {
        if (beyond("resources.maximum.cpus", "linux.resources.cpu.quota", "capped",
                   "caller asked for " + fmt_cpus(static_cast<double>(quota) / static_cast<double>(period)) +
                       " CPUs",
                   "capped to " + fmt_cpus(*x)))
          set_cpu(*x);
      }
    }
    json& res = linux_()["resources"];
    const json typed = oci::to_json(r);
    for (const auto& [group, ruled] : {std::pair<const char*, bool>{"memory", def.memory || max.memory},
                                       {"pids", def.pids || max.pids},
                                       {"cpu", def.cpus || max.cpus}})
      if (ruled && typed.contains(group)) res[group] = typed[group];
  }

  void process_limits() {
    oci::Process& p = spec_.process;
    if (p.oom_score_adj && *p.oom_score_adj < 0) {
      if (beyond("process.oomScoreAdj", "process.oomScoreAdj", "capped",
                 "caller asked for oomScoreAdj " + std::to_string(*p.oom_score_adj) +
                     " (protecting the container from the OOM killer at the host's expense)",
                 "raised to 0")) {
        proc()["oomScoreAdj"] = 0;
        p.oom_score_adj = 0;
      }
    }
    // Ceilings that keep one container from hurting the host.
    static const std::map<Str, unsigned long long> ceiling = {
        {"RLIMIT_NOFILE", 1 << 20}, {"RLIMIT_MEMLOCK", 64ULL << 20},
        {"RLIMIT_RTPRIO", 0},       {"RLIMIT_NICE", 20},
        {"RLIMIT_RTTIME", 0},       {"RLIMIT_MSGQUEUE", 8ULL << 20}};
    for (std::size_t i = 0; i < p.rlimits.size(); i++) {
      oci::Rlimit& r = p.rlimits[i];
      auto it = ceiling.find(r.type);
      if (it == ceiling.end()) continue;
      if (r.hard <= it->second && r.soft <= it->second) continue;
      if (beyond("process.rlimits", "process.rlimits[" + std::to_string(i) + "]", "capped",
                 "caller asked for " + it->first + " soft " + std::to_string(r.soft) + " hard " +
                     std::to_string(r.hard),
                 "capped to " + std::to_string(it->second))) {
        r.hard = std::min<std::uint64_t>(r.hard, it->second);
        r.soft = std::min<std::uint64_t>(r.soft, it->second);
        proc()["rlimits"][i]["hard"] = r.hard;
        proc()["rlimits"][i]["soft"] = r.soft;
      }
    }
  }

  void annotations() {
    allow_ = pol_.network.allow;
    const std::set<Str> may(pol_.may_widen.begin(), pol_.may_widen.end());
    for (const auto& [k, v] : spec_.annotations.items()) {
      if (!starts_with(k, "dev.agentshim.")) continue;
      const Str where = "annotations." + k;
      // A misspelt or unknown agentshim annotation, or a malformed rule in a
      // known one, is an error in every mode: ignoring it silently leaves
      // the user with 403s and no clue (issue 16).
      if (k == kCredentialsAnnotation) {
        credentials(v, where);
        continue;
      }
      if (!widening_annotations().count(k)) {
        Str known;
        for (const auto& w : widening_annotations()) known += (known.empty() ? "" : ", ") + w;
        known += Str(", ") + kCredentialsAnnotation;
        hard("annotations", where,
             "caller set " + k + ", which is not a known agentshim annotation (known: " + known + ")");
        continue;
      }
      if (!may.count(k)) {
        beyond("annotations.may_widen", where, "ignored",
               "caller set " + k + ", which this policy does not permit to widen it", "ignored");
        continue;
      }
      if (!v.is_string()) {
        beyond("annotations.may_widen", where, "ignored", "caller set " + k + " to a non-string value",
               "ignored");
        continue;
      }
      for (const auto& raw : split(v.get<Str>(), ',')) {
        Str rule = trim(raw);
        if (rule.empty()) continue;
        for (auto& ch : rule) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        Str why;
        if (!valid_egress_rule(rule, &why)) {
          hard("annotations", where,
               "caller's egress rule \"" + rule + "\" is invalid (" + why +
                   "); rules are host:port, such as "
                   "api.example.com:443");
          continue;
        }
        if (std::find(allow_.begin(), allow_.end(), rule) != allow_.end()) continue;
        allow_.push_back(rule);
        decide("annotations.may_widen", where, "added",
               "caller's annotation " + k + " adds the egress rule " + rule +
                   " (permitted by policy rule annotations.may_widen)");
      }
    }
  }

  // dev.agentshim.credentials: "name,name": each a credential of the
  // policy's section. The container gets its placeholder (a fresh random
  // token) in the variable the policy names; the proxy gets the definitions
  // (Result::network["credentials"]) and the supervisor reads the secrets.
  void credentials(const json& v, const Str& where) {
    if (!v.is_string()) {
      hard("annotations", where, Str("caller set ") + kCredentialsAnnotation + " to a non-string value");
      return;
    }
    const auto& defs = pol_.credentials;
    std::vector<Str> env = spec_.process.env;
    for (const auto& raw : split(v.get<Str>(), ',')) {
      const Str name = trim(raw);
      if (name.empty() || std::any_of(creds_.begin(), creds_.end(),
                                      [&](const network::Credential& c) { return c.name == name; }))
        continue;
      auto def = defs.find(name);
      if (def == defs.end()) {
        Str known;
        for (const auto& [k, d] : defs) known += (known.empty() ? "" : ", ") + k;
        hard("credentials", where,
             "caller asked for credential \"" + name + "\", which this policy does not define (defined: " +
                 (known.empty() ? Str("none") : known) + ")");
        continue;
      }
      network::Credential c{name, net::cred::make_placeholder(), def->second, ""};
      if (net_peer_) {
        // A network joined from another agentshim container (a pod's
        // sandbox, `--network container:X`) is served by that container's
        // proxy: only a credential it holds can be applied, with its
        // placeholder (docs/CREDENTIALS.md "Pods").
        const network::Credential* held = nullptr;
        Str holds;
        for (const auto& h : net_peer_->credentials) {
          holds += (holds.empty() ? "" : ", ") + h.name;
          if (h.name == name) held = &h;
        }
        if (!held) {
          hard("credentials", where,
               "caller asked for credential \"" + name +
                   "\", which the proxy serving this container's network (agentshim container " +
                   net_peer_->id + "'s) does not hold (it holds: " + (holds.empty() ? Str("none") : holds) +
                   "); ask for it on the container that owns the network (Kubernetes: as a pod annotation, "
                   "which containerd's pod_annotations passes to the pod's sandbox)");
          continue;
        }
        c.definition = held->definition;
        c.placeholder = held->placeholder;
        c.served_by = net_peer_->id;
      }
      const Str var = c.definition.placeholder_env, ph = c.placeholder, served_by = c.served_by;
      std::vector<Str> kept;
      for (const auto& e : env) {
        if (starts_with(e, var + "=")) {
          decide("credentials", "process.env", "replaced",
                 "caller set " + var + "; replaced by the placeholder of credential " + name);
          continue;
        }
        kept.push_back(e);
      }
      kept.push_back(var + "=" + ph);
      env = std::move(kept);
      Str dests;
      for (const auto& x : c.definition.destinations)
        dests += (dests.empty() ? "" : ", ") + x.host + ":" + std::to_string(x.port);
      creds_.push_back(std::move(c));
      decide("credentials", where, "added",
             "caller asked for credential " + name + ": its placeholder is in " + var + "; " +
                 (served_by.empty() ? Str("the proxy") : "agentshim container " + served_by + "'s proxy") +
                 " applies it on requests to " + dests);
    }
    proc()["env"] = env;
    spec_.process.env = env;
  }

  void network() {
    network::Options& n = r_.network;
    n = pol_.network;  // mode, dns, proxy_port, limits, request_rules
    n.allow = allow_;  // with what annotations added
    n.credentials = creds_;
    const Str& mode = n.mode;
    const long long port = n.proxy_port;
    // The namespace the container's network is in: one of its own ("new"),
    // the caller's ("caller": a pod's CNI namespace), or another agentshim
    // container's ("peer": a pod's sandbox, served by that container).
    if (auto it = r_.peer_namespaces.find("network"); it != r_.peer_namespaces.end()) {
      n.ns = "peer";
      n.peer = it->second;
    } else if (spec_.has_new_namespace("network")) {
      n.ns = "new";
    } else {
      n.ns = spec_.has_namespace("network") ? "caller" : "host";
    }
    // Credentials are applied by the egress proxy: this container's own, or
    // (a joined network) the one of the container that owns the network,
    // which then also intercepts TLS for it: this container trusts that
    // run's CA (network::trust_run_ca).
    if (!creds_.empty() && mode == "passthrough")
      hard("credentials", Str("annotations.") + kCredentialsAnnotation,
           "caller asked for credentials, which only an egress proxy applies: not with network.mode "
           "passthrough");
    if (net_peer_ && n.ns == "peer" && !net_peer_->run_ca_file.empty())
      n.peer_run_ca = net_peer_->run_ca_file;
    if (mode != "internal" && mode != "confined") return;
    // Docker (libnetwork) wires its bridge into the container's namespace
    // from a prestart/createRuntime hook ("libnetwork-setkey"): with the
    // internal-only network that hook is removed, so no veth arrives; the
    // confined network keeps it (the bridge stays, outbound is confined).
    if (mode == "internal")
      for (auto& [kind, hooks] : spec_.hooks) {
        json kept = json::array();
        std::vector<oci::Hook> kept_typed;
        for (std::size_t i = 0; i < hooks.size(); i++) {
          if (std::ranges::find(hooks[i].args, "libnetwork-setkey") != hooks[i].args.end()) {
            decide("network.mode", "hooks." + kind, "dropped",
                   "caller's " + kind +
                       " hook libnetwork-setkey (Docker's bridge network setup) removed: "
                       "the container gets the internal-only network by policy rule network.mode");
            continue;
          }
          kept.push_back(r_.config["hooks"][kind][i]);
          kept_typed.push_back(hooks[i]);
        }
        r_.config["hooks"][kind] = kept;
        hooks = kept_typed;
      }
    auto [e, d] = proxy_env(spec_.process.env, port);
    for (auto& x : d) r_.decisions.push_back(std::move(x));
    proc()["env"] = e;
    spec_.process.env = e;
  }

 public:
  static std::pair<std::vector<Str>, json> proxy_env(const std::vector<Str>& env, long long port) {
    const Str url = "http://127.0.0.1:" + std::to_string(port);
    const std::vector<std::pair<Str, Str>> want = {{"HTTP_PROXY", url},
                                                   {"HTTPS_PROXY", url},
                                                   {"http_proxy", url},
                                                   {"https_proxy", url},
                                                   {"NO_PROXY", "localhost,127.0.0.1"},
                                                   {"no_proxy", "localhost,127.0.0.1"}};
    std::vector<Str> out;
    json decisions = json::array();
    for (const auto& s : env) {
      Str name = s.substr(0, s.find('='));
      bool ours = false;
      for (const auto& [k, v] : want)
        if (k == name) {
          ours = true;
          if (s != k + "=" + v)
            decisions.push_back({{"rule", "network.mode"},
                                 {"path", "process.env"},
                                 {"action", "replaced"},
                                 {"detail", "caller set " + name + "; replaced by " + k + "=" + v +
                                                " (the egress proxy) by policy rule network.mode"}});
        }
      if (!ours) out.push_back(s);
    }
    std::vector<Str> added;
    for (const auto& [k, v] : want) {
      bool had = false;
      for (const auto& e : env)
        if (starts_with(e, k + "=")) had = true;
      if (!had) added.push_back(k);
      out.push_back(k + "=" + v);
    }
    if (!added.empty())
      decisions.push_back({{"rule", "network.mode"},
                           {"path", "process.env"},
                           {"action", "added"},
                           {"detail", join(added, ", ") + " set to the egress proxy " + url +
                                          " by policy rule network.mode"}});
    return {out, decisions};
  }

 private:
  const Policy& pol_;
  oci::Spec spec_;  // the caller's config as read once, kept equal to r_.config as it is tightened
  std::vector<network::Credential> creds_;  // the credentials the caller asked for
  std::optional<peers::Peer> net_peer_;     // the agentshim container whose network this one joined
  const ApplyContext& ctx_;
  bool refuse_;
  Result r_;
  std::vector<Str> allow_;
};

}  // namespace

std::optional<long long> parse_size(const json& v) {
  if (v.is_number_integer()) {
    long long n = v.get<long long>();
    return n >= 0 ? std::optional<long long>(n) : std::nullopt;
  }
  if (!v.is_string()) return std::nullopt;
  std::string s = v.get<std::string>();
  if (s.empty() || s.size() > 24) return std::nullopt;
  long long mul = 1;
  char u = static_cast<char>(std::tolower(static_cast<unsigned char>(s.back())));
  if (u == 'b' && s.size() > 1 &&
      std::string("kmgt").find(static_cast<char>(
          std::tolower(static_cast<unsigned char>(s[s.size() - 2])))) != std::string::npos) {
    s.pop_back();
    u = static_cast<char>(std::tolower(static_cast<unsigned char>(s.back())));
  }
  if (u == 'k' || u == 'm' || u == 'g' || u == 't') {
    mul = u == 'k' ? 1LL << 10 : u == 'm' ? 1LL << 20 : u == 'g' ? 1LL << 30 : 1LL << 40;
    s.pop_back();
  }
  auto n = parse_uint(s);
  if (!n || *n > static_cast<unsigned long long>(std::numeric_limits<long long>::max() / mul))
    return std::nullopt;
  return static_cast<long long>(*n) * mul;
}

json builtin() {
  static const json doc = json::parse(embedded::default_policy);
  return doc;
}

json validate(const json& p, const std::string& where) {
  if (!p.is_object()) throw Error(where + ": a policy must be a JSON object");
  json out = builtin();
  for (const auto& [k, v] : p.items())
    if (!out.contains(k)) throw Error(where + ": unknown policy section \"" + k + "\"");
  for (const auto& [k, v] : p.items()) out[k] = validate_section(k, v, out[k], where);
  // Cross-checks: defaults within the maximum.
  const json& d = out["resources"]["defaults"];
  const json& m = out["resources"]["maximum"];
  if (d.contains("memory") && m.contains("memory") && *parse_size(d["memory"]) > *parse_size(m["memory"]))
    fail(where, "resources.defaults.memory", "is above resources.maximum.memory");
  if (d.contains("pids") && m.contains("pids") && d["pids"].get<long long>() > m["pids"].get<long long>())
    fail(where, "resources.defaults.pids", "is above resources.maximum.pids");
  if (d.contains("cpus") && m.contains("cpus") && *parse_cpus(d["cpus"]) > *parse_cpus(m["cpus"]))
    fail(where, "resources.defaults.cpus", "is above resources.maximum.cpus");
  // The confined network keeps interfaces the container could reconfigure,
  // or send raw frames through below netfilter, with these.
  if (out["network"]["mode"] == "confined")
    for (const auto& c : out["capabilities"]["allowed"])
      if (c == "CAP_NET_ADMIN" || c == "CAP_NET_RAW")
        fail(where, "capabilities.allowed",
             c.get<Str>() +
                 " cannot be allowed with network.mode \"confined\" (the container could change "
                 "or bypass the rules that confine its outbound traffic; use \"internal\" or drop it)");
  // The host's network namespace has no loopback of the container's own to
  // serve the egress proxy and the DNS stub on: egress could not be
  // mediated, so sharing it needs a policy that says so (passthrough).
  for (const auto& t : out["namespaces"]["allow_host"])
    if (t == "network" && out["network"]["mode"] != "passthrough")
      fail(
          where, "namespaces.allow_host",
          "\"network\" needs network.mode \"passthrough\" (the internal network serves the egress proxy in a "
          "network namespace of the container's own; in the host's, egress is not mediated)");
  return out;
}

std::vector<Owned> runtime_owned(const Policy& policy, const std::string& state_root,
                                 const std::string& audit_dir, const std::string& policy_path) {
  std::vector<Owned> out;
  auto add = [&](const std::string& p, const std::string& what) {
    if (p.empty()) return;
    char cwd[PATH_MAX];
    out.push_back({starts_with(p, "/") || !::getcwd(cwd, sizeof cwd) ? p : std::string(cwd) + "/" + p, what});
  };
  add(state_root, "agentshim's state root (--root: container state, control sockets)");
  add(audit_dir, "agentshim's audit directory (run records, ledger, signing key)");
  add(policy.audit.signing_key, "agentshim's signing key");
  if (!policy_path.empty())
    add(policy_path, "agentshim's policy file");
  else if (::access("/etc/agentshim/policy.json", F_OK) == 0)
    add("/etc/agentshim/policy.json", "agentshim's policy file");
  char exe[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) add(std::string(exe, static_cast<std::size_t>(n)), "the agentshim binary");
  add("/run/agentshim-userns", "agentshim's userns allocation directory");
  return out;
}

std::string audit_dir(const Policy& loaded_policy, const std::string& flag) {
  return flag.empty() ? loaded_policy.audit.dir : flag;
}

Policy parse(const json& doc) {
  if (!doc.is_object()) throw Error("policy: a policy must be a JSON object");
  // What the document leaves out keeps the built-in default: validate()
  // merged it already; a document saved by an older version (read again by
  // `update`) may lack a key added since.
  json d = builtin();
  d.merge_patch(doc);
  auto size = [](const json& v, const char* key) {
    auto s = parse_size(v);
    if (!s) throw Error(Str("policy: ") + key + ": not a size");
    return *s;
  };
  Policy p;
  p.doc = doc;
  try {
    p.refuse = d.at("mode") == "refuse";
    p.userns_auto = d.at("userns") == "auto";
    const json& caps = d.at("capabilities");
    caps.at("allowed").get_to(p.capabilities.allowed);
    caps.at("no_new_privileges").get_to(p.capabilities.no_new_privileges);
    const json& sc = d.at("seccomp");
    sc.at("profile").get_to(p.seccomp.profile);
    sc.at("stack_on_config").get_to(p.seccomp.stack_on_config);
    if (auto l = sc.find("loaded"); l != sc.end()) p.seccomp.loaded = *l;
    const json& fs = d.at("filesystem");
    auto& f = p.filesystem;
    fs.at("readonly_root").get_to(f.readonly_root);
    fs.at("masked_paths").get_to(f.masked_paths);
    fs.at("readonly_paths").get_to(f.readonly_paths);
    f.tmpfs_max_size = size(fs.at("tmpfs_max_size"), "filesystem.tmpfs_max_size");
    fs.at("scratch").at("paths").get_to(f.scratch_paths);
    if (const json& sz = fs.at("scratch").at("size"); sz != "memory")
      f.scratch_size = size(sz, "filesystem.scratch.size");
    fs.at("allow_bind_mounts").get_to(f.allow_bind_mounts);
    fs.at("forbidden_sources").get_to(f.forbidden_sources);
    const json& ns = d.at("namespaces");
    ns.at("allow_join").get_to(p.namespaces.allow_join);
    ns.at("allow_host").get_to(p.namespaces.allow_host);
    const json& dev = d.at("devices");
    dev.at("allow_block_devices").get_to(p.devices.allow_block_devices);
    for (const auto& r : dev.at("allowed"))
      p.devices.allowed.push_back({r.at("major").get<long long>(), r.at("minor").get<long long>()});
    for (auto [key, rule] : {std::pair<const char*, Policy::ResourceRule*>{"defaults", &p.resources.defaults},
                             {"maximum", &p.resources.maximum}}) {
      const json& r = d.at("resources").at(key);
      const std::string where = std::string("resources.") + key;
      if (auto m = r.find("memory"); m != r.end()) rule->memory = size(*m, (where + ".memory").c_str());
      if (auto n = r.find("pids"); n != r.end()) rule->pids = n->get<long long>();
      if (auto c = r.find("cpus"); c != r.end()) {
        rule->cpus = parse_cpus(*c);
        if (!rule->cpus) throw Error("policy: " + where + ".cpus: not a number of CPUs");
      }
    }
    d.at("limits").at("exec_time_seconds").get_to(p.exec_time_limit_s);
    const json& n = d.at("network");
    auto& o = p.network;
    n.at("mode").get_to(o.mode);
    n.at("allow").get_to(o.allow);
    n.at("dns").get_to(o.dns);
    n.at("proxy_port").get_to(o.proxy_port);
    n.at("limits").get_to(o.limits);
    if (auto r = n.find("request_rules"); r != n.end())
      o.request_rules = net::RequestRules::parse(*r, "policy");
    d.at("annotations").at("may_widen").get_to(p.may_widen);
    for (const auto& [name, def] : d.at("credentials").items())
      p.credentials[name] = net::cred::parse(name, def, "policy");
    const json& au = d.at("audit");
    auto& a = p.audit;
    au.at("dir").get_to(a.dir);
    au.at("signing_key").get_to(a.signing_key);
    au.at("key_type").get_to(a.key_type);
    au.at("strict").get_to(a.strict);
    a.stop_on_log_failure = au.at("on_log_failure") == "stop";
    au.at("observe_exec").get_to(a.observe_exec);
    au.at("max_file_bytes").get_to(a.max_file_bytes);
    au.at("max_event_log_bytes").get_to(a.max_event_log_bytes);
    if (auto t = au.find("tsa_url"); t != au.end()) t->get_to(a.tsa_url);  // not in the default
  } catch (const json::exception& e) {
    throw Error(Str("policy: not a validated policy document: ") + e.what());
  }
  return p;
}

std::string source_name(const std::string& path) {
  if (!path.empty()) return "policy " + path;
  return path_exists("/etc/agentshim/policy.json") ? "policy /etc/agentshim/policy.json" : "built-in policy";
}

json load(const std::string& path) {
  std::string p = path;
  if (p.empty()) {
    if (!path_exists("/etc/agentshim/policy.json")) return builtin();
    p = "/etc/agentshim/policy.json";
  }
  std::string text;
  try {
    text = read_file_limited(p, 4 << 20);
  } catch (const std::exception& e) {
    throw Error("policy " + p + ": cannot be read (" + e.what() + ")");
  }
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error("policy " + p + ": not valid JSON (" + e.what() + ")");
  }
  json out = validate(j, "policy " + p);
  const std::string prof = out["seccomp"].value("profile", "builtin");
  if (prof != "builtin") out["seccomp"]["loaded"] = load_profile(prof, "policy " + p);
  return out;
}

json Result::summary() const {
  return {{"mode", mode},
          {"decisions", decisions},
          {"violations", violations},
          {"extra_seccomp", extra_seccomp},
          {"network", network},
          {"exec_time_limit_s", exec_time_limit_s},
          {"userns_auto", userns_auto}};
}

Result evaluate(const json& policy, const json& caller_config, const ApplyContext& ctx) {
  return evaluate(parse(policy), caller_config, ctx);
}

Result apply(const json& policy, const json& caller_config, const ApplyContext& ctx) {
  return apply(parse(policy), caller_config, ctx);
}

Result evaluate(const Policy& policy, const json& caller_config, const ApplyContext& ctx) {
  if (!caller_config.is_object()) throw Error("policy: the config to check is not a JSON object");
  try {
    return Engine(policy, caller_config, ctx).run();
  } catch (const json::exception& e) {
    // The config comes from the caller: a field of an unexpected type that
    // OCI validation let through is an error about the config, not a crash.
    throw Error(ctx.policy_name + ": cannot evaluate config.json: " + e.what());
  }
}

Result apply(const Policy& policy, const json& caller_config, const ApplyContext& ctx) {
  Result r = evaluate(policy, caller_config, ctx);
  if (!r.violations.empty()) {
    std::string msg = ctx.policy_name + " (mode " + r.mode + ") refuses this config (" +
                      std::to_string(r.violations.size()) + " violation" +
                      (r.violations.size() == 1 ? "" : "s") + "):";
    for (const auto& v : r.violations)
      msg += "\n  " + v["path"].get<std::string>() + ": " + v["detail"].get<std::string>();
    throw Error(msg);
  }
  return r;
}

ExecSettings exec_settings(const Policy& policy, const Result& r) {
  ExecSettings e;
  if (r.network.mediated()) e.env = Engine::proxy_env({}, r.network.proxy_port).first;
  // An exec'd process sees the same placeholders as the init.
  for (const auto& c : r.network.credentials)
    e.env.push_back(c.definition.placeholder_env + "=" + c.placeholder);
  // ... and trusts the run's CA as it does (sandbox/network.h, trust_run_ca).
  if (r.network.tls) e.env.insert(e.env.end(), r.network.tls->env.begin(), r.network.tls->env.end());
  e.capabilities_allowed = policy.capabilities.allowed;
  e.no_new_privileges = policy.capabilities.no_new_privileges;
  e.extra_seccomp = r.extra_seccomp;
  e.observe_exec = policy.audit.observe_exec;
  return e;
}

void to_json(json& j, const ExecSettings& e) {
  j = {{"capabilities_allowed", e.capabilities_allowed},
       {"no_new_privileges", e.no_new_privileges},
       {"extra_seccomp", e.extra_seccomp},
       {"env", e.env},
       {"observe_exec", e.observe_exec}};
}

void from_json(const json& j, ExecSettings& e) {
  e = ExecSettings{};
  e.capabilities_allowed = j.value("capabilities_allowed", e.capabilities_allowed);
  e.no_new_privileges = j.value("no_new_privileges", true);
  e.extra_seccomp = j.value("extra_seccomp", json());
  e.env = j.value("env", e.env);
  e.observe_exec = j.value("observe_exec", false);
}

Saved Saved::read(const std::string& state_dir) {
  const std::string file = state_dir + "/policy.json";
  try {
    const json j = json::parse(read_file_limited(file, 64 << 20));
    Saved s;
    s.exec = j.get<ExecSettings>();
    if (auto p = j.find("policy"); p != j.end()) s.policy = *p;
    s.policy_name = j.value("policy_name", s.policy_name);
    if (j.contains("served_network")) s.served_network = j["served_network"].get<network::Served>();
    return s;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(file + ": saved policy settings are corrupt: " + e.what());
  }
}

void Saved::write(const std::string& state_dir) const {
  json j = exec;
  j["policy"] = policy;
  j["policy_name"] = policy_name;
  if (served_network) j["served_network"] = *served_network;
  write_file(state_dir + "/policy.json", j.dump(), 0600);
}

json apply_exec(const ExecSettings& settings, oci::Process& process) {
  // `settings` is what create saved (exec_settings): the runtime's own file.
  json decisions = json::array();
  std::set<int> allowed;
  for (const auto& a : settings.capabilities_allowed)
    if (auto v = oci::capability_from_name(a)) allowed.insert(*v);
  if (process.capabilities) {
    std::set<std::string> dropped;
    for (const char* set : {"bounding", "effective", "permitted", "inheritable", "ambient"})
      std::erase_if(*process.capabilities->set(set), [&](const std::string& n) {
        auto v = oci::capability_from_name(n);
        if (v && allowed.count(*v)) return false;
        dropped.insert(n);
        return true;
      });
    for (const auto& d : dropped)
      decisions.push_back(
          {{"rule", "capabilities.allowed"},
           {"path", "process.capabilities"},
           {"action", "dropped"},
           {"detail", "exec asked for " + d + "; dropped by policy rule capabilities.allowed"}});
  }
  if (settings.no_new_privileges && process.no_new_privileges != true) {
    process.no_new_privileges = true;
    decisions.push_back(
        {{"rule", "no_new_privs"},
         {"path", "process.noNewPrivileges"},
         {"action", "added"},
         {"detail", "set to true for the exec by policy rule capabilities.no_new_privileges"}});
  }
  const std::vector<std::string>& want = settings.env;
  if (!want.empty()) {
    auto name = [](const std::string& e) { return e.substr(0, e.find('=')); };
    std::set<std::string> names;
    for (const auto& w : want) names.insert(name(w));
    std::vector<std::string> out;
    for (const auto& e : process.env)
      if (!names.count(name(e))) out.push_back(e);
    out.insert(out.end(), want.begin(), want.end());
    if (out != process.env)
      decisions.push_back(
          {{"rule", "network.mode"},
           {"path", "process.env"},
           {"action", "replaced"},
           {"detail", "proxy variables set to the egress proxy for the exec by policy rule network.mode"}});
    process.env = std::move(out);
  }
  return decisions;
}

}  // namespace agentshim::policy
