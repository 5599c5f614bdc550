// Credential definitions, secret sources, and the request rewrite that puts
// a secret only where it may go.
#include "netpolicy/credentials.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "common/error.h"
#include "netpolicy/request_rules.h"
#include "tests/temp_dir.h"

using namespace agentshim;
using namespace agentshim::net;
using json = nlohmann::json;

namespace {

json def(json apply = {{"header", "Authorization"}, {"format", "Bearer {}"}}) {
  return {{"source", {{"env", "AGENTSHIM_TEST_SECRET"}}},
          {"placeholder_env", "API_TOKEN"},
          {"destinations", {{{"host", "API.example.com"}, {"port", 80}, {"path_prefix", "/v1/"}}}},
          {"apply", apply}};
}

std::string parse_error(const std::string& name, const json& j) {
  try {
    cred::parse(name, j, "policy p.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

cred::Active active(const std::string& name,
                    json apply = {{"header", "Authorization"}, {"format", "Bearer {}"}}) {
  cred::Active a;
  a.def = cred::parse(name, def(std::move(apply)), "p");
  a.placeholder = cred::make_placeholder();
  a.secret = "s3cr3t-" + name;
  return a;
}

// The head with a Host field for its absolute-form target added when it has none.
http::Request request(std::string head) {
  if (head.find("\r\nHost:") == std::string::npos) {
    auto a = head.find("http://") + 7;
    auto host = head.substr(a, head.find_first_of("/ ", a) - a);
    head.insert(head.find("\r\n") + 2, "Host: " + host + "\r\n");
  }
  auto r = http::parse_request_head(head);
  EXPECT_EQ(r.state, http::ParseResult::State::complete) << r.reason;
  return r.request;
}

std::string forwarded(const std::string& head, const std::vector<cred::Active>& cs,
                      cred::Rewrite* out = nullptr) {
  auto req = request(head);
  auto rw = cred::rewrite(req, cs, req.host, req.port);
  if (out) *out = rw;
  return rw.deny ? "" : http::upstream_head(req, true);
}

}  // namespace

TEST(CredentialParse, NormalisesAndRoundTrips) {
  auto c = cred::parse("github", def(), "p");
  EXPECT_EQ(c.destinations.at(0).host, "api.example.com");
  EXPECT_EQ(c.destinations.at(0).port, 80);
  json j = cred::to_json(c);
  EXPECT_EQ(j["destinations"][0]["host"], "api.example.com");
  EXPECT_EQ(j["apply"]["format"], "Bearer {}");
  EXPECT_EQ(j["source"]["env"], "AGENTSHIM_TEST_SECRET");
  auto again = cred::parse("github", j, "p");
  EXPECT_EQ(cred::to_json(again), j);
}

TEST(CredentialParse, ErrorsNameTheKey) {
  EXPECT_NE(parse_error("Bad Name", def()).find("not a credential name"), std::string::npos);
  json j = def();
  j["typo"] = 1;
  EXPECT_NE(parse_error("x", j).find("unknown key credentials.x.typo"), std::string::npos);
  j = def();
  j["source"] = {{"file", "relative"}};
  EXPECT_NE(parse_error("x", j).find("credentials.x.source.file: must be an absolute path"),
            std::string::npos);
  j["source"] = {{"command", {"curl", "x"}}};
  EXPECT_NE(parse_error("x", j).find("command[0]: must be an absolute path"), std::string::npos);
  j["source"] = {{"env", "A"}, {"file", "/x"}};
  EXPECT_NE(parse_error("x", j).find("one of"), std::string::npos);
  j = def({{"header", "Authorization"}, {"format", "Bearer"}});
  EXPECT_NE(parse_error("x", j).find("format: must hold"), std::string::npos);
  j = def({{"header", "Bad Header"}});
  EXPECT_NE(parse_error("x", j).find("apply.header: must be a header field name"), std::string::npos);
  j = def({{"header", "x"}, {"query", "k"}});
  EXPECT_NE(parse_error("x", j).find("exactly one"), std::string::npos);
  j = def();
  j["destinations"] = json::array();
  EXPECT_NE(parse_error("x", j).find("destinations: must be a non-empty array"), std::string::npos);
  j["destinations"] = {{{"host", "*.example.com"}}};
  EXPECT_NE(parse_error("x", j).find("destinations[0].host"), std::string::npos);
  j["destinations"] = {{{"host", "a.example"}, {"methods", {"get"}}}};
  EXPECT_NE(parse_error("x", j).find("upper-case"), std::string::npos);
  j = def();
  j.erase("placeholder_env");
  EXPECT_NE(parse_error("x", j).find(": needs \"placeholder_env\""), std::string::npos);
}

TEST(CredentialSecret, FileMustBeRootOnly) {
  testutil::TempDir d;
  std::string f = d.path + "/key";
  { std::ofstream(f) << "abc123\n"; }
  ::chmod(f.c_str(), 0644);
  cred::Source s;
  s.kind = cred::Source::Kind::file;
  s.file = f;
  try {
    cred::load_secret(s);
    FAIL() << "a world-readable secret file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("group or others"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("abc123"), std::string::npos);
  }
  ::chmod(f.c_str(), 0600);
  EXPECT_EQ(cred::load_secret(s), "abc123");
  std::string l = d.path + "/link";
  ASSERT_EQ(::symlink(f.c_str(), l.c_str()), 0);
  s.file = l;
  EXPECT_THROW(cred::load_secret(s), Error);  // no symlinks
}

TEST(CredentialSecret, EnvAndCommand) {
  cred::Source s;
  s.kind = cred::Source::Kind::env;
  s.env = "AGENTSHIM_TEST_SECRET_X";
  ::unsetenv(s.env.c_str());
  EXPECT_THROW(cred::load_secret(s), Error);
  ::setenv(s.env.c_str(), "from-env", 1);
  EXPECT_EQ(cred::load_secret(s), "from-env");
  ::setenv(s.env.c_str(), "bad\r\nInjected: 1", 1);
  try {
    cred::load_secret(s);
    FAIL() << "a secret with CRLF was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find("Injected"), std::string::npos) << e.what();
  }
  ::unsetenv(s.env.c_str());
  s.kind = cred::Source::Kind::command;
  s.command = {"/bin/echo", "from-command"};
  EXPECT_EQ(cred::load_secret(s), "from-command");
  s.command = {"/bin/false"};
  EXPECT_THROW(cred::load_secret(s), Error);
  s.command = {"/bin/echo", "-n", ""};
  EXPECT_THROW(cred::load_secret(s), Error);  // empty
}

TEST(CredentialPlaceholder, RandomEachTime) {
  auto a = cred::make_placeholder(), b = cred::make_placeholder();
  EXPECT_NE(a, b);
  EXPECT_EQ(a.rfind("agentshim-cred-", 0), 0u);
  EXPECT_EQ(a.size(), 15u + 32u);
}

TEST(CredentialRewrite, ReplacesPlaceholderOnDestination) {
  std::vector<cred::Active> cs = {active("api")};
  cred::Rewrite rw;
  auto h = forwarded(
      "GET http://api.example.com/v1/models HTTP/1.1\r\nHost: api.example.com\r\n"
      "Authorization: Bearer " +
          cs[0].placeholder + "\r\n\r\n",
      cs, &rw);
  EXPECT_NE(h.find("Authorization: Bearer s3cr3t-api\r\n"), std::string::npos) << h;
  EXPECT_EQ(h.find(cs[0].placeholder), std::string::npos);
  EXPECT_EQ(rw.applied, std::vector<std::string>{"api"});
  EXPECT_TRUE(rw.stripped.empty());
}

TEST(CredentialRewrite, AddsHeaderWithoutPlaceholder) {
  std::vector<cred::Active> cs = {active("api", {{"header", "x-api-key"}})};
  auto h = forwarded(
      "POST http://api.example.com/v1/x HTTP/1.1\r\nX-API-KEY: mine\r\nContent-Length: 0\r\n\r\n", cs);
  EXPECT_NE(h.find("x-api-key: s3cr3t-api\r\n"), std::string::npos) << h;
  EXPECT_EQ(h.find("mine"), std::string::npos) << "the client's own value of the field is replaced";
}

TEST(CredentialRewrite, StrippedElsewhereAndOutsideThePathPrefix) {
  std::vector<cred::Active> cs = {active("api")};
  const std::string ph = cs[0].placeholder;
  for (std::string target :
       {"http://evil.example.com/v1/", "http://api.example.com/v2/", "http://api.example.com:81/v1/"}) {
    cred::Rewrite rw;
    auto h = forwarded("GET " + target + " HTTP/1.1\r\nAuthorization: Bearer " + ph + "\r\nX-Copy: a" + ph +
                           "b\r\nX-Other: 1\r\n\r\n",
                       cs, &rw);
    EXPECT_EQ(h.find(ph), std::string::npos) << h;
    EXPECT_EQ(h.find("s3cr3t"), std::string::npos) << h;
    EXPECT_EQ(h.find("Authorization"), std::string::npos) << h;
    EXPECT_NE(h.find("X-Other: 1"), std::string::npos) << h;
    EXPECT_EQ(rw.stripped, std::vector<std::string>{"api"}) << target;
    EXPECT_TRUE(rw.applied.empty());
  }
}

TEST(CredentialRewrite, PlaceholderHiddenInBasicOrHeaderName) {
  std::vector<cred::Active> cs = {active("api")};
  const std::string ph = cs[0].placeholder;
  cred::Rewrite rw;
  auto h = forwarded("GET http://evil.example.com/ HTTP/1.1\r\nAuthorization: Basic " +
                         cred::base64("u:" + ph) + "\r\n" + ph + ": 1\r\n\r\n",
                     cs, &rw);
  EXPECT_EQ(h.find("Authorization"), std::string::npos) << h;
  EXPECT_EQ(h.find(ph), std::string::npos) << h;
  EXPECT_EQ(rw.stripped.size(), 1u);
}

TEST(CredentialRewrite, PlaceholderInTargetOrMethodIsDenied) {
  std::vector<cred::Active> cs = {active("api")};
  const std::string ph = cs[0].placeholder;
  cred::Rewrite rw;
  EXPECT_EQ(forwarded("GET http://evil.example.com/?t=" + ph + " HTTP/1.1\r\n\r\n", cs, &rw), "");
  EXPECT_TRUE(rw.deny);
  EXPECT_NE(rw.reason.find("credential api"), std::string::npos);
  EXPECT_EQ(rw.reason.find(ph), std::string::npos);
  // The parser refuses such a method; the rewrite refuses it on its own too.
  auto req = request("GET http://evil.example.com/ HTTP/1.1\r\n\r\n");
  req.method = ph;
  EXPECT_TRUE(cred::rewrite(req, cs, req.host, req.port).deny);
}

TEST(CredentialRewrite, QueryAndBasic) {
  std::vector<cred::Active> cs = {active("q", {{"query", "key"}})};
  const std::string ph = cs[0].placeholder;
  cred::Rewrite rw;
  auto h = forwarded("GET http://api.example.com/v1/s?a=1&key=" + ph + "&b=2 HTTP/1.1\r\n\r\n", cs, &rw);
  EXPECT_EQ(h.rfind("GET /v1/s?a=1&b=2&key=s3cr3t-q HTTP/1.1\r\n", 0), 0u) << h;
  EXPECT_EQ(rw.applied.size(), 1u);
  cs = {active("b", {{"basic", "bot"}})};
  h = forwarded("GET http://api.example.com/v1/ HTTP/1.1\r\n\r\n", cs, &rw);
  EXPECT_NE(h.find("Authorization: Basic " + cred::base64("bot:s3cr3t-b") + "\r\n"), std::string::npos) << h;
}

TEST(CredentialRewrite, MethodRestriction) {
  json j = def();
  j["destinations"][0]["methods"] = {"GET"};
  cred::Active a;
  a.def = cred::parse("ro", j, "p");
  a.placeholder = cred::make_placeholder();
  a.secret = "zz";
  cred::Rewrite rw;
  auto h = forwarded(
      "DELETE http://api.example.com/v1/x HTTP/1.1\r\nAuthorization: Bearer " + a.placeholder + "\r\n\r\n",
      {a}, &rw);
  EXPECT_EQ(h.find("zz"), std::string::npos);
  EXPECT_EQ(rw.stripped, std::vector<std::string>{"ro"});
}

TEST(CredentialBase64, Vectors) {
  EXPECT_EQ(cred::base64(""), "");
  EXPECT_EQ(cred::base64("f"), "Zg==");
  EXPECT_EQ(cred::base64("fo"), "Zm8=");
  EXPECT_EQ(cred::base64("foo"), "Zm9v");
  EXPECT_EQ(cred::base64("foobar"), "Zm9vYmFy");
}

TEST(CredentialRewrite, DotSegmentsNeverMatchAPrefix) {
  EXPECT_TRUE(cred::plain_path("/v1/models?a=../b"));
  EXPECT_TRUE(cred::plain_path("/v1/a.b/..c/"));
  for (const char* p : {"/v1/../admin", "/v1/./x", "/v1/..", "/v1/%2e%2e/admin", "/v1/%2E./a", "/v1%2fadmin",
                        "/v1/..%5cadmin", "/v1\\..\\admin"})
    EXPECT_FALSE(cred::plain_path(p)) << p;
  std::vector<cred::Active> cs = {active("api")};
  cred::Rewrite rw;
  auto h = forwarded("GET http://api.example.com/v1/../admin HTTP/1.1\r\nAuthorization: Bearer " +
                         cs[0].placeholder + "\r\n\r\n",
                     cs, &rw);
  EXPECT_EQ(h.find("s3cr3t"), std::string::npos) << h;
  EXPECT_EQ(rw.stripped, std::vector<std::string>{"api"});
}

TEST(RequestRules, FirstMatchDecidesUnmatchedIsDenied) {
  auto rules = RequestRules::parse(
      json::array(
          {{{"host", "Registry.example"}, {"port", 80}, {"methods", {"GET", "HEAD"}}, {"action", "allow"}},
           {{"host", "api.example"}, {"port", 80}, {"path_prefix", "/v1/admin"}, {"action", "deny"}},
           {{"host", "api.example"},
            {"port", 80},
            {"methods", {"POST"}},
            {"path_prefix", "/v1/"},
            {"action", "allow"}}}),
      "p");
  EXPECT_TRUE(rules.check("registry.example", 80, "GET", "/simple/x").allowed);
  auto d = rules.check("registry.example", 80, "PUT", "/simple/x");
  EXPECT_TRUE(d.applies);
  EXPECT_FALSE(d.allowed);
  EXPECT_NE(d.reason.find("no request rule"), std::string::npos);
  d = rules.check("api.example", 80, "POST", "/v1/admin/x");
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.rule, "network.request_rules[1]");
  EXPECT_TRUE(rules.check("api.example", 80, "POST", "/v1/chat").allowed);
  EXPECT_FALSE(rules.check("api.example", 80, "POST", "/v1/x/../admin/y").allowed);  // dot segments
  EXPECT_FALSE(rules.check("api.example", 80, "CONNECT", "").allowed);
  EXPECT_FALSE(rules.check("other.example", 80, "DELETE", "/").applies);  // no rules there
  EXPECT_TRUE(rules.check("other.example", 80, "DELETE", "/").allowed);
  EXPECT_EQ(RequestRules::parse(rules.to_json(), "p").to_json(), rules.to_json());
}

TEST(RequestRules, ErrorsNameTheKey) {
  auto err = [](json j) {
    try {
      RequestRules::parse(j, "policy p.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(err(json::array({{{"host", "a.example"}, {"action", "maybe"}}})),
            "policy p.json: network.request_rules[0].action: must be \"allow\" or \"deny\"");
  EXPECT_EQ(err(json::array({{{"host", "a.example"}, {"action", "allow"}, {"methods", {"get"}}}})),
            "policy p.json: network.request_rules[0].methods[0]: must be an upper-case HTTP method");
  EXPECT_NE(err(json::array({{{"host", "*.a"}, {"action", "deny"}}}))
                .find("network.request_rules[0].host: must be"),
            std::string::npos);
  EXPECT_NE(err(json::object()).find("must be an array"), std::string::npos);
}
