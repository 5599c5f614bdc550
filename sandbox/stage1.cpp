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

void run(Setup& s, int sock, cgroups::CloneTarget& cg) {
  try {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    // The init runs agentshim's own binary until it execs the user's
    // program: not dumpable, so nothing in the container can open it
    // through /proc/<pid>/exe or ptrace it (CVE-2019-5736).
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) throw_errno("prctl(PR_SET_DUMPABLE, 0)");
    const auto& nss = s.spec.linux.namespaces;
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
        oci::check_identity(fd.get(), s.checked_namespaces, n.type,
                            "linux.namespaces " + n.type + " path " + n.path);
        join[n.type] = std::move(fd);
      }
    }
    if (join.count("user")) {
      if (::setns(join["user"].get(), CLONE_NEWUSER) < 0) throw_errno("setns user namespace");
    } else if (unshare_flags & CLONE_NEWUSER) {
      if (::unshare(CLONE_NEWUSER) < 0) throw_errno("unshare user namespace");
      sync::send(sock, sync::Userns{::getpid()});
      sync::expect<sync::UsernsOk>(sock, "supervisor went away while writing id maps");
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
