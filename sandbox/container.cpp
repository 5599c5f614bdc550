#include "sandbox/container.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <random>
#include <thread>

#include "attest/record.h"
#include "attest/runstore.h"
#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "common/version.h"
#include "sandbox/cgroups/cgroups.h"
#include "sandbox/control.h"
#include "sandbox/hooks.h"
#include "sandbox/init.h"
#include "sandbox/network.h"
#include "sandbox/oci.h"
#include "sandbox/peers.h"
#include "sandbox/policy.h"
#include "sandbox/process.h"
#include "sandbox/rootfs.h"
#include "sandbox/runtime_config.h"
#include "sandbox/seccomp.h"
#include "sandbox/sentinel.h"
#include "sandbox/stage1.h"
#include "sandbox/state.h"
#include "sandbox/sync.h"
#include "sandbox/userns.h"

namespace agentshim::container {
namespace {

std::string abs_path(const std::string& p) {
  char buf[PATH_MAX];
  if (!::realpath(p.empty() ? "." : p.c_str(), buf)) throw_errno("resolve path " + p);
  return buf;
}

}  // namespace

// With the internal-only network the container's resolver is the DNS stub
// the supervisor serves on 127.0.0.53 (which refuses, and records, every
// query unless the policy says otherwise): /etc/resolv.conf is a read-only
// bind of /run/agentshim.dns/resolv.conf, replacing any resolv.conf mount
// the caller made (Docker's points at its embedded DNS or the host's). Only
// when the rootfs has a real /etc directory (not a symlink) to mount it on.
void point_resolver_at_stub(json& cfg, const network::Options& net, json& decisions,
                            const std::string& rootfs) {
  // Served by a stub: a namespace of the container's own, the caller's
  // when confined (a pod's), another agentshim container's (a pod's
  // sandbox serves its app containers).
  if (!net.serves_own() && !(net.mediated() && net.ns == "peer")) return;
  struct stat st {};
  if (::lstat((rootfs + "/etc").c_str(), &st) < 0 || !S_ISDIR(st.st_mode)) return;
  // One shared, world-readable file (the same for every container): a
  // container's root in a user namespace must be able to reach the bind's
  // source, and the state directory may sit under a root-only --root.
  const std::string dir = "/run/agentshim.dns", file = dir + "/resolv.conf";
  const std::string text =
      "# agentshim: the DNS stub of the internal-only network (see docs/NETWORK.md)\nnameserver 127.0.0.53\n";
  if (try_read_file(file) != text) {
    mkdir_p(dir, 0755);
    if (::chmod(dir.c_str(), 0755) < 0) throw_errno("chmod " + dir);
    write_file_atomic(file, text, 0644);
  }
  const bool replaced =
      oci::put_mount(cfg, oci::runtime_bind(file, "/etc/resolv.conf"), oci::MountPlace::kInPlace);
  // The mountpoint is made here, by the runtime, when the rootfs has none:
  // an init in a user namespace whose root is an unprivileged host uid
  // cannot create a file in a root-owned /etc (EACCES), and this mount is the
  // policy's, not the caller's. Created beneath the rootfs only (no symlink
  // is followed out of it); if it cannot be made (a read-only rootfs), the
  // init tries again and reports the error.
  UniqueFd rootfd(::open(rootfs.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (rootfd) {
    try {
      (void)rootfs::open_in_root(rootfd.get(), "/etc/resolv.conf", true, true);
    } catch (const std::exception& e) {
      log::debug(std::string("resolv.conf mountpoint not created by the runtime: ") + e.what());
    }
  }
  if (!decisions.is_array()) decisions = json::array();
  decisions.push_back(
      {{"rule", "network.dns"},
       {"path", "mounts[/etc/resolv.conf]"},
       {"action", replaced ? "replaced" : "added"},
       {"detail", "/etc/resolv.conf points at the DNS stub 127.0.0.53 of the internal-only network"}});
}

namespace {

void write_pid_file(const std::string& path, pid_t pid) {
  if (path.empty()) return;
  std::string p = path;
  if (!starts_with(p, "/")) p = abs_path(".") + "/" + p;
  // runc writes to a temporary file and renames it, so readers never see a partial pid.
  write_file_atomic(p, std::to_string(pid), 0644, false);
}

UniqueFd connect_console(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw_errno("socket");
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) throw Error("console socket path too long: " + path);
  std::strcpy(addr.sun_path, path.c_str());
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0)
    throw_errno("connect to console socket " + path);
  return fd;
}

std::string state_dir(const Global& g, const std::string& id) {
  return state::container_dir(g.root, id);
}

std::unique_ptr<cgroups::Manager> cgroup_of(const state::ContainerState& st) {
  if (st.cgroup.is_null()) throw Error("container " + st.id + " has no cgroup recorded");
  return cgroups::Manager::load(st.cgroup);
}

// Wait until pid (with start time) is gone; false on timeout.
// With a pidfd (Linux 5.3) the wait ends the moment the process exits;
// without one, poll its /proc entry.
bool wait_gone(pid_t pid, unsigned long long start, int timeout_ms) {
  if (!state::process_alive(pid, start)) return true;
  UniqueFd pfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  // The pid was checked (with its start time) before the pidfd was opened:
  // re-check, so a pid reused in between is not waited on.
  if (pfd && state::process_alive(pid, start)) {
    struct pollfd p = {pfd.get(), POLLIN, 0};
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      // Wake at least every 50 ms: a zombie counts as gone for
      // process_alive, and a zombie's pidfd is already readable anyway.
      int n = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 50)));
      if (n > 0 || !state::process_alive(pid, start)) return true;
    }
    return !state::process_alive(pid, start);
  }
  for (int waited = 0; waited < timeout_ms; waited += 5) {
    if (!state::process_alive(pid, start)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return !state::process_alive(pid, start);
}

// The exec'd process's seccomp listeners (kinds as a JSON array, fds by
// SCM_RIGHTS; EOF when it failed before) go to the supervisor. False when
// the supervisor did not take them (gone, not answering within 5 s, or
// refusing): the caller then kills the process, whose execve waits on a
// listener that may still be in flight to a stopped supervisor (nothing
// runs unrecorded, nothing waits forever).
bool forward_exec_listeners(const std::string& dir, int sock, const std::string& session, pid_t pid,
                            std::string& error) {
  std::vector<UniqueFd> fds;
  std::string payload;
  try {
    payload = recv_fds(sock, fds);
  } catch (const std::exception& e) {
    error = std::string("receiving the observer listener: ") + e.what();
    return false;
  }
  if (fds.empty()) return true;  // it failed before: its error is on the error pipe
  control::ExecObserve m;
  m.session = session;
  m.pid = pid;
  json kinds = json::parse(payload, nullptr, false);
  if (kinds.is_array())
    for (const auto& k : kinds)
      if (k.is_string()) m.kinds.push_back(k.get<std::string>());
  std::vector<int> raw;
  for (const auto& f : fds) raw.push_back(f.get());
  auto r = control::notify(dir, m, true, 5, raw);
  if (!r.ok) error = "the supervisor did not take the exec observer: " + r.error;
  return r.ok;
}

}  // namespace

void create(const Global& g, const CreateOptions& o) {
  oci::validate_container_id(o.id);
  std::string bundle = abs_path(o.bundle.empty() ? "." : o.bundle);
  json caller = oci::load_config(bundle);
  // The policy decides the sandbox: cfg is the caller's config tightened by
  // it (every change a decision; a refused config stops here).
  json pol_doc = policy::load(g.policy_path);
  // --signing-key / --key-type (global flags) take the place of the policy's
  // audit.signing_key / audit.key_type; the record checks the key's type.
  if (!g.signing_key.empty()) pol_doc["audit"]["signing_key"] = abs_path(g.signing_key);
  if (!g.key_type.empty()) pol_doc["audit"]["key_type"] = g.key_type;
  const policy::Policy pol = policy::parse(pol_doc);
  const std::string audit_dir = policy::audit_dir(pol, g.audit_dir);
  // The record, the state root and the runtime's own files stay out of the
  // sandbox's reach: the policy refuses a bind that is, contains or lies
  // inside one of them (by identity).
  policy::ApplyContext pctx;
  pctx.policy_name = policy::source_name(g.policy_path);
  pctx.bundle = bundle;
  pctx.owned = policy::runtime_owned(pol, g.root, audit_dir, g.policy_path);
  policy::Result pres = policy::apply(pol, caller, pctx);
  // What the policy changed that the caller may not expect is said where
  // clients show a runtime's messages, not only in the record (issue 16):
  // Docker shows `create`'s stderr as the container's. Capabilities the
  // policy never grants (Docker asks for NET_RAW, MKNOD... on every run) are
  // documented and in the record, not repeated on every run's stderr.
  for (const auto& d : pres.decisions) {
    const std::string a = d.value("action", "");
    const bool caps = d.value("rule", "") == "capabilities.allowed";
    if (a == "capped" || a == "ignored" || a == "neutralised" || (a == "dropped" && !caps))
      log::warn_user("policy " + a + " " + d.value("path", "") + ": " + d.value("detail", ""));
  }
  json cfg = pres.config;
  oci::Spec spec = oci::parse_spec(cfg);
  // A capability the policy keeps but the host cannot grant is an error
  // (OCI: a value that cannot be mapped MUST be), never silently left out.
  process::check_capabilities(spec.process);
  std::string rootfs = oci::rootfs_path(spec, bundle);
  struct stat rst {};
  if (::stat(rootfs.c_str(), &rst) < 0 || !S_ISDIR(rst.st_mode))
    throw Error("rootfs (" + rootfs + ") does not exist or is not a directory");
  // Every execve in the sandbox is observed for the record (seccomp user
  // notification) unless the policy turns it off explicitly or there is no
  // record. (The seccomp filters are compiled by the supervisor, before any
  // container process exists: a bad profile is an error of `create` that
  // names its field.)
  bool observe_exec = pol.audit.observe_exec && !audit_dir.empty();
  bool terminal = spec.process.terminal;
  if (terminal && o.console_socket.empty() && o.console_fd < 0)
    throw Error("cannot allocate tty if agentshim will detach without setting console socket");
  if (!terminal && !o.console_socket.empty())
    throw Error("cannot use console socket if agentshim will not detach or allocate tty");

  mkdir_p(g.root, 0711);
  std::string dir = state_dir(g, o.id);
  if (::mkdir(dir.c_str(), 0711) < 0) {
    if (errno == EEXIST) throw Error("container with id exists: " + o.id);
    throw_errno("mkdir " + dir);
  }
  // Anything that fails from here on must leave no state behind.
  struct Cleanup {
    std::string dir;
    bool armed = true;
    ~Cleanup() {
      if (!armed) return;
      try {
        remove_tree(dir);
      } catch (...) {
      }
    }
  } cleanup{dir};
  state::Lock lock(g.root, o.id);

  // userns "auto": an unprivileged host range for the container's ids. The
  // slot names this state directory, so a failed create (which removes it)
  // leaves the slot free for the next container.
  bool idmap = false;
  if (pres.userns_auto) {
    std::string why;
    idmap = userns::can_idmap(rootfs, &why);
    if (!idmap && !spec.root.readonly)
      throw Error(
          why +
          "; with a writable root filesystem the container's root could not write the image's "
          "files. Set \"userns\": \"off\", make the root read-only (filesystem.readonly_root), or put "
          "the rootfs on a filesystem that supports idmapped mounts (ext4, xfs, btrfs, tmpfs)");
    auto range = userns::allocate(dir, userns::pool());
    cfg["linux"]["uidMappings"] =
        json::array({{{"containerID", 0}, {"hostID", range.uid}, {"size", range.size}}});
    cfg["linux"]["gidMappings"] =
        json::array({{{"containerID", 0}, {"hostID", range.gid}, {"size", range.size}}});
    spec.linux.uid_mappings = {{0, range.uid, range.size}};
    spec.linux.gid_mappings = {{0, range.gid, range.size}};
    pres.decisions.push_back(
        {{"rule", "userns"},
         {"path", "linux.uidMappings"},
         {"action", "allocated"},
         {"detail", "container uids/gids 0-" + std::to_string(range.size - 1) + " run as host uids " +
                        std::to_string(range.uid) + "-" + std::to_string(range.uid + range.size - 1) +
                        ", gids " + std::to_string(range.gid) + "-" +
                        std::to_string(range.gid + range.size - 1) +
                        (idmap ? "; the rootfs is mounted idmapped" : "")}});
    if (!idmap)
      pres.decisions.push_back(
          {{"rule", "userns"},
           {"path", "root.path"},
           {"action", "not idmapped"},
           {"detail", why +
                          "; the root filesystem is read-only, so it is used as it is: files the image gives "
                          "to host root show as nobody (65534) inside, and root-only files cannot be read"}});
  }

  std::string fifo = state::exec_fifo_path(g.root, o.id);
  if (::mkfifo(fifo.c_str(), 0622) < 0) throw_errno("mkfifo " + fifo);
  if (::chmod(fifo.c_str(), 0622) < 0) throw_errno("chmod " + fifo);
  {
    // Owned by the container's root, as runc does, so an init in a user
    // namespace can open it.
    auto u = oci::root_ids(spec.linux.uid_mappings), gm = oci::root_ids(spec.linux.gid_mappings);
    if (spec.has_new_namespace("user") &&
        ::chown(fifo.c_str(), static_cast<uid_t>(u ? u->host : 0), static_cast<gid_t>(gm ? gm->host : 0)) < 0)
      throw_errno("chown " + fifo);
  }

  // With userns "auto" the supervisor reaches the rootfs and bind sources
  // for the container (userns::attach_and_open); with a caller's own maps
  // the container's root must reach them itself, as with runc.
  if (spec.has_new_namespace("user") && !pres.userns_auto)
    userns::check_reachable(rootfs, spec.linux.uid_mappings, spec.linux.gid_mappings);

  point_resolver_at_stub(cfg, pres.network, pres.decisions, rootfs);
  network::trust_run_ca(cfg, pres.network, pres.decisions, rootfs, dir);

  setup::Setup s;
  s.id = o.id;
  s.bundle = bundle;
  s.rootfs = rootfs;
  s.state_dir = dir;
  s.run_id = attest::new_run_id();
  s.audit_dir = audit_dir;
  s.created = log::now_rfc3339();
  s.config = cfg;
  // The enforced config is complete (the resolver mount above was its last
  // change): parsed once more, the Spec every stage reads.
  s.spec = oci::parse_spec(cfg);
  // The identity of every bind source the policy checked: the init mounts
  // exactly those files (rootfs::Context::checked).
  for (const auto& m : pres.mounts)
    if (m.is_bind()) s.checked_sources[m.source] = m.source_id;
  s.checked_namespaces = pres.joined_namespaces;
  s.caller_config = caller;
  s.extra_seccomp = pres.extra_seccomp;
  s.attach_rootfs = pres.userns_auto;
  s.idmap_rootfs = idmap;
  {
    // For `exec` (the process settings), `update` (the resource limits)
    // and containers joining this one's network (what its proxy serves:
    // the placeholders of the credentials it holds, never a secret, and
    // the file with its run's CA).
    policy::Saved saved;
    saved.exec = policy::exec_settings(pol, pres);
    saved.exec.observe_exec = observe_exec;  // exec sessions are observed as the init is
    saved.policy = pol.doc;
    saved.policy_name = pctx.policy_name;
    if (pres.network.serves_own())
      saved.served_network = network::Served{pres.network.credentials,
                                             pres.network.tls ? pres.network.tls->ca_file : std::string()};
    saved.write(dir);
    s.policy = {pol.audit, pres.decisions, pres.network, pres.exec_time_limit_s, saved.exec};
  }
  s.observe_exec = observe_exec;
  s.systemd_cgroup = g.systemd_cgroup;
  s.no_pivot = o.no_pivot;
  s.no_new_keyring = o.no_new_keyring;
  s.preserve_fds = o.preserve_fds;
  if (const char* lf = ::getenv("LISTEN_FDS")) {
    if (auto n = parse_int(lf); n && *n > 0) {
      s.preserve_fds += static_cast<int>(*n);
      s.extra_env.push_back("LISTEN_FDS=" + std::to_string(*n));
      s.extra_env.push_back("LISTEN_PID=1");
    }
  }
  s.exec_fifo.reset(::open(fifo.c_str(), O_PATH | O_CLOEXEC));
  if (!s.exec_fifo) throw_errno("open " + fifo);
  s.state_dirfd.reset(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!s.state_dirfd) throw_errno("open " + dir);
  if (terminal)
    s.console_sock = o.console_fd >= 0 ? UniqueFd(::dup(o.console_fd)) : connect_console(o.console_socket);
  auto pair = make_socketpair(SOCK_SEQPACKET);
  s.cli_sock = std::move(pair.second);

  std::cout.flush();
  std::cerr.flush();
  pid_t sentinel = ::fork();
  if (sentinel < 0) throw_errno("fork sentinel");
  if (sentinel == 0) {
    pair.first.reset();
    cleanup.armed = false;
    lock.drop_in_child();
    sentinel::run(std::move(s));
  }
  s.cli_sock.reset();
  s.console_sock.reset();
  s.exec_fifo.reset();
  s.state_dirfd.reset();
  std::optional<sync::Message> msg;
  try {
    msg = sync::recv(pair.first.get());
  } catch (const std::exception& e) {
    msg = sync::Failure{e.what()};
  }
  const auto* created = msg ? std::get_if<sync::Created>(&*msg) : nullptr;
  if (!created) {
    std::string err = !msg                                          ? "supervisor exited during setup"
                      : std::holds_alternative<sync::Failure>(*msg) ? std::get<sync::Failure>(*msg).msg
                                                                    : "container setup failed";
    ::kill(sentinel, SIGKILL);
    ::waitpid(sentinel, nullptr, 0);
    throw Error(err);
  }
  state::ContainerState st;
  st.id = o.id;
  st.bundle = bundle;
  st.rootfs = rootfs;
  st.created = s.created;
  st.init_pid = created->init_pid;
  st.init_start = created->init_start;
  st.sentinel_pid = sentinel;
  st.sentinel_start = state::process_start_time(sentinel);
  st.run_id = s.run_id;
  st.audit_dir = s.audit_dir;
  st.config = cfg;
  st.cgroup = created->cgroup;
  st.annotations = s.spec.annotations;
  state::save(g.root, st);
  try {
    runtime_config::index_record(g.root, o.id);  // commands that lose --root still find it
  } catch (const std::exception& e) {
    log::warn(e.what());
  }
  // Configs that name this container by its pid-file pid (a pod's other
  // containers, `--network container:X`) join its namespaces (peers.h).
  peers::record(sentinel, g.root, o.id);
  write_pid_file(o.pid_file, sentinel);
  cleanup.armed = false;
}

namespace {
// start up to "started"; returns the state poststart hooks get.
json start_locked(const Global& g, const std::string& id, state::ContainerState& st) {
  state::Lock lock(g.root, id);
  std::string status = state::status(g.root, st);
  if (status == "stopped") throw Error("cannot start a container that has stopped");
  if (status != "created") throw Error("cannot start an already running container");
  std::string fifo = state::exec_fifo_path(g.root, id);
  // The supervisor answers once the "before" filesystem roots are taken
  // (it takes them after `create` returned): no container code runs first.
  // (No timeout: a large rootfs takes as long as it takes to walk; a dead
  // supervisor closes the socket.)
  auto gate = control::notify(state_dir(g, id), control::StartGate{}, true, 0);
  if (!gate.ok)
    throw Error("cannot start container " + id + ": its supervisor is not answering (" +
                (gate.error.empty() ? std::string("no reply") : gate.error) + ")");
  std::string exe_link = "/proc/" + std::to_string(st.init_pid) + "/exe";
  char before[PATH_MAX] = {};
  ssize_t bl = ::readlink(exe_link.c_str(), before, sizeof before - 1);
  UniqueFd fd(::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (!fd) throw_errno("open exec fifo " + fifo);
  // The init opens its end for writing, writes one byte and execs; if it
  // dies instead we see HUP without data.
  for (;;) {
    struct pollfd p = {fd.get(), POLLIN, 0};
    int n = ::poll(&p, 1, 100);
    if (n > 0) {
      char c;
      ssize_t r = ::read(fd.get(), &c, 1);
      if (r == 1) break;
      // r == 0 without POLLIN: no writer yet; only the init's death (below) ends the wait.
    }
    if (!state::process_alive(st.init_pid, st.init_start))
      throw Error("cannot start container " + id + ": its init process exited");
    if (n > 0 && (p.revents & POLLHUP)) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ::unlink(fifo.c_str());
  // Return once the init has become the user's program (its executable
  // changed), not merely released: a signal sent right after `start` must
  // reach the program, and poststart hooks run after it started. Bounded,
  // in case startContainer hooks take long.
  if (bl > 0) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (std::chrono::steady_clock::now() < deadline) {
      char now[PATH_MAX] = {};
      ssize_t nl = ::readlink(exe_link.c_str(), now, sizeof now - 1);
      if (nl < 0 || nl != bl || std::memcmp(now, before, static_cast<std::size_t>(bl)) != 0) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  // Not waiting for the answer: a program that exits at once has the
  // supervisor finishing its record (the read-only root's walk, signing)
  // before it reads this, and `start` must not wait for the record.
  control::notify(state_dir(g, id), control::Started{}, false);
  return state::oci_state(st, "running");
}
}  // namespace

void start(const Global& g, const std::string& id) {
  auto st = state::load(g.root, id);
  json hs = start_locked(g, id, st);
  try {
    hooks::run(st.spec, "poststart", hs);
  } catch (const std::exception& e) {
    // As runc: a failing poststart hook takes the container down and
    // removes it (its poststop hooks run, as in runc's destroy); the
    // command fails with the hook's error.
    const std::string err = e.what();
    try {
      remove(g, id, true);
    } catch (const std::exception& e2) {
      log::warn("removing container " + id + " after its poststart hook failed: " + e2.what());
    }
    throw Error(err);
  }
}

namespace {
// Copy between our stdio and the pty master until the supervisor exits.
class TtyRelay {
 public:
  explicit TtyRelay(UniqueFd master) : master_(std::move(master)) {
    if (::isatty(0) && ::tcgetattr(0, &saved_) == 0) {
      struct termios raw = saved_;
      ::cfmakeraw(&raw);
      raw_ = ::tcsetattr(0, TCSANOW, &raw) == 0;
      struct winsize ws {};
      if (::ioctl(0, TIOCGWINSZ, &ws) == 0) ::ioctl(master_.get(), TIOCSWINSZ, &ws);
    }
  }
  ~TtyRelay() {
    if (raw_) ::tcsetattr(0, TCSANOW, &saved_);
  }
  // One round of copying; returns false once the pty is closed.
  bool pump(int timeout_ms) {
    struct pollfd fds[2] = {{master_.get(), POLLIN, 0}, {stdin_open_ ? 0 : -1, POLLIN, 0}};
    if (::poll(fds, 2, timeout_ms) <= 0) return true;
    char buf[8192];
    if (fds[0].revents & (POLLIN | POLLHUP)) {
      ssize_t n = ::read(master_.get(), buf, sizeof buf);
      if (n <= 0) return false;
      try {
        write_all(1, std::string_view(buf, static_cast<std::size_t>(n)), "stdout");
      } catch (...) {
      }
    }
    if (fds[1].revents & (POLLIN | POLLHUP)) {
      ssize_t n = ::read(0, buf, sizeof buf);
      if (n <= 0) {
        stdin_open_ = false;
        // EOF on a pipe: send the terminal's EOF character.
        ssize_t w = ::write(master_.get(), "\x04", 1);
        (void)w;
      } else {
        try {
          write_all(master_.get(), std::string_view(buf, static_cast<std::size_t>(n)), "pty");
        } catch (...) {
        }
      }
    }
    return true;
  }
  // After the process exited: what it left in the pty, until the pty is
  // closed or quiet for 100 ms (a process still holding it is not waited on).
  void drain() {
    char buf[8192];
    for (;;) {
      struct pollfd p = {master_.get(), POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) return;
      ssize_t n = ::read(master_.get(), buf, sizeof buf);
      if (n <= 0) return;
      try {
        write_all(1, std::string_view(buf, static_cast<std::size_t>(n)), "stdout");
      } catch (...) {
        return;
      }
    }
  }
  // SIGWINCH: our terminal's size to the pty.
  void resize() {
    struct winsize ws {};
    if (::ioctl(0, TIOCGWINSZ, &ws) == 0) ::ioctl(master_.get(), TIOCSWINSZ, &ws);
  }

 private:
  UniqueFd master_;
  struct termios saved_ {};
  bool raw_ = false;
  bool stdin_open_ = true;
};
}  // namespace

int run(const Global& g, const CreateOptions& opts, bool detach, bool keep) {
  CreateOptions o = opts;
  UniqueFd console_peer;
  std::unique_ptr<TtyRelay> relay;
  if (!detach && o.console_socket.empty()) {
    const auto spec = oci::parse_spec(oci::load_config(abs_path(o.bundle.empty() ? "." : o.bundle)));
    if (spec.process.terminal) {
      auto pair = make_socketpair(SOCK_STREAM);
      console_peer = std::move(pair.first);
      o.console_fd = pair.second.release();
    }
  }
  try {
    create(g, o);
  } catch (...) {
    if (o.console_fd >= 0) ::close(o.console_fd);
    throw;
  }
  if (o.console_fd >= 0) {
    ::close(o.console_fd);
    std::vector<UniqueFd> fds;
    recv_fds(console_peer.get(), fds);
    if (fds.empty()) throw Error("run: the container did not send its pty master");
    relay = std::make_unique<TtyRelay>(std::move(fds[0]));
  }
  try {
    start(g, o.id);
  } catch (...) {
    try {
      remove(g, o.id, true);
    } catch (...) {
    }
    throw;
  }
  if (detach) return 0;
  auto st = state::load(g.root, o.id);
  // The supervisor is our child: its exit status is the container's.
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH}) sigaddset(&set, s);
  sigaddset(&set, SIGCHLD);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  int code = 0;
  for (;;) {
    int status = 0;
    pid_t p = ::waitpid(st.sentinel_pid, &status, WNOHANG);
    if (p == st.sentinel_pid) {
      code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    if (relay && !relay->pump(50)) relay.reset();
    struct timespec ts {
      0, relay ? 0 : 50 * 1000 * 1000
    };
    siginfo_t si{};
    int sig = sigtimedwait(&set, &si, &ts);
    if (sig > 0 && sig != SIGCHLD) ::kill(st.sentinel_pid, sig);
  }
  if (relay)
    while (relay->pump(10)) {
    }
  relay.reset();
  // The sentinel exits as soon as the status is known; `run` returns once
  // the record is final too (what a person running it expects to find).
  if (!st.run_id.empty() && !st.audit_dir.empty() &&
      !attest::wait_finalized(attest::RunStore(st.audit_dir).run_dir(st.run_id), 120000))
    log::warn("run " + st.run_id + ": the record is still being finalized after 120 s");
  if (!keep) remove(g, o.id, true);
  return code;
}

json state(const Global& g, const std::string& id) {
  auto st = state::load(g.root, id);
  return state::oci_state(st, state::status(g.root, st));
}

std::vector<json> list(const Global& g) {
  std::vector<json> out;
  for (const auto& id : state::list_ids(g.root)) {
    try {
      auto st = state::load(g.root, id);
      out.push_back(state::oci_state(st, state::status(g.root, st)));
    } catch (const std::exception& e) {
      log::warn("list: " + id + ": " + e.what());
    }
  }
  return out;
}

void kill(const Global& g, const std::string& id, int sig, bool all) {
  auto st = state::load(g.root, id);
  std::string status = state::status(g.root, st);
  if (status == "stopped" && !all) throw Error("container not running");
  // A paused container's sentinel is frozen with it (the supervisor is
  // not: it stays outside the container's cgroup); the note need not wait.
  control::notify(state_dir(g, id), control::Kill{oci::signal_name(sig), all}, status != "paused");
  if (all) {
    auto cg = cgroup_of(st);
    if (sig == SIGKILL && cgroups::kill_all_via_cgroup_kill(*cg)) return;
    for (pid_t p : cg->pids())
      if (p != st.sentinel_pid) ::kill(p, sig);
    if (status == "paused" && (sig == SIGKILL)) cg->thaw();
    return;
  }
  if (::kill(st.init_pid, sig) < 0) {
    if (errno == ESRCH) throw Error("container not running");
    throw_errno("kill " + std::to_string(st.init_pid));
  }
  if (status == "paused" && sig == SIGKILL) cgroup_of(st)->thaw();
}

void remove(const Global& g, const std::string& id, bool force) {
  oci::validate_container_id(id);
  std::string dir = state_dir(g, id);
  state::ContainerState st;
  try {
    st = state::load(g.root, id);
  } catch (const Error&) {
    // A half-created directory (no state.json) is removed silently; an
    // unknown id is an error unless --force.
    if (path_exists(dir) && !path_exists(dir + "/state.json")) {
      remove_tree(dir);
      runtime_config::index_forget(g.root, id);
      return;
    }
    if (force) return;
    throw;
  }
  state::Lock lock(g.root, id);
  std::string status = state::status(g.root, st);
  if ((status == "running" || status == "paused") && !force)
    throw Error("cannot delete container " + id + " that is not stopped: " + status);
  std::unique_ptr<cgroups::Manager> cg;
  try {
    cg = cgroup_of(st);
  } catch (const std::exception& e) {
    log::warn(e.what());
  }
  if (status != "stopped") {
    ::kill(st.init_pid, SIGKILL);
    if (cg) {
      for (pid_t p : cg->pids())
        if (p != st.sentinel_pid) ::kill(p, SIGKILL);
      if (status == "paused") cg->thaw();
    }
  }
  if (!wait_gone(st.init_pid, st.init_start, 10000))
    log::warn("container init " + std::to_string(st.init_pid) + " did not exit");
  // The supervisor finalizes the record, then exits; give it time.
  if (!wait_gone(st.sentinel_pid, st.sentinel_start, 30000)) {
    log::warn("sentinel " + std::to_string(st.sentinel_pid) + " did not exit; killing it");
    ::kill(st.sentinel_pid, SIGKILL);
    wait_gone(st.sentinel_pid, st.sentinel_start, 2000);
  }
  // Every poststop hook runs; a failure is a warning (runtime spec).
  hooks::run_all(st.spec, "poststop", state::oci_state(st, "stopped"));
  if (cg) {
    // Leftover processes (no pid namespace) would keep the cgroup busy.
    for (int i = 0; i < 50; i++) {
      auto left = cg->pids();
      if (left.empty()) break;
      for (pid_t p : left) ::kill(p, SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    cg->destroy();
  }
  remove_tree(dir);
  runtime_config::index_forget(g.root, id);
  peers::forget(st.sentinel_pid, g.root, id);
  if (st.spec.has_new_namespace("user")) userns::release(dir);
}

void pause(const Global& g, const std::string& id) {
  auto st = state::load(g.root, id);
  state::Lock lock(g.root, id);
  std::string status = state::status(g.root, st);
  if (status != "running" && status != "created") throw Error("container not running");
  // Tell the supervisor first (it stays outside the container's cgroup and
  // keeps answering; the sentinel, inside it, is frozen with the container).
  control::notify(state_dir(g, id), control::Paused{});
  cgroup_of(st)->freeze();
}

void resume(const Global& g, const std::string& id) {
  auto st = state::load(g.root, id);
  state::Lock lock(g.root, id);
  if (state::status(g.root, st) != "paused") throw Error("container not paused");
  cgroup_of(st)->thaw();
  control::notify(state_dir(g, id), control::Resumed{});
}

void update(const Global& g, const std::string& id, const oci::Resources& resources) {
  auto st = state::load(g.root, id);
  state::Lock lock(g.root, id);
  if (state::status(g.root, st) == "stopped") throw Error("container not running");
  if (!st.spec_error.empty()) throw Error("update: " + st.spec_error);
  // The policy's limits hold for updates too: the config with the update
  // merged in is evaluated again, and the resources it would enforce are
  // what is applied (capped in enforce mode; refused in refuse mode).
  oci::Resources apply = resources;
  json decisions = json::array();
  const std::optional<policy::Saved> saved = path_exists(state_dir(g, id) + "/policy.json")
                                                 ? std::optional(policy::Saved::read(state_dir(g, id)))
                                                 : std::nullopt;
  if (saved && saved->policy.is_object()) {
    oci::Resources merged = st.spec.linux.resources;
    merged.update(resources);
    json config = st.config;
    config["linux"]["resources"] = oci::to_json(merged);
    policy::ApplyContext ctx;
    ctx.policy_name = saved->policy_name;
    policy::Result pr = policy::evaluate(saved->policy, config, ctx);
    std::string refused;
    for (const auto& d : pr.decisions) {
      if (!starts_with(d.value("path", ""), "linux.resources")) continue;
      if (d.value("action", "") == "refused") refused += "\n  " + d.value("detail", "");
      decisions.push_back(d);
    }
    if (!refused.empty()) throw Error("update refused by " + ctx.policy_name + ":" + refused);
    // Each group the update gives is applied as the policy enforces it
    // (the devices stay as given).
    const oci::Resources enforced =
        oci::parse_resources(pr.config["linux"]["resources"], "enforced linux.resources");
    auto take = [](auto& to, const auto& from, const auto& given) {
      if (given != std::remove_cvref_t<decltype(given)>{}) to = from;
    };
    take(apply.memory, enforced.memory, resources.memory);
    take(apply.cpu, enforced.cpu, resources.cpu);
    take(apply.pids, enforced.pids, resources.pids);
    take(apply.block_io, enforced.block_io, resources.block_io);
    take(apply.hugepage_limits, enforced.hugepage_limits, resources.hugepage_limits);
    take(apply.network, enforced.network, resources.network);
    take(apply.rdma, enforced.rdma, resources.rdma);
    take(apply.unified, enforced.unified, resources.unified);
  }
  cgroup_of(st)->set(apply);
  oci::Resources now = st.spec.linux.resources;
  now.update(apply);
  st.config["linux"]["resources"] = oci::to_json(now);
  state::save(g.root, st);
  control::notify(state_dir(g, id), control::Updated{oci::to_json(apply), decisions});
}

std::vector<pid_t> pids(const Global& g, const std::string& id) {
  auto st = state::load(g.root, id);
  std::vector<pid_t> out;
  if (state::status(g.root, st) == "stopped") return out;
  for (pid_t p : cgroup_of(st)->pids())
    if (p != st.sentinel_pid) out.push_back(p);
  return out;
}

json stats(const Global& g, const std::string& id) {
  auto st = state::load(g.root, id);
  if (state::status(g.root, st) == "stopped") throw Error("container not running");
  return cgroup_of(st)->stats();
}

void events(const Global& g, const std::string& id, bool stats_once, int interval_ms) {
  auto st = state::load(g.root, id);
  if (state::status(g.root, st) == "stopped") throw Error("container with id " + id + " is not running");
  auto cg = cgroup_of(st);
  if (stats_once) {
    std::cout << json{{"type", "stats"}, {"id", id}, {"data", cg->stats()}}.dump() << std::endl;
    return;
  }
  uint64_t ooms = cg->oom_kill_count();
  auto last = std::chrono::steady_clock::now() - std::chrono::milliseconds(interval_ms);
  while (state::status(g.root, st) != "stopped") {
    uint64_t now_ooms = cg->oom_kill_count();
    if (now_ooms > ooms) {
      std::cout << json{{"type", "oom"}, {"id", id}}.dump() << std::endl;
      ooms = now_ooms;
    }
    if (std::chrono::steady_clock::now() - last >= std::chrono::milliseconds(interval_ms)) {
      try {
        std::cout << json{{"type", "stats"}, {"id", id}, {"data", cg->stats()}}.dump() << std::endl;
      } catch (const std::exception& e) {
        log::warn(std::string("events: ") + e.what());
      }
      last = std::chrono::steady_clock::now();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

json exec_process_from_args(const Global& g, const std::string& id, const std::vector<std::string>& args,
                            const std::string& cwd, const std::vector<std::string>& env,
                            const std::string& user, bool tty,
                            const std::vector<std::string>& additional_gids,
                            const std::vector<std::string>& caps, bool no_new_privs) {
  auto st = state::load(g.root, id);
  json p = st.config["process"];
  if (args.empty()) throw Error("exec: no command given (args or --process required)");
  p["args"] = args;
  p["terminal"] = tty;
  if (!cwd.empty()) p["cwd"] = cwd;
  for (const auto& e : env) p["env"].push_back(e);
  if (!user.empty()) {
    auto parts = split(user, ':');
    auto uid = parse_uint(parts[0]);
    if (!uid) throw Error("exec --user: \"" + user + "\" must be uid[:gid] (numeric)");
    p["user"]["uid"] = *uid;
    if (parts.size() > 1) {
      auto gid = parse_uint(parts[1]);
      if (!gid) throw Error("exec --user: \"" + user + "\" must be uid[:gid] (numeric)");
      p["user"]["gid"] = *gid;
    } else {
      p["user"]["gid"] = 0;
    }
  }
  for (const auto& gid : additional_gids) {
    auto v = parse_uint(gid);
    if (!v) throw Error("exec --additional-gids: \"" + gid + "\" is not a number");
    p["user"]["additionalGids"].push_back(*v);
  }
  for (const auto& c : caps)
    for (const char* set : {"bounding", "effective", "permitted"}) p["capabilities"][set].push_back(c);
  if (no_new_privs) p["noNewPrivileges"] = true;
  return p;
}

int exec(const Global& g, const ExecOptions& o) {
  auto st = state::load(g.root, o.id);
  std::string status = state::status(g.root, st);
  if (status == "stopped") throw Error("cannot exec in a stopped container");
  if (status == "paused") throw Error("cannot exec in a paused container");
  if (!st.spec_error.empty()) throw Error("container " + o.id + ": its stored config: " + st.spec_error);
  // The exec's process, read as create reads config.process (one parser):
  // everything below, the policy included, works on this.
  oci::Process p = oci::parse_process(o.process, "exec process");
  const bool terminal = p.terminal;
  if (terminal && o.console_socket.empty() && o.detach)
    throw Error("cannot allocate tty if agentshim will detach without setting console socket");
  if (!terminal && !o.console_socket.empty())
    throw Error("cannot use console socket if agentshim will not allocate tty");
  // Inherit the container's security settings where the exec process is silent.
  const oci::Process& cproc = st.spec.process;
  if (!p.no_new_privileges) p.no_new_privileges = cproc.no_new_privileges;
  if (!p.capabilities) p.capabilities = cproc.capabilities;
  if (p.rlimits.empty()) p.rlimits = cproc.rlimits;
  // The policy's exec-relevant parts (capabilities, no_new_privs, seccomp,
  // proxy environment), as create saved them.
  std::optional<policy::ExecSettings> exec_policy;
  json exec_decisions = json::array();
  if (path_exists(state_dir(g, o.id) + "/policy.json")) {
    try {
      exec_policy = policy::Saved::read(state_dir(g, o.id)).exec;
    } catch (const std::exception& e) {
      throw Error("container " + o.id + ": " + e.what());
    }
    exec_decisions = policy::apply_exec(*exec_policy, p);
  }
  auto cg = cgroup_of(st);
  UniqueFd console, console_peer;
  if (terminal && o.console_socket.empty()) {
    // As runc: no --console-socket (and not detached) means we hold the
    // pty's master and relay it to our stdio.
    auto pair = make_socketpair(SOCK_STREAM);
    console_peer = std::move(pair.first);
    console = std::move(pair.second);
    // The pty gets our terminal's size before the program runs (runc sizes
    // it after the start, so a program's first TIOCGWINSZ may see 0x0).
    struct winsize ws {};
    if (!p.console_size && ::ioctl(0, TIOCGWINSZ, &ws) == 0)
      p.console_size = oci::ConsoleSize{ws.ws_row, ws.ws_col};
  } else if (terminal) {
    console = connect_console(o.console_socket);
  }
  // The exec process as assembled (given, the container's security settings,
  // the policy's): what the process below is made from.
  process::check_capabilities(p);
  // The init's namespaces (those that are not ours), opened before
  // anything else can race: joined as stage1 joins a config's.
  stage1::Namespaces ns;
  for (const auto& nt : oci::namespace_types()) {
    std::string self = "/proc/self/ns/" + std::string(nt.proc);
    std::string theirs = "/proc/" + std::to_string(st.init_pid) + "/ns/" + nt.proc;
    struct stat a {
    }, b{};
    if (::stat(self.c_str(), &a) < 0 || ::stat(theirs.c_str(), &b) < 0) continue;
    if (a.st_ino == b.st_ino && a.st_dev == b.st_dev) continue;
    UniqueFd fd(::open(theirs.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) throw_errno("open " + theirs);
    ns.join[nt.name] = std::move(fd);
  }
  if (!state::process_alive(st.init_pid, st.init_start)) throw Error("cannot exec in a stopped container");
  // Exec session recording: the process loads the exec observer's filter
  // like the init and hands its listener(s) back over `obs` before its
  // execve; we pass them to the supervisor (control::ExecObserve), whose
  // ExecObserver records every execve of the session, tagged with its id.
  bool observe = exec_policy && exec_policy->observe_exec;
  std::string session = observe ? control::new_session_id() : "";
  FdPair obs;
  if (observe) obs = make_socketpair(SOCK_SEQPACKET);
  auto err_pipe = make_pipe(O_CLOEXEC);
  auto pid_pipe = make_pipe(O_CLOEXEC);
  std::cout.flush();
  pid_t mid = ::fork();
  if (mid < 0) throw_errno("fork exec");
  if (mid == 0) {
    // Intermediate: join cgroup (host paths), then namespaces, then clone the
    // process as the CLI's child so it lands in the container's pid namespace.
    try {
      err_pipe.first.reset();
      pid_pipe.first.reset();
      obs.first.reset();
      console_peer.reset();
      // Not dumpable before entering the container: its root must not get
      // at this process (running the host's agentshim binary) through
      // /proc/<pid>/exe, /mem or ptrace (the CVE-2019-5736 shape). execve
      // of the user's program makes it dumpable again.
      if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) throw_errno("prctl(PR_SET_DUMPABLE, 0)");
      // The v1 hierarchies by moving ourselves, the v2 one by creating the
      // process in it (no grace period either way; see cgroups.h), unless
      // we enter a user namespace: then everything now, as host root.
      auto target = cg->join_for_clone(ns.join.count("user") > 0);
      stage1::enter_namespaces(ns, target, {});
      pid_t child = cgroups::clone_parent_into(target);
      if (child < 0) throw_errno("clone exec process");
      if (child == 0) {
        // The CLI reads the pid pipe to EOF before it forwards our
        // observer listener to the supervisor, and our execve waits for
        // that listener: holding the write end until execve would deadlock.
        pid_pipe.second.reset();
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        if (terminal) rootfs::setup_console(console.get(), p, false);
        console.reset();
        process::Finalize fin;
        if (const json* sc = st.spec.seccomp()) fin.seccomp.push_back(*sc);
        if (exec_policy && exec_policy->extra_seccomp.is_object())
          fin.seccomp.push_back(exec_policy->extra_seccomp);
        fin.observe_exec = observe;
        const std::string path = init::become_process(
            p, fin, o.preserve_fds, [&obs](const std::vector<process::Listener>& listeners) {
              if (!obs.second) return;
              // Before execve: that call already waits for the supervisor.
              json kinds = json::array();
              std::vector<int> raw;
              for (const auto& l : listeners) {
                kinds.push_back(l.kind);
                raw.push_back(l.fd);
              }
              send_fds(obs.second.get(), kinds.dump(), raw.data(), static_cast<int>(raw.size()));
              obs.second.reset();
            });
        process::exec(path, p);
      }
      std::string pid = std::to_string(child);
      write_all(pid_pipe.second.get(), pid, "exec pid pipe");
      ::_exit(0);
    } catch (const std::exception& e) {
      std::string m = e.what();
      ssize_t r = ::write(err_pipe.second.get(), m.data(), m.size());
      (void)r;
      ::_exit(1);
    }
  }
  err_pipe.second.reset();
  pid_pipe.second.reset();
  obs.second.reset();
  console.reset();
  int mst = 0;
  ::waitpid(mid, &mst, 0);
  std::string pidstr = read_all(pid_pipe.first.get(), "exec pid pipe");
  auto child = parse_int(pidstr);
  if (obs.first && child) {
    std::string ferr;
    if (!forward_exec_listeners(state_dir(g, o.id), obs.first.get(), session, static_cast<pid_t>(*child),
                                ferr)) {
      ::kill(static_cast<pid_t>(*child), SIGKILL);
      ::waitpid(static_cast<pid_t>(*child), nullptr, 0);
      throw Error("exec: " + ferr + " (the process was killed before it ran)");
    }
  }
  // Errors before execve arrive on err_pipe (from the intermediate or the
  // process itself); EOF without data means execve succeeded.
  std::string err = read_all(err_pipe.first.get(), "exec error pipe");
  if (!err.empty()) {
    if (child) ::waitpid(static_cast<pid_t>(*child), nullptr, 0);
    throw Error(err);
  }
  if (!child) throw Error("exec: could not start the process in container " + o.id);
  pid_t pid = static_cast<pid_t>(*child);
  std::unique_ptr<TtyRelay> relay;
  if (console_peer) {
    std::vector<UniqueFd> fds;
    recv_fds(console_peer.get(), fds);
    if (fds.empty()) throw Error("exec: the process did not send its pty master");
    relay = std::make_unique<TtyRelay>(std::move(fds[0]));
  }
  write_pid_file(o.pid_file, pid);
  control::Exec note;
  note.pid = pid;
  note.args = p.args;
  note.cwd = p.cwd_or_root();
  note.terminal = terminal;
  note.user = oci::user_json(p);
  note.policy_decisions = exec_decisions;
  note.session = session;
  control::notify(state_dir(g, o.id), note);
  if (o.detach) return 0;
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH}) sigaddset(&set, s);
  sigaddset(&set, SIGCHLD);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  for (;;) {
    int status = 0;
    pid_t p = ::waitpid(pid, &status, WNOHANG);
    if (p == pid) {
      if (relay) relay->drain();
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (relay && !relay->pump(50)) relay.reset();
    struct timespec ts {
      0, relay ? 0 : 50 * 1000 * 1000
    };
    siginfo_t si{};
    int sig = sigtimedwait(&set, &si, &ts);
    if (sig == SIGWINCH && relay)
      relay->resize();
    else if (sig > 0 && sig != SIGCHLD)
      ::kill(pid, sig);
  }
}

json default_spec(bool rootless) {
  json caps = {"CAP_CHOWN",  "CAP_DAC_OVERRIDE", "CAP_FOWNER",  "CAP_FSETID",           "CAP_KILL",
               "CAP_SETGID", "CAP_SETUID",       "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT"};
  json spec = {
      {"ociVersion", oci::kOciVersion},
      {"process",
       {{"terminal", true},
        {"user", {{"uid", 0}, {"gid", 0}}},
        {"args", {"sh"}},
        {"env", {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"}},
        {"cwd", "/"},
        {"capabilities", {{"bounding", caps}, {"effective", caps}, {"permitted", caps}}},
        {"rlimits", {{{"type", "RLIMIT_NOFILE"}, {"hard", 1024}, {"soft", 1024}}}},
        {"noNewPrivileges", true}}},
      {"root", {{"path", "rootfs"}, {"readonly", true}}},
      {"hostname", "agentshim"},
      {"mounts",
       {{{"destination", "/proc"},
         {"type", "proc"},
         {"source", "proc"},
         {"options", {"nosuid", "noexec", "nodev"}}},
        {{"destination", "/dev"},
         {"type", "tmpfs"},
         {"source", "tmpfs"},
         {"options", {"nosuid", "strictatime", "mode=755", "size=65536k"}}},
        {{"destination", "/dev/pts"},
         {"type", "devpts"},
         {"source", "devpts"},
         {"options", {"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}}},
        {{"destination", "/dev/shm"},
         {"type", "tmpfs"},
         {"source", "shm"},
         {"options", {"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}}},
        {{"destination", "/dev/mqueue"},
         {"type", "mqueue"},
         {"source", "mqueue"},
         {"options", {"nosuid", "noexec", "nodev"}}},
        {{"destination", "/sys"},
         {"type", "sysfs"},
         {"source", "sysfs"},
         {"options", {"nosuid", "noexec", "nodev", "ro"}}},
        {{"destination", "/sys/fs/cgroup"},
         {"type", "cgroup"},
         {"source", "cgroup"},
         {"options", {"nosuid", "noexec", "nodev", "relatime", "ro"}}},
        {{"destination", "/tmp"},
         {"type", "tmpfs"},
         {"source", "tmpfs"},
         {"options", {"nosuid", "nodev", "mode=1777", "size=65536k"}}}}},
      {"linux",
       {{"resources",
         {{"devices", {{{"allow", false}, {"access", "rwm"}}}},
          {"pids", {{"limit", 1024}}},
          {"memory", {{"limit", 1LL << 30}}},
          {"cpu", {{"quota", 200000}, {"period", 100000}}}}},
        {"namespaces",
         {{{"type", "pid"}},
          {{"type", "network"}},
          {{"type", "ipc"}},
          {{"type", "uts"}},
          {{"type", "mount"}},
          {{"type", "cgroup"}}}},
        {"maskedPaths",
         {"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
          "/sys/devices/virtual/powercap"}},
        {"readonlyPaths", {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}}}}};
  if (rootless) {
    spec["linux"]["namespaces"].push_back({{"type", "user"}});
    spec["linux"]["uidMappings"] = {{{"containerID", 0}, {"hostID", ::getuid()}, {"size", 1}}};
    spec["linux"]["gidMappings"] = {{{"containerID", 0}, {"hostID", ::getgid()}, {"size", 1}}};
    spec["linux"].erase("resources");
  }
  return spec;
}

json features() {
  json ns = json::array();
  for (const auto& t : oci::namespace_types()) ns.push_back(t.name);
  json caps = json::array();
  for (int c = 0; c <= oci::last_capability(); c++) caps.push_back(oci::capability_name(c));
  return {
      {"ociVersionMin", "1.0.0"},
      {"ociVersionMax", oci::kOciVersionMax},
      {"hooks", {"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"}},
      {"mountOptions",
       {"async",       "atime",      "bind",      "defaults",   "dev",           "diratime",    "dirsync",
        "exec",        "lazytime",   "loud",      "mand",       "noatime",       "nodev",       "nodiratime",
        "noexec",      "nolazytime", "nomand",    "norelatime", "nostrictatime", "nosuid",      "private",
        "rbind",       "relatime",   "remount",   "ro",         "rprivate",      "rshared",     "rslave",
        "runbindable", "rw",         "shared",    "silent",     "slave",         "strictatime", "suid",
        "sync",        "tmpcopyup",  "unbindable"}},
      {"linux",
       {{"namespaces", ns},
        {"capabilities", caps},
        {"cgroup", {{"v1", true}, {"v2", true}, {"systemd", false}, {"systemdUser", false}}},
        {"seccomp",
         {{"enabled", true},
          {"actions",
           {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"}},
          {"operators",
           {"SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ",
            "SCMP_CMP_NE"}},
          {"archs", {"SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"}},
          {"knownFlags",
           {"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_LOG"}},
          {"supportedFlags",
           {"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_LOG"}}}},
        {"apparmor", {{"enabled", false}}},
        {"selinux", {{"enabled", false}}},
        {"intelRdt", {{"enabled", false}}}}},
      {"annotations",
       {{"org.opencontainers.runc.checkpoint.enabled", "false"},
        {"dev.agentshim.version", AGENTSHIM_VERSION},
        {"dev.agentshim.commit", build_commit()}}},
  };
}

}  // namespace agentshim::container
