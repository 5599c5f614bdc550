#include "sandbox/supervisor.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
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
#include <cstdio>
#include <cstdlib>
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
#include "sandbox/control.h"
#include "sandbox/exec_observer.h"
#include "sandbox/fanotify_write.h"
#include "sandbox/hooks.h"
#include "sandbox/network.h"
#include "sandbox/oci.h"
#include "sandbox/process.h"
#include "sandbox/rootfs.h"
#include "sandbox/sentinel.h"
#include "sandbox/stage1.h"
#include "sandbox/state.h"
#include "sandbox/sync.h"
#include "sandbox/userns.h"

namespace agentshim::supervisor {
namespace {

using sentinel::kReleaseSignal;
using setup::hook_state;
using json = nlohmann::json;
using setup::Setup;

const int kForwarded[] = {SIGTERM, SIGINT,  SIGHUP,  SIGQUIT, SIGUSR1, SIGUSR2,   SIGWINCH, SIGCONT, SIGALRM,
                          SIGTSTP, SIGTTIN, SIGTTOU, SIGPWR,  SIGURG,  SIGVTALRM, SIGPROF,  SIGXCPU, SIGXFSZ};

sigset_t handled_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  sigaddset(&set, SIGPIPE);
  sigaddset(&set, sentinel::kSentinelLostSignal);
  for (int s : kForwarded) sigaddset(&set, s);
  return set;
}

void write_id_map(pid_t pid, const std::vector<oci::IdMapping>& maps, const char* key, const char* file) {
  if (maps.empty()) return;
  std::string data;
  for (const auto& m : maps)
    data += std::to_string(m.container_id) + " " + std::to_string(m.host_id) + " " + std::to_string(m.size) +
            "\n";
  std::string path = "/proc/" + std::to_string(pid) + "/" + file;
  try {
    write_file(path, data);
  } catch (const SysError& e) {
    throw Error(std::string("linux.") + key + ": " + e.what());
  }
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
        sync::send(s_.cli_sock.get(), sync::Failure{msg});
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
    sync::send(sentinel_sock_.get(), sync::Join{cg_->save()});
    auto m = sync::recv(sentinel_sock_.get());
    if (!m) throw Error("the sentinel exited while joining the container's cgroup");
    in_container_cgroup_ = true;  // (in part, perhaps: undone on failure either way)
    if (!std::holds_alternative<sync::Joined>(*m)) {
      const auto* f = std::get_if<sync::Failure>(&*m);
      throw Error("sentinel: joining the container's cgroup: " +
                  (f ? f->msg : std::string("unexpected \"") + sync::name(sync::type_of(*m)) + "\""));
    }
  }

  // The sentinel enters the init's namespaces (sentinel.cpp): after this,
  // /proc/<--pid-file pid>/ns/{user,mnt,net,ipc,uts,cgroup} are the
  // container's. Done once the init has made every namespace and waits on
  // the exec FIFO, before `create` answers.
  void sentinel_enters_namespaces() {
    if (!sentinel_sock_) throw Error("the sentinel cannot be reached to enter the container's namespaces");
    UniqueFd sock = std::move(sentinel_sock_);
    sync::send(sock.get(), sync::Enter{init_pid_});
    auto m = sync::recv(sock.get());
    if (!m) throw Error("the sentinel exited while entering the container's namespaces");
    if (!std::holds_alternative<sync::Entered>(*m)) {
      const auto* f = std::get_if<sync::Failure>(&*m);
      throw Error("sentinel: entering the container's namespaces: " +
                  (f ? f->msg : std::string("unexpected \"") + sync::name(sync::type_of(*m)) + "\""));
    }
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
    process::Finalize fin;
    if (const json* sc = s_.spec.seccomp()) fin.seccomp.push_back(*sc);
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

    const oci::Spec& spec = s_.spec;
    // The seccomp filters compile (libseccomp, a few milliseconds of CPU) on
    // a second thread while this one starts the record and makes the cgroup;
    // joined before stage1 is forked (the init inherits the programs, and no
    // other thread of ours may hold a lock across that fork).
    // (An std::async future waits for its thread when destroyed, so an
    // error here leaves no thread running either.)
    auto compiled = std::async(std::launch::async, [this] { prepare_seccomp(); });
    start_record();
    const std::string& cgpath = spec.linux.cgroups_path;
    // (The systemd driver starts its scope with the sentinel in it, as runc
    // names its init: from here on it is to be moved out on failure.)
    cg_ = cgroups::Manager::create(cgpath, s_.id, s_.systemd_cgroup, sentinel_);
    in_container_cgroup_ = s_.systemd_cgroup;
    oci::Resources resources = spec.linux.resources;
    resources.devices = cgroups::effective_device_rules(spec);
    cg_->set(resources);
    // The pid --pid-file names is the sentinel (see main()), and the runc
    // v2 shim (containerd, Docker, Kubernetes) reads stats and OOM events
    // from that pid's cgroup: the sentinel joins the container's cgroup. We
    // (threads, proxy buffers, hashing) stay outside it.
    sentinel_joins_container_cgroup();
    s_.cgroup_mounts.clear();
    for (const auto& h : cg_->hierarchies())
      s_.cgroup_mounts.push_back({h.mountpoint_name, h.fstype, h.options, h.host_path});
    // In a new user namespace the container's root is not host root: hand
    // it the stdio pipes (as runc does), so /proc/self/fd/N reopens work.
    if (spec.has_new_namespace("user"))
      if (auto u = oci::root_ids(spec.linux.uid_mappings), gm = oci::root_ids(spec.linux.gid_mappings);
          u && gm)
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
      sentinel_sock_.reset();
      // stage1 joins the v1 hierarchies itself (no grace period) and creates
      // the init in the v2 one (see cgroups::Manager::join_for_clone).
      cgroups::CloneTarget target;
      try {
        target = cg_->join_for_clone(spec.has_namespace("user"));
      } catch (const std::exception& e) {
        try {
          sync::send(pair.second.get(), sync::Failure{e.what()});
        } catch (...) {
        }
        ::_exit(1);
      }
      stage1::run(s_, pair.second.get(), target);
    }
    pair.second.reset();
    const std::string eof = "container init exited during setup (see the log for details)";
    for (;;) {
      std::vector<UniqueFd> fds;
      auto m = sync::recv(sock_.get(), &fds);
      if (!m) throw Error(eof);
      if (const auto* f = std::get_if<sync::Failure>(&*m)) throw Error(f->msg);
      if (const auto* u = std::get_if<sync::Userns>(&*m)) {
        pid_t p = u->pid;
        // setgroups stays allowed: only an unprivileged mapper must deny it; we are root.
        write_id_map(p, s_.spec.linux.uid_mappings, "uidMappings", "uid_map");
        write_id_map(p, s_.spec.linux.gid_mappings, "gidMappings", "gid_map");
        sync::send(sock_.get(), sync::UsernsOk{});
      } else if (std::holds_alternative<sync::Idmap>(*m)) {
        // userns "auto": an idmapped, private copy of the rootfs made here
        // (mount_setattr needs host privilege), attached inside the init's
        // mount namespace by a helper running as host root, which also opens
        // the rootfs and every bind source there: the container's root
        // never has to reach host paths (Docker's are under root-only
        // directories). (The init's own getpid() is 1 in its pid namespace:
        // use the pid stage1 reported.)
        // With the config's own id maps (not "auto") only the bind sources
        // are opened so, as runc opens them as host root: the rootfs stays
        // reached by path (userns::check_reachable in create).
        if (init_pid_ <= 0) throw Error("container init asked for its rootfs before it was reported");
        if (!s_.attach_rootfs && !s_.spec.has_new_namespace("user"))
          throw Error("container init asked for its bind sources without a new user namespace");
        UniqueFd tree;
        if (s_.attach_rootfs) tree = userns::idmapped_tree(s_.rootfs, init_pid_, s_.idmap_rootfs);
        std::vector<std::string> sources, opened;
        for (const auto& mnt : s_.spec.mounts)
          if (mnt.is_bind() && std::find(sources.begin(), sources.end(), mnt.source) == sources.end())
            sources.push_back(mnt.source);
        auto fds = userns::attach_and_open(init_pid_, tree ? tree.get() : -1, s_.rootfs, sources, &opened);
        std::vector<int> raw;
        for (const auto& f : fds) raw.push_back(f.get());
        sync::send(sock_.get(), sync::IdmapOk{opened, s_.attach_rootfs}, raw);
      } else if (const auto* i = std::get_if<sync::Init>(&*m)) {
        init_pid_ = i->pid;
        int st;
        ::waitpid(stage1, &st, 0);
        stage1_ = -1;
        // TLS interception: the run's CA is made here (after the init was
        // forked: its key is only ever in this process) and its bundle
        // written before the init mounts it.
        run_ca_ = network::prepare_run_ca(s_.policy.network, s_.rootfs, s_.id);
        // The network exists before any of the container's code runs (and
        // before the hooks): lo up, the proxy and DNS stub listening inside
        // its namespace. Made while the init prepares its rootfs.
        sync::send(sock_.get(), sync::InitOk{});
        start_network();
      } else if (std::holds_alternative<sync::Hooks>(*m)) {
        // prestart (deprecated) gets "created", as runc and the runtime-tools
        // suite expect; createRuntime runs during create: "creating".
        hooks::run(s_.spec, "prestart", hook_state(s_, "created", init_pid_));
        hooks::run(s_.spec, "createRuntime", hook_state(s_, "creating", init_pid_));
        sync::send(sock_.get(), sync::HooksOk{init_pid_});
      } else if (const auto* sc = std::get_if<sync::Seccomp>(&*m)) {
        on_seccomp_listeners(sc->kinds, std::move(fds));
      } else if (std::holds_alternative<sync::Ready>(*m)) {
        // The rootfs is prepared and the init waits on the exec FIFO. The
        // "before" filesystem roots are taken at the end of setup, after
        // `create` has been answered (see there).
        sentinel_enters_namespaces();
        break;
      } else {
        throw Error(std::string("unexpected message from container init: ") + sync::name(sync::type_of(*m)));
      }
    }
    ctl_ = std::make_unique<control::Server>(state::control_socket_in(s_.state_dir));
    init_start_ = state::process_start_time(init_pid_);
    sync::send(s_.cli_sock.get(), sync::Created{init_pid_, init_start_, cg_->save()});
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
    // FIFO, and we answer only from the main loop, after this walk. A tree
    // the container cannot change (a read-only root) is walked on a thread
    // while it runs (attest::RunRecord::snapshot_before).
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
    // No network namespace at all is the host's network: the policy layer
    // refuses that; nothing here would contain it, so nothing is served.
    if (!s_.spec.has_namespace("network")) return;
    network::Options opts = s_.policy.network;
    opts.run_ca = run_ca_;
    net_ = std::make_unique<network::ContainerNetwork>(
        init_pid_, s_.spec.has_new_namespace("network"), opts,
        [this](const std::string& type, json data) { route_network_event(type, std::move(data)); });
  }

  // A decision of the proxy this supervisor serves is recorded here, and,
  // when the kernel named another agentshim container's process behind the
  // connection (a pod's app or sidecar sharing this namespace; "origin",
  // sandbox/sockowner.h), also in that container's record, through its
  // supervisor's control socket ("net-event"). The state root only routes:
  // the record names the container by id.
  void route_network_event(const std::string& type, json data) {
    std::vector<std::string> others;  // state dirs of the other containers named
    if (auto it = data.find("origin"); it != data.end() && it->is_array()) {
      for (auto& h : *it) {
        std::string id = h.value("container", ""), root = h.value("root", "");
        h.erase("root");
        if (id.empty() || root.empty()) continue;
        std::string dir = state::container_dir(root, id);
        if (dir != s_.state_dir && std::find(others.begin(), others.end(), dir) == others.end())
          others.push_back(dir);
      }
    }
    data = pct_strings(std::move(data));
    if (record_) record_->event(type, data);
    if (type != "net.connection" && type != "net.credential") return;
    for (const auto& dir : others)
      control::notify(dir, control::NetEvent{type, data, s_.id}, /*wait_reply=*/false);
  }

  // Strings that should be pct strings already (a net-event's), made so
  // whatever they are: decoding then encoding again leaves a pct string as
  // it was and encodes anything else.
  static json repct_strings(json j) {
    if (j.is_string()) return attest::pct_encode(attest::pct_decode(j.get<std::string>()));
    if (j.is_array() || j.is_object())
      for (auto& v : j) v = repct_strings(std::move(v));
    return j;
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
    const long long limit = s_.policy.exec_time_limit_s;
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
      struct pollfd fds[3] = {{sigfd_.get(), POLLIN, 0}, {ctl_->fd(), POLLIN, 0}, {sock_.get(), POLLIN, 0}};
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
      } else if (sig == sentinel::kSentinelLostSignal) {
        if (sentinel_ > 0 && ::getppid() != sentinel_) sentinel_lost();
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
    std::optional<sync::Message> m;
    try {
      m = sync::recv(sock_.get(), &fds);
    } catch (const std::exception& e) {
      log::warn(std::string("container init: ") + e.what());
    }
    if (!m) {
      sock_.reset();  // the init exec'd (CLOEXEC) or died
      return;
    }
    if (const auto* f = std::get_if<sync::Failure>(&*m)) {
      log::error("container init: " + f->msg);
    } else if (const auto* sc = std::get_if<sync::Seccomp>(&*m)) {
      on_seccomp_listeners(sc->kinds, std::move(fds));
    } else {
      log::warn(std::string("container init: unexpected message \"") + sync::name(sync::type_of(*m)) + "\"");
    }
  }

  // The init's listeners (session "") and each exec session's: kind "exec"
  // is served by the one ExecObserver (an exec session's events tagged
  // with its id), kind "config" goes to linux.seccomp.listenerPath.
  void on_seccomp_listeners(const std::vector<std::string>& kinds, std::vector<UniqueFd> fds,
                            const std::string& session = "", pid_t pid = 0) {
    for (std::size_t i = 0; i < fds.size() && i < kinds.size(); ++i) {
      if (kinds[i] == "exec") {
        if (!record_) continue;
        if (!observer_) {
          observer_ = std::make_unique<observer::ExecObserver>(
              UniqueFd(), s_.rootfs,
              [this](const std::string& type, json data) {
                if (type == "process.exec" && entrypoint_.empty() && !data.contains("session"))
                  entrypoint_ = data;
                record_->event(type, std::move(data));
              },
              record_->hash_cache(), init_pid_);
          observer_->set_max_hash_bytes(record_->config().max_file_bytes);
        }
        json tag = session.empty() ? json::object() : json{{"session", session}};
        if (!observer_->add(std::move(fds[i]), std::move(tag)))
          throw Error("exec observer: no room for another listener (" +
                      std::to_string(observer::ExecObserver::kMaxListeners) + " at most)");
      } else if (s_.spec.seccomp()) {
        std::string path = s_.spec.linux.listener_path();
        if (!path.empty())
          send_to_listener(path, fds[i].get(), s_.spec.linux.listener_metadata(), pid > 0 ? pid : init_pid_);
      }
    }
  }

  void send_to_listener(const std::string& path, int fd, const std::string& metadata, pid_t pid) {
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
               {"pid", pid},
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
    ctl_->serve([this](const control::Message& m, std::vector<UniqueFd>& fds) { on_control(m, fds); },
                [this] {
                  if (sync_after_reply_ && record_) {
                    sync_after_reply_ = false;
                    record_->sync();
                  }
                });
  }

  void on_control(const control::Message& msg, std::vector<UniqueFd>& fds) {
    const std::string type = control::name(control::type_of(msg));
    log::debug("supervisor: control message " + type);
    if (std::holds_alternative<control::Started>(msg)) {
      const long long limit = s_.policy.exec_time_limit_s;
      if (limit > 0 && deadline_ == std::chrono::steady_clock::time_point{})
        deadline_ = std::chrono::steady_clock::now() + std::chrono::seconds(limit);
    }
    if (std::holds_alternative<control::StartGate>(msg)) {
      // Answered from the loop: the before-walk is done. run.started is
      // written now, before `start` releases the init, so it precedes the
      // init's first process.exec (after `start`'s later "started" it raced
      // the init, or was lost when the init was already gone).
      if (record_ && !run_started_) {
        run_started_ = true;
        record_->event("run.started", {{"init_pid", init_pid_}});
      }
      return;
    }
    if (const auto* o = std::get_if<control::ExecObserve>(&msg)) {
      // Only seccomp listeners, one per kind: anything else is refused
      // (the exec'd process's execve then fails: nothing runs unobserved).
      if (fds.size() != o->kinds.size())
        throw Error("exec-observe: " + std::to_string(fds.size()) + " descriptors for " +
                    std::to_string(o->kinds.size()) + " listeners");
      for (const auto& f : fds)
        if (!observer::is_seccomp_listener(f.get())) throw Error("exec-observe: not a seccomp listener");
      if (!record_) throw Error("exec-observe: this container has no record");
      on_seccomp_listeners(o->kinds, std::move(fds), o->session, o->pid);
      return;
    }
    if (!record_) return;
    if (std::holds_alternative<control::Started>(msg)) {
      sync_after_reply_ = true;  // run.started (at the gate) durable; `start` need not wait for the fsync
    } else if (const auto* e = std::get_if<control::Exec>(&msg)) {
      json args = json::array();
      for (const auto& a : e->args) args.push_back(attest::pct_encode(a));
      json ev = {{"pid", e->pid},           {"args", args},    {"cwd", attest::pct_encode(e->cwd)},
                 {"terminal", e->terminal}, {"user", e->user}, {"policy_decisions", e->policy_decisions}};
      if (!e->session.empty()) ev["session"] = e->session;
      record_->event("caller.exec", std::move(ev));
    } else if (const auto* k = std::get_if<control::Kill>(&msg)) {
      record_->event("signal", {{"signal", k->signal}, {"all", k->all}, {"source", "caller"}});
      // cgroup.kill takes the sentinel too on a unified host (see sentinel_lost).
      if (k->all && k->signal == "SIGKILL") kill_all_noted_ = true;
    } else if (std::holds_alternative<control::Paused>(msg) ||
               std::holds_alternative<control::Resumed>(msg)) {
      record_->event("run." + type, json::object());
    } else if (const auto* n = std::get_if<control::NetEvent>(&msg)) {
      // As the serving supervisor recorded it (pct strings there; made sure
      // of here: this side cannot tell who wrote the message).
      json d = repct_strings(n->data);
      d["served_by"] = attest::pct_encode(n->served_by);
      record_->event(n->event, std::move(d));
    } else if (const auto* u = std::get_if<control::Updated>(&msg)) {
      record_->event("run.updated", {{"resources_sha256", attest::hex(attest::sha256(u->resources.dump()))},
                                     {"policy_decisions", u->policy_decisions}});
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
    const oci::Spec& spec = s_.spec;
    json ns = json::array();
    for (const auto& n : spec.linux.namespaces) ns.push_back(n.path.empty() ? n.type : n.type + " (joined)");
    const oci::Process& p = spec.process;
    json caps = p.capabilities ? json(p.capabilities->bounding) : json::array();
    json res = oci::to_json(spec.linux.resources);
    res.erase("devices");
    return {{"namespaces", ns},
            {"capabilities", caps},
            {"no_new_privileges", p.no_new_privileges.value_or(false)},
            {"user", oci::user_json(p)},
            {"readonly_root", spec.root.readonly},
            {"seccomp",
             {{"config_profile", spec.seccomp() != nullptr},
              {"agentshim_profile", !s_.extra_seccomp.is_null() && !s_.extra_seccomp.empty()},
              {"exec_observer", s_.observe_exec}}},
            {"masked_paths", spec.linux.masked_paths.size()},
            {"resources", res}};
  }

  void start_record() {
    if (s_.audit_dir.empty()) return;
    attest::RecordConfig rc;
    rc.audit_dir = s_.audit_dir;
    rc.run_id = s_.run_id;
    rc.container_id = s_.id;
    const policy::AuditSettings& audit = s_.policy.audit;
    rc.key_path = audit.signing_key;
    rc.key_type = attest::parse_key_type(audit.key_type);
    rc.hash_cache = !audit.strict;
    rc.max_file_bytes = audit.max_file_bytes;
    rc.max_event_log_bytes = audit.max_event_log_bytes;
    rc.tsa_url = audit.tsa_url;
    rc.kubernetes = attest::kubernetes_identity(s_.spec.annotations);
    const bool stop = audit.stop_on_log_failure;
    rc.on_log_failure = [this, stop](const std::string& msg) {
      log::error(msg + (stop ? "; stopping the container (policy audit.on_log_failure=stop)"
                             : "; continuing, run marked incomplete"));
      if (stop && init_pid_ > 0) ::kill(init_pid_, SIGKILL);
    };
    record_ = std::make_unique<attest::RunRecord>(rc);
    json args = json::array();
    for (const auto& a : s_.spec.process.args) args.push_back(attest::pct_encode(a));
    record_->event("run.created", {{"run_id", s_.run_id},
                                   {"container_id", s_.id},
                                   {"bundle", attest::pct_encode(s_.bundle)},
                                   {"config_given_sha256",
                                    digest_of(s_.caller_config.is_null() ? s_.config : s_.caller_config)},
                                   {"config_enforced_sha256", digest_of(s_.config)},
                                   {"process",
                                    {{"args", args},
                                     {"cwd", attest::pct_encode(s_.spec.process.cwd_or_root())},
                                     {"user", oci::user_json(s_.spec.process)}}},
                                   {"policy_decisions", s_.policy.decisions},
                                   {"sandbox", sandbox_summary()},
                                   {"runtime", {{"name", "agentshim"}, {"version", AGENTSHIM_VERSION}}}});
  }

  // Why the container cannot change its root filesystem's tree (so its
  // after root is its before root, and its before walk need not delay
  // `start`), or "" when it can. Its "/" is remounted MS_RDONLY by the init
  // (rootfs::finish; root.readonly, which the default policy forces); only
  // CAP_SYS_ADMIN remounts it writable, so no process of the container may
  // hold it: not the init (every capability set of the enforced config)
  // and not a later `exec` (bounded by the policy's capabilities.allowed,
  // saved for exec in policy.json). A writable mount whose host source is
  // inside the root (or holds it) would write it anyway; --no-pivot leaves
  // the host's root under a chroot. Changes made by the host are outside
  // the threat model (docs/ARCHITECTURE.md).
  std::string readonly_root_reason() const {
    const oci::Spec& spec = s_.spec;
    if (!spec.root.readonly) return "";
    if (s_.no_pivot || !spec.has_new_namespace("mount")) return "";
    auto holds_admin = [](const std::vector<std::string>& names) {
      return std::ranges::any_of(
          names, [](const std::string& n) { return oci::capability_from_name(n) == CAP_SYS_ADMIN; });
    };
    if (const auto& c = spec.process.capabilities)
      for (const char* set : {"bounding", "effective", "inheritable", "permitted", "ambient"})
        if (holds_admin(*c->set(set))) return "";
    if (holds_admin(s_.policy.exec.capabilities_allowed)) return "";
    std::string root = real_path_or_empty(s_.rootfs);
    if (root.empty()) return "";
    auto aliases_root = [&root](const std::string& path) {
      if (path.empty() || path[0] != '/') return false;
      std::string r = real_path_or_empty(path);
      if (r.empty()) return true;  // cannot tell: assume it does
      return r == root || starts_with(r, root + "/") || r == "/" || starts_with(root, r + "/");
    };
    for (const auto& m : spec.mounts) {
      if (m.readonly()) continue;
      if (m.is_bind() && (m.source.empty() || m.source[0] != '/' || aliases_root(m.source))) return "";
      // A filesystem's path options (overlay upperdir=, lowerdir=a:b, ...).
      for (const auto& o : split(m.data, ','))
        if (auto eq = o.find('='); eq != std::string::npos)
          for (const auto& part : split(o.substr(eq + 1), ':'))
            if (aliases_root(part)) return "";
    }
    return "root.readonly: the container's / is mounted read-only (MS_RDONLY), none of its processes "
           "may hold CAP_SYS_ADMIN (config and policy capabilities.allowed), and no writable mount's "
           "source is inside it";
  }

  static std::string real_path_or_empty(const std::string& p) {
    char* r = ::realpath(p.c_str(), nullptr);
    if (!r) return "";
    std::string out(r);
    ::free(r);
    return out;
  }

  std::vector<attest::TrackedTree> tracked_trees() {
    std::vector<attest::TrackedTree> out;
    out.push_back({"rootfs", s_.rootfs, {}, readonly_root_reason(), ""});
    // Writable bind mounts (effective flags: ["rbind","ro","rw"] is writable).
    for (const auto& m : s_.spec.mounts) {
      struct stat st {};
      if (!m.is_bind() || m.readonly() || ::stat(m.source.c_str(), &st) < 0 || !S_ISDIR(st.st_mode)) continue;
      out.push_back({m.destination, m.source, {}, "", ""});
    }
    // Each tree is read through a detached copy of its mount tree, taken
    // now, while the container exists: a client may unmount or remove the
    // source as soon as the exit is reported (Podman's --rm removes the
    // shm tmpfs, containerd unmounts the rootfs). The copy is a mount of its
    // own, so the client's unmount succeeds (no EBUSY) and the filesystem
    // stays readable until we exit.
    for (auto& t : out) {
      UniqueFd tree(static_cast<int>(::syscall(SYS_open_tree, AT_FDCWD, t.host_path.c_str(),
                                               OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)));
      if (!tree) {
        log::debug("supervisor: open_tree " + t.host_path + ": " + std::strerror(errno) +
                   "; the walks read the path itself");
        continue;
      }
      t.walk_path = "/proc/self/fd/" + std::to_string(tree.get()) + "/.";
      tree_copies_.push_back(std::move(tree));
    }
    watch_writes(out);
    return out;
  }

  // Every other writable mount of the container is a tree too (tmpfs
  // mounts, single-file binds, mounts below a volume's mount point), read
  // through the container's own mount (a descriptor opened now, which keeps
  // it readable after the container is gone); and every writable mount is
  // watched for writes (observer::WriteWatch, docs/FORMATS.md "Write
  // tracking"). A tree that cannot be watched is read in full after the run.
  void watch_writes(std::vector<attest::TrackedTree>& trees) {
    std::string no_watch, entries_error;
    std::vector<observer::WritableMount> mounts;
    try {
      mounts = observer::writable_mounts(init_pid_);
      write_watch_ = std::make_unique<observer::WriteWatch>([this](const std::string& type, json data) {
        if (record_) record_->event(type, std::move(data));
      });
      // Names created and removed on every other mount: BPF LSM programs
      // for the container's cgroup (its exec sessions join it).
      const std::string v2 = cg_ ? cg_->v2_dir() : std::string();
      try {
        entries_error = v2.empty() ? "the container has no cgroup v2"
                                   : write_watch_->watch_entries(observer::cgroup_v2_id(v2));
      } catch (const std::exception& e) {
        entries_error = e.what();
      }
      if (!entries_error.empty())
        log::debug("container " + s_.id + ": no BPF LSM entry programs (" + entries_error +
                   "): entries from the fanotify groups");
    } catch (const std::exception& e) {
      no_watch = std::string("no write watch: ") + e.what();
      log::warn("container " + s_.id + ": " + no_watch + "; every file is read in full after the run");
    }
    std::vector<std::pair<uint64_t, uint64_t>> ids(trees.size());
    for (std::size_t i = 1; i < trees.size(); ++i) {
      struct stat st {};
      if (::stat(trees[i].host_path.c_str(), &st) == 0) ids[i] = {st.st_dev, st.st_ino};
    }
    std::vector<bool> watched(trees.size(), false);
    json unmarked = json::array(), entries_unwatched = json::array();
    for (auto& m : mounts) {
      std::size_t t = trees.size();
      if (m.mount_point == "/") {
        t = 0;
      } else {
        for (std::size_t i = 1; i < trees.size() && t == trees.size(); ++i)
          if (!trees[i].host_path.empty() && ids[i] == std::make_pair(m.dev, m.ino)) t = i;
      }
      if (t == trees.size()) {
        attest::TrackedTree nt;
        nt.name = m.mount_point;
        nt.walk_path = "/proc/self/fd/" + std::to_string(m.fd.get()) + (m.file ? "" : "/.");
        nt.fstype = m.fstype;
        trees.push_back(std::move(nt));
        watched.push_back(false);
      }
      if (!trees[t].unchanged_reason.empty()) continue;
      if (trees[t].fstype.empty()) trees[t].fstype = m.fstype;
      const bool entries = m.fstype == "tmpfs" && m.root == "/";
      std::string why =
          write_watch_ ? write_watch_->mark(m.fd.get(), m.mount_point, trees[t].name, entries) : no_watch;
      if (why.empty() && !entries && !m.file && !write_watch_->lsm_entries()) {
        // Without the LSM programs: the fanotify fallback on the tree's
        // host filesystem (an overlay root: its upper layer).
        std::string dir = "/proc/self/fd/" + std::to_string(m.fd.get());
        std::vector<std::string> lower;
        std::string no_entries;
        if (m.fstype == "overlay") {
          auto layers = t == 0 ? attest::overlay_at(s_.rootfs) : std::nullopt;
          if (t != 0)
            no_entries = "an overlay mount other than the root (its upper layer is not known)";
          else if (!layers)
            no_entries = "the root's overlay layers are not in this mount namespace's mountinfo";
          else if (layers->upper.empty())
            no_entries = "the root's overlay has no upper layer";
          else
            dir = layers->upper, lower = layers->lower;
        }
        if (no_entries.empty()) no_entries = write_watch_->watch_tree_entries(dir, lower);
        if (!no_entries.empty()) {
          log::debug("container " + s_.id + ": " + m.mount_point + ": entries not watched: " + no_entries);
          entries_unwatched.push_back(pct_strings(m.mount_point).get<std::string>() + ": " + no_entries);
        }
      }
      if (why.empty()) {
        watched[t] = true;
        if (trees[t].watch != "mount+entries")
          trees[t].watch = write_watch_->entries_watched() ? "mount+entries" : "mount";
      } else {
        // One mount of the tree that is not watched: the tree is read in full.
        trees[t].reread_all = "not watched for writes: " + why;
        unmarked.push_back(pct_strings(m.mount_point).get<std::string>() + ": " + why);
      }
      tree_copies_.push_back(std::move(m.fd));
    }
    for (std::size_t i = 0; i < trees.size(); ++i)
      if (trees[i].unchanged_reason.empty() && !watched[i] && trees[i].reread_all.empty())
        trees[i].reread_all = no_watch.empty() ? "not watched for writes: no writable mount of the container "
                                                 "found for it"
                                               : no_watch;
    if (record_ && write_watch_) {
      json w{{"marked", std::count(watched.begin(), watched.end(), true)}, {"unmarked", unmarked}};
      if (entries_error.empty()) {
        w["entries"] = "lsm";
      } else {
        // The LSM programs' error, and the trees the fanotify fallback
        // could not take either.
        w["entries"] = "fanotify";
        w["entries_error"] = pct_strings(entries_error);
        w["entries_unwatched"] = entries_unwatched;
      }
      record_->event("fs.watch", w);
    }
    if (write_watch_) write_watch_->start();
  }

  static std::string ms_since(std::chrono::steady_clock::time_point t0) {
    char b[32];
    std::snprintf(b, sizeof b, "%.1f",
                  std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    return b;
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
      auto t0 = std::chrono::steady_clock::now();
      record_->sync();
      log::debug("record phase exit-fsync " + ms_since(t0) + " ms");
    } catch (const std::exception& e) {
      log::error(std::string("recording the exit: ") + e.what());
    }
  }

  // The sentinel died before we released it (kSentinelLostSignal): a client
  // killed the --pid-file pid, or the container's OOM killer chose it. The
  // container goes with it, as it always did; the record is finished and
  // says why the container ended.
  void sentinel_lost() {
    log::warn("container " + s_.id + ": the sentinel (pid " + std::to_string(sentinel_) +
              ", the --pid-file process) died; killing the container and finishing its record");
    sentinel_ = -1;
    sentinel_lost_ = true;
    if (record_)
      record_->event(
          "run.sentinel_lost",
          {{"detail", kill_all_noted_
                          ? "the caller's kill --all SIGKILL (cgroup.kill) took the sentinel with the "
                            "container"
                          : "the --pid-file process (the sentinel) died before the container exited; "
                            "the container is killed, as its death means"},
           {"kill_all", kill_all_noted_},
           {"oom_kills", cg_ ? cg_->oom_kill_count() : 0}});
    try {
      if (cg_) {
        for (pid_t p : cg_->pids()) ::kill(p, SIGKILL);
        if (cg_->frozen()) cg_->thaw();
      }
    } catch (const std::exception& e) {
      log::warn(std::string("sentinel lost: ") + e.what());
    }
    if (init_pid_ > 0) ::kill(init_pid_, SIGKILL);
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

  // Before release_sentinel(): the exec observer stops and the trees the
  // container could change are walked.
  void walk_after() {
    if (!record_) return;
    try {
      // (Stopped here, destroyed with the supervisor, after the record is
      // final: closing a fanotify group whose marks are still on live
      // mounts — the tree descriptors keep the container's mounts — waits
      // for an SRCU grace period.)
      if (observer_) observer_->stop();
      if (write_watch_) {
        // What the container's last processes closed is queued by now.
        auto t0 = std::chrono::steady_clock::now();
        write_watch_->stop();
        log::debug("record phase write-watch-stop " + ms_since(t0) + " ms (" +
                   std::to_string(write_watch_->events()) + " events, " +
                   std::to_string(write_watch_->dirty_count()) + " files written)");
        observer::WriteWatch* w = write_watch_.get();
        record_->set_writes({[w](uint64_t dev, uint64_t ino) { return w->dirty(dev, ino); },
                             [w](uint64_t dev) { return w->dirty_dev(dev); }, w->overflowed(),
                             w->entries_lost()});
      }
      log::debug("supervisor: run.exit recorded; after-run filesystem walk");
      record_->walk_after();
    } catch (const std::exception& e) {
      log::error(std::string("the post-run filesystem walk: ") + e.what());
    }
  }

  // After release_sentinel(): the after-run roots are settled (waiting for
  // a read-only root's concurrent before walk), then the signed record.
  void finish_record(const json& ex) {
    if (!record_) return;
    try {
      record_->snapshot_after();
      log::debug("supervisor: after-run walk done; signing");
      json facts = {{"runtime", runtime_identity()},
                    {"config",
                     {{"given_sha256", digest_of(s_.caller_config.is_null() ? s_.config : s_.caller_config)},
                      {"enforced_sha256", digest_of(s_.config)}}},
                    {"sandbox", sandbox_summary()},
                    {"policy_decisions", s_.policy.decisions},
                    {"entrypoint", entrypoint_},
                    {"exit", ex},
                    {"network", network_totals_},
                    {"timing", {{"created", s_.created}, {"finished", attest::rfc3339_now()}}}};
      auto t0 = std::chrono::steady_clock::now();
      json row = record_->finalize(facts);
      log::debug("record phase finalize " + ms_since(t0) + " ms (session, signing, attestation, ledger)");
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
    if (sentinel_lost_ && !kill_all_noted_) ex["reason"] = "sentinel lost";
    json exit_event = {{"code", exit_.code},
                       {"reason", time_limit_hit_                      ? "exec time limit"
                                  : sentinel_lost_ && !kill_all_noted_ ? "sentinel lost"
                                                                       : ""},
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
    // The after walks of what the container could change come before its
    // exit is reported: once the sentinel exits, a client may remove the
    // sources (docker run --rm removes anonymous volumes, podman --rm the
    // container's storage). A read-only root costs nothing here.
    walk_after();
    release_sentinel(exit_.code);
    finish_record(exit_event);
    ctl_.reset();  // and its socket file
    return exit_.code;
  }

  Setup& s_;
  UniqueFd sigfd_, sock_;
  std::unique_ptr<control::Server> ctl_;
  std::unique_ptr<cgroups::Manager> cg_;
  pid_t stage1_ = -1;
  pid_t init_pid_ = 0;
  bool sentinel_lost_ = false;
  bool kill_all_noted_ = false;  // the caller announced kill --all SIGKILL
  unsigned long long init_start_ = 0;
  Exit exit_;
  std::unique_ptr<attest::RunRecord> record_;
  std::unique_ptr<observer::ExecObserver> observer_;
  std::unique_ptr<observer::WriteWatch> write_watch_;  // (watch_writes)
  json entrypoint_ = json::object();
  json network_totals_ = {
      {"mode", "none"}, {"allowed", 0}, {"denied", 0}, {"bytes_up", 0}, {"bytes_down", 0}};
  std::unique_ptr<network::ContainerNetwork> net_;
  std::shared_ptr<net::tls::Authority> run_ca_;
  std::vector<int> inherited_;
  std::vector<UniqueFd> tree_copies_;  // detached copies of the tracked trees (tracked_trees())
  std::chrono::steady_clock::time_point deadline_{};
  bool time_limit_hit_ = false;
  bool sync_after_reply_ = false;
  bool run_started_ = false;  // run.started written (once, at the start gate)
  pid_t sentinel_;
  UniqueFd sentinel_sock_;  // until the sentinel has entered the container's namespaces
  bool in_container_cgroup_ = false;
};

}  // namespace

void run(Setup& s, pid_t sentinel, UniqueFd sentinel_sock) {
  Supervisor sup(s, sentinel, std::move(sentinel_sock));
  sup.run();
}

}  // namespace agentshim::supervisor
