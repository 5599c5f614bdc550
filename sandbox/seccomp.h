// Seccomp filters from OCI linux.seccomp objects, compiled with libseccomp:
// every OCI action (including SCMP_ACT_NOTIFY, SCMP_ACT_KILL_PROCESS,
// SCMP_ACT_LOG), argument comparisons (all seven operators, runc's
// AND-within-a-rule / OR-across-a-repeated-index semantics), extra
// architectures and filter flags. Errors name the field that was wrong.
//
// The exec observer (the record's source of "process.exec" events) is a
// SCMP_ACT_NOTIFY rule on execve and execveat. The kernel allows one
// user-notification listener per filter tree, so it is merged into the
// first OCI filter (or stands alone when there is none); when the caller's
// own filter already uses SCMP_ACT_NOTIFY (listenerPath), its listener wins
// and exec observation is reported as unavailable.
//
// A Filter can also be exported as the raw BPF program and seccomp(2) flags
// libseccomp would load (Program), so the expensive part (rule_add, BPF
// generation) runs ahead of time in another process and the container's
// init only makes the system call (load_program).
#pragma once

#include <linux/filter.h>
#include <seccomp.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace agentshim::seccomp {

using json = nlohmann::json;

// A compiled filter as the kernel takes it: the program and the flags of
// seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog). Plain data (copied by
// fork, needs no libseccomp to load).
struct Program {
  std::vector<sock_filter> insns;
  unsigned flags = 0;     // SECCOMP_FILTER_FLAG_*
  bool listener() const;  // NEW_LISTENER: loading returns a notification fd
};

class Filter {
 public:
  Filter() = default;
  Filter(scmp_filter_ctx ctx, bool notify, int max_nr = -1, bool denies_by_errno = false)
      : ctx_(ctx), notify_(notify), max_nr_(max_nr), denies_by_errno_(denies_by_errno) {}
  ~Filter();
  Filter(Filter&& o) noexcept
      : ctx_(o.ctx_), notify_(o.notify_), max_nr_(o.max_nr_), denies_by_errno_(o.denies_by_errno_) {
    o.ctx_ = nullptr;
  }
  Filter& operator=(Filter&& o) noexcept;
  Filter(const Filter&) = delete;
  Filter& operator=(const Filter&) = delete;

  // Install on the calling thread (all threads with the TSYNC flag). Returns
  // the user-notification fd when the filter uses SCMP_ACT_NOTIFY, else -1.
  int load();
  // The BPF program seccomp_load would generate for this filter (via
  // seccomp_export_bpf) and the flags it would pass: TSYNC, LOG and
  // SPEC_ALLOW from the profile's attributes, NEW_LISTENER when the filter
  // has NOTIFY rules (TSYNC_ESRCH with TSYNC and NEW_LISTENER, as libseccomp
  // does). An empty Program for an empty Filter.
  Program bpf() const;
  bool uses_notify() const { return notify_; }
  // Human-readable pseudo filter code (for `agentshim policy explain`, tests).
  std::string pfc() const;
  scmp_filter_ctx ctx() const { return ctx_; }
  // The highest native syscall number any rule names (-1: none).
  int max_nr() const { return max_nr_; }
  // The default action is SCMP_ACT_ERRNO (a syscall the profile does not
  // name fails with an errno rather than being allowed or killing).
  bool denies_by_errno() const { return denies_by_errno_; }

 private:
  scmp_filter_ctx ctx_ = nullptr;
  bool notify_ = false;
  int max_nr_ = -1;
  bool denies_by_errno_ = false;
};

// Load a raw program on the calling thread (needs no_new_privs or
// CAP_SYS_ADMIN): one seccomp(2) call, no libseccomp. Returns the
// user-notification fd (close-on-exec, >= 3) with NEW_LISTENER, else -1
// (also for an empty program, which loads nothing). Throws SysError.
int load_program(const Program& p);

// Syscalls newer than a profile knows must fail with ENOSYS, not the
// profile's default errno (EPERM): libc and runtimes probe new syscalls and
// fall back only on ENOSYS (runc and Docker do the same). The stub is a
// second filter, loaded after the profiles: for the native architecture it
// returns ERRNO(ENOSYS) for every syscall number above `max_nr` (the highest
// any loaded filter names) and allows the rest, so the earlier filters
// decide. For two ERRNO results the kernel returns the most recently loaded
// filter's errno; KILL and TRAP still win. Other architectures (and x32
// numbers) are left to the profiles.
// Load the stub on the calling thread (needs no_new_privs or CAP_SYS_ADMIN).
// Returns false when an already loaded profile denies seccomp(2) itself
// (then newer syscalls keep that profile's errno); throws on other errors.
bool load_enosys_stub(int max_nr);
// Run the stub's program in user space over (arch, nr): the value the kernel
// would return. For unit tests.
uint32_t run_enosys_stub(int max_nr, uint32_t arch, int nr);

// The terminal guard: loaded into the init and every exec'd process
// whatever the config's or the policy's seccomp settings say (none, a
// relaxed or a replaced profile), before them (a profile that denies
// seccomp(2) cannot keep it out). It allows everything except
// ioctl(fd, TIOCSTI) and ioctl(fd, TIOCLINUX), which fail with EPERM:
// pushing bytes into a terminal's input queue (TIOCSTI) or pasting the
// console selection (TIOCLINUX subcode 3) runs commands in whatever reads
// that terminal next, which is the operator's shell when the container
// got hold of the operator's tty (an inherited stdio fd). Only the low 32
// bits of the request are compared (the kernel takes `unsigned int cmd`, so
// high bits must not slip past), on the native, i386 and x32 ABIs. An
// ERRNO result wins over every action of the other filters except KILL and
// TRAP, which deny as well.
Filter terminal_guard();

// Validate and compile. With observe_exec, execve/execveat get
// SCMP_ACT_NOTIFY unless the config gives them a rule of its own.
Filter compile(const json& oci_seccomp, bool observe_exec = false);
// Allow everything; notify on execve/execveat.
Filter exec_observer();
// Does this OCI seccomp object use SCMP_ACT_NOTIFY anywhere?
bool uses_notify(const json& oci_seccomp);

// Exposed for tests and for the policy engine.
uint32_t parse_action(const std::string& name, const json& errno_ret, uint32_t default_errno,
                      const std::string& where);
uint32_t parse_arch(const std::string& name, const std::string& where);

}  // namespace agentshim::seccomp
