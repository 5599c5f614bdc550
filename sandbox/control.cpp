#include "sandbox/control.h"

#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <limits>
#include <type_traits>

#include "common/error.h"
#include "common/log.h"
#include "sandbox/state.h"
#include "sandbox/sync.h"

namespace agentshim::control {
namespace {

constexpr const char* kNames[] = {"start-gate", "started", "exec",         "kill",     "paused",
                                  "resumed",    "updated", "exec-observe", "net-event"};
static_assert(std::size(kNames) == std::variant_size_v<Message>);

static_assert(sync::wire::types_in_order<Message>(), "Message's alternatives follow Type's order");

[[noreturn]] void bad(const std::string& type, const std::string& what) {
  throw Error("malformed control message \"" + type + "\": " + what);
}

// An optional field of the given JSON type; absent means the default.
template <class T>
T field(const json& j, const std::string& type, const char* key, T dflt, json::value_t want) {
  auto it = j.find(key);
  if (it == j.end()) return dflt;
  bool ok = it->type() == want || (want == json::value_t::number_integer && it->is_number_integer());
  if (!ok) bad(type, std::string(key) + " has the wrong type");
  return it->get<T>();
}

bool valid_session(const std::string& s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

pid_t pid_field(const json& j, const std::string& type) {
  long long pid = field<long long>(j, type, "pid", 0, json::value_t::number_integer);
  if (pid < 0 || pid > std::numeric_limits<pid_t>::max()) bad(type, "pid is not a pid");
  return static_cast<pid_t>(pid);
}

}  // namespace

std::string new_session_id() {
  unsigned char b[8];
  if (::getrandom(b, sizeof b, 0) != static_cast<ssize_t>(sizeof b))
    throw_errno("getrandom (exec session id)");
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned char c : b) {
    s.push_back(hex[c >> 4]);
    s.push_back(hex[c & 15]);
  }
  return s;
}

const char* name(Type t) {
  auto i = static_cast<std::size_t>(t);
  return i < std::size(kNames) ? kNames[i] : "?";
}

std::string encode(const Message& m) {
  json j = {{"type", name(type_of(m))}};
  std::visit(
      [&j](const auto& p) {
        using T = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<T, Exec>) {
          j["pid"] = p.pid;
          j["args"] = p.args;
          j["cwd"] = p.cwd;
          j["terminal"] = p.terminal;
          j["user"] = p.user;
          j["policy_decisions"] = p.policy_decisions;
          if (!p.session.empty()) j["session"] = p.session;
        } else if constexpr (std::is_same_v<T, ExecObserve>) {
          j["session"] = p.session;
          j["pid"] = p.pid;
          j["kinds"] = p.kinds;
        } else if constexpr (std::is_same_v<T, Kill>) {
          j["signal"] = p.signal;
          j["all"] = p.all;
        } else if constexpr (std::is_same_v<T, Updated>) {
          j["resources"] = p.resources;
          j["policy_decisions"] = p.policy_decisions;
        } else if constexpr (std::is_same_v<T, NetEvent>) {
          j["event"] = p.event;
          j["data"] = p.data;
          j["served_by"] = p.served_by;
        }
      },
      m);
  return j.dump();
}

Message decode(std::string_view line) {
  auto [j, type, i] = sync::wire::parse(line, "control", kNames, std::size(kNames));
  using vt = json::value_t;
  switch (static_cast<Type>(i)) {
    case Type::start_gate:
      return StartGate{};
    case Type::started:
      return Started{};
    case Type::exec: {
      Exec e;
      e.pid = pid_field(j, type);
      for (const auto& a : field<json>(j, type, "args", json::array(), vt::array)) {
        if (!a.is_string()) bad(type, "args must be an array of strings");
        e.args.push_back(a.get<std::string>());
      }
      e.cwd = field<std::string>(j, type, "cwd", "/", vt::string);
      e.terminal = field<bool>(j, type, "terminal", false, vt::boolean);
      e.user = field<json>(j, type, "user", json::object(), vt::object);
      e.policy_decisions = field<json>(j, type, "policy_decisions", json::array(), vt::array);
      e.session = field<std::string>(j, type, "session", "", vt::string);
      if (!e.session.empty() && !valid_session(e.session)) bad(type, "session is not 1-64 hex digits");
      return e;
    }
    case Type::exec_observe: {
      ExecObserve o;
      o.session = field<std::string>(j, type, "session", "", vt::string);
      if (!valid_session(o.session)) bad(type, "session is not 1-64 hex digits");
      o.pid = pid_field(j, type);
      for (const auto& k : field<json>(j, type, "kinds", json::array(), vt::array)) {
        if (!k.is_string() || (k != "exec" && k != "config"))
          bad(type, "kinds must be \"exec\" or \"config\"");
        if (o.kinds.size() >= 16) bad(type, "too many kinds");
        o.kinds.push_back(k.get<std::string>());
      }
      return o;
    }
    case Type::kill:
      return Kill{field<std::string>(j, type, "signal", "", vt::string),
                  field<bool>(j, type, "all", false, vt::boolean)};
    case Type::paused:
      return Paused{};
    case Type::resumed:
      return Resumed{};
    case Type::updated: {
      Updated u;
      u.resources = field<json>(j, type, "resources", json::object(), vt::object);
      u.policy_decisions = field<json>(j, type, "policy_decisions", json::array(), vt::array);
      return u;
    }
    case Type::net_event: {
      NetEvent n;
      n.event = field<std::string>(j, type, "event", "", vt::string);
      if (n.event != "net.connection" && n.event != "net.credential")
        bad(type, "event must be net.connection or net.credential");
      n.data = field<json>(j, type, "data", json::object(), vt::object);
      n.served_by = field<std::string>(j, type, "served_by", "", vt::string);
      if (n.served_by.empty() || n.served_by.size() > 1024) bad(type, "served_by must name a container");
      return n;
    }
  }
  throw Error("unknown control message type \"" + type + "\"");
}

Server::Server(std::string path) : path_(std::move(path)) {
  fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd_) throw_errno("socket (control)");
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  if (path_.size() >= sizeof addr.sun_path) throw Error("control socket path too long: " + path_);
  std::strcpy(addr.sun_path, path_.c_str());
  ::unlink(path_.c_str());
  if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) throw_errno("bind " + path_);
  ::chmod(path_.c_str(), 0600);
  if (::listen(fd_.get(), 16) < 0) throw_errno("listen " + path_);
}

Server::~Server() {
  fd_.reset();
  ::unlink(path_.c_str());
}

void Server::serve(const std::function<void(const Message&, std::vector<UniqueFd>& fds)>& on_message,
                   const std::function<void()>& after_reply) {
  for (;;) {
    UniqueFd c(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c) return;
    struct timeval tv {
      1, 0
    };
    ::setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string buf;
    std::vector<UniqueFd> fds;
    try {
      buf = recv_fds(c.get(), fds);  // the descriptors come with the first bytes
    } catch (const std::exception&) {
    }
    char tmp[4096];
    while (!buf.empty() && buf.size() < 1 << 20 && buf.find('\n') == std::string::npos) {
      ssize_t r = ::read(c.get(), tmp, sizeof tmp);
      if (r <= 0) break;
      buf.append(tmp, static_cast<std::size_t>(r));
    }
    json reply = {{"ok", true}};
    try {
      on_message(decode(std::string_view(buf).substr(0, buf.find('\n'))), fds);
    } catch (const std::exception& e) {
      reply = {{"ok", false}, {"error", e.what()}};
    }
    std::string out = reply.dump() + "\n";
    ssize_t w = ::send(c.get(), out.data(), out.size(), MSG_NOSIGNAL);
    (void)w;
    c.reset();
    after_reply();
  }
}

Reply notify(const std::string& state_dir, const Message& msg, bool wait_reply, int reply_timeout_s,
             const std::vector<int>& fds) {
  std::string path = state::control_socket_in(state_dir);
  UniqueFd c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  struct sockaddr_un addr {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return {false, "socket path too long", false};
  std::strcpy(addr.sun_path, path.c_str());
  if (!c || ::connect(c.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    log::debug("supervisor not reachable at " + path + ": " + std::strerror(errno));
    return {false, std::strerror(errno), false};
  }
  struct timeval tv {
    reply_timeout_s, 0
  };
  if (reply_timeout_s > 0) ::setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string out = encode(msg) + "\n";
  if (!fds.empty()) {
    try {
      send_fds(c.get(), out, fds.data(), static_cast<int>(fds.size()));
    } catch (const std::exception& e) {
      return {false, e.what(), false};
    }
  } else if (::send(c.get(), out.data(), out.size(), MSG_NOSIGNAL) < 0) {
    return {false, "send failed", false};
  }
  if (!wait_reply) return {true, "", true};
  std::string buf;
  char tmp[4096];
  while (buf.find('\n') == std::string::npos) {
    ssize_t r = ::read(c.get(), tmp, sizeof tmp);
    if (r <= 0) break;
    buf.append(tmp, static_cast<std::size_t>(r));
  }
  try {
    json j = json::parse(buf.substr(0, buf.find('\n')));
    Reply r;
    r.ok = j.value("ok", false);
    r.error = j.value("error", std::string());
    return r;
  } catch (...) {
    return {false, "no reply", false};
  }
}

}  // namespace agentshim::control
