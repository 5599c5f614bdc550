#include "netpolicy/credentials.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/base64.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/spawn.h"

namespace agentshim::net::cred {

namespace {

using Str = std::string;

[[noreturn]] void fail(const Str& where, const Str& key, const Str& what) {
  throw Error(where + ": " + key + ": " + what);
}

char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

bool is_tchar(unsigned char c) {
  if (std::isalnum(c)) return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != 0;
}

bool is_token(std::string_view s) {
  if (s.empty() || s.size() > 256) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return is_tchar(static_cast<unsigned char>(c)); });
}

// Visible ASCII and spaces: what may appear around the secret in a field value.
bool is_field_text(std::string_view s) {
  return s.size() <= 1024 && std::all_of(s.begin(), s.end(), [](char c) {
           auto u = static_cast<unsigned char>(c);
           return u == ' ' || (u > 0x20 && u < 0x7f);
         });
}

bool valid_env_name(std::string_view s) {
  if (s.empty() || s.size() > 128 || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

// Query parameter names: unreserved characters only (no encoding needed).
bool valid_query_name(std::string_view s) {
  if (s.empty() || s.size() > 128) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '~';
  });
}

const Str& str(const json& x, const Str& where, const Str& key) {
  if (!x.is_string()) fail(where, key, "must be a string");
  return x.get_ref<const Str&>();
}

void only_keys(const json& x, std::initializer_list<const char*> keys, const Str& where, const Str& key) {
  for (auto it = x.begin(); it != x.end(); ++it) {
    const Str& k = it.key();
    if (std::none_of(keys.begin(), keys.end(), [&k](const char* o) { return k == o; }))
      throw Error(where + ": unknown key " + key + "." + k);
  }
}

Source parse_source(const json& x, const Str& where, const Str& key) {
  if (!x.is_object() || x.size() != 1)
    fail(where, key, "must be an object with one of \"file\", \"env\" or \"command\"");
  only_keys(x, {"file", "env", "command"}, where, key);
  Source s;
  if (x.contains("file")) {
    s.kind = Source::Kind::file;
    s.file = str(x["file"], where, key + ".file");
    if (s.file.empty() || s.file[0] != '/') fail(where, key + ".file", "must be an absolute path");
  } else if (x.contains("env")) {
    s.kind = Source::Kind::env;
    s.env = str(x["env"], where, key + ".env");
    if (!valid_env_name(s.env)) fail(where, key + ".env", "must be an environment variable name");
  } else {
    s.kind = Source::Kind::command;
    const json& c = x["command"];
    if (!c.is_array() || c.empty() || c.size() > 64)
      fail(where, key + ".command",
           "must be an argv array (absolute program path first), run without a shell");
    for (std::size_t i = 0; i < c.size(); ++i) s.command.push_back(str(c[i], where, key + ".command"));
    if (s.command[0].empty() || s.command[0][0] != '/')
      fail(where, key + ".command[0]", "must be an absolute path (no PATH lookup, no shell)");
  }
  return s;
}

Destination parse_destination(const json& x, const Str& where, const Str& key) {
  if (!x.is_object())
    fail(where, key, "must be an object {\"host\", \"port\", \"methods\", \"path_prefix\"}");
  only_keys(x, {"host", "port", "methods", "path_prefix"}, where, key);
  Destination d;
  if (!x.contains("host")) fail(where, key, "needs \"host\"");
  const Str& h = str(x["host"], where, key + ".host");
  if (x.contains("port")) {
    if (!x["port"].is_number_integer() || x["port"].get<long long>() < 1 ||
        x["port"].get<long long>() > 65535)
      fail(where, key + ".port", "must be a port number (1-65535)");
    d.port = static_cast<uint16_t>(x["port"].get<int>());
  }
  Str auth = (h.find(':') != Str::npos && h[0] != '[' ? "[" + h + "]" : h) + ":" + std::to_string(d.port);
  uint16_t port = 0;
  if (h.empty() || !http::parse_authority(auth, 0, d.host, port))
    fail(where, key + ".host", "must be a host name or IP address (no wildcard, no port)");
  if (x.contains("methods")) {
    const json& m = x["methods"];
    if (!m.is_array()) fail(where, key + ".methods", "must be an array of HTTP methods");
    for (std::size_t i = 0; i < m.size(); ++i) {
      const Str& s = str(m[i], where, key + ".methods[" + std::to_string(i) + "]");
      if (!is_token(s) || std::any_of(s.begin(), s.end(), [](char c) { return c >= 'a' && c <= 'z'; }))
        fail(where, key + ".methods[" + std::to_string(i) + "]", "must be an upper-case HTTP method");
      d.methods.push_back(s);
    }
  }
  if (x.contains("path_prefix")) {
    d.path_prefix = str(x["path_prefix"], where, key + ".path_prefix");
    if (d.path_prefix.empty() || d.path_prefix[0] != '/' || !is_field_text(d.path_prefix) ||
        d.path_prefix.find(' ') != Str::npos)
      fail(where, key + ".path_prefix", "must start with \"/\" (printable ASCII, no spaces)");
  }
  return d;
}

Application parse_apply(const json& x, const Str& where, const Str& key) {
  if (!x.is_object()) fail(where, key, "must be an object with \"header\", \"basic\" or \"query\"");
  only_keys(x, {"header", "format", "basic", "query"}, where, key);
  int kinds = static_cast<int>(x.contains("header")) + static_cast<int>(x.contains("basic")) +
              static_cast<int>(x.contains("query"));
  if (kinds != 1) fail(where, key, "needs exactly one of \"header\", \"basic\" or \"query\"");
  Application a;
  if (x.contains("format") && !x.contains("header"))
    fail(where, key + ".format", "applies only to \"header\"");
  if (x.contains("header")) {
    a.kind = Application::Kind::header;
    a.name = str(x["header"], where, key + ".header");
    if (!is_token(a.name)) fail(where, key + ".header", "must be a header field name");
    if (x.contains("format")) {
      a.format = str(x["format"], where, key + ".format");
      auto at = a.format.find("{}");
      if (at == Str::npos || a.format.find("{}", at + 2) != Str::npos || !is_field_text(a.format))
        fail(where, key + ".format", "must hold \"{}\" (the secret) once, in printable ASCII");
    }
  } else if (x.contains("basic")) {
    a.kind = Application::Kind::basic;
    a.name = "Authorization";
    a.username = str(x["basic"], where, key + ".basic");
    if (!is_field_text(a.username) || a.username.find(':') != Str::npos)
      fail(where, key + ".basic", "must be a user name (printable ASCII, no \":\")");
  } else {
    a.kind = Application::Kind::query;
    a.name = str(x["query"], where, key + ".query");
    if (!valid_query_name(a.name)) fail(where, key + ".query", "must be a query parameter name");
  }
  return a;
}

// Percent-encode for a query value.
Str query_encode(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  Str out;
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += c;
    } else {
      out += '%';
      out += hex[u >> 4];
      out += hex[u & 15];
    }
  }
  return out;
}

Str header_value(const Active& a) {
  const auto& ap = a.def.apply;
  if (ap.kind == Application::Kind::basic) return "Basic " + base64(ap.username + ":" + a.secret);
  Str v = ap.format;
  v.replace(v.find("{}"), 2, a.secret);
  return v;
}

// Decoded base64 (padding optional); "" when not base64.
Str unbase64(std::string_view s) { return agentshim::base64::decode_lenient(s).value_or(""); }

// The field's name and value, and for "Basic <b64>" its decoded credentials too.
bool carries(const http::Header& h, const Str& placeholder) {
  if (h.value.find(placeholder) != Str::npos || h.name.find(placeholder) != Str::npos) return true;
  if (iequals(h.name, "authorization") && h.value.size() > 6 && iequals(h.value.substr(0, 6), "basic "))
    return unbase64(h.value.substr(6)).find(placeholder) != Str::npos;
  return false;
}

// Remove `name`=... from a path's query, then append name=value.
Str set_query(const Str& path, const Str& name, const Str& value) {
  auto q = path.find('?');
  Str base = q == Str::npos ? path : path.substr(0, q);
  Str kept;
  if (q != Str::npos) {
    std::string_view rest(path);
    rest.remove_prefix(q + 1);
    while (!rest.empty()) {
      auto amp = rest.find('&');
      std::string_view part = rest.substr(0, amp);
      std::string_view pname = part.substr(0, part.find('='));
      if (pname != name && !part.empty()) kept += (kept.empty() ? "" : "&") + Str(part);
      if (amp == std::string_view::npos) break;
      rest.remove_prefix(amp + 1);
    }
  }
  return base + "?" + kept + (kept.empty() ? "" : "&") + name + "=" + query_encode(value);
}

}  // namespace

bool valid_name(std::string_view n) {
  if (n.empty() || n.size() > 64) return false;
  auto ok0 = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!ok0(n[0])) return false;
  return std::all_of(n.begin(), n.end(), [&](char c) { return ok0(c) || c == '_' || c == '.' || c == '-'; });
}

Credential parse(const std::string& name, const json& j, const std::string& where) {
  const Str key = "credentials." + name;
  if (!valid_name(name))
    throw Error(where + ": credentials: \"" + name +
                "\" is not a credential name (lowercase letters, digits, '_', '.', '-'; at most 64)");
  if (!j.is_object())
    fail(where, key, "must be an object {\"source\", \"placeholder_env\", \"destinations\", \"apply\"}");
  only_keys(j, {"source", "placeholder_env", "destinations", "apply"}, where, key);
  for (const char* k : {"source", "placeholder_env", "destinations", "apply"})
    if (!j.contains(k)) fail(where, key, Str("needs \"") + k + "\"");
  Credential c;
  c.name = name;
  c.source = parse_source(j["source"], where, key + ".source");
  c.placeholder_env = str(j["placeholder_env"], where, key + ".placeholder_env");
  if (!valid_env_name(c.placeholder_env))
    fail(where, key + ".placeholder_env", "must be an environment variable name");
  const json& d = j["destinations"];
  if (!d.is_array() || d.empty() || d.size() > 64)
    fail(where, key + ".destinations", "must be a non-empty array of {\"host\", \"port\"} objects");
  for (std::size_t i = 0; i < d.size(); ++i)
    c.destinations.push_back(
        parse_destination(d[i], where, key + ".destinations[" + std::to_string(i) + "]"));
  c.apply = parse_apply(j["apply"], where, key + ".apply");
  return c;
}

json to_json(const Credential& c) {
  json src;
  switch (c.source.kind) {
    case Source::Kind::file:
      src = {{"file", c.source.file}};
      break;
    case Source::Kind::env:
      src = {{"env", c.source.env}};
      break;
    case Source::Kind::command:
      src = {{"command", c.source.command}};
      break;
  }
  json dests = json::array();
  for (const auto& d : c.destinations) {
    json o = {{"host", d.host}, {"port", d.port}, {"path_prefix", d.path_prefix}};
    if (!d.methods.empty()) o["methods"] = d.methods;
    dests.push_back(std::move(o));
  }
  json ap;
  switch (c.apply.kind) {
    case Application::Kind::header:
      ap = {{"header", c.apply.name}, {"format", c.apply.format}};
      break;
    case Application::Kind::basic:
      ap = {{"basic", c.apply.username}};
      break;
    case Application::Kind::query:
      ap = {{"query", c.apply.name}};
      break;
  }
  return {{"source", src}, {"placeholder_env", c.placeholder_env}, {"destinations", dests}, {"apply", ap}};
}

std::string load_secret(const Source& s) {
  Str secret, what;
  switch (s.kind) {
    case Source::Kind::file: {
      what = "credential file " + s.file;
      UniqueFd fd(::open(s.file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
      if (!fd) throw_errno("open " + what);
      struct stat st {};
      if (::fstat(fd.get(), &st) != 0) throw_errno("fstat " + what);
      if (!S_ISREG(st.st_mode)) throw Error(what + " is not a regular file");
      if (st.st_uid != 0 && st.st_uid != ::geteuid())
        throw Error(what + " is owned by uid " + std::to_string(st.st_uid) + ", not root");
      if (st.st_mode & 077)
        throw Error(what + " is readable or writable by group or others (mode " +
                    std::to_string((st.st_mode >> 6) & 7) + std::to_string((st.st_mode >> 3) & 7) +
                    std::to_string(st.st_mode & 7) + "); make it 0600 or 0400");
      char buf[4096];
      for (;;) {
        ssize_t n = ::read(fd.get(), buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw_errno("read " + what);
        if (n == 0) break;
        secret.append(buf, static_cast<std::size_t>(n));
        if (secret.size() > kMaxSecretBytes + 2) break;
      }
      std::memset(buf, 0, sizeof buf);
      break;
    }
    case Source::Kind::env: {
      what = "environment variable " + s.env;
      const char* v = std::getenv(s.env.c_str());
      if (!v) throw Error(what + " is not set in the runtime's environment");
      secret = v;
      break;
    }
    case Source::Kind::command: {
      what = "credential command " + s.command[0];
      SpawnSpec sp;
      sp.argv = s.command;
      sp.path = s.command[0];
      sp.timeout_ms = 10000;
      sp.max_output = kMaxSecretBytes + 2;
      SpawnResult r = spawn_and_wait(sp);
      if (!r.succeeded())
        throw Error(what + " failed: " + r.describe());  // its stderr may hold anything: not shown
      secret = std::move(r.out);
      break;
    }
  }
  if (!secret.empty() && secret.back() == '\n') secret.pop_back();
  if (!secret.empty() && secret.back() == '\r') secret.pop_back();
  if (secret.empty()) throw Error(what + " gave an empty secret");
  if (secret.size() > kMaxSecretBytes)
    throw Error(what + " gave a secret over " + std::to_string(kMaxSecretBytes) + " bytes");
  for (char c : secret)
    if (c == '\r' || c == '\n' || c == '\0' || (static_cast<unsigned char>(c) < 0x20 && c != '\t') ||
        c == 0x7f)
      throw Error(what + " gave a secret with control characters (it is sent in a header)");
  return secret;
}

std::string make_placeholder() {
  unsigned char b[16];
  std::size_t got = 0;
  while (got < sizeof b) {
    ssize_t n = ::getrandom(b + got, sizeof b - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("getrandom");
    got += static_cast<std::size_t>(n);
  }
  static const char* hex = "0123456789abcdef";
  Str out = "agentshim-cred-";
  for (unsigned char c : b) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

bool plain_path(std::string_view path) {
  std::string_view p = path.substr(0, path.find('?'));
  if (p.find('\\') != std::string_view::npos) return false;
  for (std::size_t i = 0; i + 2 < p.size(); ++i)
    if (p[i] == '%') {
      char a = p[i + 1], b = lower(p[i + 2]);
      if ((a == '2' && (b == 'e' || b == 'f')) || (a == '5' && b == 'c')) return false;
    }
  std::size_t i = 0;
  while (i < p.size()) {
    std::size_t j = p.find('/', i + 1);
    std::string_view seg = p.substr(i + 1, (j == std::string_view::npos ? p.size() : j) - i - 1);
    if (seg == "." || seg == "..") return false;
    if (j == std::string_view::npos) break;
    i = j;
  }
  return true;
}

bool matches(const Credential& c, const std::string& host, uint16_t port, const std::string& method,
             const std::string& path) {
  for (const auto& d : c.destinations) {
    if (d.host != host || d.port != port) continue;
    if (!d.methods.empty() && std::find(d.methods.begin(), d.methods.end(), method) == d.methods.end())
      continue;
    if (path.compare(0, d.path_prefix.size(), d.path_prefix) != 0) continue;
    if (d.path_prefix != "/" && !plain_path(path)) continue;
    return true;
  }
  return false;
}

Rewrite rewrite(http::Request& req, const std::vector<Active>& creds, const std::string& host,
                uint16_t port) {
  Rewrite out;
  std::vector<const Active*> apply;
  for (const auto& a : creds)
    if (matches(a.def, host, port, req.method, req.path)) apply.push_back(&a);
  // A placeholder in the method or target: applied by a query credential here, or refused.
  for (const auto& a : creds) {
    if (req.method.find(a.placeholder) != Str::npos) {
      out.deny = true;
      out.reason = "the placeholder of credential " + a.def.name + " in the request method";
      out.stripped.push_back(a.def.name);
      return out;
    }
    if (req.path.find(a.placeholder) == Str::npos && req.target.find(a.placeholder) == Str::npos) continue;
    bool here = std::find(apply.begin(), apply.end(), &a) != apply.end() &&
                a.def.apply.kind == Application::Kind::query;
    if (!here) {
      out.deny = true;
      out.reason = "the placeholder of credential " + a.def.name +
                   " in the request target to a destination it may not go to";
      out.stripped.push_back(a.def.name);
      return out;
    }
  }
  // Header fields: the applied ones are replaced; a placeholder anywhere else is removed.
  std::vector<http::Header> kept;
  for (auto& h : req.headers) {
    bool drop = false;
    for (const Active* a : apply)
      if (a->def.apply.kind != Application::Kind::query && iequals(h.name, a->def.apply.name)) drop = true;
    for (const auto& a : creds) {
      if (!carries(h, a.placeholder)) continue;
      drop = true;
      bool applied_here = std::find(apply.begin(), apply.end(), &a) != apply.end() &&
                          a.def.apply.kind != Application::Kind::query && iequals(h.name, a.def.apply.name);
      if (!applied_here &&
          std::find(out.stripped.begin(), out.stripped.end(), a.def.name) == out.stripped.end())
        out.stripped.push_back(a.def.name);
    }
    if (!drop) kept.push_back(std::move(h));
  }
  req.headers = std::move(kept);
  for (const Active* a : apply) {
    if (a->def.apply.kind == Application::Kind::query) {
      req.path = set_query(req.path, a->def.apply.name, a->secret);
    } else {
      // Two credentials on one header name: the first (policy order) wins.
      bool taken = std::any_of(req.headers.begin(), req.headers.end(),
                               [&](const http::Header& h) { return iequals(h.name, a->def.apply.name); });
      if (taken) continue;
      req.headers.push_back({a->def.apply.name, header_value(*a)});
    }
    out.applied.push_back(a->def.name);
  }
  // A placeholder left in the target (another query parameter): refused.
  for (const auto& a : creds)
    if (req.path.find(a.placeholder) != Str::npos) {
      out.deny = true;
      out.reason =
          "the placeholder of credential " + a.def.name + " in the request target outside its parameter";
      return out;
    }
  return out;
}

std::string base64(std::string_view in) { return agentshim::base64::encode(in); }

}  // namespace agentshim::net::cred
