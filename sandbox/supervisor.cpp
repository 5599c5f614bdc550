#include "sandbox/supervisor.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <future>
#include <map>
#include <optional>

#include "attest/canonical.h"
#include "attest/hash.h"
#include "attest/record.h"
#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "sandbox/cgroups/cgroups.h"
#include "sandbox/exec_observer.h"
#include "sandbox/hooks.h"
#include "sandbox/network.h"
#include "sandbox/oci.h"
#include "sandbox/process.h"
#include "sandbox/rootfs.h"
#include "sandbox/state.h"
#include "sandbox/sync.h"
#include "sandbox/userns.h"

namespace agentshim::supervisor {
namespace {

const int kForwarded[] = {SIGTERM, SIGINT,  SIGHUP,  SIGQUIT, SIGUSR1, SIGUSR2,   SIGWINCH, SIGCONT, SIGALRM,
                          SIGTSTP, SIGTTIN, SIGTTOU, SIGPWR,  SIGURG,  SIGVTALRM, SIGPROF,  SIGXCPU, SIGXFSZ};

sigset_t handled_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  sigaddset(&set, SIGPIPE);
  for (int s : kForwarded) sigaddset(&set, s);
  return set;
}

void reset_signals() {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int s = 1; s < NSIG; s++) {
    if (s == SIGKILL || s == SIGSTOP) continue;
    ::signal(s, SIG_DFL);
  }
}

json hook_state(const Setup& s, const std::string& status, pid_t pid) {
  json j = {
      {"ociVersion", oci::kOciVersion}, {"id", s.id}, {"status", status}, {"pid", pid}, {"bundle", s.bundle}};
  if (s.config.contains("annotations") && s.config["annotations"].is_object() &&
      !s.config["annotations"].empty())
    j["annotations"] = s.config["annotations"];
  return j;
}

void write_id_map(pid_t pid, const json& cfg, const char* key, const char* file) {
  if (!cfg["linux"].contains(key) || !cfg["linux"][key].is_array()) return;
  std::string data;
  for (const auto& m : cfg["linux"][key])
    data += std::to_string(m["containerID"].get<unsigned long>()) + " " +
            std::to_string(m["hostID"].get<unsigned long>()) + " " +
            std::to_string(m["size"].get<unsigned long>()) + "\n";
  std::string path = "/proc/" + std::to_string(pid) + "/" + file;
  try {
    write_file(path, data);
  } catch (const SysError& e) {
    throw Error(std::string("linux.") + key + ": " + e.what());
  }
}

// The supervisor tells the sentinel the container's status with this
// signal (sigqueue, the status as its value) once the exit is recorded.
const int kReleaseSignal = SIGRTMAX;

// ---------------------------------------------------------------- init

[[noreturn]] void init_main(Setup& s, int sock) {
  try {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    reset_signals();
    prctl(PR_SET_NAME, "agentshim-init");
    if (s.init_unshare_cgroupns && ::unshare(CLONE_NEWCGROUP) < 0) throw_errno("unshare cgroup namespace");
    // Wait until the supervisor knows our pid (stage1 reports it after the
    // clone; without this the init could race ahead of that report).
    sync::expect(sock, "init-ok", "supervisor went away before the init started");
    const json& cfg = s.config;
    const json& proc = cfg["process"];
    // We inherited the supervisor's oom_score_adj (-1000): reset it.
    process::set_oom_score_adj(0, proc.value("oomScoreAdj", 0));

    // A session keyring of its own, so keys never leak between containers
    // (runc does the same unless --no-new-keyring).
    if (!s.no_new_keyring) {
      std::string name = "_ses." + s.id;
      if (::syscall(SYS_keyctl, 1 /*KEYCTL_JOIN_SESSION_KEYRING*/, name.c_str()) < 0 && errno != ENOSYS &&
          errno != EPERM && errno != EACCES)
        throw_errno("join session keyring");
    }
    // A joined uts namespace (a path) may be given a hostname too, as runc allows.
    bool new_uts = oci::has_namespace(cfg, "uts");
    if (cfg.contains("hostname") && !cfg["hostname"].get<std::string>().empty()) {
      if (!new_uts) throw Error("config.json: hostname is set but the container has no new uts namespace");
      std::string h = cfg["hostname"];
      if (::sethostname(h.data(), h.size()) < 0) throw_errno("sethostname " + h);
    }
    if (cfg.contains("domainname") && !cfg["domainname"].get<std::string>().empty()) {
      std::string d = cfg["domainname"];
      if (::setdomainname(d.data(), d.size()) < 0) throw_errno("setdomainname " + d);
    }

    rootfs::Context rc;
    rc.config = cfg;
    rc.rootfs = s.rootfs;
    rc.userns = oci::has_new_namespace(cfg, "user");
    rc.cgroupns = oci::has_new_namespace(cfg, "cgroup");
    if (s.policy.contains("cgroup_mounts"))
      for (const auto& h : s.policy["cgroup_mounts"])
        rc.cgroups.push_back({h["name"], h["fstype"], h["options"], h["host_path"]});

    // New or joined: either way the rootfs is set up inside it (as runc does).
    bool new_mnt = oci::has_namespace(cfg, "mount");
    if (new_mnt && s.attach_rootfs) {
      std::vector<UniqueFd> fds;
      sync::send(sock, {{"type", "idmap"}});
      auto ok =
          sync::expect(sock, "idmap-ok", "supervisor went away while preparing the idmapped rootfs", &fds);
      auto srcs = ok.value("sources", json::array());
      if (fds.size() != srcs.size() + 1)
        throw Error("supervisor sent a wrong number of descriptors for the rootfs");
      // Reached through /proc/self/fd: no host directory on the way.
      rc.rootfs = "/proc/self/fd/" + std::to_string(fds[0].get());
      rc.rootfs_attached = true;
      for (std::size_t i = 0; i < srcs.size(); i++)
        rc.sources[srcs[i].get<std::string>()] = "/proc/self/fd/" + std::to_string(fds[i + 1].get());
      rc.held = std::move(fds);
    }
    if (new_mnt) {
      rootfs::prepare_root(rc);
      rootfs::mount_all(rc);
      rootfs::create_devices(rc);
    }
    sync::send(sock, {{"type", "hooks"}});
    auto ok = sync::expect(sock, "hooks-ok", "supervisor went away during createRuntime hooks");
    hooks::run(cfg, "createContainer", hook_state(s, "creating", ok.value("pid", 0)));
    if (new_mnt) {
      rootfs::enter(rc, s.no_pivot);
    } else {
      if (::chroot(s.rootfs.c_str()) < 0) throw_errno("chroot " + s.rootfs);
      if (::chdir("/") < 0) throw_errno("chdir /");
    }
    if (proc.value("terminal", false)) {
      if (!s.console_sock) throw Error("process.terminal is true but no --console-socket was given");
      rootfs::setup_console(s.console_sock.get(), proc, new_mnt);
      s.console_sock.reset();
    }
    rootfs::apply_sysctls(cfg);
    if (new_mnt) rootfs::finish(rc);
    process::apply_rlimits(proc);
    json p = proc;
    for (const auto& e : s.extra_env) p["env"].push_back(e);
    std::string path = process::resolve_executable(p);

    // Everything that can fail or take time happens before `start` can
    // return (as runc does it): privileges dropped, seccomp loaded, its
    // listener handed to the supervisor. After the FIFO only hooks and
    // execve remain, so a signal sent right after `start` finds the process.
    process::Finalize fin;
    if (cfg.contains("linux") && cfg["linux"].contains("seccomp") && !cfg["linux"]["seccomp"].is_null())
      fin.seccomp.push_back(cfg["linux"]["seccomp"]);
    if (!s.extra_seccomp.is_null() && !s.extra_seccomp.empty()) fin.seccomp.push_back(s.extra_seccomp);
    fin.observe_exec = s.observe_exec;
    if (s.prepared_seccomp) fin.prepared = &*s.prepared_seccomp;
    // Descriptors beyond stdio and --preserve-fds do not reach the process.
    int keep = 3 + s.preserve_fds;
    ::syscall(SYS_close_range, keep, ~0U, 4 /*CLOSE_RANGE_CLOEXEC*/);
    auto listeners = process::finalize(p, fin);
    if (!listeners.empty()) {
      json kinds = json::array();
      std::vector<int> fds;
      for (const auto& l : listeners) {
        kinds.push_back(l.kind);
        fds.push_back(l.fd);
      }
      sync::send(sock, {{"type", "seccomp"}, {"kinds", kinds}}, fds);
      for (int fd : fds) ::close(fd);
    }

    sync::send(sock, {{"type", "ready"}});
    // Block until `start` opens the fifo for reading. Through the state
    // directory's descriptor, not /proc/self/fd: without a mount namespace
    // of its own the init has no /proc here.
    int w = ::openat(s.state_dirfd.get(), "exec.fifo", O_WRONLY | O_CLOEXEC);
    if (w < 0) throw_errno("open exec fifo");
    if (::write(w, "0", 1) != 1) throw_errno("write exec fifo");
    ::close(w);
    s.exec_fifo.reset();
    s.state_dirfd.reset();

    hooks::run(cfg, "startContainer", hook_state(s, "running", 1));
    process::exec(path, p);
  } catch (const std::exception& e) {
    try {
      sync::send(sock, {{"type", "error"}, {"msg", e.what()}});
    } catch (...) {
    }
    std::string m = std::string("agentshim: ") + e.what() + "\n";
    ssize_t r = ::write(2, m.data(), m.size());
    (void)r;
    ::_exit(127);
  }
}

// ---------------------------------------------------------------- stage1

[[noreturn]] void stage1_main(Setup& s, int sock, cgroups::CloneTarget& cg) {
  try {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    // The init runs agentshim's own binary until it execs the user's
    // program: not dumpable, so nothing in the container can open it
    // through /proc/<pid>/exe or ptrace it (CVE-2019-5736).
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) throw_errno("prctl(PR_SET_DUMPABLE, 0)");
    const json& cfg = s.config;
    auto nss = oci::namespaces(cfg);
    // Open every namespace path first: joining one may hide the others.
    std::map<std::string, UniqueFd> join;
    int unshare_flags = 0;
    for (const auto& n : nss) {
      auto t = oci::namespace_by_name(n.type);
      if (!t) throw Error("unsupported namespace type \"" + n.type + "\"");
      if (n.path.empty()) {
        unshare_flags |= t->flag;
      } else {
        UniqueFd fd(::open(n.path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd) throw_errno("open " + n.type + " namespace " + n.path);
        join[n.type] = std::move(fd);
      }
    }
    if (join.count("user")) {
      if (::setns(join["user"].get(), CLONE_NEWUSER) < 0) throw_errno("setns user namespace");
    } else if (unshare_flags & CLONE_NEWUSER) {
      if (::unshare(CLONE_NEWUSER) < 0) throw_errno("unshare user namespace");
      sync::send(sock, {{"type", "userns"}, {"pid", ::getpid()}});
      sync::expect(sock, "userns-ok", "supervisor went away while writing id maps");
    }
    if (join.count("user") || (unshare_flags & CLONE_NEWUSER)) {
      if (::setresgid(0, 0, 0) < 0) throw_errno("setresgid(0) in user namespace");
      if (::setresuid(0, 0, 0) < 0) throw_errno("setresuid(0) in user namespace");
    }
    unshare_flags &= ~CLONE_NEWUSER;
    // A new cgroup namespace is made by the init itself, once it is in the
    // container's cgroups (it is born into the v2 one): its root must be
    // the container's cgroup, not ours.
    if (unshare_flags & CLONE_NEWCGROUP) {
      unshare_flags &= ~CLONE_NEWCGROUP;
      s.init_unshare_cgroupns = true;
    }
    // An existing cgroup namespace is entered by the init once born in the
    // container's cgroup (see cgroups::CloneTarget::cgroupns).
    if (auto it = join.find("cgroup"); it != join.end()) cg.cgroupns = it->second.get();
    for (const char* t : {"ipc", "uts", "network", "pid", "time", "mount"}) {
      auto it = join.find(t);
      if (it == join.end()) continue;
      if (::setns(it->second.get(), oci::namespace_by_name(t)->flag) < 0)
        throw_errno(std::string("setns ") + t + " namespace");
    }
    if (unshare_flags && ::unshare(unshare_flags) < 0) throw_errno("unshare namespaces");
    // The init as our sibling (CLONE_PARENT: the supervisor reaps it), born
    // in the container's v2 cgroup.
    pid_t pid = cgroups::clone_parent_into(cg);
    if (pid < 0) throw_errno("clone container init");
    if (pid == 0) init_main(s, sock);
    sync::send(sock, {{"type", "init"}, {"pid", pid}});
    ::_exit(0);
  } catch (const std::exception& e) {
    try {
      sync::send(sock, {{"type", "error"}, {"msg", e.what()}});
    } catch (...) {
    }
    ::_exit(1);
  }
}

// ---------------------------------------------------------------- supervisor

UniqueFd listen_control(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) throw_errno("socket (control)");
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) throw Error("control socket path too long: " + path);
  std::strcpy(addr.sun_path, path.c_str());
  ::unlink(path.c_str());
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) throw_errno("bind " + path);
  ::chmod(path.c_str(), 0600);
  if (::listen(fd.get(), 16) < 0) throw_errno("listen " + path);
  return fd;
}

struct Exit {
  bool exited = false;
  int code = 0;
  int signal = 0;
  struct rusage ru {};
};

class Supervisor {
 public:
  Supervisor(Setup& s, pid_t sentinel, UniqueFd sentinel_sock)
      : s_(s), sentinel_(sentinel), sentinel_sock_(std::move(sentinel_sock)) {}

  [[noreturn]] void run() {
    int code = 1;
    try {
      setup();
      code = loop();
    } catch (const std::exception& e) {
      // While `create` waits, it reports the error (once); afterwards only
      // the log can.
      if (!s_.cli_sock) log::error(e.what());
      // Clean up first: the CLI exits as soon as it hears of the error, and
      // nothing (process, cgroup) may outlive that.
      cleanup_failed();
      report_error(e.what());
      ::_exit(1);
    }
    ::_exit(code);
  }

 private:
  void report_error(const std::string& msg) {
    if (s_.cli_sock) {
      try {
        sync::send(s_.cli_sock.get(), {{"type", "error"}, {"msg", msg}});
      } catch (...) {
      }
      s_.cli_sock.reset();
    }
  }

  // The sentinel back to the cgroups it came from (see setup()), so the
  // container's cgroup can be removed after a failed create.
  void sentinel_leaves_container_cgroup() {
    if (!in_container_cgroup_) return;
    in_container_cgroup_ = false;
    std::string pid = std::to_string(sentinel_);
    // Our own cgroups are the ones the sentinel came from: we never moved.
    cgroups::Host home;
    try {
      home = cgroups::Host::detect();
    } catch (const std::exception& e) {
      log::debug(std::string("supervisor: cgroup layout: ") + e.what());
      return;
    }
    for (const auto& m : home.mounts) {
      std::string key = m.fstype == "cgroup2" ? "" : m.options;
      auto it = home.self.find(key);
      if (it == home.self.end()) continue;
      std::string rel = it->second;
      if (m.root != "/" && starts_with(rel, m.root)) rel = rel.substr(m.root.size());
      std::string procs = m.path + (rel == "/" ? "" : rel) + "/cgroup.procs";
      try {
        write_file(procs, pid);
      } catch (const std::exception& e) {
        log::debug(std::string("supervisor: sentinel back to its cgroup: ") + e.what());
      }
    }
  }

  // The sentinel moves itself (see cgroups::Manager::join_self): we send it
  // the container's cgroup and wait for its answer. On a hybrid host it
  // stays out of the v2 part (no controllers that clients read stats or OOM
  // events from through that pid live there, and joining it would cost a
  // grace period); on a unified host it joins through cgroup.procs.
  void sentinel_joins_container_cgroup() {
    if (!sentinel_sock_) throw Error("the sentinel cannot be reached to join the container's cgroup");
    sync::send(sentinel_sock_.get(), {{"type", "join"}, {"cgroup", cg_->save()}});
    auto m = sync::recv(sentinel_sock_.get());
    sentinel_sock_.reset();
    if (!m) throw Error("the sentinel exited while joining the container's cgroup");
    in_container_cgroup_ = true;  // (in part, perhaps: undone on failure either way)
    if (m->value("type", "") != "joined")
      throw Error("sentinel: joining the container's cgroup: " + m->value("msg", std::string("no answer")));
  }

  void cleanup_failed() {
    net_.reset();
    sentinel_leaves_container_cgroup();
    if (stage1_ > 0) ::kill(stage1_, SIGKILL);
    if (init_pid_ > 0) ::kill(init_pid_, SIGKILL);
    if (cg_) {
      try {
        for (pid_t p : cg_->pids())
          if (p != sentinel_) ::kill(p, SIGKILL);
        if (cg_->frozen()) cg_->thaw();  // a frozen process dies only once thawed
      } catch (...) {
      }
    }
    // Reap every child (stage1, the init, anything reparented to us).
    for (;;) {
      pid_t r = ::waitpid(-1, nullptr, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) break;
    }
    if (cg_) {
      try {
        cg_->destroy();
      } catch (const std::exception& e) {
        log::warn(std::string("cgroup cleanup: ") + e.what());
      }
    }
  }

  // Compile the container's seccomp filters to BPF (libseccomp: a few
  // milliseconds) for the init, which inherits them and only loads them.
  // Needs s_.config, s_.extra_seccomp and the final s_.observe_exec; must
  // finish before stage1 is forked. A bad profile throws (naming its field).
  void prepare_seccomp() {
    const json& cfg = s_.config;
    process::Finalize fin;
    if (cfg.contains("linux") && cfg["linux"].contains("seccomp") && !cfg["linux"]["seccomp"].is_null())
      fin.seccomp.push_back(cfg["linux"]["seccomp"]);
    if (!s_.extra_seccomp.is_null() && !s_.extra_seccomp.empty()) fin.seccomp.push_back(s_.extra_seccomp);
    fin.observe_exec = s_.observe_exec;
    s_.prepared_seccomp = process::prepare_seccomp(fin);
  }

  void setup() {
    prctl(PR_SET_NAME, "agentshim-sup");
    // Every descriptor we inherited and do not need is closed once the
    // init has been created (--preserve-fds, LISTEN_FDS and anything the
    // caller leaked belong to the container, not to us).
    inherited_ = inherited_fds();
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) throw_errno("prctl(PR_SET_CHILD_SUBREAPER)");
    sigset_t set = handled_signals();
    if (sigprocmask(SIG_BLOCK, &set, nullptr) < 0) throw_errno("sigprocmask");
    sigfd_.reset(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!sigfd_) throw_errno("signalfd");
    process::set_oom_score_adj(0, -1000);

    const json& cfg = s_.config;
    // The seccomp filters compile (libseccomp, a few milliseconds of CPU) on
    // a second thread while this one starts the record and makes the cgroup;
    // joined before stage1 is forked (the init inherits the programs, and no
    // other thread of ours may hold a lock across that fork).
    // (An std::async future waits for its thread when destroyed, so an
    // error here leaves no thread running either.)
    auto compiled = std::async(std::launch::async, [this] { prepare_seccomp(); });
    start_record();
    std::string cgpath = cfg.contains("linux") ? cfg["linux"].value("cgroupsPath", "") : "";
    cg_ = cgroups::Manager::create(cgpath, s_.id, s_.systemd_cgroup);
    json resources =
        cfg.contains("linux") && cfg["linux"].contains("resources") && cfg["linux"]["resources"].is_object()
            ? cfg["linux"]["resources"]
            : json::object();
    resources["devices"] = cgroups::effective_device_rules(cfg);
    cg_->set(resources);
    // The pid --pid-file names is the sentinel (see main()), and the runc
    // v2 shim (containerd, Docker, Kubernetes) reads stats and OOM events
    // from that pid's cgroup: the sentinel joins the container's cgroup. We
    // (threads, proxy buffers, hashing) stay outside it.
    sentinel_joins_container_cgroup();
    json mounts = json::array();
    for (const auto& h : cg_->hierarchies())
      mounts.push_back({{"name", h.mountpoint_name},
                        {"fstype", h.fstype},
                        {"options", h.options},
                        {"host_path", h.host_path}});
    s_.policy["cgroup_mounts"] = mounts;
    // In a new user namespace the container's root is not host root: hand
    // it the stdio pipes (as runc does), so /proc/self/fd/N reopens work.
    if (oci::has_new_namespace(cfg, "user"))
      if (auto u = oci::root_ids(cfg, "uidMappings"), gm = oci::root_ids(cfg, "gidMappings"); u && gm)
        userns::chown_stdio(u->host, gm->host);

    compiled.get();  // rethrows a bad profile's error
    auto pair = make_socketpair(SOCK_SEQPACKET);
    sock_ = std::move(pair.first);
    pid_t stage1 = ::fork();
    if (stage1 < 0) throw_errno("fork stage1");
    stage1_ = stage1;
    if (stage1 == 0) {
      sock_.reset();
      s_.cli_sock.reset();
      // stage1 joins the v1 hierarchies itself (no grace period) and creates
      // the init in the v2 one (see cgroups::Manager::join_for_clone).
      cgroups::CloneTarget target;
      try {
        target = cg_->join_for_clone(oci::has_namespace(cfg, "user"));
      } catch (const std::exception& e) {
        try {
          sync::send(pair.second.get(), {{"type", "error"}, {"msg", e.what()}});
        } catch (...) {
        }
        ::_exit(1);
      }
      stage1_main(s_, pair.second.get(), target);
    }
    pair.second.reset();
    const std::string eof = "container init exited during setup (see the log for details)";
    for (;;) {
      std::vector<UniqueFd> fds;
      auto m = sync::recv(sock_.get(), &fds);
      if (!m) throw Error(eof);
      std::string type = m->value("type", "");
      if (type == "error") throw Error(m->value("msg", "unknown error"));
      if (type == "userns") {
        pid_t p = (*m)["pid"];
        if (cfg["linux"].contains("gidMappings")) {
          // Only an unprivileged mapper must deny setgroups; we are root.
        }
        write_id_map(p, cfg, "uidMappings", "uid_map");
        write_id_map(p, cfg, "gidMappings", "gid_map");
        sync::send(sock_.get(), {{"type", "userns-ok"}});
      } else if (type == "idmap") {
        // userns "auto": an idmapped, private copy of the rootfs made here
        // (mount_setattr needs host privilege), attached inside the init's
        // mount namespace by a helper running as host root, which also opens
        // the rootfs and every bind source there: the container's root
        // never has to reach host paths (Docker's are under root-only
        // directories). (The init's own getpid() is 1 in its pid namespace:
        // use the pid stage1 reported.)
        if (init_pid_ <= 0) throw Error("container init asked for its rootfs before it was reported");
        auto tree = userns::idmapped_tree(s_.rootfs, init_pid_, s_.idmap_rootfs);
        std::vector<std::string> sources, opened;
        for (const auto& mnt : cfg.value("mounts", json::array())) {
          if (!mnt.is_object() || !mnt.contains("source") || !mnt["source"].is_string()) continue;
          std::string src = mnt["source"];
          auto mo = oci::parse_mount_options(oci::mount_options(mnt));
          bool bind = mnt.value("type", "") == "bind" || (mo.flags & MS_BIND);
          if (bind && !src.empty() && src[0] == '/' &&
              std::find(sources.begin(), sources.end(), src) == sources.end())
            sources.push_back(src);
        }
        auto fds = userns::attach_and_open(init_pid_, tree.get(), s_.rootfs, sources, &opened);
        std::vector<int> raw;
        for (const auto& f : fds) raw.push_back(f.get());
        sync::send(sock_.get(), {{"type", "idmap-ok"}, {"sources", opened}}, raw);
      } else if (type == "init") {
        init_pid_ = (*m)["pid"];
        int st;
        ::waitpid(stage1, &st, 0);
        stage1_ = -1;
        // The network exists before any of the container's code runs (and
        // before the hooks): lo up, the proxy and DNS stub listening inside
        // its namespace. Made while the init prepares its rootfs.
        sync::send(sock_.get(), {{"type", "init-ok"}});
        start_network();
      } else if (type == "hooks") {
        // prestart (deprecated) gets "created", as runc and the runtime-tools
        // suite expect; createRuntime runs during create: "creating".
        hooks::run(cfg, "prestart", hook_state(s_, "created", init_pid_));
        hooks::run(cfg, "createRuntime", hook_state(s_, "creating", init_pid_));
        sync::send(sock_.get(), {{"type", "hooks-ok"}, {"pid", init_pid_}});
      } else if (type == "seccomp") {
        on_seccomp_listeners(m->value("kinds", json::array()), std::move(fds));
      } else if (type == "ready") {
        // The rootfs is prepared and the init waits on the exec FIFO. The
        // "before" filesystem roots are taken at the end of setup, after
        // `create` has been answered (see there).
        break;
      } else {
        throw Error("unexpected message from container init: " + type);
      }
    }
    ctl_ = listen_control(s_.state_dir + "/supervisor.sock");
    init_start_ = state::process_start_time(init_pid_);
    sync::send(
        s_.cli_sock.get(),
        {{"type", "created"}, {"init_pid", init_pid_}, {"init_start", init_start_}, {"cgroup", cg_->save()}});
    s_.cli_sock.reset();
    s_.console_sock.reset();
    s_.exec_fifo.reset();
    s_.state_dirfd.reset();
    // The container has its own stdio; ours must not keep the caller's pipes open.
    int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull >= 0) {
      for (int fd = 0; fd < 3; fd++) ::dup2(devnull, fd);
      ::close(devnull);
    }
    close_inherited();
    // The "before" filesystem roots, now: after `create` returned (the walk
    // overlaps the caller's next step) and before any of the container's
    // code runs. `start` asks us ("start-gate") before it opens the exec
    // FIFO, and we answer only from the main loop, after this walk.
    if (record_) record_->snapshot_before(tracked_trees());
  }

  std::vector<int> inherited_fds() const {
    std::vector<int> keep = {log::fd(),          s_.cli_sock.get(),    s_.console_sock.get(),
                             s_.exec_fifo.get(), s_.state_dirfd.get(), sentinel_sock_.get()};
    std::vector<int> out;
    if (DIR* d = ::opendir("/proc/self/fd")) {
      while (struct dirent* e = ::readdir(d)) {
        auto n = parse_int(e->d_name);
        if (!n || *n < 3 || *n == ::dirfd(d)) continue;
        if (std::find(keep.begin(), keep.end(), static_cast<int>(*n)) == keep.end())
          out.push_back(static_cast<int>(*n));
      }
      ::closedir(d);
    }
    return out;
  }

  void close_inherited() {
    for (int fd : inherited_) ::close(fd);
    inherited_.clear();
  }

  // Strings in network events come from the container (host names,
  // requests): every one is carried as a pct string.
  static json pct_strings(json j) {
    if (j.is_string()) return attest::pct_encode(j.get<std::string>());
    if (j.is_array() || j.is_object())
      for (auto& v : j) v = pct_strings(std::move(v));
    return j;
  }

  void start_network() {
    const json& cfg = s_.config;
    // No network namespace at all is the host's network: the policy layer
    // refuses that; nothing here would contain it, so nothing is served.
    if (!oci::has_namespace(cfg, "network")) return;
    auto opts = network::Options::from_policy(s_.policy);
    net_ = std::make_unique<network::ContainerNetwork>(init_pid_, oci::has_new_namespace(cfg, "network"),
                                                       opts, [this](const std::string& type, json data) {
                                                         if (record_)
                                                           record_->event(type, pct_strings(std::move(data)));
                                                       });
  }

  // The policy's exec time limit, counted from `start`.
  int poll_timeout_ms() {
    if (deadline_ == std::chrono::steady_clock::time_point{}) return -1;
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - std::chrono::steady_clock::now())
            .count();
    return left <= 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
  }

  void enforce_time_limit() {
    if (deadline_ == std::chrono::steady_clock::time_point{} || time_limit_hit_) return;
    if (std::chrono::steady_clock::now() < deadline_) return;
    time_limit_hit_ = true;
    long long limit = s_.policy.value("exec_time_limit_s", 0LL);
    log::warn("container " + s_.id + " reached the policy's exec time limit (" + std::to_string(limit) +
              " s); killing it");
    if (record_)
      record_->event("run.time_limit", {{"limit_s", limit}, {"action", "SIGKILL to every process"}});
    try {
      if (cg_) {
        for (pid_t p : cg_->pids())
          if (p != sentinel_) ::kill(p, SIGKILL);
        if (cg_->frozen()) cg_->thaw();  // a frozen process dies only once thawed
      }
    } catch (const std::exception& e) {
      log::warn(std::string("time limit: ") + e.what());
    }
    if (init_pid_ > 0) ::kill(init_pid_, SIGKILL);
  }

  int loop() {
    while (!exit_.exited) {
      struct pollfd fds[3] = {{sigfd_.get(), POLLIN, 0}, {ctl_.get(), POLLIN, 0}, {sock_.get(), POLLIN, 0}};
      int n = ::poll(fds, sock_ ? 3 : 2, poll_timeout_ms());
      enforce_time_limit();
      if (n < 0) {
        if (errno == EINTR) continue;
        throw_errno("poll (supervisor)");
      }
      if (fds[0].revents & POLLIN) handle_signals();
      if (fds[1].revents & POLLIN) handle_control();
      if (sock_ && (fds[2].revents & (POLLIN | POLLHUP))) handle_init_message();
    }
    return finish();
  }

  void handle_signals() {
    struct signalfd_siginfo si {};
    while (::read(sigfd_.get(), &si, sizeof si) == sizeof si) {
      int sig = static_cast<int>(si.ssi_signo);
      if (sig == SIGCHLD) {
        reap();
      } else if (sig != SIGPIPE && init_pid_ > 0) {
        ::kill(init_pid_, sig);
        if (record_)
          record_->event("signal", {{"signal", oci::signal_name(sig)},
                                    {"source", "forwarded by the supervisor"},
                                    {"sender_pid", static_cast<int64_t>(si.ssi_pid)}});
      }
    }
  }

  void reap() {
    for (;;) {
      int status = 0;
      struct rusage ru {};
      pid_t p = ::wait4(-1, &status, WNOHANG, &ru);
      if (p <= 0) break;
      if (p == init_pid_) {
        exit_.exited = true;
        exit_.ru = ru;
        if (WIFEXITED(status)) exit_.code = WEXITSTATUS(status);
        if (WIFSIGNALED(status)) {
          exit_.signal = WTERMSIG(status);
          exit_.code = 128 + exit_.signal;
        }
      }
    }
  }

  void handle_init_message() {
    std::vector<UniqueFd> fds;
    std::optional<json> m;
    try {
      m = sync::recv(sock_.get(), &fds);
    } catch (const std::exception& e) {
      log::warn(std::string("container init: ") + e.what());
    }
    if (!m) {
      sock_.reset();  // the init exec'd (CLOEXEC) or died
      return;
    }
    std::string type = m->value("type", "");
    if (type == "error") {
      log::error("container init: " + m->value("msg", ""));
    } else if (type == "seccomp") {
      on_seccomp_listeners(m->value("kinds", json::array()), std::move(fds));
    }
  }

  void on_seccomp_listeners(const json& kinds, std::vector<UniqueFd> fds) {
    const json& cfg = s_.config;
    for (std::size_t i = 0; i < fds.size() && i < kinds.size(); ++i) {
      if (kinds[i] == "exec") {
        if (record_) {
          observer_ = std::make_unique<observer::ExecObserver>(
              std::move(fds[i]), s_.rootfs,
              [this](const std::string& type, json data) {
                if (type == "process.exec" && entrypoint_.empty()) entrypoint_ = data;
                record_->event(type, std::move(data));
              },
              record_->hash_cache());
        }
      } else if (cfg.contains("linux") && cfg["linux"].contains("seccomp") &&
                 cfg["linux"]["seccomp"].is_object()) {
        std::string path = cfg["linux"]["seccomp"].value("listenerPath", "");
        if (!path.empty())
          send_to_listener(path, fds[i].get(), cfg["linux"]["seccomp"].value("listenerMetadata", ""));
      }
    }
  }

  void send_to_listener(const std::string& path, int fd, const std::string& metadata) {
    UniqueFd c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    struct sockaddr_un addr {};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    if (::connect(c.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
      log::error("seccomp listenerPath " + path + ": connect: " + std::strerror(errno));
      return;
    }
    json st = {{"ociVersion", oci::kOciVersion},
               {"fds", json::array({"seccompFd"})},
               {"pid", init_pid_},
               {"metadata", metadata},
               {"state", hook_state(s_, "running", init_pid_)}};
    int fds[1] = {fd};
    try {
      send_fds(c.get(), st.dump(), fds, 1);
    } catch (const std::exception& e) {
      log::error(std::string("seccomp listenerPath ") + path + ": " + e.what());
    }
  }

  void handle_control() {
    for (;;) {
      UniqueFd c(::accept4(ctl_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!c) return;
      struct timeval tv {
        1, 0
      };
      ::setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      std::string buf;
      char tmp[4096];
      while (buf.size() < 1 << 20 && buf.find('\n') == std::string::npos) {
        ssize_t r = ::read(c.get(), tmp, sizeof tmp);
        if (r <= 0) break;
        buf.append(tmp, static_cast<std::size_t>(r));
      }
      json reply = {{"ok", true}};
      try {
        json msg = json::parse(buf.substr(0, buf.find('\n')));
        on_control(msg);
      } catch (const std::exception& e) {
        reply = {{"ok", false}, {"error", e.what()}};
      }
      std::string out = reply.dump() + "\n";
      ssize_t w = ::send(c.get(), out.data(), out.size(), MSG_NOSIGNAL);
      (void)w;
      c.reset();
      if (sync_after_reply_ && record_) {
        sync_after_reply_ = false;
        record_->sync();
      }
    }
  }

  void on_control(const json& msg) {
    std::string type = msg.value("type", "");
    log::debug("supervisor: control message " + type);
    if (type == "started") {
      long long limit = s_.policy.value("exec_time_limit_s", 0LL);
      if (limit > 0 && deadline_ == std::chrono::steady_clock::time_point{})
        deadline_ = std::chrono::steady_clock::now() + std::chrono::seconds(limit);
    }
    if (type == "start-gate") return;  // answered from the loop: the before-walk is done
    if (!record_) return;
    if (type == "started") {
      record_->event("run.started", {{"init_pid", init_pid_}});
      sync_after_reply_ = true;  // `start` need not wait for the fsync
    } else if (type == "exec") {
      json args = json::array();
      for (const auto& a : msg.value("args", json::array()))
        args.push_back(attest::pct_encode(a.get<std::string>()));
      record_->event("caller.exec", {{"pid", msg.value("pid", 0)},
                                     {"args", args},
                                     {"cwd", attest::pct_encode(msg.value("cwd", "/"))},
                                     {"terminal", msg.value("terminal", false)},
                                     {"user", msg.value("user", json::object())},
                                     {"policy_decisions", msg.value("policy_decisions", json::array())}});
    } else if (type == "kill") {
      record_->event(
          "signal",
          {{"signal", msg.value("signal", "")}, {"all", msg.value("all", false)}, {"source", "caller"}});
    } else if (type == "paused" || type == "resumed") {
      record_->event("run." + type, json::object());
    } else if (type == "updated") {
      record_->event(
          "run.updated",
          {{"resources_sha256", attest::hex(attest::sha256(msg.value("resources", json::object()).dump()))},
           {"policy_decisions", msg.value("policy_decisions", json::array())}});
    } else {
      record_->event("caller." + attest::pct_encode(type), json::object());
    }
  }

  // ---- the record of the run ----
  static std::string digest_of(const json& j) {
    try {
      return attest::hex(attest::sha256(attest::canonical(j)));
    } catch (const std::exception&) {
      return attest::hex(attest::sha256(j.dump()));  // floats in a config: hash its JSON text
    }
  }

  json sandbox_summary() const {
    const json& cfg = s_.config;
    json ns = json::array();
    for (const auto& n : oci::namespaces(cfg)) ns.push_back(n.path.empty() ? n.type : n.type + " (joined)");
    const json& p = cfg["process"];
    json caps =
        p.contains("capabilities") ? p["capabilities"].value("bounding", json::array()) : json::array();
    json res = cfg.contains("linux") ? cfg["linux"].value("resources", json::object()) : json::object();
    res.erase("devices");
    return {
        {"namespaces", ns},
        {"capabilities", caps},
        {"no_new_privileges", p.value("noNewPrivileges", false)},
        {"user", p.value("user", json::object())},
        {"readonly_root", cfg.contains("root") && cfg["root"].value("readonly", false)},
        {"seccomp",
         {{"config_profile",
           cfg.contains("linux") && cfg["linux"].contains("seccomp") && !cfg["linux"]["seccomp"].is_null()},
          {"agentshim_profile", !s_.extra_seccomp.is_null() && !s_.extra_seccomp.empty()},
          {"exec_observer", s_.observe_exec}}},
        {"masked_paths", cfg.contains("linux") ? cfg["linux"].value("maskedPaths", json::array()).size() : 0},
        {"resources", res}};
  }

  void start_record() {
    if (s_.audit_dir.empty()) return;
    attest::RecordConfig rc;
    rc.audit_dir = s_.audit_dir;
    rc.run_id = s_.run_id;
    rc.container_id = s_.id;
    const json& audit = s_.policy.value("audit", json::object());
    rc.key_path = audit.value("signing_key", "");
    rc.key_type = attest::parse_key_type(audit.value("key_type", "ed25519"));
    rc.hash_cache = !audit.value("strict", false);
    rc.max_file_bytes = audit.value("max_file_bytes", attest::kDefaultMaxFileBytes);
    bool stop = audit.value("on_log_failure", "stop") == "stop";
    rc.on_log_failure = [this, stop](const std::string& msg) {
      log::error(msg + (stop ? "; stopping the container (policy audit.on_log_failure=stop)"
                             : "; continuing, run marked incomplete"));
      if (stop && init_pid_ > 0) ::kill(init_pid_, SIGKILL);
    };
    record_ = std::make_unique<attest::RunRecord>(rc);
    json args = json::array();
    for (const auto& a : s_.config["process"].value("args", json::array()))
      args.push_back(attest::pct_encode(a.get<std::string>()));
    record_->event("run.created", {{"run_id", s_.run_id},
                                   {"container_id", s_.id},
                                   {"bundle", attest::pct_encode(s_.bundle)},
                                   {"config_given_sha256",
                                    digest_of(s_.caller_config.is_null() ? s_.config : s_.caller_config)},
                                   {"config_enforced_sha256", digest_of(s_.config)},
                                   {"process",
                                    {{"args", args},
                                     {"cwd", attest::pct_encode(s_.config["process"].value("cwd", "/"))},
                                     {"user", s_.config["process"].value("user", json::object())}}},
                                   {"policy_decisions", s_.policy.value("decisions", json::array())},
                                   {"sandbox", sandbox_summary()},
                                   {"runtime", {{"name", "agentshim"}, {"version", AGENTSHIM_VERSION}}}});
  }

  std::vector<attest::TrackedTree> tracked_trees() const {
    std::vector<attest::TrackedTree> out;
    out.push_back({"rootfs", s_.rootfs, {}});
    const json& cfg = s_.config;
    if (cfg.contains("mounts") && cfg["mounts"].is_array())
      for (const auto& m : cfg["mounts"]) {
        auto opts = m.value("options", std::vector<std::string>{});
        bool bind = m.value("type", "") == "bind" ||
                    std::find(opts.begin(), opts.end(), "bind") != opts.end() ||
                    std::find(opts.begin(), opts.end(), "rbind") != opts.end();
        bool ro = std::find(opts.begin(), opts.end(), "ro") != opts.end();
        std::string src = m.value("source", "");
        struct stat st {};
        if (!bind || ro || src.empty() || src[0] != '/' || ::stat(src.c_str(), &st) < 0 ||
            !S_ISDIR(st.st_mode))
          continue;
        out.push_back({m.value("destination", src), src, {}});
      }
    return out;
  }

  // The runtime's own binary digest, hashed once per binary: cached under
  // the audit directory, keyed on the file's identity (device, inode, size,
  // mtime, ctime), so a replaced binary is always re-hashed.
  json runtime_identity() const {
    json r = {{"name", "agentshim"}, {"version", AGENTSHIM_VERSION}};
    try {
      UniqueFd fd(::open("/proc/self/exe", O_RDONLY | O_CLOEXEC));
      if (!fd) throw_errno("open /proc/self/exe");
      struct stat st {};
      if (::fstat(fd.get(), &st) < 0) throw_errno("stat /proc/self/exe");
      json key = {{"dev", static_cast<uint64_t>(st.st_dev)},
                  {"ino", static_cast<uint64_t>(st.st_ino)},
                  {"size", static_cast<int64_t>(st.st_size)},
                  {"mtime_ns", static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec},
                  {"ctime_ns", static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000LL + st.st_ctim.tv_nsec}};
      std::string cache = s_.audit_dir + "/cache/runtime-binary.json";
      if (auto c = try_read_file(cache)) {
        try {
          json cj = json::parse(*c);
          if (cj.value("key", json()) == key && cj.value("sha256", "").size() == 64) {
            r["binary_sha256"] = cj["sha256"];
            return r;
          }
        } catch (const std::exception&) {
        }
      }
      attest::Sha256 h;
      std::vector<char> buf(1 << 20);
      for (;;) {
        ssize_t n = ::read(fd.get(), buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw_errno("read /proc/self/exe");
        if (n == 0) break;
        h.update(buf.data(), static_cast<std::size_t>(n));
      }
      r["binary_sha256"] = attest::hex(h.finish());
      mkdir_p(s_.audit_dir + "/cache", 0700);
      write_file_atomic(cache, json{{"key", key}, {"sha256", r["binary_sha256"]}}.dump(), 0600);
    } catch (const std::exception& e) {
      log::warn(std::string("runtime binary digest: ") + e.what());
    }
    return r;
  }

  // The exit, durable in the log, before anyone is told the container is
  // gone.
  void record_exit(const json& ex) {
    if (!record_) return;
    try {
      if (ex.value("oom_kills", 0) > 0) record_->event("oom", {{"kills", ex["oom_kills"]}});
      record_->event("run.exit", ex);
      record_->sync();
    } catch (const std::exception& e) {
      log::error(std::string("recording the exit: ") + e.what());
    }
  }

  // The container's status is known and recorded: the sentinel (the pid
  // clients wait on) exits with it now, so `docker run`, containerd and
  // `delete` do not wait for the after-run walk and the signing. We stop
  // dying with the sentinel first, and finish the record on our own; readers
  // of the record wait for it (attest::wait_finalized).
  void release_sentinel(int code) {
    if (sentinel_ <= 0) return;
    if (prctl(PR_SET_PDEATHSIG, 0) < 0) return;  // keep the old order: the sentinel waits for us
    union sigval v {};
    v.sival_int = code & 0xff;
    if (::sigqueue(sentinel_, kReleaseSignal, v) == 0) sentinel_ = -1;
  }

  // After release_sentinel(): the after-run walk, then the signed record.
  void finish_record(const json& ex) {
    if (!record_) return;
    try {
      if (observer_) {
        observer_->stop();
        observer_.reset();
      }
      log::debug("supervisor: run.exit recorded; after-run filesystem walk");
      record_->snapshot_after();
      log::debug("supervisor: after-run walk done; signing");
      json facts = {{"runtime", runtime_identity()},
                    {"config",
                     {{"given_sha256", digest_of(s_.caller_config.is_null() ? s_.config : s_.caller_config)},
                      {"enforced_sha256", digest_of(s_.config)}}},
                    {"sandbox", sandbox_summary()},
                    {"policy_decisions", s_.policy.value("decisions", json::array())},
                    {"entrypoint", entrypoint_},
                    {"exit", ex},
                    {"network", network_totals_},
                    {"timing", {{"created", s_.created}, {"finished", attest::rfc3339_now()}}}};
      json row = record_->finalize(facts);
      log::debug("run " + s_.run_id + " finalized at ledger index " + std::to_string(row.value("index", 0)));
    } catch (const std::exception& e) {
      log::error(std::string("finalizing the run record: ") + e.what());
    }
  }

  int finish() {
    log::debug("supervisor: container exited; finishing");
    if (net_) {
      net_->stop();
      network_totals_ = net_->totals();
      net_.reset();
    }
    json ex = {{"exit_code", exit_.code},
               {"signal", exit_.signal},
               {"oom_kills", cg_ ? cg_->oom_kill_count() : 0},
               {"rusage",
                {{"utime_us", exit_.ru.ru_utime.tv_sec * 1000000LL + exit_.ru.ru_utime.tv_usec},
                 {"stime_us", exit_.ru.ru_stime.tv_sec * 1000000LL + exit_.ru.ru_stime.tv_usec},
                 {"maxrss_kb", exit_.ru.ru_maxrss}}}};
    if (time_limit_hit_) ex["reason"] = "exec time limit";
    json exit_event = {{"code", exit_.code},
                       {"reason", time_limit_hit_ ? "exec time limit" : ""},
                       {"signal", exit_.signal ? oci::signal_name(exit_.signal) : ""},
                       {"oom_kills", ex["oom_kills"]},
                       {"rusage", ex["rusage"]}};
    record_exit(exit_event);
    ex["run_id"] = s_.run_id;
    try {
      write_file_atomic(s_.state_dir + "/exit.json", ex.dump(), 0600, false);
    } catch (const std::exception& e) {
      log::warn(std::string("write exit status: ") + e.what());
    }
    cg_.reset();  // the container's cgroup is delete's from now on
    release_sentinel(exit_.code);
    finish_record(exit_event);
    ctl_.reset();
    ::unlink((s_.state_dir + "/supervisor.sock").c_str());
    return exit_.code;
  }

  Setup& s_;
  UniqueFd sigfd_, sock_, ctl_;
  std::unique_ptr<cgroups::Manager> cg_;
  pid_t stage1_ = -1;
  pid_t init_pid_ = 0;
  unsigned long long init_start_ = 0;
  Exit exit_;
  std::unique_ptr<attest::RunRecord> record_;
  std::unique_ptr<observer::ExecObserver> observer_;
  json entrypoint_ = json::object();
  json network_totals_ = {
      {"mode", "none"}, {"allowed", 0}, {"denied", 0}, {"bytes_up", 0}, {"bytes_down", 0}};
  std::unique_ptr<network::ContainerNetwork> net_;
  std::vector<int> inherited_;
  std::chrono::steady_clock::time_point deadline_{};
  bool time_limit_hit_ = false;
  bool sync_after_reply_ = false;
  pid_t sentinel_;
  UniqueFd sentinel_sock_;  // until the sentinel has joined the container's cgroup
  bool in_container_cgroup_ = false;
};

// The sentinel moves itself into the container's cgroup when the supervisor
// has made it (a process moving itself joins v1 hierarchies without a grace
// period; see cgroups::Manager::join_self). A supervisor that fails first
// just closes the socket.
void sentinel_join_cgroup(int sock) {
  std::optional<json> m;
  try {
    m = sync::recv(sock);
  } catch (...) {
    return;
  }
  if (!m || m->value("type", "") != "join") return;
  json reply = {{"type", "joined"}};
  try {
    auto cg = cgroups::Manager::load((*m)["cgroup"]);
    cg->join_self(cg->v2_only());
  } catch (const std::exception& e) {
    reply = {{"type", "error"}, {"msg", e.what()}};
  }
  try {
    sync::send(sock, reply);
  } catch (...) {
  }
}

// The sentinel: the process `create` forked, whose pid goes to --pid-file.
// It joins the container's cgroup (so a client reading stats and OOM events
// through that pid finds the container's), stays single-threaded and tiny,
// forwards every signal it gets to the supervisor, and exits with the
// supervisor's status — which is the container's. The supervisor is its
// only child and dies with it (PDEATHSIG), taking the container with it.
[[noreturn]] void sentinel_main(pid_t worker) {
  prctl(PR_SET_NAME, "agentshim-run");
  int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull >= 0) {
    for (int fd = 0; fd < 3; fd++) ::dup2(devnull, fd);
    ::close(devnull);
  }
  ::syscall(SYS_close_range, 3, ~0U, 0);
  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, nullptr);
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(worker, &status, WNOHANG);
    if (r < 0 && errno == ECHILD) ::_exit(1);
    if (r == worker) {
      if (WIFEXITED(status)) ::_exit(WEXITSTATUS(status));
      ::_exit(128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0));
    }
    siginfo_t si{};
    struct timespec ts {
      1, 0
    };
    int sig = ::sigtimedwait(&all, &si, &ts);
    if (sig <= 0 || sig == SIGCHLD) continue;
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    // The supervisor, done with the container: its status, now (the record
    // is finished afterwards; see Supervisor::release_sentinel).
    if (sig == kReleaseSignal && si.si_code == SI_QUEUE && si.si_pid == worker)
      ::_exit(si.si_value.sival_int & 0xff);
    ::kill(worker, sig);
  }
}

}  // namespace

void main(Setup s) {
  process::set_oom_score_adj(0, -1000);
  ::signal(SIGCHLD, SIG_DFL);  // a caller that ignores SIGCHLD must not make us lose the status
  pid_t sentinel = ::getpid();
  auto join = make_socketpair(SOCK_SEQPACKET);
  pid_t worker = ::fork();
  if (worker < 0) {
    log::error(std::string("fork supervisor: ") + std::strerror(errno));
    ::_exit(1);
  }
  if (worker == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != sentinel) ::_exit(1);
    join.second.reset();
    Supervisor sup(s, sentinel, std::move(join.first));
    sup.run();
  }
  join.first.reset();
  // The supervisor owns every descriptor of the setup; the sentinel keeps none.
  s.cli_sock.reset();
  s.console_sock.reset();
  s.exec_fifo.reset();
  s.state_dirfd.reset();
  sentinel_join_cgroup(join.second.get());
  join.second.reset();
  sentinel_main(worker);
}

json notify(const std::string& state_dir, const json& msg, bool wait_reply, int reply_timeout_s) {
  std::string path = state_dir + "/supervisor.sock";
  UniqueFd c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return {{"ok", false}, {"error", "socket path too long"}};
  std::strcpy(addr.sun_path, path.c_str());
  if (!c || ::connect(c.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    log::debug("supervisor not reachable at " + path + ": " + std::strerror(errno));
    return {{"ok", false}, {"error", std::strerror(errno)}};
  }
  struct timeval tv {
    reply_timeout_s, 0
  };
  if (reply_timeout_s > 0) ::setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string out = msg.dump() + "\n";
  if (::send(c.get(), out.data(), out.size(), MSG_NOSIGNAL) < 0)
    return {{"ok", false}, {"error", "send failed"}};
  if (!wait_reply) return {{"ok", true}, {"queued", true}};
  std::string buf;
  char tmp[4096];
  while (buf.find('\n') == std::string::npos) {
    ssize_t r = ::read(c.get(), tmp, sizeof tmp);
    if (r <= 0) break;
    buf.append(tmp, static_cast<std::size_t>(r));
  }
  try {
    return json::parse(buf.substr(0, buf.find('\n')));
  } catch (...) {
    return {{"ok", false}, {"error", "no reply"}};
  }
}

}  // namespace agentshim::supervisor
