#include "sandbox/stage1.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <map>

#include "common/error.h"
#include "sandbox/init.h"
#include "sandbox/oci.h"
#include "sandbox/sync.h"

namespace agentshim::stage1 {

using json = nlohmann::json;
using setup::Setup;

bool enter_namespaces(Namespaces& ns, cgroups::CloneTarget& cg, const std::function<void()>& new_userns) {
  int create = ns.create;
  const auto user = ns.join.find("user");
  if (user != ns.join.end()) {
    if (::setns(user->second.get(), CLONE_NEWUSER) < 0) throw_errno("setns user namespace");
  } else if (create & CLONE_NEWUSER) {
    if (::unshare(CLONE_NEWUSER) < 0) throw_errno("unshare user namespace");
    if (new_userns) new_userns();
  }
  if (user != ns.join.end() || (create & CLONE_NEWUSER)) {
    if (::setresgid(0, 0, 0) < 0) throw_errno("setresgid(0) in user namespace");
    if (::setresuid(0, 0, 0) < 0) throw_errno("setresuid(0) in user namespace");
  }
  create &= ~CLONE_NEWUSER;
  // A new cgroup namespace is made by the child itself, once it is in the
  // container's cgroups (it is born into the v2 one): its root must be the
  // container's cgroup, not ours.
  const bool new_cgroupns = (create & CLONE_NEWCGROUP) != 0;
  create &= ~CLONE_NEWCGROUP;
  // An existing cgroup namespace is entered by the child once born in the
  // container's cgroup (see cgroups::CloneTarget::cgroupns).
  if (auto it = ns.join.find("cgroup"); it != ns.join.end()) cg.cgroupns = it->second.get();
  for (const char* t : {"ipc", "uts", "network", "pid", "time", "mount"}) {
    auto it = ns.join.find(t);
    if (it == ns.join.end()) continue;
    if (::setns(it->second.get(), oci::namespace_by_name(t)->flag) < 0)
      throw_errno(std::string("setns ") + t + " namespace");
  }
  if (create && ::unshare(create) < 0) throw_errno("unshare namespaces");
  return new_cgroupns;
}

void run(Setup& s, int sock, cgroups::CloneTarget& cg) {
  try {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    // The init runs agentshim's own binary until it execs the user's
    // program: not dumpable, so nothing in the container can open it
    // through /proc/<pid>/exe or ptrace it (CVE-2019-5736).
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) throw_errno("prctl(PR_SET_DUMPABLE, 0)");
    // Open every namespace path first: joining one may hide the others.
    Namespaces ns;
    for (const auto& n : s.spec.linux.namespaces) {
      auto t = oci::namespace_by_name(n.type);
      if (!t) throw Error("unsupported namespace type \"" + n.type + "\"");
      if (n.path.empty()) {
        ns.create |= t->flag;
      } else {
        UniqueFd fd(::open(n.path.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd) throw_errno("open " + n.type + " namespace " + n.path);
        oci::check_identity(fd.get(), s.checked_namespaces, n.type,
                            "linux.namespaces " + n.type + " path " + n.path);
        ns.join[n.type] = std::move(fd);
      }
    }
    s.init_unshare_cgroupns = enter_namespaces(ns, cg, [sock] {
      sync::send(sock, sync::Userns{::getpid()});
      sync::expect<sync::UsernsOk>(sock, "supervisor went away while writing id maps");
    });
    // The init as our sibling (CLONE_PARENT: the supervisor reaps it), born
    // in the container's v2 cgroup.
    pid_t pid = cgroups::clone_parent_into(cg);
    if (pid < 0) throw_errno("clone container init");
    if (pid == 0) init::run(s, sock);
    sync::send(sock, sync::Init{pid});
    ::_exit(0);
  } catch (const std::exception& e) {
    try {
      sync::send(sock, sync::Failure{e.what()});
    } catch (...) {
    }
    ::_exit(1);
  }
}

}  // namespace agentshim::stage1
