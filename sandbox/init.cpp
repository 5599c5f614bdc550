#include "sandbox/init.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#include "common/error.h"
#include "sandbox/hooks.h"
#include "sandbox/oci.h"
#include "sandbox/process.h"
#include "sandbox/rootfs.h"
#include "sandbox/sync.h"

namespace agentshim::init {
namespace {

using setup::hook_state;
using json = nlohmann::json;
using setup::Setup;

void reset_signals() {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  for (int s = 1; s < NSIG; s++) {
    if (s == SIGKILL || s == SIGSTOP) continue;
    ::signal(s, SIG_DFL);
  }
}

}  // namespace

std::string become_process(const oci::Process& p, const process::Finalize& fin, int preserve_fds,
                           const std::function<void(const std::vector<process::Listener>&)>& hand_over) {
  process::apply_rlimits(p);
  std::string path = process::resolve_executable(p);
  // Descriptors beyond stdio and --preserve-fds do not reach the process.
  ::syscall(SYS_close_range, 3 + preserve_fds, ~0U, 4 /*CLOSE_RANGE_CLOEXEC*/);
  auto listeners = process::finalize(p, fin);
  hand_over(listeners);
  for (const auto& l : listeners) ::close(l.fd);
  return path;
}

void run(Setup& s, int sock) {
  try {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    reset_signals();
    prctl(PR_SET_NAME, "agentshim-init");
    if (s.init_unshare_cgroupns && ::unshare(CLONE_NEWCGROUP) < 0) throw_errno("unshare cgroup namespace");
    // Wait until the supervisor knows our pid (stage1 reports it after the
    // clone; without this the init could race ahead of that report).
    sync::expect<sync::InitOk>(sock, "supervisor went away before the init started");
    const oci::Spec& spec = s.spec;
    const oci::Process& proc = spec.process;
    // We inherited the supervisor's oom_score_adj (-1000): reset it.
    process::set_oom_score_adj(0, proc.oom_score_adj.value_or(0));

    // A session keyring of its own, so keys never leak between containers
    // (runc does the same unless --no-new-keyring).
    if (!s.no_new_keyring) {
      std::string name = "_ses." + s.id;
      if (::syscall(SYS_keyctl, 1 /*KEYCTL_JOIN_SESSION_KEYRING*/, name.c_str()) < 0 && errno != ENOSYS &&
          errno != EPERM && errno != EACCES)
        throw_errno("join session keyring");
    }
    // A joined uts namespace (a path) may be given a hostname too, as runc allows.
    bool new_uts = spec.has_namespace("uts");
    if (const std::string& h = spec.hostname; !h.empty()) {
      if (!new_uts) throw Error("config.json: hostname is set but the container has no new uts namespace");
      if (::sethostname(h.data(), h.size()) < 0) throw_errno("sethostname " + h);
    }
    if (const std::string& d = spec.domainname; !d.empty()) {
      if (::setdomainname(d.data(), d.size()) < 0) throw_errno("setdomainname " + d);
    }

    rootfs::Context rc;
    rc.spec = spec;
    rc.rootfs = s.rootfs;
    rc.userns = spec.has_new_namespace("user");
    rc.cgroupns = spec.has_new_namespace("cgroup");
    rc.checked = s.checked_sources;
    rc.cgroups = s.cgroup_mounts;

    // New or joined: either way the rootfs is set up inside it (as runc does).
    bool new_mnt = spec.has_namespace("mount");
    // In a new user namespace the container's root may not reach the bind
    // sources (nor, with userns "auto", the rootfs): the supervisor opens
    // them as host root in this mount namespace and hands the descriptors
    // over, as runc does. Their identity is still checked against the
    // policy's (rootfs::Context::checked) when each is mounted.
    const bool has_binds = spec.has_bind_mount();
    if (new_mnt && (s.attach_rootfs || (rc.userns && has_binds))) {
      std::vector<UniqueFd> fds;
      sync::send(sock, sync::Idmap{});
      // (sync::recv checks that one descriptor came per source, after the rootfs's.)
      auto ok = sync::expect<sync::IdmapOk>(
          sock, "supervisor went away while opening the rootfs and bind sources", &fds);
      if (ok.rootfs != s.attach_rootfs)
        throw Error(std::string("the supervisor ") + (ok.rootfs ? "attached" : "did not attach") +
                    " the rootfs, contrary to the setup");
      std::size_t first = 0;
      if (ok.rootfs) {
        // Reached through /proc/self/fd: no host directory on the way.
        rc.rootfs = "/proc/self/fd/" + std::to_string(fds[0].get());
        rc.rootfs_attached = true;
        first = 1;
      }
      for (std::size_t i = 0; i < ok.sources.size(); i++)
        rc.sources[ok.sources[i]] = "/proc/self/fd/" + std::to_string(fds[i + first].get());
      rc.held = std::move(fds);
    }
    if (new_mnt) {
      rootfs::prepare_root(rc);
      rootfs::mount_all(rc);
      rootfs::create_devices(rc);
    }
    sync::send(sock, sync::Hooks{});
    auto ok = sync::expect<sync::HooksOk>(sock, "supervisor went away during createRuntime hooks");
    hooks::run(spec, "createContainer", hook_state(s, "creating", ok.pid));
    if (new_mnt) {
      rootfs::enter(rc, s.no_pivot);
    } else {
      if (::chroot(s.rootfs.c_str()) < 0) throw_errno("chroot " + s.rootfs);
      if (::chdir("/") < 0) throw_errno("chdir /");
    }
    if (proc.terminal) {
      if (!s.console_sock) throw Error("process.terminal is true but no --console-socket was given");
      rootfs::setup_console(s.console_sock.get(), proc, new_mnt);
      s.console_sock.reset();
    }
    rootfs::apply_sysctls(spec);
    if (new_mnt) rootfs::finish(rc);
    oci::Process p = proc;
    p.env.insert(p.env.end(), s.extra_env.begin(), s.extra_env.end());

    // Everything that can fail or take time happens before `start` can
    // return (as runc does it): privileges dropped, seccomp loaded, its
    // listener handed to the supervisor. After the FIFO only hooks and
    // execve remain, so a signal sent right after `start` finds the process.
    process::Finalize fin;
    if (const json* sc = spec.seccomp()) fin.seccomp.push_back(*sc);
    if (!s.extra_seccomp.is_null() && !s.extra_seccomp.empty()) fin.seccomp.push_back(s.extra_seccomp);
    fin.observe_exec = s.observe_exec;
    if (s.prepared_seccomp) fin.prepared = &*s.prepared_seccomp;
    const std::string path =
        become_process(p, fin, s.preserve_fds, [sock](const std::vector<process::Listener>& listeners) {
          if (listeners.empty()) return;
          sync::Seccomp msg;
          std::vector<int> fds;
          for (const auto& l : listeners) {
            msg.kinds.push_back(l.kind);
            fds.push_back(l.fd);
          }
          sync::send(sock, msg, fds);
        });

    sync::send(sock, sync::Ready{});
    // Block until `start` opens the fifo for reading. Through the state
    // directory's descriptor, not /proc/self/fd: without a mount namespace
    // of its own the init has no /proc here.
    int w = ::openat(s.state_dirfd.get(), "exec.fifo", O_WRONLY | O_CLOEXEC);
    if (w < 0) throw_errno("open exec fifo");
    if (::write(w, "0", 1) != 1) throw_errno("write exec fifo");
    ::close(w);
    s.exec_fifo.reset();
    s.state_dirfd.reset();

    hooks::run(spec, "startContainer", hook_state(s, "running", 1));
    process::exec(path, p);
  } catch (const std::exception& e) {
    try {
      sync::send(sock, sync::Failure{e.what()});
    } catch (...) {
    }
    std::string m = std::string("agentshim: ") + e.what() + "\n";
    ssize_t r = ::write(2, m.data(), m.size());
    (void)r;
    ::_exit(127);
  }
}

}  // namespace agentshim::init
