#include "sandbox/runtime_config.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "sandbox/oci.h"

namespace agentshim::runtime_config {

using json = nlohmann::json;

namespace {

constexpr const char* kPrefix = "agentshim-";

std::string basename_of(const std::string& p) {
  auto s = p.find_last_of('/');
  return s == std::string::npos ? p : p.substr(s + 1);
}

std::optional<std::string> real(const std::string& p) {
  char buf[PATH_MAX];
  if (!::realpath(p.c_str(), buf)) return std::nullopt;
  return std::string(buf);
}

bool valid_id(const std::string& id) {
  try {
    oci::validate_container_id(id);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

std::optional<std::string> read_link(const std::string& p) {
  char buf[PATH_MAX];
  ssize_t n = ::readlink(p.c_str(), buf, sizeof buf - 1);
  if (n < 0) return std::nullopt;
  return std::string(buf, static_cast<std::size_t>(n));
}

}  // namespace

std::string config_dir() {
  const char* e = ::getenv("AGENTSHIM_CONFIG_DIR");
  return e && *e ? std::string(e) : std::string("/etc/agentshim");
}

std::optional<Lookup> lookup_for(const std::string& argv0, const std::string& dir) {
  std::string name = basename_of(argv0);
  if (name == "agentshim") return Lookup{dir + "/agentshim.json", false};
  const std::string prefix = kPrefix;
  if (name.size() > prefix.size() && name.compare(0, prefix.size(), prefix) == 0) {
    std::string handler = name.substr(prefix.size());
    // policy.json and policy.*.json in the same directory are policies, not
    // config files: a handler cannot be named after them.
    if (handler == "policy" || handler.compare(0, 7, "policy.") == 0 ||
        handler.compare(0, 8, "seccomp.") == 0)
      throw Error("invoked as " + name + ": " + dir + "/" + handler +
                  ".json is a policy or seccomp file, not a config file; rename the link");
    return Lookup{dir + "/" + handler + ".json", true};
  }
  return std::nullopt;
}

FileConfig parse(const std::string& text, const std::string& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error("config file " + path + ": " + e.what());
  }
  if (!j.is_object()) throw Error("config file " + path + ": not a JSON object");
  FileConfig c;
  c.path = path;
  auto abs_path = [&](const std::string& key) -> std::optional<std::string> {
    const json& v = j[key];
    if (!v.is_string() || v.get<std::string>().empty() || v.get<std::string>()[0] != '/')
      throw Error("config file " + path + ": \"" + key + "\" must be an absolute path");
    return v.get<std::string>();
  };
  for (const auto& [key, v] : j.items()) {
    if (key == "policy")
      c.policy = abs_path(key);
    else if (key == "audit_dir")
      c.audit_dir = abs_path(key);
    else if (key == "root")
      c.root = abs_path(key);
    else if (key == "signing_key")
      c.signing_key = abs_path(key);
    else if (key == "key_type") {
      if (v != "ed25519" && v != "ecdsa-p256")
        throw Error("config file " + path + ": \"key_type\" must be \"ed25519\" or \"ecdsa-p256\"");
      c.key_type = v.get<std::string>();
    } else if (key == "systemd_cgroup") {
      if (!v.is_boolean()) throw Error("config file " + path + ": \"systemd_cgroup\" must be true or false");
      c.systemd_cgroup = v.get<bool>();
    } else if (key == "comment" || key == "$schema") {
      // documentation only
    } else {
      throw Error("config file " + path + ": unknown key \"" + key +
                  "\" (known: policy, audit_dir, root, systemd_cgroup, signing_key, key_type, comment)");
    }
  }
  return c;
}

FileConfig load_for(const std::string& argv0) {
  auto l = lookup_for(argv0, config_dir());
  if (!l) return {};
  if (!path_exists(l->path)) {
    if (l->required)
      throw Error("config file " + l->path + " does not exist (agentshim invoked as " + basename_of(argv0) +
                  " reads its settings from it; see docs/OPERATIONS.md)");
    return {};
  }
  std::string text = read_file(l->path);
  return parse(text, l->path);
}

std::string index_dir() {
  return "/run/agentshim.ids";
}

void index_record(const std::string& root, const std::string& id) {
  auto r = real(root);
  if (!r || !valid_id(id)) return;
  mkdir_p(index_dir(), 0700);
  std::string entry = index_dir() + "/" + id;
  std::string tmp = entry + ".tmp." + std::to_string(::getpid());
  ::unlink(tmp.c_str());
  if (::symlink(r->c_str(), tmp.c_str()) < 0) throw_errno("symlink " + tmp + " -> " + *r);
  if (::rename(tmp.c_str(), entry.c_str()) < 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    errno = err;
    throw_errno("rename " + tmp + " -> " + entry);
  }
}

void index_forget(const std::string& root, const std::string& id) {
  if (!valid_id(id)) return;
  std::string entry = index_dir() + "/" + id;
  auto target = read_link(entry);
  auto r = real(root);
  if (target && (!r || *target == *r || !path_exists(*target + "/" + id))) ::unlink(entry.c_str());
}

std::string resolve_root(const std::string& root, const std::string& id) {
  if (!valid_id(id) || path_exists(root + "/" + id)) return root;
  auto target = read_link(index_dir() + "/" + id);
  if (!target || !path_exists(*target + "/" + id + "/state.json")) return root;
  log::debug("container " + id + " is not under " + root + "; found under " + *target + " (" + index_dir() +
             ")");
  return *target;
}

}  // namespace agentshim::runtime_config
