// The setup messages between the processes `create` starts: one JSON object
// per SOCK_SEQPACKET datagram ({"type": "<name>", payload...}), with
// descriptors attached (SCM_RIGHTS) where a message says so. Encoded and
// decoded here only; a process holds a typed Message, never a string.
//
// clang-format off
//   CLI (create)      sentinel            supervisor               stage1                 init
//       │  fork ────────▶ │  fork ────────────▶ │                       │                      │
//       │                 │ ◀──── join{cgroup} ─┤ (cgroup made)         │                      │
//       │                 ├─ joined ───────────▶│                       │                      │
//       │                 │                     │  fork ───────────────▶│                      │
//       │                 │                     │ ◀──────── userns{pid} ┤ (new user namespace) │
//       │                 │                     ├─ userns-ok ──────────▶│ (id maps written)    │
//       │                 │                     │                       │  clone(CLONE_PARENT) ▶│
//       │                 │                     │ ◀────────── init{pid} ┤ exits                │
//       │                 │                     ├─ init-ok ─────────────────────────────────▶│
//       │                 │                     │ ◀──────────────────────────────────── idmap ┤ (userns "auto")
//       │                 │                     ├─ idmap-ok{sources} + fds ─────────────────▶│
//       │                 │                     │ ◀──────────────────────────────────── hooks ┤ (rootfs mounted)
//       │                 │                     ├─ hooks-ok{pid} ───────────────────────────▶│ (prestart, createRuntime run)
//       │                 │                     │ ◀─────────────────── seccomp{kinds} + fds ┤ (listeners, if any)
//       │                 │                     │ ◀──────────────────────────────────── ready ┤ blocks on exec.fifo
//       │                 │ ◀──── enter{pid} ───┤ (the init's pid)                             │
//       │                 ├─ entered ──────────▶│ (sentinel now in the init's namespaces)     │
//       │ ◀── created{init_pid,init_start,cgroup} ┤                                             │
// clang-format on
//
// Any process may send error{msg} instead of its next message; the receiver
// stops there and reports msg. The init may also send seccomp and error
// after "ready" (the supervisor reads until the execve closes the socket).
// After the execve nothing in the container holds the socket (close-on-
// exec), so no message comes from container-controlled code; decode still
// checks every field and every descriptor count.
//
// The control socket's messages (CLI commands to a running supervisor) are
// in control.h.
#pragma once

#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/error.h"
#include "common/fd.h"

namespace agentshim::sync {

using json = nlohmann::json;

// In the order of Message's alternatives.
enum class Type {
  error,      // any → its peer: {msg}
  join,       // supervisor → sentinel: {cgroup} (cgroups::Manager::save())
  joined,     // sentinel → supervisor
  userns,     // stage1 → supervisor: {pid}, write my uid_map/gid_map
  userns_ok,  // supervisor → stage1
  init,       // stage1 → supervisor: {pid}, the init's host pid
  init_ok,    // supervisor → init: your pid is known, go on
  idmap,      // init → supervisor: open my bind sources as host root (and attach the rootfs: userns "auto")
  idmap_ok,   // supervisor → init: {sources, rootfs} + fds (the rootfs if `rootfs`, then one per source)
  hooks,      // init → supervisor: run prestart and createRuntime
  hooks_ok,   // supervisor → init: {pid} (the init's host pid, for createContainer's state)
  seccomp,    // init → supervisor: {kinds} + one listener fd per kind
  ready,      // init → supervisor: waiting on exec.fifo
  created,    // supervisor → CLI: {init_pid, init_start, cgroup}
  enter,      // supervisor → sentinel: {pid}, enter that process's namespaces (the init's)
  entered,    // sentinel → supervisor
};

struct Failure {
  static constexpr Type kType = Type::error;
  std::string msg;
};
struct Join {
  static constexpr Type kType = Type::join;
  json cgroup;
};
struct Joined {
  static constexpr Type kType = Type::joined;
};
struct Userns {
  static constexpr Type kType = Type::userns;
  pid_t pid = 0;
};
struct UsernsOk {
  static constexpr Type kType = Type::userns_ok;
};
struct Init {
  static constexpr Type kType = Type::init;
  pid_t pid = 0;
};
struct InitOk {
  static constexpr Type kType = Type::init_ok;
};
struct Idmap {
  static constexpr Type kType = Type::idmap;
};
// Sent in a new user namespace: with userns "auto" the supervisor attaches
// the idmapped rootfs and `rootfs` is true (fds[0] is the attached rootfs);
// with the config's own id maps only the bind sources travel (as runc opens
// them as host root), and the rootfs is reached by path.
struct IdmapOk {
  static constexpr Type kType = Type::idmap_ok;
  std::vector<std::string> sources;  // bind sources, in the order of the fds after the rootfs's
  bool rootfs = true;                // fds[0] is the attached rootfs
};
struct Hooks {
  static constexpr Type kType = Type::hooks;
};
struct HooksOk {
  static constexpr Type kType = Type::hooks_ok;
  pid_t pid = 0;
};
struct Seccomp {
  static constexpr Type kType = Type::seccomp;
  std::vector<std::string> kinds;  // "exec" (the observer) or "config" (linux.seccomp's listener)
};
struct Ready {
  static constexpr Type kType = Type::ready;
};
struct Created {
  static constexpr Type kType = Type::created;
  pid_t init_pid = 0;
  unsigned long long init_start = 0;
  json cgroup;
};

// The sentinel enters the container's user, mount, network, ipc, uts and
// cgroup namespaces (those that differ from its own), so clients that
// reach the container through the --pid-file pid (nsenter, CNI, `podman
// top`, /proc/PID/net) find the container's (peers.h).
struct Enter {
  static constexpr Type kType = Type::enter;
  pid_t pid = 0;
};
struct Entered {
  static constexpr Type kType = Type::entered;
};

using Message = std::variant<Failure, Join, Joined, Userns, UsernsOk, Init, InitOk, Idmap, IdmapOk, Hooks,
                             HooksOk, Seccomp, Ready, Created, Enter, Entered>;

inline Type type_of(const Message& m) {
  return static_cast<Type>(m.index());
}
// The wire name ("userns-ok").
const char* name(Type t);
// How many descriptors travel with m.
std::size_t fd_count(const Message& m);

std::string encode(const Message& m);
// Throws Error naming the message and field for anything but a well-formed
// message of a known type.
Message decode(std::string_view payload);

void send(int sock, const Message& m, const std::vector<int>& fds = {});
// nullopt on EOF (peer gone). Throws on malformed messages and on a
// descriptor count that does not match the message (the fds are closed).
std::optional<Message> recv(int sock, std::vector<UniqueFd>* fds = nullptr);

// recv and require a T; a Failure from the peer is rethrown as Error(msg);
// EOF throws Error(eof_msg).
Message expect_type(int sock, Type expected, const std::string& eof_msg, std::vector<UniqueFd>* fds);
template <class T>
T expect(int sock, const std::string& eof_msg, std::vector<UniqueFd>* fds = nullptr) {
  return std::get<T>(expect_type(sock, T::kType, eof_msg, fds));
}

}  // namespace agentshim::sync
