#include "sandbox/oci.h"

#include <sched.h>
#include <signal.h>
#include <sys/capability.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "common/error.h"
#include "common/util.h"

namespace agentshim::oci {
namespace {

// A non-negative integer: parsed JSON holds it as unsigned, JSON built by
// the runtime (json{{"uid", 0}}) may hold it as a signed integer.
bool is_uint(const json& v) {
  return v.is_number_unsigned() || (v.is_number_integer() && v.get<long long>() >= 0);
}

void expect(bool ok, const std::string& field, const std::string& what) {
  if (!ok) throw Error("config.json: " + field + ": " + what);
}

void expect_type(const json& obj, const char* key, json::value_t t, const std::string& where,
                 bool required = false) {
  if (!obj.contains(key)) {
    expect(!required, where + "." + key, "required field missing");
    return;
  }
  const json& v = obj.at(key);
  bool ok = v.type() == t || (t == json::value_t::number_integer && v.is_number_integer()) ||
            (t == json::value_t::number_unsigned && is_uint(v)) || v.is_null();
  const char* names[] = {"null", "object", "array", "string", "boolean", "integer", "integer", "number"};
  expect(ok, where + "." + key,
         std::string("expected ") + names[static_cast<int>(t) < 8 ? static_cast<int>(t) : 0] + ", got " +
             v.type_name());
}

void expect_string_array(const json& obj, const char* key, const std::string& where) {
  if (!obj.contains(key) || obj.at(key).is_null()) return;
  expect(obj.at(key).is_array(), where + "." + key,
         std::string("expected array, got ") + obj.at(key).type_name());
  std::size_t i = 0;
  for (const auto& e : obj.at(key)) {
    expect(e.is_string(), where + "." + key + "[" + std::to_string(i) + "]", "expected string");
    i++;
  }
}

}  // namespace

const std::vector<NamespaceType>& namespace_types() {
  static const std::vector<NamespaceType> t = {
      {"user", CLONE_NEWUSER, "user"}, {"ipc", CLONE_NEWIPC, "ipc"},
      {"uts", CLONE_NEWUTS, "uts"},    {"network", CLONE_NEWNET, "net"},
      {"pid", CLONE_NEWPID, "pid"},    {"cgroup", CLONE_NEWCGROUP, "cgroup"},
      {"mount", CLONE_NEWNS, "mnt"},   {"time", 0x00000080 /*CLONE_NEWTIME*/, "time"},
  };
  return t;
}

std::optional<NamespaceType> namespace_by_name(const std::string& name) {
  for (const auto& t : namespace_types())
    if (name == t.name) return t;
  return std::nullopt;
}

namespace {
// linux.namespaces of a validated config (parse_linux, and the sysctl
// checks of validate()).
std::vector<Namespace> namespaces_of(const json& cfg) {
  std::vector<Namespace> out;
  if (!cfg.contains("linux") || !cfg["linux"].contains("namespaces") || cfg["linux"]["namespaces"].is_null())
    return out;
  for (const auto& n : cfg["linux"]["namespaces"]) {
    out.push_back({n.value("type", ""), n.value("path", "")});
  }
  return out;
}
}  // namespace

std::optional<RootIds> root_ids(const std::vector<IdMapping>& mappings) {
  for (const auto& m : mappings) {
    // Container id 0 is the first of this mapping (validated unsigned: c >= 0).
    if (m.container_id == 0 && m.size > 0) return RootIds{m.host_id, m.size};
  }
  return std::nullopt;
}

bool has_new_namespace(const json& cfg, const std::string& type) {
  for (const auto& n : namespaces_of(cfg))
    if (n.type == type && n.path.empty()) return true;
  return false;
}

void validate_process(const json& p, const std::string& where) {
  using vt = json::value_t;
  expect(p.is_object(), where, "expected object");
  expect_type(p, "terminal", vt::boolean, where);
  expect_type(p, "cwd", vt::string, where);
  expect_string_array(p, "args", where);
  expect_string_array(p, "env", where);
  expect(p.contains("args") && p["args"].is_array() && !p["args"].empty(), where + ".args",
         "must name the program to run (non-empty array)");
  if (p.contains("cwd") && p["cwd"].is_string())
    expect(starts_with(p["cwd"].get<std::string>(), "/"), where + ".cwd", "must be an absolute path");
  if (p.contains("user") && !p["user"].is_null()) {
    const json& u = p["user"];
    expect(u.is_object(), where + ".user", "expected object");
    expect_type(u, "uid", vt::number_unsigned, where + ".user");
    expect_type(u, "gid", vt::number_unsigned, where + ".user");
    expect_type(u, "umask", vt::number_unsigned, where + ".user");
    if (u.contains("additionalGids") && !u["additionalGids"].is_null()) {
      expect(u["additionalGids"].is_array(), where + ".user.additionalGids", "expected array");
      for (const auto& g : u["additionalGids"])
        expect(is_uint(g), where + ".user.additionalGids", "expected unsigned integers");
    }
  }
  if (p.contains("capabilities") && !p["capabilities"].is_null()) {
    const json& c = p["capabilities"];
    expect(c.is_object(), where + ".capabilities", "expected object");
    for (const char* set : {"bounding", "effective", "inheritable", "permitted", "ambient"}) {
      expect_string_array(c, set, where + ".capabilities");
      if (c.contains(set) && c[set].is_array())
        for (const auto& n : c[set])
          expect(capability_from_name(n.get<std::string>()).has_value(), where + ".capabilities." + set,
                 "unknown capability \"" + n.get<std::string>() + "\"");
    }
  }
  if (p.contains("rlimits") && !p["rlimits"].is_null()) {
    expect(p["rlimits"].is_array(), where + ".rlimits", "expected array");
    std::size_t i = 0;
    for (const auto& r : p["rlimits"]) {
      std::string w = where + ".rlimits[" + std::to_string(i++) + "]";
      expect(r.is_object() && r.contains("type") && r["type"].is_string(), w + ".type", "required string");
      static const char* known[] = {"RLIMIT_AS",     "RLIMIT_CORE",   "RLIMIT_CPU",        "RLIMIT_DATA",
                                    "RLIMIT_FSIZE",  "RLIMIT_LOCKS",  "RLIMIT_MEMLOCK",    "RLIMIT_MSGQUEUE",
                                    "RLIMIT_NICE",   "RLIMIT_NOFILE", "RLIMIT_NPROC",      "RLIMIT_RSS",
                                    "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK"};
      std::string t = r["type"];
      expect(std::find(std::begin(known), std::end(known), t) != std::end(known), w + ".type",
             "unknown rlimit type \"" + t + "\"");
      expect(r.contains("hard") && is_uint(r["hard"]), w + ".hard", "required unsigned integer");
      expect(r.contains("soft") && is_uint(r["soft"]), w + ".soft", "required unsigned integer");
    }
  }
  expect_type(p, "noNewPrivileges", vt::boolean, where);
  expect_type(p, "oomScoreAdj", vt::number_integer, where);
  expect_type(p, "apparmorProfile", vt::string, where);
  expect_type(p, "selinuxLabel", vt::string, where);
  if (p.contains("consoleSize") && !p["consoleSize"].is_null()) {
    const json& cs = p["consoleSize"];
    expect(cs.is_object() && cs.contains("height") && cs.contains("width") && is_uint(cs["height"]) &&
               is_uint(cs["width"]),
           where + ".consoleSize", "expected {height, width} unsigned integers");
  }
}

namespace {
void validate(const json& cfg, bool check_paths);
std::vector<Sysctl> sysctls_of_config(const json& cfg, bool check_paths);

}  // namespace

void validate_config(const json& cfg) {
  validate(cfg, true);
}

namespace {
void validate(const json& cfg, bool check_paths) {
  using vt = json::value_t;
  expect(cfg.is_object(), "(top level)", "expected a JSON object");
  expect_type(cfg, "ociVersion", vt::string, "", true);
  std::string v = cfg["ociVersion"].get<std::string>();
  expect(starts_with(v, "1."), "ociVersion", "unsupported version \"" + v + "\" (agentshim implements 1.x)");
  expect(cfg.contains("root") && cfg["root"].is_object(), "root", "required object missing");
  expect_type(cfg["root"], "path", vt::string, "root", true);
  expect(!cfg["root"]["path"].get<std::string>().empty(), "root.path", "must not be empty");
  expect_type(cfg["root"], "readonly", vt::boolean, "root");
  expect(cfg.contains("process") && cfg["process"].is_object(), "process", "required object missing");
  validate_process(cfg["process"], "process");
  expect_type(cfg, "hostname", vt::string, "");
  expect_type(cfg, "domainname", vt::string, "");
  if (cfg.contains("mounts") && !cfg["mounts"].is_null()) {
    expect(cfg["mounts"].is_array(), "mounts", "expected array");
    std::size_t i = 0;
    for (const auto& m : cfg["mounts"]) {
      std::string w = "mounts[" + std::to_string(i++) + "]";
      expect(m.is_object(), w, "expected object");
      expect_type(m, "destination", vt::string, w, true);
      expect(starts_with(m["destination"].get<std::string>(), "/"), w + ".destination",
             "must be an absolute path, got \"" + m["destination"].get<std::string>() + "\"");
      expect_type(m, "type", vt::string, w);
      expect_type(m, "source", vt::string, w);
      expect_string_array(m, "options", w);
      (void)parse_mount(m, i - 1);  // classifiable: a bind, or a filesystem with a type
    }
  }
  if (cfg.contains("hooks") && !cfg["hooks"].is_null()) {
    expect(cfg["hooks"].is_object(), "hooks", "expected object");
    for (auto it = cfg["hooks"].begin(); it != cfg["hooks"].end(); ++it) {
      static const char* kinds[] = {"prestart",       "createRuntime", "createContainer",
                                    "startContainer", "poststart",     "poststop"};
      expect(std::find_if(std::begin(kinds), std::end(kinds), [&](const char* k) { return it.key() == k; }) !=
                 std::end(kinds),
             "hooks." + it.key(), "unknown hook kind");
      if (it->is_null()) continue;
      expect(it->is_array(), "hooks." + it.key(), "expected array");
      std::size_t i = 0;
      for (const auto& h : *it) {
        std::string w = "hooks." + it.key() + "[" + std::to_string(i++) + "]";
        expect(h.is_object(), w, "expected object");
        expect_type(h, "path", vt::string, w, true);
        expect(starts_with(h["path"].get<std::string>(), "/"), w + ".path", "must be an absolute path");
        expect_string_array(h, "args", w);
        expect_string_array(h, "env", w);
        expect_type(h, "timeout", vt::number_integer, w);
        if (h.contains("timeout") && h["timeout"].is_number_integer())
          expect(h["timeout"].get<long long>() > 0, w + ".timeout", "must be positive");
      }
    }
  }
  if (cfg.contains("linux") && !cfg["linux"].is_null()) {
    const json& l = cfg["linux"];
    expect(l.is_object(), "linux", "expected object");
    if (l.contains("namespaces") && !l["namespaces"].is_null()) {
      expect(l["namespaces"].is_array(), "linux.namespaces", "expected array");
      std::size_t i = 0;
      std::vector<std::string> seen;
      for (const auto& n : l["namespaces"]) {
        std::string w = "linux.namespaces[" + std::to_string(i++) + "]";
        expect(n.is_object(), w, "expected object");
        expect_type(n, "type", vt::string, w, true);
        expect_type(n, "path", vt::string, w);
        std::string t = n["type"].get<std::string>();
        expect(namespace_by_name(t).has_value(), w + ".type", "unsupported namespace type \"" + t + "\"");
        expect(std::find(seen.begin(), seen.end(), t) == seen.end(), w + ".type",
               "namespace type \"" + t + "\" listed twice");
        seen.push_back(t);
      }
    }
    for (const char* k : {"uidMappings", "gidMappings"}) {
      if (!l.contains(k) || l[k].is_null()) continue;
      expect(l[k].is_array(), std::string("linux.") + k, "expected array");
      for (const auto& m : l[k]) {
        expect(m.is_object() && m.contains("containerID") && m.contains("hostID") && m.contains("size") &&
                   is_uint(m["containerID"]) && is_uint(m["hostID"]) && is_uint(m["size"]),
               std::string("linux.") + k, "each mapping needs unsigned containerID, hostID and size");
      }
    }
    expect_type(l, "cgroupsPath", vt::string, "linux");
    expect_type(l, "resources", vt::object, "linux");
    if (l.contains("resources") && l["resources"].is_object())
      (void)parse_resources(l["resources"], "config.json: linux.resources");
    expect_type(l, "seccomp", vt::object, "linux");
    expect_type(l, "sysctl", vt::object, "linux");
    expect_string_array(l, "maskedPaths", "linux");
    expect_string_array(l, "readonlyPaths", "linux");
    expect_type(l, "rootfsPropagation", vt::string, "linux");
    if (l.contains("rootfsPropagation") && l["rootfsPropagation"].is_string()) {
      std::string p = l["rootfsPropagation"];
      static const char* ok[] = {"",       "private", "rprivate",   "slave",      "rslave",
                                 "shared", "rshared", "unbindable", "runbindable"};
      expect(
          std::find_if(std::begin(ok), std::end(ok), [&](const char* o) { return p == o; }) != std::end(ok),
          "linux.rootfsPropagation", "unknown propagation \"" + p + "\"");
    }
    if (l.contains("devices") && !l["devices"].is_null()) {
      expect(l["devices"].is_array(), "linux.devices", "expected array");
      std::size_t i = 0;
      for (const auto& d : l["devices"]) {
        std::string w = "linux.devices[" + std::to_string(i++) + "]";
        expect(d.is_object(), w, "expected object");
        expect_type(d, "path", vt::string, w, true);
        expect_type(d, "type", vt::string, w, true);
        std::string t = d["type"];
        expect(t == "c" || t == "b" || t == "u" || t == "p", w + ".type",
               "must be c, b, u or p, got \"" + t + "\"");
        if (t != "p") {
          expect(d.contains("major") && d["major"].is_number_integer(), w + ".major",
                 "required for type " + t);
          expect(d.contains("minor") && d["minor"].is_number_integer(), w + ".minor",
                 "required for type " + t);
        }
        expect_type(d, "major", vt::number_integer, w);
        expect_type(d, "minor", vt::number_integer, w);
        expect_type(d, "fileMode", vt::number_unsigned, w);
        expect_type(d, "uid", vt::number_unsigned, w);
        expect_type(d, "gid", vt::number_unsigned, w);
      }
    }
    if (l.contains("sysctl") && l["sysctl"].is_object()) {
      for (auto it = l["sysctl"].begin(); it != l["sysctl"].end(); ++it)
        expect(it->is_string(), "linux.sysctl." + it.key(), "expected string value");
      (void)sysctls_of_config(cfg, check_paths);
    }
  }
}
}  // namespace

namespace {

// runc's '/' form ("net/ipv4/conf/eth0.100/rp_filter") -> dots, the '.' of a
// component becoming '/': the form the namespace rules are written in.
std::string sysctl_dots(const std::string& k) {
  auto first = k.find_first_of("./");
  if (first == std::string::npos || k[first] == '.') return k;
  std::string r = k;
  for (char& c : r) c = c == '.' ? '/' : c == '/' ? '.' : c;
  return r;
}

// The namespace of `type` is the runtime's own (a path to it, e.g. /proc/1/ns/net).
bool is_current_namespace(const std::string& type, const std::string& path) {
  auto t = namespace_by_name(type);
  struct stat a {
  }, b{};
  if (!t || ::stat(("/proc/self/ns/" + std::string(t->proc)).c_str(), &a) < 0) return false;
  if (::stat(path.c_str(), &b) < 0) throw_errno("linux.namespaces: stat " + type + " namespace path " + path);
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

}  // namespace

std::string sysctl_namespace(const std::string& key) {
  static const char* ipc[] = {"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                              "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"};
  const std::string k = sysctl_dots(key);
  if (starts_with(k, "fs.mqueue.") ||
      std::find_if(std::begin(ipc), std::end(ipc), [&](const char* s) { return k == s; }) != std::end(ipc))
    return "ipc";
  if (starts_with(k, "net.")) return "network";
  if (k == "kernel.domainname" || k == "kernel.hostname") return "uts";
  return "";
}

namespace {

// The checks and normalisation of linux.sysctl, on the entries (values
// already strings) and the namespaces of the config.
std::vector<Sysctl> sysctls_of(const std::map<std::string, std::string>& entries,
                               const std::vector<Namespace>& nss, bool check_paths) {
  std::vector<Sysctl> out;
  auto isolated = [&](const std::string& type) {
    for (const auto& n : nss)
      if (n.type == type) return n.path.empty() || !check_paths || !is_current_namespace(type, n.path);
    return false;
  };
  for (const auto& [key, value] : entries) {
    const std::string k = sysctl_dots(key);
    // No empty component, no "..": the path below /proc/sys is exactly the key's.
    bool name_ok = !k.empty() && k.front() != '.' && k.back() != '.' && k.find("..") == std::string::npos &&
                   k.find('\0') == std::string::npos && k.find("/.") == std::string::npos &&
                   k.find("./") == std::string::npos && k.front() != '/' && k.back() != '/';
    expect(name_ok, "linux.sysctl." + key, "invalid sysctl name");
    // runc's rules and wording (libcontainer/configs/validate): a sysctl is
    // written only into a namespace the container does not share with the
    // runtime; everything else would change the host.
    const std::string ns = sysctl_namespace(k);
    if (ns == "ipc" && !isolated("ipc"))
      throw Error("sysctl \"" + k + "\" is not allowed in the hosts ipc namespace");
    if (ns == "network" && !isolated("network"))
      throw Error("sysctl \"" + k + "\" not allowed in host network namespace");
    if (ns == "uts" && isolated("uts") && k == "kernel.hostname")
      throw Error(
          "sysctl \"kernel.hostname\" is not allowed as it conflicts with the OCI \"hostname\" field");
    if (ns.empty() || (ns == "uts" && !isolated("uts")))
      throw Error("sysctl \"" + k + "\" is not in a separate kernel namespace");
    std::string path = "/proc/sys/" + k;
    for (std::size_t i = 10; i < path.size(); i++)
      path[i] = path[i] == '.' ? '/' : path[i] == '/' ? '.' : path[i];
    out.push_back({k, value, path});
  }
  return out;
}

}  // namespace

namespace {
std::vector<Sysctl> sysctls_of_config(const json& cfg, bool check_paths) {
  if (!cfg.contains("linux") || !cfg["linux"].is_object() || !cfg["linux"].contains("sysctl") ||
      !cfg["linux"]["sysctl"].is_object())
    return {};
  std::map<std::string, std::string> entries;
  for (const auto& [key, value] : cfg["linux"]["sysctl"].items()) {
    expect(value.is_string(), "linux.sysctl." + key, "expected string value");
    entries[key] = value.get<std::string>();
  }
  return sysctls_of(entries, namespaces_of(cfg), check_paths);
}
}  // namespace

std::vector<Sysctl> sysctls(const Spec& spec, bool check_paths) {
  return sysctls_of(spec.linux.sysctl, spec.linux.namespaces, check_paths);
}

json load_config(const std::string& bundle) {
  std::string path = bundle + "/config.json";
  std::string text;
  try {
    text = read_file(path);
  } catch (const SysError& e) {
    if (e.code() == ENOENT) throw Error("JSON specification file config.json not found in bundle " + bundle);
    throw;
  }
  json cfg;
  try {
    cfg = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error("config.json in " + bundle + " is not valid JSON: " + e.what());
  }
  validate_config(cfg);
  return cfg;
}

namespace {
std::vector<std::string> mount_options(const json& mount) {
  std::vector<std::string> out;
  if (mount.contains("options") && mount["options"].is_array())
    for (const auto& o : mount["options"]) out.push_back(o.get<std::string>());
  return out;
}
}  // namespace

MountOptions parse_mount_options(const std::vector<std::string>& opts) {
  struct Flag {
    const char* name;
    bool clear;
    unsigned long flag;
  };
  static const Flag flags[] = {
      {"ro", false, MS_RDONLY},
      {"rw", true, MS_RDONLY},
      {"nosuid", false, MS_NOSUID},
      {"suid", true, MS_NOSUID},
      {"nodev", false, MS_NODEV},
      {"dev", true, MS_NODEV},
      {"noexec", false, MS_NOEXEC},
      {"exec", true, MS_NOEXEC},
      {"sync", false, MS_SYNCHRONOUS},
      {"async", true, MS_SYNCHRONOUS},
      {"dirsync", false, MS_DIRSYNC},
      {"remount", false, MS_REMOUNT},
      {"mand", false, MS_MANDLOCK},
      {"nomand", true, MS_MANDLOCK},
      {"atime", true, MS_NOATIME},
      {"noatime", false, MS_NOATIME},
      {"diratime", true, MS_NODIRATIME},
      {"nodiratime", false, MS_NODIRATIME},
      {"relatime", false, MS_RELATIME},
      {"norelatime", true, MS_RELATIME},
      {"strictatime", false, MS_STRICTATIME},
      {"nostrictatime", true, MS_STRICTATIME},
      {"lazytime", false, MS_LAZYTIME},
      {"nolazytime", true, MS_LAZYTIME},
      {"silent", false, MS_SILENT},
      {"loud", true, MS_SILENT},
  };
  struct Prop {
    const char* name;
    unsigned long flag;
  };
  static const Prop props[] = {
      {"private", MS_PRIVATE},       {"rprivate", MS_PRIVATE | MS_REC},
      {"shared", MS_SHARED},         {"rshared", MS_SHARED | MS_REC},
      {"slave", MS_SLAVE},           {"rslave", MS_SLAVE | MS_REC},
      {"unbindable", MS_UNBINDABLE}, {"runbindable", MS_UNBINDABLE | MS_REC},
  };
  MountOptions mo;
  std::vector<std::string> data;
  for (const auto& o : opts) {
    if (o == "bind") {
      mo.bind = true;
      continue;
    }
    if (o == "rbind") {
      mo.bind = mo.rec = true;
      continue;
    }
    if (o == "tmpcopyup") {
      mo.tmpcopyup = true;
      continue;
    }
    bool done = false;
    for (const auto& f : flags) {
      if (o == f.name) {
        if (f.clear) {
          mo.flags &= ~f.flag;
          mo.clear |= f.flag;
        } else {
          mo.flags |= f.flag;
          mo.clear &= ~f.flag;
        }
        done = true;
        break;
      }
    }
    if (done) continue;
    for (const auto& p : props) {
      if (o == p.name) {
        mo.propagation.push_back(p.flag);
        done = true;
        break;
      }
    }
    if (done) continue;
    data.push_back(o);
  }
  mo.data = join(data, ",");
  if (mo.bind) mo.flags |= MS_BIND | (mo.rec ? MS_REC : 0);
  return mo;
}

std::string clean_path(const std::string& p) {
  std::vector<std::string> parts;
  for (const auto& c : split(p, '/')) {
    if (c.empty() || c == ".") continue;
    if (c == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.push_back(c);
  }
  return "/" + join(parts, "/");
}

bool Mount::readonly() const {
  return (flags & MS_RDONLY) != 0;
}

Mount parse_mount(const json& m, std::size_t index) {
  Mount out;
  out.index = index;
  const std::string w = out.where();
  expect(m.is_object(), w, "expected object");
  expect(m.contains("destination") && m["destination"].is_string(), w + ".destination", "required string");
  const std::string dest = m["destination"];
  expect(starts_with(dest, "/"), w + ".destination", "must be an absolute path, got \"" + dest + "\"");
  out.destination = clean_path(dest);
  std::string type = m.contains("type") && m["type"].is_string() ? m["type"].get<std::string>() : "";
  out.source_given = m.contains("source") && m["source"].is_string() ? m["source"].get<std::string>() : "";
  out.source = out.source_given;
  out.options = mount_options(m);
  MountOptions mo = parse_mount_options(out.options);
  // What the kernel does: MS_BIND makes mount(2) a bind of the source
  // whatever the type says; runc (and we) also bind for type "bind".
  if (mo.bind || type == "bind") {
    out.kind = Mount::Kind::Bind;
    out.fstype = "bind";
    expect(!out.source_given.empty(), w + ".source", "a bind mount needs a source");
  } else {
    expect(
        !type.empty(), w + ".type",
        "required: a mount with no type and no \"bind\"/\"rbind\" option mounts nothing (runc fails it too)");
    out.fstype = type;
  }
  out.flags = mo.flags & ~(MS_BIND | MS_REC);
  out.recursive = mo.rec;
  out.propagation = mo.propagation;
  out.data = mo.data;
  out.tmpcopyup = mo.tmpcopyup;
  return out;
}

namespace {
// Every config mount, in order.
std::vector<Mount> mounts_of(const json& cfg) {
  std::vector<Mount> out;
  if (!cfg.is_object() || !cfg.contains("mounts") || cfg["mounts"].is_null()) return out;
  expect(cfg["mounts"].is_array(), "mounts", "expected array");
  for (std::size_t i = 0; i < cfg["mounts"].size(); i++) out.push_back(parse_mount(cfg["mounts"][i], i));
  return out;
}
}  // namespace

std::optional<FileId> file_id(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) return std::nullopt;
  return FileId{st.st_dev, st.st_ino};
}

std::vector<FileId> identity_chain(const std::string& path) {
  std::vector<FileId> out;
  char buf[PATH_MAX];
  if (!::realpath(path.c_str(), buf)) return out;
  // Canonical: every lexical ancestor is the real directory above it.
  std::string p = buf;
  for (;;) {
    auto id = file_id(p);
    if (!id) return {};
    out.push_back(*id);
    if (p == "/") break;
    auto slash = p.rfind('/');
    p = slash == 0 ? "/" : p.substr(0, slash);
  }
  return out;
}

void resolve_source(Mount& m, const std::string& bundle) {
  if (!m.is_bind()) return;
  const std::string w = m.where() + ".source";
  std::string p = m.source_given;
  if (!starts_with(p, "/")) {
    expect(!bundle.empty(), w, "relative source \"" + p + "\" and no bundle to resolve it against");
    p = bundle + "/" + p;
  }
  m.source = canonical_path(p);
  // A source that does not exist (yet) has no identity: mounting it fails
  // (the mounting code opens exactly m.source, without following symlinks).
  m.source_id = file_id(m.source).value_or(FileId{});
}

void check_identity(int fd, const std::map<std::string, FileId>& checked, const std::string& key,
                    const std::string& what) {
  auto want = checked.find(key);
  if (want == checked.end()) return;
  struct stat st {};
  if (::fstat(fd, &st) < 0) throw_errno("fstat " + what);
  if (!(want->second == FileId{st.st_dev, st.st_ino}))
    throw Error(what + " is no longer the file the policy checked (replaced since); refused");
}

std::string canonical_path(const std::string& p) {
  char buf[PATH_MAX];
  if (::realpath(p.c_str(), buf)) return buf;
  std::string c = clean_path(p);
  if (c == "/") return c;
  auto slash = c.rfind('/');
  std::string parent = canonical_path(slash == 0 ? "/" : c.substr(0, slash));
  return (parent == "/" ? "" : parent) + c.substr(slash);
}

int parse_signal(const std::string& s) {
  if (auto n = parse_int(s)) {
    if (*n <= 0 || *n > SIGRTMAX) throw Error("invalid signal: " + s);
    return static_cast<int>(*n);
  }
  std::string up;
  for (char c : s) up += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (starts_with(up, "SIG")) up = up.substr(3);
  for (int i = 1; i < NSIG; i++) {
    const char* abbrev = sigabbrev_np(i);
    if (abbrev && up == abbrev) return i;
  }
  if (starts_with(up, "RTMIN")) {
    std::string rest = up.substr(5);
    int off = rest.empty() ? 0 : static_cast<int>(parse_int(rest).value_or(-1000));
    if (off >= 0 && SIGRTMIN + off <= SIGRTMAX) return SIGRTMIN + off;
  }
  if (starts_with(up, "RTMAX")) {
    std::string rest = up.substr(5);
    int off = rest.empty() ? 0 : static_cast<int>(parse_int(rest).value_or(1000));
    if (off <= 0 && SIGRTMAX + off >= SIGRTMIN) return SIGRTMAX + off;
  }
  throw Error("invalid signal: " + s);
}

std::string signal_name(int sig) {
  const char* a = sigabbrev_np(sig);
  return a ? std::string("SIG") + a : "SIG" + std::to_string(sig);
}

std::optional<int> capability_from_name(const std::string& name) {
  std::string lower;
  for (char c : name) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  cap_value_t v;
  if (cap_from_name(lower.c_str(), &v) != 0) return std::nullopt;
  if (!starts_with(lower, "cap_")) return std::nullopt;
  return static_cast<int>(v);
}

std::string capability_name(int cap) {
  char* n = cap_to_name(static_cast<cap_value_t>(cap));
  std::string out = n ? n : ("cap_" + std::to_string(cap));
  cap_free(n);
  for (auto& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

int last_capability() {
  static int last = [] {
    auto s = try_read_file("/proc/sys/kernel/cap_last_cap");
    if (s) {
      if (auto v = parse_int(trim(*s))) return static_cast<int>(*v);
    }
    return static_cast<int>(CAP_LAST_CAP);
  }();
  return last;
}

void validate_container_id(const std::string& id) {
  if (id.empty()) throw Error("container id cannot be empty");
  if (id.size() > 1024) throw Error("invalid container id: longer than 1024 bytes");
  if (id == "." || id == "..") throw Error("invalid container id: " + id);
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '+' || c == '-' || c == '.'))
      throw Error("invalid container id: \"" + id + "\" (allowed: letters, digits, _ + - .)");
  }
}

namespace {
std::string resolve_rootfs(std::string p, const std::string& bundle) {
  if (!starts_with(p, "/")) p = bundle + "/" + p;
  // Canonical form (no ".", "..", symlinks): pivot_root and the parent-mount
  // lookup need the real directory.
  char buf[PATH_MAX];
  if (::realpath(p.c_str(), buf)) return buf;
  return p;
}
}  // namespace

std::string rootfs_path(const Spec& spec, const std::string& bundle) {
  return resolve_rootfs(spec.root.path, bundle);
}

// ---- The typed config: read once, after validation -----------------------
//
// Everything below runs on a validated document (validate / validate_process
// threw for a wrong type), so each field is read with its checked type; null
// means "not given", as in the validators.

namespace {

const json* field(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

std::string string_of(const json& obj, const char* key, const std::string& dflt = "") {
  const json* v = field(obj, key);
  return v ? v->get<std::string>() : dflt;
}

bool bool_of(const json& obj, const char* key) {
  const json* v = field(obj, key);
  return v && v->get<bool>();
}

std::vector<std::string> strings_of(const json& obj, const char* key) {
  const json* v = field(obj, key);
  return v ? v->get<std::vector<std::string>>() : std::vector<std::string>{};
}

std::vector<IdMapping> mappings_of(const json& l, const char* key) {
  std::vector<IdMapping> out;
  if (const json* v = field(l, key))
    for (const auto& m : *v)
      out.push_back({m["containerID"].get<std::uint64_t>(), m["hostID"].get<std::uint64_t>(),
                     m["size"].get<std::uint64_t>()});
  return out;
}

Linux parse_linux(const json& cfg) {
  Linux out;
  const json* l = field(cfg, "linux");
  if (!l) return out;
  out.namespaces = namespaces_of(cfg);
  out.uid_mappings = mappings_of(*l, "uidMappings");
  out.gid_mappings = mappings_of(*l, "gidMappings");
  out.cgroups_path = string_of(*l, "cgroupsPath");
  if (const json* r = field(*l, "resources"))
    out.resources = parse_resources(*r, "config.json: linux.resources");
  if (const json* sc = field(*l, "seccomp")) out.seccomp = *sc;
  out.masked_paths = strings_of(*l, "maskedPaths");
  out.readonly_paths = strings_of(*l, "readonlyPaths");
  if (const json* sy = field(*l, "sysctl"))
    for (const auto& [k, v] : sy->items()) out.sysctl[k] = v.get<std::string>();
  out.rootfs_propagation = string_of(*l, "rootfsPropagation");
  if (const json* ds = field(*l, "devices"))
    for (const auto& d : *ds) {
      Device dev;
      dev.path = d["path"].get<std::string>();
      dev.type = d["type"].get<std::string>()[0];
      if (const json* v = field(d, "major")) dev.major = v->get<std::int64_t>();
      if (const json* v = field(d, "minor")) dev.minor = v->get<std::int64_t>();
      if (const json* v = field(d, "fileMode")) dev.file_mode = v->get<std::uint32_t>();
      if (const json* v = field(d, "uid")) dev.uid = v->get<std::uint32_t>();
      if (const json* v = field(d, "gid")) dev.gid = v->get<std::uint32_t>();
      out.devices.push_back(std::move(dev));
    }
  return out;
}

}  // namespace

const std::vector<std::string>* Capabilities::set(const std::string& name) const {
  if (name == "bounding") return &bounding;
  if (name == "effective") return &effective;
  if (name == "inheritable") return &inheritable;
  if (name == "permitted") return &permitted;
  if (name == "ambient") return &ambient;
  return nullptr;
}

std::vector<std::string>* Capabilities::set(const std::string& name) {
  return const_cast<std::vector<std::string>*>(std::as_const(*this).set(name));
}

std::string Process::env_value(const std::string& key) const {
  for (const auto& e : env)
    if (starts_with(e, key + "=")) return e.substr(key.size() + 1);
  return "";
}

bool Linux::seccomp_unconfined() const {
  if (!seccomp) return true;
  if (!seccomp->is_object()) return false;
  const json* rules = field(*seccomp, "syscalls");
  const bool no_rules = !rules || !rules->is_array() || rules->empty();
  const json* def = field(*seccomp, "defaultAction");
  return no_rules && def && *def == "SCMP_ACT_ALLOW";
}

json to_json(const DeviceRule& r) {
  json j = {{"allow", r.allow}, {"type", std::string(1, r.type)}};
  if (r.major >= 0) j["major"] = r.major;
  if (r.minor >= 0) j["minor"] = r.minor;
  j["access"] = r.access;
  return j;
}

std::string Linux::listener_path() const {
  return seccomp && seccomp->is_object() ? string_of(*seccomp, "listenerPath") : "";
}

std::string Linux::listener_metadata() const {
  return seccomp && seccomp->is_object() ? string_of(*seccomp, "listenerMetadata") : "";
}

Process parse_process(const json& p, const std::string& where) {
  validate_process(p, where);
  Process out;
  out.terminal = bool_of(p, "terminal");
  if (const json* cs = field(p, "consoleSize"))
    out.console_size = ConsoleSize{(*cs)["height"].get<unsigned>(), (*cs)["width"].get<unsigned>()};
  if (const json* u = field(p, "user")) {
    User user;
    if (const json* v = field(*u, "uid")) user.uid = v->get<std::uint32_t>();
    if (const json* v = field(*u, "gid")) user.gid = v->get<std::uint32_t>();
    if (const json* v = field(*u, "umask")) user.umask = v->get<std::uint32_t>();
    if (const json* v = field(*u, "additionalGids"))
      user.additional_gids = v->get<std::vector<std::uint32_t>>();
    out.user = std::move(user);
  }
  out.args = strings_of(p, "args");
  out.env = strings_of(p, "env");
  out.cwd = string_of(p, "cwd");
  if (const json* c = field(p, "capabilities")) {
    Capabilities caps;
    caps.bounding = strings_of(*c, "bounding");
    caps.effective = strings_of(*c, "effective");
    caps.inheritable = strings_of(*c, "inheritable");
    caps.permitted = strings_of(*c, "permitted");
    caps.ambient = strings_of(*c, "ambient");
    out.capabilities = std::move(caps);
  }
  if (const json* rs = field(p, "rlimits"))
    for (const auto& r : *rs)
      out.rlimits.push_back(
          {r["type"].get<std::string>(), r["hard"].get<std::uint64_t>(), r["soft"].get<std::uint64_t>()});
  if (const json* v = field(p, "noNewPrivileges")) out.no_new_privileges = v->get<bool>();
  if (const json* v = field(p, "oomScoreAdj")) out.oom_score_adj = v->get<int>();
  out.apparmor_profile = string_of(p, "apparmorProfile");
  out.selinux_label = string_of(p, "selinuxLabel");
  return out;
}

json to_json(const User& u) {
  json j = {{"uid", u.uid}, {"gid", u.gid}};
  if (u.umask) j["umask"] = *u.umask;
  if (u.additional_gids) j["additionalGids"] = *u.additional_gids;
  return j;
}

json user_json(const Process& p) {
  return p.user ? to_json(*p.user) : json::object();
}

Spec parse_spec(const json& cfg) {
  validate(cfg, false);
  Spec s;
  s.raw = cfg;
  s.oci_version = cfg["ociVersion"].get<std::string>();
  s.root.path = cfg["root"]["path"].get<std::string>();
  s.root.readonly = bool_of(cfg["root"], "readonly");
  s.process = parse_process(cfg["process"], "process");
  s.hostname = string_of(cfg, "hostname");
  s.domainname = string_of(cfg, "domainname");
  s.mounts = mounts_of(cfg);
  s.linux = parse_linux(cfg);
  if (const json* hs = field(cfg, "hooks"))
    for (const auto& [kind, list] : hs->items()) {
      if (list.is_null()) continue;
      auto& out = s.hooks[kind];
      for (const auto& h : list) {
        Hook hook;
        hook.path = h["path"].get<std::string>();
        hook.args = strings_of(h, "args");
        if (field(h, "env")) hook.env = strings_of(h, "env");
        if (const json* t = field(h, "timeout")) hook.timeout = t->get<long long>();
        out.push_back(std::move(hook));
      }
    }
  if (const json* a = field(cfg, "annotations"); a && a->is_object()) s.annotations = *a;
  return s;
}

std::vector<Namespace> Spec::new_namespaces() const {
  std::vector<Namespace> out;
  for (const auto& n : linux.namespaces)
    if (n.path.empty()) out.push_back(n);
  return out;
}

std::vector<Namespace> Spec::joined_namespaces() const {
  std::vector<Namespace> out;
  for (const auto& n : linux.namespaces)
    if (!n.path.empty()) out.push_back(n);
  return out;
}

bool Spec::has_namespace(const std::string& type) const {
  return std::ranges::any_of(linux.namespaces, [&](const Namespace& n) { return n.type == type; });
}

bool Spec::has_new_namespace(const std::string& type) const {
  return std::ranges::any_of(linux.namespaces,
                             [&](const Namespace& n) { return n.type == type && n.path.empty(); });
}

bool Spec::has_bind_mount() const {
  return std::ranges::any_of(mounts, [](const Mount& m) { return m.is_bind(); });
}

const std::vector<Hook>& Spec::hooks_of(const std::string& kind) const {
  static const std::vector<Hook> none;
  auto it = hooks.find(kind);
  return it == hooks.end() ? none : it->second;
}

// ---- linux.resources ------------------------------------------------------
//
// Read and checked in one pass: every accessor checks its field's type (the
// runtime-spec's: int64, uint64, uint32, uint16, bool, string) and names it
// when wrong; null is "not given", as everywhere in the config.

namespace {

[[noreturn]] void bad_field(const std::string& where, const std::string& what) {
  throw Error(where + ": " + what);
}

// One JSON object of linux.resources, `where` naming it.
class Fields {
 public:
  Fields(const json& obj, std::string where) : obj_(obj), where_(std::move(where)) {
    if (!obj_.is_object()) bad_field(where_, std::string("expected object, got ") + obj_.type_name());
  }
  std::string at(const std::string& key) const { return where_ + "." + key; }
  const json* get(const char* key) const {
    auto it = obj_.find(key);
    return it == obj_.end() || it->is_null() ? nullptr : &*it;
  }
  const json& required(const char* key) const {
    const json* v = get(key);
    if (!v) bad_field(at(key), "required field missing");
    return *v;
  }
  std::optional<std::int64_t> i64(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    return to_i64(*v, at(key));
  }
  std::optional<std::uint64_t> u64(const char* key, std::uint64_t max = UINT64_MAX) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    return to_u64(*v, at(key), max);
  }
  std::optional<bool> boolean(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) bad_field(at(key), std::string("expected boolean, got ") + v->type_name());
    return v->get<bool>();
  }
  std::optional<std::string> str(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) bad_field(at(key), std::string("expected string, got ") + v->type_name());
    return v->get<std::string>();
  }
  // An object member (nullopt when not given).
  std::optional<Fields> object(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    return Fields(*v, at(key));
  }
  // Each element of an array member, with its name ("...devices[2]").
  template <typename F>
  void each(const char* key, F&& f) const {
    const json* v = get(key);
    if (!v) return;
    if (!v->is_array()) bad_field(at(key), "expected array");
    for (std::size_t i = 0; i < v->size(); i++) f((*v)[i], at(key) + "[" + std::to_string(i) + "]");
  }

  static std::int64_t to_i64(const json& v, const std::string& where) {
    if (!v.is_number_integer()) bad_field(where, std::string("expected integer, got ") + v.type_name());
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > INT64_MAX)
      bad_field(where, std::to_string(v.get<std::uint64_t>()) + " is above " + std::to_string(INT64_MAX));
    return v.get<std::int64_t>();
  }
  static std::uint64_t to_u64(const json& v, const std::string& where, std::uint64_t max) {
    if (!is_uint(v)) bad_field(where, std::string("expected integer, got ") + v.type_name());
    const std::uint64_t n = v.get<std::uint64_t>();
    if (n > max) bad_field(where, std::to_string(n) + " is above " + std::to_string(max));
    return n;
  }

 private:
  const json& obj_;
  std::string where_;
};

template <typename T>
std::optional<T> narrow(const std::optional<std::uint64_t>& v) {
  return v ? std::optional<T>(static_cast<T>(*v)) : std::nullopt;
}

DeviceRule parse_device_rule(const json& d, const std::string& w) {
  if (!d.is_object()) bad_field(w, "expected object");
  Fields f(d, w);
  DeviceRule rule;
  rule.allow = f.boolean("allow").value_or(false);
  if (auto t = f.str("type")) {
    if (*t != "a" && *t != "c" && *t != "b") bad_field(f.at("type"), "must be a, c or b, got \"" + *t + "\"");
    rule.type = (*t)[0];
  }
  if (auto v = f.i64("major")) rule.major = std::max<std::int64_t>(-1, *v);
  if (auto v = f.i64("minor")) rule.minor = std::max<std::int64_t>(-1, *v);
  if (auto a = f.str("access")) {
    if (a->find_first_not_of("rwm") != std::string::npos)
      bad_field(f.at("access"), "\"" + *a + "\" is not a subset of rwm");
    if (!a->empty()) rule.access = *a;
  }
  return rule;
}

std::vector<Resources::ThrottleDevice> throttles(const Fields& b, const char* key) {
  std::vector<Resources::ThrottleDevice> out;
  b.each(key, [&](const json& t, const std::string& w) {
    Fields f(t, w);
    out.push_back({Fields::to_i64(f.required("major"), f.at("major")),
                   Fields::to_i64(f.required("minor"), f.at("minor")),
                   Fields::to_u64(f.required("rate"), f.at("rate"), UINT64_MAX)});
  });
  return out;
}

template <typename K, typename V>
void put(json& j, const K& key, const std::optional<V>& v) {
  if (v) j[key] = *v;
}

}  // namespace

Resources parse_resources(const json& r, const std::string& where) {
  Fields top(r, where);
  Resources out;
  top.each("devices",
           [&](const json& d, const std::string& w) { out.devices.push_back(parse_device_rule(d, w)); });
  if (auto m = top.object("memory")) {
    Resources::Memory& o = out.memory;
    o.limit = m->i64("limit");
    o.reservation = m->i64("reservation");
    o.swap = m->i64("swap");
    o.kernel = m->i64("kernel");
    o.kernel_tcp = m->i64("kernelTCP");
    o.swappiness = m->u64("swappiness");
    o.disable_oom_killer = m->boolean("disableOOMKiller");
    o.use_hierarchy = m->boolean("useHierarchy");
    o.check_before_update = m->boolean("checkBeforeUpdate");
  }
  if (auto c = top.object("cpu")) {
    Resources::Cpu& o = out.cpu;
    o.shares = c->u64("shares");
    o.quota = c->i64("quota");
    o.burst = c->u64("burst");
    o.period = c->u64("period");
    o.realtime_runtime = c->i64("realtimeRuntime");
    o.realtime_period = c->u64("realtimePeriod");
    o.cpus = c->str("cpus").value_or("");
    o.mems = c->str("mems").value_or("");
    o.idle = c->i64("idle");
  }
  if (auto p = top.object("pids")) out.pids.limit = p->i64("limit");
  if (auto b = top.object("blockIO")) {
    Resources::BlockIO& o = out.block_io;
    o.weight = narrow<std::uint16_t>(b->u64("weight", UINT16_MAX));
    o.leaf_weight = narrow<std::uint16_t>(b->u64("leafWeight", UINT16_MAX));
    b->each("weightDevice", [&](const json& d, const std::string& w) {
      Fields f(d, w);
      o.weight_device.push_back({Fields::to_i64(f.required("major"), f.at("major")),
                                 Fields::to_i64(f.required("minor"), f.at("minor")),
                                 narrow<std::uint16_t>(f.u64("weight", UINT16_MAX)),
                                 narrow<std::uint16_t>(f.u64("leafWeight", UINT16_MAX))});
    });
    o.throttle_read_bps = throttles(*b, "throttleReadBpsDevice");
    o.throttle_write_bps = throttles(*b, "throttleWriteBpsDevice");
    o.throttle_read_iops = throttles(*b, "throttleReadIOPSDevice");
    o.throttle_write_iops = throttles(*b, "throttleWriteIOPSDevice");
  }
  top.each("hugepageLimits", [&](const json& h, const std::string& w) {
    Fields f(h, w);
    const json& size = f.required("pageSize");
    if (!size.is_string())
      bad_field(f.at("pageSize"), std::string("expected string, got ") + size.type_name());
    out.hugepage_limits.push_back(
        {size.get<std::string>(), Fields::to_u64(f.required("limit"), f.at("limit"), UINT64_MAX)});
  });
  if (auto n = top.object("network")) {
    out.network.class_id = narrow<std::uint32_t>(n->u64("classID", UINT32_MAX));
    n->each("priorities", [&](const json& p, const std::string& w) {
      Fields f(p, w);
      const json& name = f.required("name");
      if (!name.is_string()) bad_field(f.at("name"), std::string("expected string, got ") + name.type_name());
      out.network.priorities.push_back(
          {name.get<std::string>(),
           static_cast<std::uint32_t>(Fields::to_u64(f.required("priority"), f.at("priority"), UINT32_MAX))});
    });
  }
  if (const json* rd = top.get("rdma")) {
    if (!rd->is_object()) bad_field(top.at("rdma"), std::string("expected object, got ") + rd->type_name());
    for (const auto& [dev, lim] : rd->items()) {
      // One line of rdma.max names the device: a word, no separator.
      if (dev.empty() || dev.find_first_of(" \t\n=") != std::string::npos ||
          dev.find('\0') != std::string::npos)
        bad_field(top.at("rdma"), "invalid device name \"" + dev + "\"");
      Fields f(lim, top.at("rdma") + "." + dev);
      out.rdma[dev] = {narrow<std::uint32_t>(f.u64("hcaHandles", UINT32_MAX)),
                       narrow<std::uint32_t>(f.u64("hcaObjects", UINT32_MAX))};
    }
  }
  if (const json* u = top.get("unified")) {
    if (!u->is_object()) bad_field(top.at("unified"), std::string("expected object, got ") + u->type_name());
    for (const auto& [file, value] : u->items()) {
      const std::string w = top.at("unified") + "." + file;
      // A file of the container's cgroup directory, nothing else.
      if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos ||
          file.find('\0') != std::string::npos)
        bad_field(top.at("unified"), "invalid file name \"" + file + "\"");
      if (!value.is_string()) bad_field(w, std::string("expected string, got ") + value.type_name());
      out.unified[file] = value.get<std::string>();
    }
  }
  return out;
}

json to_json(const Resources& r) {
  json j = json::object();
  if (!r.devices.empty()) {
    j["devices"] = json::array();
    for (const auto& d : r.devices) j["devices"].push_back(to_json(d));
  }
  json m = json::object();
  put(m, "limit", r.memory.limit);
  put(m, "reservation", r.memory.reservation);
  put(m, "swap", r.memory.swap);
  put(m, "kernel", r.memory.kernel);
  put(m, "kernelTCP", r.memory.kernel_tcp);
  put(m, "swappiness", r.memory.swappiness);
  put(m, "disableOOMKiller", r.memory.disable_oom_killer);
  put(m, "useHierarchy", r.memory.use_hierarchy);
  put(m, "checkBeforeUpdate", r.memory.check_before_update);
  if (!m.empty()) j["memory"] = m;
  json c = json::object();
  put(c, "shares", r.cpu.shares);
  put(c, "quota", r.cpu.quota);
  put(c, "burst", r.cpu.burst);
  put(c, "period", r.cpu.period);
  put(c, "realtimeRuntime", r.cpu.realtime_runtime);
  put(c, "realtimePeriod", r.cpu.realtime_period);
  if (!r.cpu.cpus.empty()) c["cpus"] = r.cpu.cpus;
  if (!r.cpu.mems.empty()) c["mems"] = r.cpu.mems;
  put(c, "idle", r.cpu.idle);
  if (!c.empty()) j["cpu"] = c;
  if (r.pids.limit) j["pids"] = {{"limit", *r.pids.limit}};
  json b = json::object();
  put(b, "weight", r.block_io.weight);
  put(b, "leafWeight", r.block_io.leaf_weight);
  for (const auto& w : r.block_io.weight_device) {
    json d = {{"major", w.major}, {"minor", w.minor}};
    put(d, "weight", w.weight);
    put(d, "leafWeight", w.leaf_weight);
    b["weightDevice"].push_back(d);
  }
  for (const auto& [key, list] : {std::pair<const char*, const std::vector<Resources::ThrottleDevice>*>{
                                      "throttleReadBpsDevice", &r.block_io.throttle_read_bps},
                                  {"throttleWriteBpsDevice", &r.block_io.throttle_write_bps},
                                  {"throttleReadIOPSDevice", &r.block_io.throttle_read_iops},
                                  {"throttleWriteIOPSDevice", &r.block_io.throttle_write_iops}})
    for (const auto& t : *list) b[key].push_back({{"major", t.major}, {"minor", t.minor}, {"rate", t.rate}});
  if (!b.empty()) j["blockIO"] = b;
  for (const auto& h : r.hugepage_limits)
    j["hugepageLimits"].push_back({{"pageSize", h.page_size}, {"limit", h.limit}});
  json n = json::object();
  put(n, "classID", r.network.class_id);
  for (const auto& p : r.network.priorities)
    n["priorities"].push_back({{"name", p.name}, {"priority", p.priority}});
  if (!n.empty()) j["network"] = n;
  for (const auto& [dev, lim] : r.rdma) {
    json d = json::object();
    put(d, "hcaHandles", lim.hca_handles);
    put(d, "hcaObjects", lim.hca_objects);
    j["rdma"][dev] = d;
  }
  for (const auto& [file, value] : r.unified) j["unified"][file] = value;
  return j;
}

namespace {
template <typename T>
void take(std::optional<T>& to, const std::optional<T>& from) {
  if (from) to = from;
}
template <typename T>
void take(T& to, const T& from) {
  if (!from.empty()) to = from;
}
}  // namespace

void Resources::update(const Resources& given) {
  take(devices, given.devices);
  Memory& m = memory;
  const Memory& gm = given.memory;
  for (auto f : {&Memory::limit, &Memory::reservation, &Memory::swap, &Memory::kernel, &Memory::kernel_tcp})
    take(m.*f, gm.*f);
  take(m.swappiness, gm.swappiness);
  for (auto f : {&Memory::disable_oom_killer, &Memory::use_hierarchy, &Memory::check_before_update})
    take(m.*f, gm.*f);
  Cpu& c = cpu;
  const Cpu& gc = given.cpu;
  for (auto f : {&Cpu::shares, &Cpu::burst, &Cpu::period, &Cpu::realtime_period}) take(c.*f, gc.*f);
  for (auto f : {&Cpu::quota, &Cpu::realtime_runtime, &Cpu::idle}) take(c.*f, gc.*f);
  take(c.cpus, gc.cpus);
  take(c.mems, gc.mems);
  take(pids.limit, given.pids.limit);
  take(block_io.weight, given.block_io.weight);
  take(block_io.leaf_weight, given.block_io.leaf_weight);
  take(block_io.weight_device, given.block_io.weight_device);
  take(block_io.throttle_read_bps, given.block_io.throttle_read_bps);
  take(block_io.throttle_write_bps, given.block_io.throttle_write_bps);
  take(block_io.throttle_read_iops, given.block_io.throttle_read_iops);
  take(block_io.throttle_write_iops, given.block_io.throttle_write_iops);
  take(hugepage_limits, given.hugepage_limits);
  take(network.class_id, given.network.class_id);
  take(network.priorities, given.network.priorities);
  for (const auto& [k, v] : given.rdma) rdma[k] = v;
  for (const auto& [k, v] : given.unified) unified[k] = v;
}

json runtime_bind(const std::string& source, const std::string& destination) {
  return {{"destination", destination},
          {"type", "bind"},
          {"source", source},
          {"options", json::array({"rbind", "ro", "nosuid", "nodev", "noexec"})}};
}

bool put_mount(json& config, const json& mount, MountPlace where) {
  json& mounts = config["mounts"];
  if (!mounts.is_array()) mounts = json::array();
  const json& dest = mount.at("destination");
  auto at_dest = [&](const json& m) {
    auto d = m.find("destination");
    return m.is_object() && d != m.end() && *d == dest;
  };
  json kept = json::array();
  bool had = false, placed = false;
  for (auto& m : mounts) {
    if (!at_dest(m)) {
      kept.push_back(std::move(m));
      continue;
    }
    had = true;
    if (where == MountPlace::kInPlace && !placed) {
      kept.push_back(mount);
      placed = true;
    }
  }
  if (!placed) kept.push_back(mount);
  mounts = std::move(kept);
  return had;
}

std::vector<std::string> put_env(json& config, const std::vector<std::string>& names,
                                 const std::vector<std::string>& entries) {
  json& proc = config["process"];
  json& env = proc["env"];
  if (!env.is_array()) env = json::array();
  json out = json::array();
  std::vector<std::string> present;
  for (auto& e : env) {
    bool named = false;
    if (e.is_string())
      for (const auto& n : names)
        if (e.get_ref<const std::string&>().rfind(n + "=", 0) == 0) {
          named = true;
          present.push_back(n);
        }
    if (!named) out.push_back(std::move(e));
  }
  for (const auto& e : entries) out.push_back(e);
  env = std::move(out);
  return present;
}

}  // namespace agentshim::oci
