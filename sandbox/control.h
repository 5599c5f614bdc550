// The supervisor's control socket, <root>/<id>/supervisor.sock (0600): the
// CLI commands tell a running container's supervisor what they did, for the
// record and the time limit. One newline-terminated JSON message per
// connection ({"type": "<name>", payload...}), one JSON line back
// ({"ok": true} or {"ok": false, "error": "..."}).
//
//   start   ── start-gate ──▶ supervisor   answered once the "before" filesystem walk is done
//   start   ── started ─────▶ supervisor   starts the exec time limit (run.started is
//                                          written at the start gate, before the init runs);
//                                          `start` does not wait for the answer
//   exec    ── exec-observe{session, pid, kinds} + listener fds (SCM_RIGHTS)
//                           ───▶ supervisor   the exec'd process's seccomp
//                                          listeners, before it calls execve:
//                                          its process.exec events carry `session`
//   exec    ── exec{...} ───▶ supervisor   caller.exec (with `session`)
//   kill    ── kill{...} ───▶ supervisor   signal (source: caller)
//   pause   ── paused ──────▶ supervisor   run.paused
//   resume  ── resumed ─────▶ supervisor   run.resumed
//   update  ── updated{...} ▶ supervisor   run.updated
//   a pod's sandbox supervisor ── net-event{event, data, served_by}
//                           ───▶ supervisor   the network decision one of this
//                                          container's processes made through the
//                                          proxy the sandbox serves (sockowner.h)
//
// Any local process that can reach the socket may connect: decode() checks
// every field, and an unknown or malformed message is answered with an
// error, never recorded.
#pragma once

#include <sys/types.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/fd.h"

namespace agentshim::control {

using json = nlohmann::json;

// In the order of Message's alternatives.
enum class Type { start_gate, started, exec, kill, paused, resumed, updated, exec_observe, net_event };

struct StartGate {
  static constexpr Type kType = Type::start_gate;
};
struct Started {
  static constexpr Type kType = Type::started;
};
struct Exec {
  static constexpr Type kType = Type::exec;
  pid_t pid = 0;  // host pid of the exec'd process
  std::vector<std::string> args;
  std::string cwd = "/";
  bool terminal = false;
  json user = json::object();             // process.user as given
  json policy_decisions = json::array();  // policy::Result decisions
  std::string session;                    // the exec session's id ("" when not observed)
};
struct Kill {
  static constexpr Type kType = Type::kill;
  std::string signal;  // "SIGTERM"
  bool all = false;
};
struct Paused {
  static constexpr Type kType = Type::paused;
};
struct Resumed {
  static constexpr Type kType = Type::resumed;
};
struct Updated {
  static constexpr Type kType = Type::updated;
  json resources = json::object();  // the applied linux.resources
  json policy_decisions = json::array();
};

// Sent with the listener fds (SCM_RIGHTS), one per entry of `kinds`.
struct ExecObserve {
  static constexpr Type kType = Type::exec_observe;
  std::string session;             // 1-64 of [0-9a-f]
  pid_t pid = 0;                   // host pid of the exec'd process
  std::vector<std::string> kinds;  // "exec" (the observer's) or "config" (linux.seccomp's listenerPath)
};

// A network decision made by one of this container's processes through a
// proxy another container serves (a pod's sandbox): recorded here as it was
// there, with `served_by`.
struct NetEvent {
  static constexpr Type kType = Type::net_event;
  std::string event;  // "net.connection" | "net.credential"
  json data = json::object();
  std::string served_by;  // the serving container's id
};

using Message = std::variant<StartGate, Started, Exec, Kill, Paused, Resumed, Updated, ExecObserve, NetEvent>;

inline Type type_of(const Message& m) {
  return static_cast<Type>(m.index());
}
const char* name(Type t);

// One line, without the newline.
std::string encode(const Message& m);
// Throws Error for anything but a well-formed message of a known type.
Message decode(std::string_view line);

struct Reply {
  bool ok = false;
  std::string error;    // when !ok
  bool queued = false;  // sent without waiting for the answer
};

// The listening socket (non-blocking, close-on-exec), replacing a stale one;
// unlinked again on destruction.
class Server {
 public:
  explicit Server(std::string path);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  int fd() const { return fd_.get(); }
  // Accept every pending connection: read its line (1 s, 1 MiB at most) and
  // the descriptors sent with its first bytes (at most 16), decode it, call
  // on_message (an exception becomes the error reply; descriptors it leaves
  // in `fds` are closed), reply, and then call after_reply.
  void serve(const std::function<void(const Message&, std::vector<UniqueFd>& fds)>& on_message,
             const std::function<void()>& after_reply);

 private:
  std::string path_;
  UniqueFd fd_;
};

// Connect to a container's supervisor control socket and send one message
// (best effort: a missing or dead supervisor is logged, not fatal).
// wait_reply=false: send and return without waiting.
// reply_timeout_s: how long to wait for the answer (0: as long as the
// supervisor lives; `start` waits so for the "before" filesystem walk).
// `fds` go with the message (SCM_RIGHTS).
Reply notify(const std::string& state_dir, const Message& msg, bool wait_reply = true,
             int reply_timeout_s = 5, const std::vector<int>& fds = {});

// A new exec session id: 16 random hex digits.
std::string new_session_id();

}  // namespace agentshim::control
