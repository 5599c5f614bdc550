#include "sandbox/process.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/seccomp.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "sandbox/oci.h"
#include "sandbox/seccomp.h"

namespace agentshim::process {

void apply_rlimits(const oci::Process& proc) {
  static const std::map<std::string, int> names = {
      {"RLIMIT_AS", RLIMIT_AS},
      {"RLIMIT_CORE", RLIMIT_CORE},
      {"RLIMIT_CPU", RLIMIT_CPU},
      {"RLIMIT_DATA", RLIMIT_DATA},
      {"RLIMIT_FSIZE", RLIMIT_FSIZE},
      {"RLIMIT_LOCKS", RLIMIT_LOCKS},
      {"RLIMIT_MEMLOCK", RLIMIT_MEMLOCK},
      {"RLIMIT_MSGQUEUE", RLIMIT_MSGQUEUE},
      {"RLIMIT_NICE", RLIMIT_NICE},
      {"RLIMIT_NOFILE", RLIMIT_NOFILE},
      {"RLIMIT_NPROC", RLIMIT_NPROC},
      {"RLIMIT_RSS", RLIMIT_RSS},
      {"RLIMIT_RTPRIO", RLIMIT_RTPRIO},
      {"RLIMIT_RTTIME", RLIMIT_RTTIME},
      {"RLIMIT_SIGPENDING", RLIMIT_SIGPENDING},
      {"RLIMIT_STACK", RLIMIT_STACK},
  };
  for (const auto& r : proc.rlimits) {
    auto it = names.find(r.type);
    if (it == names.end()) throw Error("process.rlimits: unknown rlimit type \"" + r.type + "\"");
    struct rlimit rl {};
    rl.rlim_cur = r.soft;
    rl.rlim_max = r.hard;
    if (::setrlimit(it->second, &rl) < 0) throw_errno("setrlimit " + r.type);
  }
}

void set_oom_score_adj(pid_t pid, int value) {
  std::string p = "/proc/" + (pid ? std::to_string(pid) : std::string("self")) + "/oom_score_adj";
  try {
    write_file(p, std::to_string(value));
  } catch (const SysError& e) {
    if (e.code() == EACCES || e.code() == EPERM) {
      log::warn("cannot set oom_score_adj to " + std::to_string(value) + " (" + e.what() +
                "): CAP_SYS_RESOURCE is not in this host's bounding set");
      return;
    }
    throw;
  }
}

std::vector<std::string> environment(const oci::Process& proc) {
  std::vector<std::string> env = proc.env;
  bool has_home = std::ranges::any_of(env, [](const std::string& e) { return starts_with(e, "HOME="); });
  if (!has_home) {
    // runc sets HOME from the container's /etc/passwd for the uid; fall back to "/".
    unsigned uid = proc.uid();
    std::string home = "/";
    if (auto pw = try_read_file("/etc/passwd")) {
      for (const auto& line : split(*pw, '\n')) {
        auto f = split(line, ':');
        if (f.size() >= 7 && parse_uint(f[2]) == uid) {
          home = f[5];
          break;
        }
      }
    }
    env.push_back("HOME=" + home);
  }
  return env;
}

namespace {
bool executable(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111);
}
}  // namespace

std::string resolve_executable(const oci::Process& proc) {
  std::string arg0 = proc.args.at(0);
  if (arg0.find('/') != std::string::npos) {
    if (!path_exists(arg0))
      throw Error("exec: \"" + arg0 + "\": stat " + arg0 + ": no such file or directory");
    return arg0;
  }
  std::string path = proc.env_value("PATH");
  if (path.empty()) path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  for (const auto& dir : split(path, ':')) {
    std::string cand = (dir.empty() ? "." : dir) + "/" + arg0;
    if (executable(cand)) return cand;
  }
  throw Error("exec: \"" + arg0 + "\": executable file not found in $PATH");
}

namespace {
std::vector<cap_value_t> cap_list(const oci::Process& proc, const char* set) {
  std::vector<cap_value_t> out;
  if (!proc.capabilities) return out;
  for (const auto& name : *proc.capabilities->set(set)) {
    auto v = oci::capability_from_name(name);
    if (!v) {
      log::warn("process.capabilities." + std::string(set) + ": unknown capability " + name + " ignored");
      continue;
    }
    if (*v > oci::last_capability()) continue;
    out.push_back(static_cast<cap_value_t>(*v));
  }
  return out;
}

bool in_bounding(cap_value_t c) {
  return prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1;
}

}  // namespace

std::vector<std::string> ungrantable_capabilities(const oci::Process& proc,
                                                  const std::function<bool(int)>& grantable) {
  std::vector<std::string> order;
  std::map<std::string, std::vector<std::string>> sets_of;
  if (!proc.capabilities) return order;
  for (const char* set : {"bounding", "effective", "permitted", "inheritable", "ambient"}) {
    for (const auto& n : *proc.capabilities->set(set)) {
      auto v = oci::capability_from_name(n);
      if (!v) continue;  // oci::validate refuses unknown names
      bool ok = *v <= oci::last_capability() && (grantable ? grantable(*v) : in_bounding(*v));
      if (ok) continue;
      std::string name = oci::capability_name(*v);
      if (!sets_of.count(name)) order.push_back(name);
      sets_of[name].push_back(set);
    }
  }
  std::vector<std::string> out;
  for (const auto& name : order) out.push_back(name + " (" + join(sets_of[name], ", ") + ")");
  return out;
}

void check_capabilities(const oci::Process& proc) {
  auto missing = ungrantable_capabilities(proc);
  if (missing.empty()) return;
  throw Error(
      "process.capabilities: this host cannot grant " + join(missing, ", ") +
      ": not in the runtime's capability bounding set or not known to the kernel (runc refuses such a "
      "config too); leave it out of the config, or out of the policy's capabilities.allowed so that the "
      "policy drops it");
}

namespace {

void apply_capabilities(const oci::Process& proc) {
  // No capabilities object: the process gets none (runc semantics; cap_list gives empty sets).
  auto bounding = cap_list(proc, "bounding");
  auto effective = cap_list(proc, "effective");
  auto permitted = cap_list(proc, "permitted");
  auto inheritable = cap_list(proc, "inheritable");
  auto ambient = cap_list(proc, "ambient");

  cap_t caps = cap_init();
  if (!caps) throw_errno("cap_init");
  auto add = [&](const std::vector<cap_value_t>& v, cap_flag_t f) {
    std::vector<cap_value_t> ok;
    for (auto c : v)
      if (in_bounding(c)) ok.push_back(c);
    if (!ok.empty() && cap_set_flag(caps, f, static_cast<int>(ok.size()), ok.data(), CAP_SET) < 0)
      throw_errno("cap_set_flag");
  };
  add(effective, CAP_EFFECTIVE);
  add(permitted, CAP_PERMITTED);
  add(inheritable, CAP_INHERITABLE);
  int rc = cap_set_proc(caps);
  int err = errno;
  cap_free(caps);
  if (rc < 0) throw_errno("capset (process.capabilities)", err);

  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
    throw_errno("prctl(PR_CAP_AMBIENT_CLEAR_ALL)");
  for (auto c : ambient) {
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0) < 0)
      log::warn("cannot raise ambient capability " + oci::capability_name(c) + ": " + std::strerror(errno));
  }
}

void drop_bounding(const oci::Process& proc) {
  auto bounding = cap_list(proc, "bounding");
  for (int c = 0; c <= oci::last_capability(); c++) {
    bool keep = false;
    for (auto b : bounding) keep |= (b == c);
    if (!keep && in_bounding(c) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0)
      throw_errno("prctl(PR_CAPBSET_DROP, " + oci::capability_name(c) + ")");
  }
}

void setup_user(const oci::Process& proc) {
  unsigned uid = 0, gid = 0;
  std::vector<gid_t> groups;
  if (proc.user) {
    uid = proc.user->uid;
    gid = proc.user->gid;
    if (proc.user->additional_gids)
      groups.assign(proc.user->additional_gids->begin(), proc.user->additional_gids->end());
  }
  // setgroups is refused in a user namespace whose setgroups file says deny.
  if (::setgroups(groups.size(), groups.data()) < 0) {
    auto sg = try_read_file("/proc/self/setgroups");
    if (!(errno == EPERM && sg && trim(*sg) == "deny")) throw_errno("setgroups");
  }
  if (::setresgid(gid, gid, gid) < 0) throw_errno("setresgid(" + std::to_string(gid) + ")");
  if (::setresuid(uid, uid, uid) < 0) throw_errno("setresuid(" + std::to_string(uid) + ")");
}

}  // namespace

PreparedSeccomp prepare_seccomp(const Finalize& f) {
  // One user-notification listener per filter tree (a kernel rule): the exec
  // observer's NOTIFY rules are merged into the first OCI filter, or stand
  // alone; a config that uses SCMP_ACT_NOTIFY itself keeps its listener.
  PreparedSeccomp p;
  bool any_notify = false;
  for (const auto& s : f.seccomp)
    if (!s.is_null() && !s.empty() && seccomp::uses_notify(s)) any_notify = true;
  bool observe = f.observe_exec && !any_notify;
  bool merged = false, listener = false;
  bool by_errno = false;
  auto add = [&](const seccomp::Filter& filter, const char* kind) {
    PreparedSeccomp::Filter pf{filter.bpf(), ""};
    if (pf.program.insns.empty()) return;
    // Only the first filter asks for the tree's listener (libseccomp does
    // the same: the kernel refuses a second one with EBUSY).
    if (pf.program.listener()) {
      if (listener)
        pf.program.flags &=
            ~static_cast<unsigned>(SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_TSYNC_ESRCH);
      else
        pf.kind = kind;
      listener = true;
    }
    p.filters.push_back(std::move(pf));
  };
  for (const auto& s : f.seccomp) {
    if (s.is_null() || s.empty()) continue;
    bool here = observe && !merged;
    auto filter = seccomp::compile(s, here);
    merged = merged || here;
    p.max_nr = std::max(p.max_nr, filter.max_nr());
    by_errno = by_errno || filter.denies_by_errno();
    add(filter, here ? "exec" : "config");
  }
  if (observe && !merged) {
    auto obs = seccomp::exec_observer();
    p.max_nr = std::max(p.max_nr, obs.max_nr());
    add(obs, "exec");
  }
  p.enosys_stub = by_errno;
  p.terminal_guard = seccomp::terminal_guard().bpf();
  return p;
}

void install_seccomp(const PreparedSeccomp& p, std::vector<Listener>& listeners) {
  // First, so a profile that denies seccomp(2) cannot keep it out; the
  // order does not matter for the answer (its EPERM beats ALLOW, NOTIFY,
  // TRACE and LOG of any filter loaded later).
  seccomp::load_program(p.terminal_guard);
  for (const auto& pf : p.filters) {
    int fd = seccomp::load_program(pf.program);
    if (fd >= 0) listeners.push_back({pf.kind, fd});
  }
  // Last, so its ENOSYS is the errno a newer syscall gets (see seccomp.h).
  if (p.enosys_stub && !seccomp::load_enosys_stub(p.max_nr))
    log::debug(
        "seccomp: a profile denies seccomp(2); newer syscalls keep the profile's errno instead of ENOSYS");
}

void new_session() {
  if (::getsid(0) == ::getpid()) return;
  if (::setsid() < 0) throw_errno("setsid (a new session for the container process)");
}

std::vector<Listener> finalize(const oci::Process& proc, const Finalize& f) {
  new_session();
  std::vector<Listener> listeners;
  PreparedSeccomp own;
  const PreparedSeccomp* sec = f.prepared;
  if (!sec) {
    own = prepare_seccomp(f);
    sec = &own;
  }
  bool nnp = proc.no_new_privileges.value_or(false);
  if (!nnp) install_seccomp(*sec, listeners);  // needs CAP_SYS_ADMIN when no_new_privs is off
  drop_bounding(proc);
  if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) throw_errno("prctl(PR_SET_KEEPCAPS)");
  setup_user(proc);
  if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0) throw_errno("prctl(PR_SET_KEEPCAPS, 0)");
  apply_capabilities(proc);
  if (proc.user && proc.user->umask)
    ::umask(static_cast<mode_t>(*proc.user->umask));
  else
    ::umask(022);
  const std::string cwd = proc.cwd_or_root();
  if (::chdir(cwd.c_str()) < 0) throw_errno("chdir to cwd (\"" + cwd + "\") set in config.json");
  if (nnp) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) throw_errno("prctl(PR_SET_NO_NEW_PRIVS)");
    install_seccomp(*sec, listeners);
  }
  return listeners;
}

void exec(const std::string& path, const oci::Process& proc) {
  std::vector<std::string> args = proc.args;
  auto env = environment(proc);
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  ::execve(path.c_str(), argv.data(), envp.data());
  throw_errno("exec " + path);
}

}  // namespace agentshim::process
