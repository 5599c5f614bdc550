#include "sandbox/sync.h"

#include <limits>
#include <type_traits>

namespace agentshim::sync {
namespace {

constexpr const char* kNames[] = {"error",   "join",    "joined",   "userns", "userns-ok", "init",
                                  "init-ok", "idmap",   "idmap-ok", "hooks",  "hooks-ok",  "seccomp",
                                  "ready",   "created", "enter",    "entered"};
static_assert(std::size(kNames) == std::variant_size_v<Message>);

template <std::size_t I = 0>
constexpr bool types_in_order() {
  if constexpr (I == std::variant_size_v<Message>) {
    return true;
  } else {
    return static_cast<std::size_t>(std::variant_alternative_t<I, Message>::kType) == I &&
           types_in_order<I + 1>();
  }
}
static_assert(types_in_order(), "Message's alternatives follow Type's order");

[[noreturn]] void bad(const std::string& type, const std::string& what) {
  throw Error("malformed sync message \"" + type + "\": " + what);
}

pid_t get_pid(const json& j, const std::string& type, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) bad(type, std::string(key) + " must be an integer");
  auto v = it->get<long long>();
  if (v <= 0 || v > std::numeric_limits<pid_t>::max()) bad(type, std::string(key) + " is not a pid");
  return static_cast<pid_t>(v);
}

std::vector<std::string> get_strings(const json& j, const std::string& type, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) bad(type, std::string(key) + " must be an array of strings");
  std::vector<std::string> out;
  for (const auto& v : *it) {
    if (!v.is_string()) bad(type, std::string(key) + " must be an array of strings");
    out.push_back(v.get<std::string>());
  }
  return out;
}

json get_object(const json& j, const std::string& type, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_object()) bad(type, std::string(key) + " must be an object");
  return *it;
}

}  // namespace

const char* name(Type t) {
  auto i = static_cast<std::size_t>(t);
  return i < std::size(kNames) ? kNames[i] : "?";
}

std::size_t fd_count(const Message& m) {
  if (auto* s = std::get_if<Seccomp>(&m)) return s->kinds.size();
  if (auto* i = std::get_if<IdmapOk>(&m)) return i->sources.size() + (i->rootfs ? 1 : 0);
  return 0;
}

std::string encode(const Message& m) {
  json j = {{"type", name(type_of(m))}};
  std::visit(
      [&j](const auto& p) {
        using T = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<T, Failure>) {
          j["msg"] = p.msg;
        } else if constexpr (std::is_same_v<T, Join>) {
          j["cgroup"] = p.cgroup;
        } else if constexpr (std::is_same_v<T, Userns> || std::is_same_v<T, Init> ||
                             std::is_same_v<T, HooksOk> || std::is_same_v<T, Enter>) {
          j["pid"] = p.pid;
        } else if constexpr (std::is_same_v<T, IdmapOk>) {
          j["sources"] = p.sources;
          j["rootfs"] = p.rootfs;
        } else if constexpr (std::is_same_v<T, Seccomp>) {
          j["kinds"] = p.kinds;
        } else if constexpr (std::is_same_v<T, Created>) {
          j["init_pid"] = p.init_pid;
          j["init_start"] = p.init_start;
          j["cgroup"] = p.cgroup;
        }
      },
      m);
  return j.dump();
}

Message decode(std::string_view payload) {
  json j;
  try {
    j = json::parse(payload);
  } catch (const json::exception& e) {
    throw Error(std::string("malformed sync message: ") + e.what());
  }
  if (!j.is_object()) throw Error("malformed sync message: not a JSON object");
  auto t = j.find("type");
  if (t == j.end() || !t->is_string()) throw Error("malformed sync message: no \"type\"");
  const std::string type = t->get<std::string>();
  std::size_t i = 0;
  while (i < std::size(kNames) && type != kNames[i]) i++;
  if (i == std::size(kNames)) throw Error("unknown sync message type \"" + type + "\"");
  switch (static_cast<Type>(i)) {
    case Type::error: {
      auto it = j.find("msg");
      if (it == j.end() || !it->is_string()) bad(type, "msg must be a string");
      return Failure{it->get<std::string>()};
    }
    case Type::join:
      return Join{get_object(j, type, "cgroup")};
    case Type::joined:
      return Joined{};
    case Type::userns:
      return Userns{get_pid(j, type, "pid")};
    case Type::userns_ok:
      return UsernsOk{};
    case Type::init:
      return Init{get_pid(j, type, "pid")};
    case Type::init_ok:
      return InitOk{};
    case Type::idmap:
      return Idmap{};
    case Type::idmap_ok: {
      auto sources = get_strings(j, type, "sources");
      auto r = j.find("rootfs");
      if (r == j.end() || !r->is_boolean()) bad(type, "rootfs must be a boolean");
      return IdmapOk{std::move(sources), r->get<bool>()};
    }
    case Type::hooks:
      return Hooks{};
    case Type::hooks_ok:
      return HooksOk{get_pid(j, type, "pid")};
    case Type::seccomp:
      return Seccomp{get_strings(j, type, "kinds")};
    case Type::ready:
      return Ready{};
    case Type::created: {
      Created c;
      c.init_pid = get_pid(j, type, "init_pid");
      auto s = j.find("init_start");
      if (s == j.end() || !s->is_number_unsigned()) bad(type, "init_start must be an unsigned integer");
      c.init_start = s->get<unsigned long long>();
      c.cgroup = get_object(j, type, "cgroup");
      return c;
    }
    case Type::enter:
      return Enter{get_pid(j, type, "pid")};
    case Type::entered:
      return Entered{};
  }
  throw Error("unknown sync message type \"" + type + "\"");
}

void send(int sock, const Message& m, const std::vector<int>& fds) {
  if (fds.size() != fd_count(m))
    throw Error(std::string("sync message \"") + name(type_of(m)) + "\" carries " +
                std::to_string(fd_count(m)) + " descriptors, not " + std::to_string(fds.size()));
  send_fds(sock, encode(m), fds.data(), static_cast<int>(fds.size()));
}

std::optional<Message> recv(int sock, std::vector<UniqueFd>* fds) {
  std::vector<UniqueFd> got;
  std::string payload = recv_fds(sock, got, 65536);
  if (payload.empty()) return std::nullopt;
  Message m = decode(payload);
  if (got.size() != fd_count(m))
    throw Error(std::string("sync message \"") + name(type_of(m)) + "\" came with " +
                std::to_string(got.size()) + " descriptors, expected " + std::to_string(fd_count(m)));
  if (fds) *fds = std::move(got);
  return m;
}

Message expect_type(int sock, Type expected, const std::string& eof_msg, std::vector<UniqueFd>* fds) {
  auto m = recv(sock, fds);
  if (!m) throw Error(eof_msg);
  if (auto* f = std::get_if<Failure>(&*m)) throw Error(f->msg);
  if (type_of(*m) != expected)
    throw Error(std::string("unexpected sync message \"") + name(type_of(*m)) + "\" (expected \"" +
                name(expected) + "\")");
  return std::move(*m);
}

}  // namespace agentshim::sync
