#include "sandbox/peers.h"

#include <dirent.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <limits>
#include <memory>

#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "sandbox/policy.h"
#include "sandbox/state.h"

namespace agentshim::peers {
namespace {

std::string entry_path(pid_t pid) {
  return index_dir() + "/" + std::to_string(pid);
}

std::optional<std::string> read_link(const std::string& p) {
  char buf[PATH_MAX];
  ssize_t n = ::readlink(p.c_str(), buf, sizeof buf - 1);
  if (n < 0) return std::nullopt;
  return std::string(buf, static_cast<std::size_t>(n));
}

std::optional<std::pair<dev_t, ino_t>> ns_id(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) return std::nullopt;
  return std::make_pair(st.st_dev, st.st_ino);
}

// The sentinel enters these (sentinel.cpp); /proc/<sentinel>/ns/<name>
// must already be the init's.
bool entered_by_sentinel(const std::string& proc_name) {
  for (const char* n : {"user", "mnt", "net", "ipc", "uts", "cgroup"})
    if (proc_name == n) return true;
  return false;
}

}  // namespace

std::string index_dir() {
  if (const char* d = ::getenv("AGENTSHIM_PIDS_DIR"); d && *d) return d;
  return "/run/agentshim.pids";
}

void record(pid_t sentinel, const std::string& root, const std::string& id) {
  mkdir_p(index_dir(), 0700);
  std::string entry = entry_path(sentinel);
  std::string tmp = entry + ".tmp." + std::to_string(::getpid());
  std::string target = state::container_dir(root, id);
  ::unlink(tmp.c_str());
  if (::symlink(target.c_str(), tmp.c_str()) < 0) throw_errno("symlink " + tmp + " -> " + target);
  if (::rename(tmp.c_str(), entry.c_str()) < 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    errno = err;
    throw_errno("rename " + tmp + " -> " + entry);
  }
}

void forget(pid_t sentinel, const std::string& root, const std::string& id) {
  if (sentinel <= 0) return;
  std::string entry = entry_path(sentinel);
  auto target = read_link(entry);
  if (target && *target == state::container_dir(root, id)) ::unlink(entry.c_str());
}

std::optional<Peer> by_sentinel(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  auto dir = read_link(entry_path(pid));
  if (!dir) return std::nullopt;
  auto slash = dir->find_last_of('/');
  if (slash == std::string::npos || slash == 0) return std::nullopt;
  Peer p;
  p.root = dir->substr(0, slash);
  p.id = dir->substr(slash + 1);
  state::ContainerState st;
  try {
    st = state::load(p.root, p.id);
  } catch (const std::exception& e) {
    log::debug("peers: " + entry_path(pid) + ": " + e.what());
    return std::nullopt;
  }
  // The entry is believed only when the state names this pid as its
  // sentinel and both processes are still the ones recorded.
  if (st.sentinel_pid != pid || st.sentinel_start == 0 || st.init_start == 0 ||
      !state::process_alive(st.sentinel_pid, st.sentinel_start) || st.init_pid <= 0 ||
      !state::process_alive(st.init_pid, st.init_start))
    return std::nullopt;
  p.sentinel = st.sentinel_pid;
  p.init_pid = st.init_pid;
  try {
    // (create writes the policy in force and what its proxy serves)
    const auto saved = policy::Saved::read(*dir);
    p.network_mode = policy::parse(saved.policy).network.mode;
    if (saved.served_network) {
      p.credentials = saved.served_network->credentials;
      p.run_ca_file = saved.served_network->run_ca_file;
    }
  } catch (const std::exception& e) {
    log::debug("peers: " + std::string(e.what()));
  }
  return p;
}

std::vector<Peer> all() {
  std::vector<Peer> out;
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(index_dir().c_str()), ::closedir);
  if (!d) return out;
  while (dirent* e = ::readdir(d.get())) {
    auto n = parse_int(e->d_name);
    if (!n || *n <= 0 || *n > std::numeric_limits<pid_t>::max()) continue;  // ".", "..", "*.tmp.*"
    if (auto p = by_sentinel(static_cast<pid_t>(*n))) out.push_back(std::move(*p));
  }
  return out;
}

std::optional<NamespaceTarget> resolve_namespace_path(const std::string& path, const std::string& proc_name) {
  // Exactly /proc/<digits>/ns/<proc_name>: anything else is an ordinary path.
  const std::string prefix = "/proc/";
  const std::string suffix = "/ns/" + proc_name;
  if (!starts_with(path, prefix) || path.size() <= prefix.size() + suffix.size() ||
      path.compare(path.size() - suffix.size(), suffix.size(), suffix) != 0)
    return std::nullopt;
  auto n =
      parse_int(std::string_view(path).substr(prefix.size(), path.size() - prefix.size() - suffix.size()));
  if (!n || *n <= 0 || *n > std::numeric_limits<pid_t>::max()) return std::nullopt;
  auto peer = by_sentinel(static_cast<pid_t>(*n));
  if (!peer) return std::nullopt;
  NamespaceTarget t;
  t.path = "/proc/" + std::to_string(peer->init_pid) + "/ns/" + proc_name;
  if (entered_by_sentinel(proc_name)) {
    auto a = ns_id(path), b = ns_id(t.path);
    if (!a || !b || *a != *b) {
      log::debug("peers: " + path + " is not the namespace of container " + peer->id + "'s init");
      return std::nullopt;
    }
  }
  t.peer = std::move(*peer);
  return t;
}

}  // namespace agentshim::peers
