// OCI linux.seccomp → libseccomp filter.
#include "sandbox/seccomp.h"

#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "common/error.h"
#include "common/fd.h"
#include "common/log.h"
#include "common/util.h"

namespace agentshim::seccomp {

Filter::~Filter() {
  if (ctx_) seccomp_release(ctx_);
}

Filter& Filter::operator=(Filter&& o) noexcept {
  if (this != &o) {
    if (ctx_) seccomp_release(ctx_);
    ctx_ = o.ctx_;
    notify_ = o.notify_;
    max_nr_ = o.max_nr_;
    denies_by_errno_ = o.denies_by_errno_;
    o.ctx_ = nullptr;
  }
  return *this;
}

int Filter::load() {
  if (!ctx_) return -1;
  int rc = seccomp_load(ctx_);
  if (rc < 0) throw SysError("seccomp_load", -rc);
  if (!notify_) return -1;
  int fd = seccomp_notify_fd(ctx_);
  if (fd < 0) throw SysError("seccomp_notify_fd", -fd);
  int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (dup < 0) throw_errno("dup seccomp notify fd");
  return dup;  // the ctx keeps (and closes on release) its own copy
}

std::string Filter::pfc() const {
  if (!ctx_) return "";
  // seccomp_export_pfc writes to a file descriptor; a memory stream
  // (open_memstream) has none, so use a memfd.
  UniqueFd fd(::memfd_create("agentshim-seccomp-pfc", MFD_CLOEXEC));
  if (!fd) throw_errno("memfd_create");
  int rc = seccomp_export_pfc(ctx_, fd.get());
  if (rc < 0) throw SysError("seccomp_export_pfc", -rc);
  if (::lseek(fd.get(), 0, SEEK_SET) < 0) throw_errno("lseek");
  return read_all(fd.get(), "seccomp pfc");
}

bool Program::listener() const {
  return (flags & SECCOMP_FILTER_FLAG_NEW_LISTENER) != 0;
}

Program Filter::bpf() const {
  Program p;
  if (!ctx_) return p;
  // libseccomp 2.5 exports only to a file descriptor (see pfc()).
  UniqueFd fd(::memfd_create("agentshim-seccomp-bpf", MFD_CLOEXEC));
  if (!fd) throw_errno("memfd_create");
  int rc = seccomp_export_bpf(ctx_, fd.get());
  if (rc < 0) throw SysError("seccomp_export_bpf", -rc);
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) throw_errno("fstat seccomp bpf");
  auto size = static_cast<std::size_t>(st.st_size);
  if (size == 0 || size % sizeof(sock_filter) != 0)
    throw Error("seccomp_export_bpf wrote " + std::to_string(size) + " bytes, not a BPF program");
  if (size / sizeof(sock_filter) > BPF_MAXINSNS)
    throw Error("the seccomp filter has " + std::to_string(size / sizeof(sock_filter)) +
                " BPF instructions; the kernel takes at most " + std::to_string(BPF_MAXINSNS));
  p.insns.resize(size / sizeof(sock_filter));
  std::size_t got = 0;
  while (got < size) {
    ssize_t n =
        ::pread(fd.get(), reinterpret_cast<char*>(p.insns.data()) + got, size - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("read seccomp bpf");
    if (n == 0) throw Error("seccomp bpf: short read");
    got += static_cast<std::size_t>(n);
  }
  // The flags seccomp_load would pass (CTL_NNP is 0: see new_ctx()).
  auto attr = [&](scmp_filter_attr a) {
    uint32_t v = 0;
    int r = seccomp_attr_get(ctx_, a, &v);
    if (r < 0) throw SysError("seccomp_attr_get", -r);
    return v != 0;
  };
  if (attr(SCMP_FLTATR_CTL_TSYNC)) p.flags |= SECCOMP_FILTER_FLAG_TSYNC;
  if (attr(SCMP_FLTATR_CTL_LOG)) p.flags |= SECCOMP_FILTER_FLAG_LOG;
  if (attr(SCMP_FLTATR_CTL_SSB)) p.flags |= SECCOMP_FILTER_FLAG_SPEC_ALLOW;
  if (notify_) p.flags |= SECCOMP_FILTER_FLAG_NEW_LISTENER;
  // The kernel refuses TSYNC with NEW_LISTENER unless a failed thread sync
  // is reported as ESRCH (rather than by a thread id, the listener's place).
  if ((p.flags & SECCOMP_FILTER_FLAG_TSYNC) && (p.flags & SECCOMP_FILTER_FLAG_NEW_LISTENER))
    p.flags |= SECCOMP_FILTER_FLAG_TSYNC_ESRCH;
  return p;
}

int load_program(const Program& p) {
  if (p.insns.empty()) return -1;
  struct sock_fprog prog {};
  prog.len = static_cast<unsigned short>(p.insns.size());
  prog.filter = const_cast<sock_filter*>(p.insns.data());
  long rc = ::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, p.flags, &prog);
  if (rc < 0) throw_errno("seccomp(SECCOMP_SET_MODE_FILTER)");
  if (p.listener()) {
    // The kernel's listener fd is close-on-exec; keep it off stdio.
    int fd = static_cast<int>(rc);
    if (fd < 3) {
      int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
      int err = errno;
      ::close(fd);
      if (dup < 0) throw_errno("dup seccomp notify fd", err);
      fd = dup;
    }
    return fd;
  }
  // TSYNC without TSYNC_ESRCH: a positive result is the thread that could
  // not be synchronized (libseccomp reports ESRCH too).
  if (rc > 0) throw SysError("seccomp(SECCOMP_SET_MODE_FILTER, TSYNC): thread " + std::to_string(rc), ESRCH);
  return -1;
}

uint32_t parse_action(const std::string& name, const json& errno_ret, uint32_t default_errno,
                      const std::string& where) {
  uint32_t err = default_errno;
  if (!errno_ret.is_null()) {
    std::string ew = where;
    if (ew.size() > 14 && ew.substr(ew.size() - 14) == ".defaultAction")
      ew = ew.substr(0, ew.size() - 14) + ".defaultErrnoRet";
    else if (ew.size() > 7 && ew.substr(ew.size() - 7) == ".action")
      ew = ew.substr(0, ew.size() - 7) + ".errnoRet";
    else
      ew += ".errnoRet";
    if (!errno_ret.is_number_unsigned() || errno_ret.get<uint64_t>() >= 4096)
      throw Error(ew + ": must be an errno value (0..4095)");
    err = errno_ret.get<uint32_t>();
  }
  if (name == "SCMP_ACT_KILL" || name == "SCMP_ACT_KILL_THREAD") return SCMP_ACT_KILL_THREAD;
  if (name == "SCMP_ACT_KILL_PROCESS") return SCMP_ACT_KILL_PROCESS;
  if (name == "SCMP_ACT_TRAP") return SCMP_ACT_TRAP;
  if (name == "SCMP_ACT_ERRNO") return SCMP_ACT_ERRNO(err);
  if (name == "SCMP_ACT_TRACE") return SCMP_ACT_TRACE(err);
  if (name == "SCMP_ACT_ALLOW") return SCMP_ACT_ALLOW;
  if (name == "SCMP_ACT_LOG") return SCMP_ACT_LOG;
  if (name == "SCMP_ACT_NOTIFY") return SCMP_ACT_NOTIFY;
  throw Error(where + ": unknown seccomp action \"" + name + "\"");
}

uint32_t parse_arch(const std::string& name, const std::string& where) {
  std::string n = name;
  if (starts_with(n, "SCMP_ARCH_")) n = n.substr(10);
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return std::tolower(c); });
  uint32_t a = seccomp_arch_resolve_name(n.c_str());
  if (a == 0) throw Error(where + ": unknown seccomp architecture \"" + name + "\"");
  return a;
}

namespace {

scmp_compare parse_op(const std::string& op, const std::string& where) {
  static const std::map<std::string, scmp_compare> ops = {
      {"SCMP_CMP_NE", SCMP_CMP_NE}, {"SCMP_CMP_LT", SCMP_CMP_LT}, {"SCMP_CMP_LE", SCMP_CMP_LE},
      {"SCMP_CMP_EQ", SCMP_CMP_EQ}, {"SCMP_CMP_GE", SCMP_CMP_GE}, {"SCMP_CMP_GT", SCMP_CMP_GT},
      {"SCMP_CMP_MASKED_EQ", SCMP_CMP_MASKED_EQ}};
  auto it = ops.find(op);
  if (it == ops.end()) throw Error(where + ".op: unknown comparison \"" + op + "\"");
  return it->second;
}

bool action_is_notify(const std::string& a) { return a == "SCMP_ACT_NOTIFY"; }

void check(int rc, const std::string& what) {
  if (rc < 0) throw SysError(what, -rc);
}

scmp_filter_ctx new_ctx(uint32_t def) {
  scmp_filter_ctx ctx = seccomp_init(def);
  if (!ctx) throw Error("seccomp_init failed (libseccomp could not allocate a filter)");
  // agentshim sets no_new_privs itself (process.noNewPrivileges); libseccomp
  // must not force it on.
  int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
  if (rc < 0) {
    seccomp_release(ctx);
    throw SysError("seccomp_attr_set(SCMP_FLTATR_CTL_NNP)", -rc);
  }
  return ctx;
}

// A scoped ctx until ownership moves into a Filter.
struct Ctx {
  scmp_filter_ctx c;
  explicit Ctx(uint32_t def) : c(new_ctx(def)) {}
  ~Ctx() {
    if (c) seccomp_release(c);
  }
  scmp_filter_ctx release() { return std::exchange(c, nullptr); }
};

void add_exec_notify(scmp_filter_ctx ctx, const std::set<int>& skip) {
  for (const char* name : {"execve", "execveat"}) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR || skip.count(nr)) continue;
    check(seccomp_rule_add(ctx, SCMP_ACT_NOTIFY, nr, 0), std::string("seccomp_rule_add(") + name + ", NOTIFY)");
  }
}

}  // namespace

bool uses_notify(const json& s) {
  if (!s.is_object()) return false;
  if (action_is_notify(s.value("defaultAction", ""))) return true;
  if (s.contains("syscalls") && s["syscalls"].is_array())
    for (const auto& sc : s["syscalls"])
      if (sc.is_object() && action_is_notify(sc.value("action", ""))) return true;
  return false;
}

Filter compile(const json& s, bool observe_exec) {
  const std::string base = "linux.seccomp";
  if (!s.is_object()) throw Error(base + ": must be an object");
  if (!s.contains("defaultAction") || !s["defaultAction"].is_string())
    throw Error(base + ".defaultAction: required string is missing");
  json def_errno = s.contains("defaultErrnoRet") ? s["defaultErrnoRet"] : json();
  uint32_t def = parse_action(s["defaultAction"], def_errno, EPERM, base + ".defaultAction");
  bool notify = action_is_notify(s["defaultAction"]);
  if (notify) throw Error(base + ".defaultAction: SCMP_ACT_NOTIFY cannot be the default action");
  Ctx ctx(def);
  int max_nr = -1;

  if (s.contains("architectures") && !s["architectures"].is_null()) {
    if (!s["architectures"].is_array()) throw Error(base + ".architectures: must be an array");
    for (const auto& a : s["architectures"]) {
      if (!a.is_string()) throw Error(base + ".architectures: entries must be strings");
      uint32_t arch = parse_arch(a, base + ".architectures");
      int rc = seccomp_arch_add(ctx.c, arch);
      if (rc < 0 && rc != -EEXIST) throw SysError("seccomp_arch_add(" + a.get<std::string>() + ")", -rc);
    }
  }
  if (s.contains("flags") && !s["flags"].is_null()) {
    if (!s["flags"].is_array()) throw Error(base + ".flags: must be an array");
    for (const auto& f : s["flags"]) {
      std::string fl = f.is_string() ? f.get<std::string>() : f.dump();
      if (fl == "SECCOMP_FILTER_FLAG_TSYNC")
        check(seccomp_attr_set(ctx.c, SCMP_FLTATR_CTL_TSYNC, 1), "seccomp flag " + fl);
      else if (fl == "SECCOMP_FILTER_FLAG_LOG")
        check(seccomp_attr_set(ctx.c, SCMP_FLTATR_CTL_LOG, 1), "seccomp flag " + fl);
      else if (fl == "SECCOMP_FILTER_FLAG_SPEC_ALLOW")
        check(seccomp_attr_set(ctx.c, SCMP_FLTATR_CTL_SSB, 1), "seccomp flag " + fl);
      else
        throw Error(base + ".flags: \"" + fl + "\" is not supported (TSYNC, LOG and SPEC_ALLOW are)");
    }
  }

  // execve/execveat: candidates for the exec observer's NOTIFY rule unless
  // the config gives them a conditional or non-allow rule.
  std::set<int> exec_nrs;
  for (const char* n : {"execve", "execveat"})
    if (int nr = seccomp_syscall_resolve_name(n); nr != __NR_SCMP_ERROR) exec_nrs.insert(nr);
  std::set<int> conflicting, deferred_allow;
  if (s.contains("syscalls") && !s["syscalls"].is_null()) {
    if (!s["syscalls"].is_array()) throw Error(base + ".syscalls: must be an array");
    std::size_t i = 0;
    for (const auto& sc : s["syscalls"]) {
      std::string where = base + ".syscalls[" + std::to_string(i++) + "]";
      if (!sc.is_object()) throw Error(where + ": must be an object");
      if (!sc.contains("action") || !sc["action"].is_string()) throw Error(where + ".action: required string is missing");
      if (!sc.contains("names") || !sc["names"].is_array()) throw Error(where + ".names: required array is missing");
      json er = sc.contains("errnoRet") ? sc["errnoRet"] : json();
      uint32_t act = parse_action(sc["action"], er, EPERM, where + ".action");
      if (action_is_notify(sc["action"])) notify = true;
      std::vector<scmp_arg_cmp> cmps;
      std::set<unsigned> indices;
      bool repeated = false;
      if (sc.contains("args") && sc["args"].is_array()) {
        std::size_t j = 0;
        for (const auto& a : sc["args"]) {
          std::string aw = where + ".args[" + std::to_string(j++) + "]";
          if (!a.is_object()) throw Error(aw + ": must be an object");
          if (!a.contains("index") || !a["index"].is_number_unsigned() || a["index"].get<unsigned>() > 5)
            throw Error(aw + ".index: must be 0..5");
          if (!a.contains("op") || !a["op"].is_string()) throw Error(aw + ".op: required string is missing");
          if (!a.contains("value") || !a["value"].is_number_unsigned())
            throw Error(aw + ".value: required unsigned integer is missing");
          unsigned idx = a["index"].get<unsigned>();
          uint64_t v1 = a["value"].get<uint64_t>();
          uint64_t v2 = a.contains("valueTwo") && a["valueTwo"].is_number_unsigned() ? a["valueTwo"].get<uint64_t>() : 0;
          if (!indices.insert(idx).second) repeated = true;
          cmps.push_back(scmp_arg_cmp{idx, parse_op(a["op"], aw), v1, v2});
        }
      }
      for (const auto& n : sc["names"]) {
        if (!n.is_string()) throw Error(where + ".names: entries must be strings");
        std::string name = n;
        int nr = seccomp_syscall_resolve_name(name.c_str());
        if (nr != __NR_SCMP_ERROR && nr >= 0) max_nr = std::max(max_nr, nr);
        if (nr == __NR_SCMP_ERROR) {
          // Like runc: a profile may list syscalls this libseccomp or
          // architecture does not know.
          log::debug("seccomp: " + where + ": unknown syscall \"" + name + "\" skipped");
          continue;
        }
        if (exec_nrs.count(nr)) {
          if (act == SCMP_ACT_ALLOW && cmps.empty()) {
            deferred_allow.insert(nr);
            continue;
          }
          conflicting.insert(nr);
        }
        if (act == def) continue;  // libseccomp refuses rules equal to the default
        int rc;
        if (cmps.empty()) {
          rc = seccomp_rule_add_array(ctx.c, act, nr, 0, nullptr);
          if (rc < 0) throw SysError("seccomp_rule_add(" + name + ") for " + where, -rc);
        } else if (!repeated) {
          rc = seccomp_rule_add_array(ctx.c, act, nr, static_cast<unsigned>(cmps.size()), cmps.data());
          if (rc < 0) throw SysError("seccomp_rule_add(" + name + ", args) for " + where, -rc);
        } else {
          for (const auto& c : cmps) {
            rc = seccomp_rule_add_array(ctx.c, act, nr, 1, &c);
            if (rc < 0) throw SysError("seccomp_rule_add(" + name + ", arg " + std::to_string(c.arg) + ") for " + where, -rc);
          }
        }
      }
    }
  }
  if (observe_exec && !notify) {
    add_exec_notify(ctx.c, conflicting);
    for (int nr : exec_nrs) max_nr = std::max(max_nr, nr);
    notify = true;
  } else {
    for (int nr : deferred_allow)
      if (def != SCMP_ACT_ALLOW && !conflicting.count(nr))
        check(seccomp_rule_add(ctx.c, SCMP_ACT_ALLOW, nr, 0), "seccomp_rule_add(exec, ALLOW)");
  }
  bool by_errno = (def & 0xffff0000U) == SCMP_ACT_ERRNO(0);
  return Filter(ctx.release(), notify, max_nr, by_errno);
}

Filter terminal_guard() {
  Ctx ctx(SCMP_ACT_ALLOW);
  // The other ABIs this kernel runs for the native one (an i386 int $0x80 or
  // an x32 syscall reaches the same tty_ioctl).
  if (seccomp_arch_native() == SCMP_ARCH_X86_64)
    for (uint32_t a : {SCMP_ARCH_X86, SCMP_ARCH_X32}) {
      int rc = seccomp_arch_add(ctx.c, a);
      if (rc < 0 && rc != -EEXIST) throw SysError("seccomp_arch_add for the terminal guard", -rc);
    }
  int nr = seccomp_syscall_resolve_name("ioctl");
  if (nr == __NR_SCMP_ERROR) throw Error("seccomp: ioctl has no syscall number on this architecture");
  for (unsigned long req : {static_cast<unsigned long>(TIOCSTI), static_cast<unsigned long>(TIOCLINUX)}) {
    scmp_arg_cmp cmp = SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffULL, req);
    check(seccomp_rule_add_array(ctx.c, SCMP_ACT_ERRNO(EPERM), nr, 1, &cmp),
          "seccomp_rule_add(ioctl " + std::to_string(req) + ", ERRNO) for the terminal guard");
  }
  return Filter(ctx.release(), false, nr, false);
}

Filter exec_observer() {
  Ctx ctx(SCMP_ACT_ALLOW);
  add_exec_notify(ctx.c, {});
  int max_nr = -1;
  for (const char* n : {"execve", "execveat"})
    if (int nr = seccomp_syscall_resolve_name(n); nr != __NR_SCMP_ERROR) max_nr = std::max(max_nr, nr);
  return Filter(ctx.release(), true, max_nr, false);
}

namespace {

constexpr uint32_t kX32Bit = 0x40000000U;

std::vector<sock_filter> enosys_program(int max_nr) {
  const uint32_t arch = seccomp_arch_native();
  const bool x86_64 = arch == SCMP_ARCH_X86_64;
  std::vector<sock_filter> p;
  // 0: A = arch; not native -> allow (the profiles decide)
  p.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
  const __u8 to_allow = x86_64 ? 3 : 2;
  p.push_back(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 0, to_allow));
  // A = nr
  p.push_back(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
  // x32 numbers (bit 30) -> allow (the profiles decide)
  if (x86_64) p.push_back(BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, kX32Bit, 0 + 1, 0));
  // nr > max -> ENOSYS
  p.push_back(BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, static_cast<uint32_t>(max_nr), 1, 0));
  p.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  p.push_back(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)));
  return p;
}

}  // namespace

bool load_enosys_stub(int max_nr) {
  if (max_nr < 0) return false;
  auto p = enosys_program(max_nr);
  struct sock_fprog prog {};
  prog.len = static_cast<unsigned short>(p.size());
  prog.filter = p.data();
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0) {
    if (errno == EPERM || errno == EACCES || errno == ENOSYS) return false;
    throw_errno("seccomp(SECCOMP_SET_MODE_FILTER) of the ENOSYS stub for syscalls above " + std::to_string(max_nr));
  }
  return true;
}

uint32_t run_enosys_stub(int max_nr, uint32_t arch, int nr) {
  auto p = enosys_program(max_nr);
  struct seccomp_data d {};
  d.arch = arch;
  d.nr = nr;
  uint32_t a = 0;
  for (std::size_t pc = 0; pc < p.size(); pc++) {
    const sock_filter& f = p[pc];
    switch (f.code) {
      case BPF_LD | BPF_W | BPF_ABS:
        std::memcpy(&a, reinterpret_cast<const char*>(&d) + f.k, sizeof a);
        break;
      case BPF_JMP | BPF_JEQ | BPF_K:
        pc += a == f.k ? f.jt : f.jf;
        break;
      case BPF_JMP | BPF_JGE | BPF_K:
        pc += a >= f.k ? f.jt : f.jf;
        break;
      case BPF_JMP | BPF_JGT | BPF_K:
        pc += a > f.k ? f.jt : f.jf;
        break;
      case BPF_RET | BPF_K:
        return f.k;
      default:
        throw Error("enosys stub: unexpected BPF opcode");
    }
  }
  throw Error("enosys stub: program ran off its end");
}

}  // namespace agentshim::seccomp
