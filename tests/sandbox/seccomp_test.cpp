// Tests for sandbox/seccomp: validation errors that name the field, the
// action and architecture mappings, the exec observer's NOTIFY rules, and two
// behavioural tests that load a compiled filter in a forked child, and the
// exported raw BPF programs (Filter::bpf, load_program) loaded the same way.
#include "sandbox/seccomp.h"

#include <errno.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/seccomp.h>
#include <sys/ioctl.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/error.h"
#include "tests/child.h"
#include "tests/temp_dir.h"

using namespace agentshim;
using json = nlohmann::json;

namespace {

std::string compile_error(const json& cfg, bool observe_exec = false) {
  try {
    seccomp::compile(cfg, observe_exec);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

// The pfc text of one syscall's rules (up to the next syscall or the default).
std::string pfc_block(const std::string& pfc, const std::string& name) {
  auto start = pfc.find("syscall \"" + name + "\"");
  if (start == std::string::npos) return "";
  auto end = std::min(pfc.find("# filter for syscall", start + 1), pfc.find("# default action", start + 1));
  return pfc.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

// libseccomp prints SCMP_ACT_NOTIFY as its raw value in pfc.
bool is_notify(const std::string& block) { return has(block, "NOTIFY") || has(block, "0x7fc00000"); }

json allow_default() { return {{"defaultAction", "SCMP_ACT_ALLOW"}}; }

using testutil::in_child;

// ---------------------------------------------------------------- validation

TEST(SeccompCompile, ErrorsNameTheField) {
  EXPECT_TRUE(has(compile_error(json::array()), "linux.seccomp: must be an object"));
  EXPECT_TRUE(has(compile_error(json::object()), "linux.seccomp.defaultAction"));
  EXPECT_TRUE(has(compile_error({{"defaultAction", 1}}), "linux.seccomp.defaultAction"));

  std::string err = compile_error({{"defaultAction", "SCMP_ACT_BOGUS"}});
  EXPECT_TRUE(has(err, "linux.seccomp.defaultAction")) << err;
  EXPECT_TRUE(has(err, "unknown seccomp action \"SCMP_ACT_BOGUS\"")) << err;

  err = compile_error({{"defaultAction", "SCMP_ACT_NOTIFY"}});
  EXPECT_TRUE(has(err, "linux.seccomp.defaultAction")) << err;
  EXPECT_TRUE(has(err, "SCMP_ACT_NOTIFY")) << err;

  json c = allow_default();
  c["syscalls"] = {{{"names", {"getpid"}}}};
  err = compile_error(c);
  EXPECT_TRUE(has(err, "linux.seccomp.syscalls[0].action")) << err;

  c["syscalls"] = {{{"names", {"getpid"}}, {"action", "SCMP_ACT_ERRNO"}},
                   {{"names", {"getppid"}}, {"action", "SCMP_ACT_EXPLODE"}}};
  err = compile_error(c);
  EXPECT_TRUE(has(err, "linux.seccomp.syscalls[1].action")) << err;
  EXPECT_TRUE(has(err, "unknown seccomp action \"SCMP_ACT_EXPLODE\"")) << err;

  c["syscalls"] = {{{"action", "SCMP_ACT_ERRNO"}}};
  EXPECT_TRUE(has(compile_error(c), "linux.seccomp.syscalls[0].names"));
  c["syscalls"] = {{{"names", {42}}, {"action", "SCMP_ACT_ERRNO"}}};
  EXPECT_TRUE(has(compile_error(c), "linux.seccomp.syscalls[0].names"));
  c["syscalls"] = {"getpid"};
  EXPECT_TRUE(has(compile_error(c), "linux.seccomp.syscalls[0]"));
  c["syscalls"] = "getpid";
  EXPECT_TRUE(has(compile_error(c), "linux.seccomp.syscalls"));

  c = allow_default();
  c["architectures"] = {"SCMP_ARCH_X86_64", "SCMP_ARCH_VAX"};
  err = compile_error(c);
  EXPECT_TRUE(has(err, "linux.seccomp.architectures")) << err;
  EXPECT_TRUE(has(err, "unknown seccomp architecture \"SCMP_ARCH_VAX\"")) << err;

  c = allow_default();
  c["flags"] = {"SECCOMP_FILTER_FLAG_NEW_LISTENER"};
  err = compile_error(c);
  EXPECT_TRUE(has(err, "linux.seccomp.flags")) << err;
  EXPECT_TRUE(has(err, "SECCOMP_FILTER_FLAG_NEW_LISTENER")) << err;
  EXPECT_TRUE(has(err, "not supported")) << err;
}

TEST(SeccompCompile, ArgErrorsNameTheField) {
  // As in a parsed config.json: arguments are unsigned JSON numbers.
  auto with_arg = [](const std::string& arg) {
    json c = allow_default();
    c["syscalls"] = json::array(
        {{{"names", {"personality"}}, {"action", "SCMP_ACT_ERRNO"}, {"args", json::array({json::parse(arg)})}}});
    return c;
  };
  std::string err = compile_error(with_arg(R"({"index": 0, "op": "SCMP_CMP_LIKE", "value": 1})"));
  EXPECT_TRUE(has(err, "linux.seccomp.syscalls[0].args[0].op")) << err;
  EXPECT_TRUE(has(err, "SCMP_CMP_LIKE")) << err;

  err = compile_error(with_arg(R"({"index": 6, "op": "SCMP_CMP_EQ", "value": 1})"));
  EXPECT_TRUE(has(err, "linux.seccomp.syscalls[0].args[0].index")) << err;
  EXPECT_TRUE(has(err, "0..5")) << err;
  err = compile_error(with_arg(R"({"index": -1, "op": "SCMP_CMP_EQ", "value": 1})"));
  EXPECT_TRUE(has(err, "linux.seccomp.syscalls[0].args[0].index")) << err;
  EXPECT_EQ(compile_error(with_arg(R"({"index": 5, "op": "SCMP_CMP_EQ", "value": 1})")), "");

  err = compile_error(with_arg(R"({"index": 0, "op": "SCMP_CMP_EQ"})"));
  EXPECT_TRUE(has(err, "linux.seccomp.syscalls[0].args[0].value")) << err;
  err = compile_error(with_arg(R"({"index": 0, "value": 1})"));
  EXPECT_TRUE(has(err, "linux.seccomp.syscalls[0].args[0].op")) << err;
  err = compile_error(with_arg(R"(7)"));
  EXPECT_TRUE(has(err, "linux.seccomp.syscalls[0].args[0]")) << err;

  // The second rule's second argument is named as such.
  json c = json::parse(R"({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
    {"names": ["getpid"], "action": "SCMP_ACT_ERRNO"},
    {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
     "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": 1}, {"index": 9, "op": "SCMP_CMP_EQ", "value": 1}]}]})");
  EXPECT_TRUE(has(compile_error(c), "linux.seccomp.syscalls[1].args[1].index")) << compile_error(c);

  // Every operator is accepted.
  for (const char* op : {"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT"})
    EXPECT_EQ(compile_error(with_arg(std::string(R"({"index": 0, "value": 8, "op": ")") + op + R"("})")), "") << op;
  EXPECT_EQ(compile_error(with_arg(R"({"index": 0, "op": "SCMP_CMP_MASKED_EQ", "value": 255, "valueTwo": 8})")), "");
  // A repeated index (runc: OR across the repeated comparisons) compiles.
  c["syscalls"][1]["args"][1]["index"] = 0u;
  c["syscalls"][1]["args"][1]["value"] = 2u;
  EXPECT_EQ(compile_error(c), "");
}

TEST(SeccompCompile, ErrnoRetMustBeAnErrnoValue) {
  json c = allow_default();
  c["syscalls"] = {{{"names", {"getpid"}}, {"action", "SCMP_ACT_ERRNO"}, {"errnoRet", -1}}};
  std::string err = compile_error(c);
  EXPECT_TRUE(has(err, "linux.seccomp.syscalls[0]")) << err;
  EXPECT_TRUE(has(err, "errnoRet")) << err;
  c["syscalls"][0]["errnoRet"] = 70000u;
  EXPECT_TRUE(has(compile_error(c), "errnoRet"));
  c["syscalls"][0]["errnoRet"] = "13";
  EXPECT_TRUE(has(compile_error(c), "errnoRet"));
  c["syscalls"][0]["errnoRet"] = 13u;
  EXPECT_EQ(compile_error(c), "");
  c["syscalls"][0]["errnoRet"] = 1000u;
  EXPECT_EQ(compile_error(c), "");
  // libseccomp itself refuses errno values this large; the error still says where.
  c["syscalls"][0]["errnoRet"] = 65535u;
  EXPECT_TRUE(has(compile_error(c), "linux.seccomp.syscalls[0]")) << compile_error(c);
  json d = {{"defaultAction", "SCMP_ACT_ERRNO"}, {"defaultErrnoRet", -5}};
  EXPECT_TRUE(has(compile_error(d), "linux.seccomp.defaultErrnoRet"));
}

TEST(SeccompCompile, AcceptsFlagsArchitecturesAndNulls) {
  json c = allow_default();
  c["architectures"] = {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"};
  c["flags"] = {"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"};
  c["syscalls"] = {{{"names", {"getppid"}}, {"action", "SCMP_ACT_ERRNO"}}};
  EXPECT_EQ(compile_error(c), "");
  auto f = seccomp::compile(c);
  std::string pfc = f.pfc();
  EXPECT_TRUE(has(pfc, "getppid")) << pfc;
  EXPECT_TRUE(has(pfc, "x86_64")) << pfc;
  // null means "not given"
  json n = allow_default();
  n["architectures"] = nullptr;
  n["flags"] = nullptr;
  n["syscalls"] = nullptr;
  EXPECT_EQ(compile_error(n), "");
}

// ---------------------------------------------------------------- mappings

TEST(SeccompParse, Actions) {
  const json none;
  EXPECT_EQ(seccomp::parse_action("SCMP_ACT_KILL", none, EPERM, "w"), SCMP_ACT_KILL_THREAD);
  EXPECT_EQ(seccomp::parse_action("SCMP_ACT_KILL_THREAD", none, EPERM, "w"), SCMP_ACT_KILL_THREAD);
  EXPECT_EQ(seccomp::parse_action("SCMP_ACT_KILL_PROCESS", none, EPERM, "w"), SCMP_ACT_KILL_PROCESS);
  EXPECT_EQ(seccomp::parse_action("SCMP_ACT_TRAP", none, EPERM, "w"), SCMP_ACT_TRAP);
  EXPECT_EQ(seccomp::parse_action("SCMP_ACT_ERRNO", none, EPERM, "w"), SCMP_ACT_ERRNO(EPERM));
  EXPECT_EQ(seccomp::parse_action("SCMP_ACT_ERRNO", none, ENOSYS, "w"), SCMP_ACT_ERRNO(ENOSYS));
  EXPECT_EQ(seccomp::parse_action("SCMP_ACT_ERRNO", json(13u), EPERM, "w"), SCMP_ACT_ERRNO(13));
  EXPECT_EQ(seccomp::parse_action("SCMP_ACT_ERRNO", json(0u), EPERM, "w"), SCMP_ACT_ERRNO(0));
  EXPECT_EQ(seccomp::parse_action("SCMP_ACT_TRACE", json(7u), EPERM, "w"), SCMP_ACT_TRACE(7));
  EXPECT_EQ(seccomp::parse_action("SCMP_ACT_ALLOW", none, EPERM, "w"), SCMP_ACT_ALLOW);
  EXPECT_EQ(seccomp::parse_action("SCMP_ACT_LOG", none, EPERM, "w"), SCMP_ACT_LOG);
  EXPECT_EQ(seccomp::parse_action("SCMP_ACT_NOTIFY", none, EPERM, "w"), SCMP_ACT_NOTIFY);
  EXPECT_NE(SCMP_ACT_ERRNO(13), SCMP_ACT_ERRNO(EPERM));

  try {
    seccomp::parse_action("scmp_act_allow", none, EPERM, "the.field");
    ADD_FAILURE() << "lower-case action accepted";
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), "the.field")) << e.what();
    EXPECT_TRUE(has(e.what(), "scmp_act_allow")) << e.what();
  }
  try {
    seccomp::parse_action("SCMP_ACT_ERRNO", json(65536u), EPERM, "the.field");
    ADD_FAILURE() << "errnoRet 65536 accepted";
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), "the.field")) << e.what();
  }
}

TEST(SeccompParse, Architectures) {
  EXPECT_EQ(seccomp::parse_arch("SCMP_ARCH_X86_64", "w"), SCMP_ARCH_X86_64);
  EXPECT_EQ(seccomp::parse_arch("x86_64", "w"), SCMP_ARCH_X86_64);
  EXPECT_EQ(seccomp::parse_arch("SCMP_ARCH_X86", "w"), SCMP_ARCH_X86);
  EXPECT_EQ(seccomp::parse_arch("SCMP_ARCH_X32", "w"), SCMP_ARCH_X32);
  EXPECT_EQ(seccomp::parse_arch("SCMP_ARCH_AARCH64", "w"), SCMP_ARCH_AARCH64);
  EXPECT_EQ(seccomp::parse_arch("SCMP_ARCH_ARM", "w"), SCMP_ARCH_ARM);
  EXPECT_EQ(seccomp::parse_arch("SCMP_ARCH_S390X", "w"), SCMP_ARCH_S390X);
  EXPECT_EQ(seccomp::parse_arch("SCMP_ARCH_PPC64LE", "w"), SCMP_ARCH_PPC64LE);
  EXPECT_EQ(seccomp::parse_arch("SCMP_ARCH_RISCV64", "w"), SCMP_ARCH_RISCV64);
  try {
    seccomp::parse_arch("SCMP_ARCH_PDP11", "linux.seccomp.architectures");
    ADD_FAILURE() << "PDP11 accepted";
  } catch (const Error& e) {
    EXPECT_TRUE(has(e.what(), "linux.seccomp.architectures")) << e.what();
    EXPECT_TRUE(has(e.what(), "SCMP_ARCH_PDP11")) << e.what();
  }
  EXPECT_THROW(seccomp::parse_arch("", "w"), Error);
}

// ---------------------------------------------------------------- compiling

TEST(SeccompCompile, UnknownSyscallNamesAreSkipped) {
  json c = allow_default();
  c["syscalls"] = {{{"names", {"no_such_syscall_xyz", "getppid", "also_not_a_syscall"}}, {"action", "SCMP_ACT_ERRNO"}}};
  seccomp::Filter f;
  ASSERT_NO_THROW(f = seccomp::compile(c));
  ASSERT_NE(f.ctx(), nullptr);
  std::string pfc = f.pfc();
  EXPECT_TRUE(has(pfc_block(pfc, "getppid"), "ERRNO(1)")) << pfc;  // EPERM by default
  EXPECT_FALSE(has(pfc, "no_such_syscall_xyz"));
  // A rule whose every name is unknown compiles to nothing.
  c["syscalls"] = {{{"names", {"no_such_syscall_xyz"}}, {"action", "SCMP_ACT_KILL"}}};
  EXPECT_EQ(compile_error(c), "");
}

TEST(SeccompCompile, PfcMentionsTheRules) {
  json c = json::parse(R"({
    "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
    "syscalls": [
      {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
      {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 99},
      {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
       "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": 4294967295}]}
    ]})");
  auto f = seccomp::compile(c);
  EXPECT_FALSE(f.uses_notify());
  std::string pfc = f.pfc();
  for (const char* name : {"read", "write", "exit_group", "getppid", "personality"})
    EXPECT_TRUE(has(pfc, std::string("\"") + name + "\"")) << name << "\n" << pfc;
  EXPECT_TRUE(has(pfc_block(pfc, "read"), "ALLOW")) << pfc;
  EXPECT_TRUE(has(pfc_block(pfc, "getppid"), "ERRNO(99)")) << pfc;
  EXPECT_TRUE(has(pfc_block(pfc, "personality"), "4294967295")) << pfc;
  EXPECT_TRUE(has(pfc.substr(pfc.find("# default action")), "ERRNO(38)")) << pfc;
  // The rule equal to the default action is dropped rather than refused.
  c["syscalls"].push_back({{"names", {"getuid"}}, {"action", "SCMP_ACT_ERRNO"}, {"errnoRet", 38u}});
  EXPECT_FALSE(has(seccomp::compile(c).pfc(), "\"getuid\""));
}

TEST(SeccompCompile, MoveOnlyFilter) {
  auto f = seccomp::compile(allow_default());
  ASSERT_NE(f.ctx(), nullptr);
  seccomp::Filter g = std::move(f);
  EXPECT_EQ(f.ctx(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_NE(g.ctx(), nullptr);
  EXPECT_EQ(f.pfc(), "");
  EXPECT_EQ(f.load(), -1);  // an empty filter loads nothing
  seccomp::Filter h;
  h = std::move(g);
  EXPECT_NE(h.ctx(), nullptr);
  EXPECT_FALSE(h.pfc().empty());
}

// ---------------------------------------------------------------- notify

TEST(SeccompNotify, UsesNotify) {
  EXPECT_FALSE(seccomp::uses_notify(json()));
  EXPECT_FALSE(seccomp::uses_notify(json::array()));
  EXPECT_FALSE(seccomp::uses_notify(allow_default()));
  EXPECT_TRUE(seccomp::uses_notify({{"defaultAction", "SCMP_ACT_NOTIFY"}}));
  json c = allow_default();
  c["syscalls"] = {{{"names", {"getpid"}}, {"action", "SCMP_ACT_ERRNO"}},
                   {{"names", {"mount"}}, {"action", "SCMP_ACT_NOTIFY"}}};
  EXPECT_TRUE(seccomp::uses_notify(c));
  c["syscalls"][1]["action"] = "SCMP_ACT_LOG";
  EXPECT_FALSE(seccomp::uses_notify(c));

  // A compiled filter with a NOTIFY rule says so.
  c["syscalls"][1]["action"] = "SCMP_ACT_NOTIFY";
  auto f = seccomp::compile(c);
  EXPECT_TRUE(f.uses_notify());
  EXPECT_TRUE(is_notify(pfc_block(f.pfc(), "mount"))) << f.pfc();
  EXPECT_FALSE(seccomp::compile(allow_default()).uses_notify());
}

TEST(SeccompNotify, ObserveExecAddsNotifyOnExecve) {
  json c = allow_default();
  c["syscalls"] = {{{"names", {"getppid"}}, {"action", "SCMP_ACT_ERRNO"}}};
  auto plain = seccomp::compile(c, false);
  EXPECT_FALSE(plain.uses_notify());
  EXPECT_FALSE(has(plain.pfc(), "execve"));

  auto f = seccomp::compile(c, true);
  EXPECT_TRUE(f.uses_notify());
  std::string pfc = f.pfc();
  EXPECT_TRUE(is_notify(pfc_block(pfc, "execve"))) << pfc;
  EXPECT_TRUE(is_notify(pfc_block(pfc, "execveat"))) << pfc;
  EXPECT_TRUE(has(pfc_block(pfc, "getppid"), "ERRNO")) << pfc;

  auto obs = seccomp::exec_observer();
  EXPECT_TRUE(obs.uses_notify());
  EXPECT_TRUE(is_notify(pfc_block(obs.pfc(), "execve"))) << obs.pfc();
  EXPECT_TRUE(has(obs.pfc().substr(obs.pfc().find("# default action")), "ALLOW")) << obs.pfc();
}

TEST(SeccompNotify, ConfigOwnExecveRuleIsKept) {
  json c = allow_default();
  c["syscalls"] = {{{"names", {"execve"}}, {"action", "SCMP_ACT_ERRNO"}, {"errnoRet", 13u}}};
  auto f = seccomp::compile(c, true);
  EXPECT_TRUE(f.uses_notify());
  std::string pfc = f.pfc();
  std::string execve = pfc_block(pfc, "execve");
  EXPECT_TRUE(has(execve, "ERRNO(13)")) << pfc;
  EXPECT_FALSE(is_notify(execve)) << pfc;
  // execveat has no rule of its own: it is still observed.
  EXPECT_TRUE(is_notify(pfc_block(pfc, "execveat"))) << pfc;
}

TEST(SeccompNotify, ConfigListenerWinsOverTheObserver) {
  json c = allow_default();
  c["syscalls"] = {{{"names", {"mount"}}, {"action", "SCMP_ACT_NOTIFY"}}};
  auto f = seccomp::compile(c, true);
  EXPECT_TRUE(f.uses_notify());
  std::string pfc = f.pfc();
  EXPECT_TRUE(is_notify(pfc_block(pfc, "mount"))) << pfc;
  EXPECT_EQ(pfc_block(pfc, "execve"), "") << pfc;
}

TEST(SeccompNotify, UnconditionalExecveAllow) {
  // Default deny; execve explicitly allowed.
  json c = {{"defaultAction", "SCMP_ACT_ERRNO"},
            {"syscalls", {{{"names", {"execve", "read"}}, {"action", "SCMP_ACT_ALLOW"}}}}};
  // Without observation the allow rule is there.
  std::string plain = seccomp::compile(c, false).pfc();
  EXPECT_TRUE(has(pfc_block(plain, "execve"), "ALLOW")) << plain;
  EXPECT_EQ(pfc_block(plain, "execveat"), "") << plain;
  // With observation execve is notified (the supervisor then lets it run);
  // execveat, not allowed by the config, is notified too.
  std::string observed = seccomp::compile(c, true).pfc();
  EXPECT_TRUE(is_notify(pfc_block(observed, "execve"))) << observed;
  EXPECT_TRUE(has(pfc_block(observed, "read"), "ALLOW")) << observed;
}

// ---------------------------------------------------------------- behaviour

TEST(SeccompBehaviour, ErrnoOnMkdir) {
  testutil::TempDir tmp("agentshim-seccomp");
  std::string target = tmp.path + "/blocked";
  json c = json::parse(R"({"defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdirat", "mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]})");
  auto f = seccomp::compile(c);
  const char* path = target.c_str();
  int code = in_child([&]() -> int {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 200;
    try {
      if (f.load() != -1) return 201;
    } catch (...) {
      return 202;
    }
    if (::mkdir(path, 0755) == 0) return 0;
    return errno;
  });
  EXPECT_EQ(code, EACCES);
  struct stat st;
  EXPECT_NE(::stat(target.c_str(), &st), 0) << target << " was created";
  // The parent is not filtered.
  EXPECT_EQ(::mkdir(target.c_str(), 0755), 0) << std::strerror(errno);
  ::rmdir(target.c_str());
}

TEST(SeccompBehaviour, ArgumentFilter) {
  // personality(0xffffffff) only queries the persona; the rule blocks
  // exactly that argument value and nothing else.
  json c = json::parse(R"({"defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 33,
                  "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": 4294967295}]}]})");
  auto f = seccomp::compile(c);
  int code = in_child([&]() -> int {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 200;
    int before = ::personality(0xffffffff);
    if (before == -1) return 201;
    try {
      f.load();
    } catch (...) {
      return 202;
    }
    errno = 0;
    if (::personality(0xffffffff) != -1) return 203;
    if (errno != EDOM) return 204;
    // Another argument passes: setting the persona it already has.
    if (::personality(static_cast<unsigned long>(before)) == -1) return 205;
    return 0;
  });
  EXPECT_EQ(code, 0) << "child exit code " << code;
  EXPECT_NE(::personality(0xffffffff), -1);  // the parent is not filtered
}

TEST(SeccompBehaviour, KillProcess) {
  json c = json::parse(R"({"defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]})");
  auto f = seccomp::compile(c);
  int code = in_child([&]() -> int {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 200;
    try {
      f.load();
    } catch (...) {
      return 202;
    }
    ::getppid();
    return 0;
  });
  EXPECT_EQ(code, 1000 + SIGSYS);
}

}  // namespace

// ---------------------------------------------------------------- ENOSYS stub

TEST(SeccompEnosysStub, ProgramDecisions) {
  const uint32_t native = seccomp_arch_native();
  // Above the highest number a profile names: ENOSYS.
  EXPECT_EQ(seccomp::run_enosys_stub(300, native, 301), SECCOMP_RET_ERRNO | ENOSYS);
  EXPECT_EQ(seccomp::run_enosys_stub(300, native, 460), SECCOMP_RET_ERRNO | ENOSYS);
  // At or below it: allowed here, so the profiles decide.
  EXPECT_EQ(seccomp::run_enosys_stub(300, native, 300), SECCOMP_RET_ALLOW);
  EXPECT_EQ(seccomp::run_enosys_stub(300, native, 0), SECCOMP_RET_ALLOW);
  // Another architecture (i386 on x86_64): left to the profiles.
  EXPECT_EQ(seccomp::run_enosys_stub(300, SCMP_ARCH_X86, 400), SECCOMP_RET_ALLOW);
  if (native == SCMP_ARCH_X86_64) {
    // x32 numbers (bit 30) are the profiles' business too (the default kills them).
    EXPECT_EQ(seccomp::run_enosys_stub(300, native, 0x40000000 + 1), SECCOMP_RET_ALLOW);
  }
}

TEST(SeccompEnosysStub, NewerSyscallsGetEnosysKnownDeniedOnesKeepTheirErrno) {
  // A deny-by-default profile (EPERM) that allows a few syscalls; a syscall
  // above everything it names must fail with ENOSYS, one below with EPERM.
  json c = json::parse(R"({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
    "syscalls": [{"names": ["read", "write", "exit", "exit_group", "rt_sigreturn", "getpid", "mkdirat", "mkdir",
                            "getppid", "seccomp", "mmap", "munmap", "mprotect", "madvise", "brk", "sigaltstack",
                            "rt_sigaction", "rt_sigprocmask", "gettid", "futex", "prctl", "sched_yield"],
                  "action": "SCMP_ACT_ALLOW"}]})");
  auto f = seccomp::compile(c);
  ASSERT_TRUE(f.denies_by_errno());
  int max_nr = f.max_nr();
  ASSERT_GE(max_nr, __NR_getppid);
  int code = in_child([&]() -> int {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 200;
    try {
      f.load();
      if (!seccomp::load_enosys_stub(max_nr)) return 203;
    } catch (...) {
      return 202;
    }
    // A syscall number no kernel has yet, far above the profile.
    long r1 = ::syscall(max_nr + 200);
    int e1 = errno;
    // A known syscall the profile denies (below its highest number): EPERM.
    long r2 = ::syscall(__NR_getuid);
    int e2 = errno;
    if (r1 != -1 || e1 != ENOSYS) return 10;
    if (r2 != -1 || e2 != EPERM) return 11;
    if (::syscall(__NR_getpid) <= 0) return 12;  // allowed still works
    return 0;
  });
  EXPECT_EQ(code, 0);
}

TEST(SeccompEnosysStub, KillStillWinsOverTheStub) {
  json c = json::parse(R"({"defaultAction": "SCMP_ACT_KILL_PROCESS",
    "syscalls": [{"names": ["read", "write", "exit", "exit_group", "rt_sigreturn", "getpid", "seccomp", "prctl"],
                  "action": "SCMP_ACT_ALLOW"}]})");
  auto f = seccomp::compile(c);
  EXPECT_FALSE(f.denies_by_errno());
  int max_nr = f.max_nr();
  int code = in_child([&]() -> int {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 200;
    try {
      f.load();
      seccomp::load_enosys_stub(max_nr);
    } catch (...) {
      return 202;
    }
    ::syscall(max_nr + 200);
    return 0;
  });
  EXPECT_EQ(code, 1000 + SIGSYS);
}

TEST(SeccompEnosysStub, AProfileThatDeniesSeccompLeavesItsErrno) {
  // (The sanitizer runtime needs mmap, sigaltstack and friends in the child.)
  json c = json::parse(R"({"defaultAction": "SCMP_ACT_ERRNO",
    "syscalls": [{"names": ["read", "write", "exit", "exit_group", "rt_sigreturn", "getpid", "mmap", "munmap",
                            "mprotect", "madvise", "brk", "sigaltstack", "rt_sigaction", "rt_sigprocmask", "gettid",
                            "futex", "prctl", "sched_yield"],
                  "action": "SCMP_ACT_ALLOW"}]})");
  auto f = seccomp::compile(c);
  int max_nr = f.max_nr();
  int code = in_child([&]() -> int {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 200;
    try {
      f.load();
      if (seccomp::load_enosys_stub(max_nr)) return 201;  // seccomp(2) is denied: not loaded
    } catch (...) {
      return 202;
    }
    long r = ::syscall(max_nr + 200);
    return r == -1 && errno == EPERM ? 0 : 10;
  });
  EXPECT_EQ(code, 0);
}

// ---------------------------------------------------------------- raw BPF

namespace {

std::string fd_target(int fd) {
  char buf[256];
  ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buf, sizeof buf - 1);
  return n < 0 ? "" : std::string(buf, static_cast<std::size_t>(n));
}

}  // namespace

TEST(SeccompBpf, ExportedProgramBehavesLikeTheLoadedFilter) {
  testutil::TempDir tmp("agentshim-seccomp");
  std::string target = tmp.path + "/blocked";
  json c = json::parse(R"({"defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["mkdirat", "mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                 {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 33,
                  "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": 4294967295}]}]})");
  seccomp::Program p = seccomp::compile(c).bpf();  // the Filter (and its ctx) is gone before loading
  ASSERT_FALSE(p.insns.empty());
  EXPECT_EQ(p.flags, 0u);
  EXPECT_FALSE(p.listener());
  const char* path = target.c_str();
  int code = in_child([&]() -> int {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 200;
    int before = ::personality(0xffffffff);
    try {
      if (seccomp::load_program(p) != -1) return 201;
    } catch (...) {
      return 202;
    }
    if (::mkdir(path, 0755) == 0) return 10;
    if (errno != EACCES) return 11;
    errno = 0;
    if (::personality(0xffffffff) != -1 || errno != EDOM) return 12;
    if (::personality(static_cast<unsigned long>(before)) == -1) return 13;  // other argument: allowed
    if (::getpid() <= 0) return 14;                                          // allowed
    return 0;
  });
  EXPECT_EQ(code, 0) << "child exit code " << code;
  EXPECT_EQ(::mkdir(path, 0755), 0) << std::strerror(errno);  // the parent is not filtered
  ::rmdir(path);
}

TEST(SeccompBpf, KillProcess) {
  json c = json::parse(R"({"defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]})");
  auto p = seccomp::compile(c).bpf();
  int code = in_child([&]() -> int {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 200;
    try {
      seccomp::load_program(p);
    } catch (...) {
      return 202;
    }
    ::getppid();
    return 0;
  });
  EXPECT_EQ(code, 1000 + SIGSYS);
}

TEST(SeccompBpf, FlagsFromTheProfile) {
  auto with_flags = [](const json& flags) {
    json c = allow_default();
    c["syscalls"] = json::parse(R"([{"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}])");
    c["flags"] = flags;
    return seccomp::compile(c).bpf().flags;
  };
  EXPECT_EQ(with_flags(json::array()), 0u);
  EXPECT_EQ(with_flags({"SECCOMP_FILTER_FLAG_TSYNC"}), unsigned{SECCOMP_FILTER_FLAG_TSYNC});
  EXPECT_EQ(with_flags({"SECCOMP_FILTER_FLAG_LOG"}), unsigned{SECCOMP_FILTER_FLAG_LOG});
  EXPECT_EQ(with_flags({"SECCOMP_FILTER_FLAG_SPEC_ALLOW"}), unsigned{SECCOMP_FILTER_FLAG_SPEC_ALLOW});
  EXPECT_EQ(
      with_flags({"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"}),
      unsigned{SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_LOG | SECCOMP_FILTER_FLAG_SPEC_ALLOW});

  // NOTIFY rules ask for a listener; with TSYNC also for ESRCH (the kernel
  // refuses TSYNC with NEW_LISTENER otherwise).
  json n = json::parse(R"({"defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"}]})");
  EXPECT_EQ(seccomp::compile(n).bpf().flags, unsigned{SECCOMP_FILTER_FLAG_NEW_LISTENER});
  n["flags"] = {"SECCOMP_FILTER_FLAG_TSYNC"};
  EXPECT_EQ(seccomp::compile(n).bpf().flags,
            unsigned{SECCOMP_FILTER_FLAG_TSYNC | SECCOMP_FILTER_FLAG_NEW_LISTENER |
                     SECCOMP_FILTER_FLAG_TSYNC_ESRCH});
  EXPECT_EQ(seccomp::exec_observer().bpf().flags, unsigned{SECCOMP_FILTER_FLAG_NEW_LISTENER});
  EXPECT_EQ(seccomp::compile(allow_default(), true).bpf().flags, unsigned{SECCOMP_FILTER_FLAG_NEW_LISTENER});
  EXPECT_TRUE(seccomp::Filter().bpf().insns.empty());
  EXPECT_EQ(seccomp::load_program(seccomp::Program{}), -1);  // nothing to load
}

TEST(SeccompBpf, FlaggedProgramsLoad) {
  // The flags are ones this kernel takes, alone and together (TSYNC with a
  // listener needs TSYNC_ESRCH).
  json c = json::parse(R"({"defaultAction": "SCMP_ACT_ALLOW",
    "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
    "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 11},
                 {"names": ["getpgid"], "action": "SCMP_ACT_NOTIFY"}]})");
  auto p = seccomp::compile(c).bpf();
  ASSERT_TRUE(p.listener());
  int code = in_child([&]() -> int {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 200;
    int fd;
    try {
      fd = seccomp::load_program(p);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 202;
    }
    if (fd < 3) return 10;
    if (fd_target(fd) != "anon_inode:seccomp notify") return 11;
    if (!(::fcntl(fd, F_GETFD) & FD_CLOEXEC)) return 12;
    if (::syscall(__NR_getppid) != -1 || errno != EAGAIN) return 13;
    return 0;
  });
  EXPECT_EQ(code, 0) << "child exit code " << code;
}

TEST(SeccompBpf, NotifyProgramReturnsAWorkingListener) {
  // The exec observer loaded raw: execve waits for the listener, which sees
  // it and lets it continue.
  auto p = seccomp::compile(allow_default(), true).bpf();
  int code = in_child([&]() -> int {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 200;
    int fd;
    try {
      fd = seccomp::load_program(p);
    } catch (...) {
      return 202;
    }
    if (fd < 3 || fd_target(fd) != "anon_inode:seccomp notify") return 10;
    pid_t pid = ::fork();
    if (pid < 0) return 11;
    if (pid == 0) {
      ::close(fd);
      char* argv[] = {const_cast<char*>("true"), nullptr};
      ::execve("/bin/true", argv, environ);
      ::_exit(99);
    }
    struct seccomp_notif req {};
    int rc = 0;
    if (::ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &req) != 0) {
      rc = 13;
    } else {
      if (req.pid != static_cast<__u32>(pid) || req.data.nr != __NR_execve) rc = 14;
      struct seccomp_notif_resp resp {};
      resp.id = req.id;
      resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
      if (::ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &resp) != 0 && rc == 0) rc = 15;
    }
    int status = 0;
    if (::waitpid(pid, &status, 0) != pid) return 16;
    if (rc) return rc;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 17;
  });
  EXPECT_EQ(code, 0) << "child exit code " << code;
}

TEST(SeccompFilter, MoveAssignmentKeepsWhatItKnows) {
  json c = json::parse(R"({"defaultAction": "SCMP_ACT_ERRNO",
    "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ALLOW"}]})");
  seccomp::Filter f;
  f = seccomp::compile(c);
  EXPECT_EQ(f.max_nr(), __NR_getppid);
  EXPECT_TRUE(f.denies_by_errno());
}

// ---------------------------------------------------------------- terminal guard

namespace {
#if defined(__x86_64__)
long int80_ioctl(long fd, long req, long arg) {
  long ret;
  asm volatile("int $0x80" : "=a"(ret) : "a"(54L /* i386 ioctl */), "b"(fd), "c"(req), "d"(arg) : "memory");
  return ret;
}
#endif
}  // namespace

TEST(SeccompTerminalGuard, DeniesTiocstiAndTioclinuxOnEveryAbiAllowsTheRest) {
  auto prog = seccomp::terminal_guard().bpf();
  ASSERT_FALSE(prog.insns.empty());
  EXPECT_FALSE(prog.listener());
  int code = in_child([&]() -> int {
    int m = ::posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || ::grantpt(m) < 0 || ::unlockpt(m) < 0) return 200;
    int s = ::open(::ptsname(m), O_RDWR | O_NOCTTY);
    if (s < 0) return 201;
    char c = 'x';
    // Before: the request reaches the tty (root may push a byte, or the
    // kernel's legacy_tiocsti=0 refuses with EIO; never EPERM from seccomp).
    errno = 0;
    if (::ioctl(s, TIOCSTI, &c) < 0 && errno == EPERM) return 202;
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 203;
    try {
      seccomp::load_program(prog);
    } catch (...) {
      return 204;
    }
    if (::ioctl(s, TIOCSTI, &c) != -1 || errno != EPERM) return 10;
    char sub = 3;  // TIOCLINUX subcode 3: paste the selection
    if (::ioctl(s, TIOCLINUX, &sub) != -1 || errno != EPERM) return 11;
    // High bits of the request do not get it past (the kernel truncates cmd to 32 bits).
    if (::syscall(SYS_ioctl, s, (1UL << 32) | TIOCSTI, &c) != -1 || errno != EPERM) return 12;
    struct winsize ws {};
    if (::ioctl(s, TIOCGWINSZ, &ws) != 0) return 13;
#if defined(__x86_64__)
    // The i386 ABI: denied before the kernel looks at the (bad) pointer.
    if (int80_ioctl(s, TIOCSTI, 0) != -EPERM) return 14;
    if (int80_ioctl(s, TIOCGWINSZ, 0) != -EFAULT) return 15;
#endif
    return 0;
  });
  EXPECT_EQ(code, 0) << "child exit code " << code;
}
