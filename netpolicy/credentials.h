// Credentials the agent uses but never holds (docs/CREDENTIALS.md).
//
// The policy names each credential (policy section "credentials"), where the
// supervisor reads its secret on the host, which destinations it may be sent
// to and how it is applied to a request. A container asks for credentials by
// name (annotation dev.agentshim.credentials) and sees only a placeholder: a
// random per-run token in an environment variable the policy names. The
// proxy, on a request it can read, puts the secret in (or replaces the
// placeholder) only on that credential's destinations and strips the
// placeholder everywhere else, which is recorded as an exfiltration attempt.
//
// Everything here is pure except load_secret() and make_placeholder(); the
// secret lives only in Active (the supervisor's memory) and in the head
// rewrite() builds for the upstream. No error message, event or returned
// description ever contains it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "netpolicy/http.h"

namespace agentshim::net::cred {

using json = nlohmann::json;

constexpr std::size_t kMaxSecretBytes = 16384;

// Where the supervisor reads the secret (exactly one of them).
struct Source {
  enum class Kind { file, env, command } kind = Kind::file;
  std::string file;                  // absolute; owned by root, no group/other access
  std::string env;                   // a variable of the runtime's environment
  std::vector<std::string> command;  // argv, absolute argv[0]; its stdout (one trailing newline removed)
};

// A request the credential may be sent with.
struct Destination {
  std::string host;  // normalised like the allowlist: lowercase name or IP literal
  uint16_t port = 443;
  std::vector<std::string> methods;  // empty: any
  std::string path_prefix = "/";     // the request's path starts with it
};

// How it is applied.
struct Application {
  enum class Kind { header, basic, query } kind = Kind::header;
  std::string name;           // header field name (header) or query parameter (query)
  std::string format = "{}";  // header: the field value, "{}" = the secret ("Bearer {}")
  std::string username;       // basic: "username:secret" base64 in Authorization
};

struct Credential {
  std::string name;  // [a-z0-9][a-z0-9_.-]{0,63}
  Source source;
  std::string placeholder_env;  // the container's variable holding the placeholder
  std::vector<Destination> destinations;
  Application apply;
};

// Validate one definition of the policy's "credentials" section (key `where`
// + "credentials.<name>" in messages). Throws agentshim::Error naming the key.
Credential parse(const std::string& name, const json& j, const std::string& where);
// The normalised definition (what the policy keeps and the record shows:
// never a secret, only where it comes from).
json to_json(const Credential& c);
bool valid_name(std::string_view name);

// Read the secret from its source. Refuses a file that is not a regular file
// owned by root (or the runtime's user) or that group/other may access, an
// empty secret, one over kMaxSecretBytes and one holding CR, LF or NUL (it
// goes into a header). Errors name the source, never the secret.
std::string load_secret(const Source& s);

// A fresh placeholder: "agentshim-cred-" + 32 hex digits from getrandom(2).
std::string make_placeholder();

// A credential in use by one container: held only by the supervisor.
struct Active {
  Credential def;
  std::string placeholder;
  std::string secret;
};

// A path whose prefix may be trusted: no dot segments ("/./", "/../", a
// final "/." or "/.."), no percent-encoded '.', '/' or '\\', no '\\' (an
// upstream that normalises "/v1/../admin" would otherwise see a path the
// prefix never allowed). A path that is not plain matches no prefix but "/".
bool plain_path(std::string_view path);
// Does the request (method, path) to host:port go to one of c's destinations?
bool matches(const Credential& c, const std::string& host, uint16_t port, const std::string& method,
             const std::string& path);

struct Rewrite {
  std::vector<std::string> applied;   // names of the credentials put into the request
  std::vector<std::string> stripped;  // names whose placeholder was removed (sent where it may not go)
  bool deny = false;                  // a placeholder in the request target elsewhere: refuse the request
  std::string reason;                 // for deny: one line, names the credential, never a value
};

// Rewrite a request (headers and, for query credentials, the path) going to
// host:port: on each matching credential's destination its application is
// set (a header of the same name, or the query parameter, is replaced);
// every other header field carrying a placeholder of this run is removed.
// A placeholder in the request target that no credential applies to makes
// the request denied (the target cannot be stripped). Header names compare
// case-insensitively; placeholders are found as literal substrings (a
// placeholder the client encoded, e.g. inside Basic's base64, is decoded for
// Authorization: Basic, not otherwise; docs/CREDENTIALS.md).
Rewrite rewrite(http::Request& req, const std::vector<Active>& creds, const std::string& host, uint16_t port);

// Standard base64 with padding.
std::string base64(std::string_view in);

}  // namespace agentshim::net::cred
