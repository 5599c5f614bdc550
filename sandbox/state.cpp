#include "sandbox/state.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "attest/hash.h"
#include "common/error.h"
#include "common/util.h"
#include "sandbox/cgroups/cgroups.h"
#include "sandbox/oci.h"

namespace agentshim::state {

json ContainerState::to_json() const {
  return json{{"id", id},
              {"bundle", bundle},
              {"rootfs", rootfs},
              {"created", created},
              {"owner", owner},
              {"init_pid", init_pid},
              {"init_start", init_start},
              {"sentinel_pid", sentinel_pid},
              {"sentinel_start", sentinel_start},
              {"run_id", run_id},
              {"audit_dir", audit_dir},
              {"config", config},
              {"cgroup", cgroup},
              {"annotations", annotations}};
}

ContainerState ContainerState::from_json(const json& j) {
  ContainerState s;
  s.id = j.at("id").get<std::string>();
  s.bundle = j.value("bundle", "");
  s.rootfs = j.value("rootfs", "");
  s.created = j.value("created", "");
  s.owner = j.value("owner", "");
  s.init_pid = j.value("init_pid", 0);
  s.init_start = j.value("init_start", 0ULL);
  s.sentinel_pid = j.value("sentinel_pid", j.value("supervisor_pid", 0));
  s.sentinel_start = j.value("sentinel_start", j.value("supervisor_start", 0ULL));
  s.run_id = j.value("run_id", "");
  s.audit_dir = j.value("audit_dir", "");
  s.config = j.value("config", json::object());
  try {
    s.spec = oci::parse_spec(s.config);
  } catch (const std::exception& e) {
    s.spec_error = e.what();
  }
  s.cgroup = j.value("cgroup", json());
  s.annotations = j.value("annotations", json::object());
  return s;
}

std::string container_dir(const std::string& root, const std::string& id) { return root + "/" + id; }
std::string exec_fifo_path(const std::string& root, const std::string& id) {
  return container_dir(root, id) + "/exec.fifo";
}
std::string control_socket_path(const std::string& root, const std::string& id) {
  return control_socket_in(container_dir(root, id));
}
std::string control_socket_in(const std::string& state_dir) {
  return state_dir + "/supervisor.sock";
}

// A unix socket path holds at most 107 bytes, and the supervisor's control
// socket is <root>/<id>/supervisor.sock. Clients pass long roots with 64-hex
// ids (/run/containerd/runc/k8s.io, /run/docker/runtime-runc/moby: 108 and 110
// bytes), so for a root that could not hold such an id the state store is
// reached through a short, stable alias: /run/agentshim.r/<8 hex of
// sha256(realpath(root))> -> realpath(root). An existing alias that points
// elsewhere is an error, never silently reused.
std::string usable_root(const std::string& root) {
  constexpr std::size_t kSunPath = 108, kLongestId = 64;
  if (control_socket_path(root, std::string(kLongestId, 'x')).size() < kSunPath) return root;
  mkdir_p(root, 0711);
  char buf[PATH_MAX];
  if (!::realpath(root.c_str(), buf)) throw_errno("resolve --root " + root);
  std::string real = buf;
  const std::string dir = "/run/agentshim.r";
  std::string alias = dir + "/" + attest::hex(attest::sha256(real)).substr(0, 8);
  mkdir_p(dir, 0711);
  if (::symlink(real.c_str(), alias.c_str()) == 0) {
    // A new alias: drop the ones whose root is gone (test and client roots come and go).
    if (DIR* d = ::opendir(dir.c_str())) {
      while (struct dirent* e = ::readdir(d)) {
        std::string p = dir + "/" + e->d_name;
        struct stat st {};
        if (e->d_name[0] != '.' && ::lstat(p.c_str(), &st) == 0 && S_ISLNK(st.st_mode) &&
            ::stat(p.c_str(), &st) < 0 && errno == ENOENT)
          ::unlink(p.c_str());
      }
      ::closedir(d);
    }
  } else if (errno != EEXIST) {
    throw_errno("symlink " + alias + " -> " + real);
  }
  ssize_t n = ::readlink(alias.c_str(), buf, sizeof buf - 1);
  if (n < 0) throw_errno("readlink " + alias);
  if (std::string(buf, static_cast<std::size_t>(n)) != real)
    throw Error("state root alias " + alias + " points to " + std::string(buf, static_cast<std::size_t>(n)) +
                ", not to --root " + real);
  return alias;
}

Lock::Lock(const std::string& root, const std::string& id) {
  std::string p = container_dir(root, id) + "/lock";
  fd_.reset(::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd_) {
    if (errno == ENOENT) throw Error("container does not exist: " + id);
    throw_errno("open " + p);
  }
  while (::flock(fd_.get(), LOCK_EX) < 0) {
    if (errno != EINTR) throw_errno("flock " + p);
  }
}

ContainerState load(const std::string& root, const std::string& id) {
  oci::validate_container_id(id);
  std::string p = container_dir(root, id) + "/state.json";
  auto text = try_read_file(p);
  if (!text) throw Error("container does not exist: " + id);
  try {
    return ContainerState::from_json(json::parse(*text));
  } catch (const json::exception& e) {
    throw Error("state of container " + id + " is corrupt (" + p + "): " + e.what());
  }
}

void save(const std::string& root, const ContainerState& st) {
  write_file_atomic(container_dir(root, st.id) + "/state.json", st.to_json().dump(), 0600, false);
}

std::vector<std::string> list_ids(const std::string& root) {
  std::vector<std::string> ids;
  DIR* d = ::opendir(root.c_str());
  if (!d) {
    if (errno == ENOENT) return ids;
    throw_errno("opendir " + root);
  }
  while (struct dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    if (path_exists(root + "/" + n + "/state.json")) ids.push_back(n);
  }
  ::closedir(d);
  std::sort(ids.begin(), ids.end());
  return ids;
}

namespace {
// Parse /proc/<pid>/stat after the last ')' (comm may contain anything).
bool read_stat(pid_t pid, char& state, unsigned long long& start) {
  auto s = try_read_file("/proc/" + std::to_string(pid) + "/stat");
  if (!s) return false;
  auto rp = s->rfind(')');
  if (rp == std::string::npos || rp + 2 >= s->size()) return false;
  auto fields = split(std::string_view(*s).substr(rp + 2), ' ');
  // fields[0] = state (field 3), starttime is field 22 -> index 19.
  if (fields.size() < 20 || fields[0].empty()) return false;
  state = fields[0][0];
  auto v = parse_uint(fields[19]);
  if (!v) return false;
  start = *v;
  return true;
}
}  // namespace

unsigned long long process_start_time(pid_t pid) {
  char st;
  unsigned long long start = 0;
  if (!read_stat(pid, st, start)) return 0;
  return start;
}

bool process_alive(pid_t pid, unsigned long long start) {
  if (pid <= 0) return false;
  char st;
  unsigned long long s = 0;
  if (!read_stat(pid, st, s)) return false;
  if (st == 'Z' || st == 'X') return false;
  return start == 0 || s == start;
}

std::string status(const std::string& root, const ContainerState& st) {
  if (!process_alive(st.init_pid, st.init_start)) return "stopped";
  if (path_exists(exec_fifo_path(root, st.id))) return "created";
  try {
    if (!st.cgroup.is_null()) {
      auto mgr = cgroups::Manager::load(st.cgroup);
      if (mgr->frozen()) return "paused";
    }
  } catch (const std::exception&) {
  }
  return "running";
}

json oci_state(const ContainerState& st, const std::string& status) {
  json j = {{"ociVersion", oci::kOciVersion},
            {"id", st.id},
            {"pid", status == "stopped" ? 0 : st.init_pid},
            {"status", status},
            {"bundle", st.bundle},
            {"rootfs", st.rootfs},
            {"created", st.created},
            {"owner", st.owner}};
  if (!st.annotations.empty()) j["annotations"] = st.annotations;
  return j;
}

}  // namespace agentshim::state
