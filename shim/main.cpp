// agentshim: the command-line front end. Parses runc-compatible flags,
// calls the libraries, prints results. Errors go to stderr and, with --log,
// to the log file in the requested format; exit status 1 as runc.
#include <dirent.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "attest/hash.h"
#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "common/version.h"
#include "sandbox/container.h"
#include "sandbox/oci.h"
#include "shim/commands.h"
#include "shim/install_cmd.h"
#include "shim/policy_cmd.h"

using namespace agentshim;
using json = nlohmann::json;

namespace {

std::string version_text() {
  return std::string("agentshim version ") + AGENTSHIM_VERSION + "\ncommit: " + build_commit() +
         "\nspec: " + oci::kOciVersion + "\n";
}

// A unix socket path holds at most 107 bytes, and the supervisor's control
// socket is <root>/<id>/supervisor.sock. Clients pass long roots with 64-hex
// ids (/run/containerd/runc/k8s.io, /run/docker/runtime-runc/moby: 108 and 110
// bytes), so for a root that could not hold such an id the state store is
// reached through a short, stable alias: /run/agentshim.r/<8 hex of
// sha256(realpath(root))> -> realpath(root). An existing alias that points
// elsewhere is an error, never silently reused.
std::string usable_root(const std::string& root) {
  constexpr std::size_t kSunPath = 108, kLongestId = 64;
  const std::string sock = "/supervisor.sock";
  if (root.size() + 1 + kLongestId + sock.size() < kSunPath) return root;
  mkdir_p(root, 0711);
  char buf[PATH_MAX];
  if (!::realpath(root.c_str(), buf)) throw_errno("resolve --root " + root);
  std::string real = buf;
  const std::string dir = "/run/agentshim.r";
  std::string alias = dir + "/" + attest::hex(attest::sha256(real)).substr(0, 8);
  mkdir_p(dir, 0711);
  if (::symlink(real.c_str(), alias.c_str()) == 0) {
    // A new alias: drop the ones whose root is gone (test and client roots come and go).
    if (DIR* d = ::opendir(dir.c_str())) {
      while (struct dirent* e = ::readdir(d)) {
        std::string p = dir + "/" + e->d_name;
        struct stat st {};
        if (e->d_name[0] != '.' && ::lstat(p.c_str(), &st) == 0 && S_ISLNK(st.st_mode) &&
            ::stat(p.c_str(), &st) < 0 && errno == ENOENT)
          ::unlink(p.c_str());
      }
      ::closedir(d);
    }
  } else if (errno != EEXIST) {
    throw_errno("symlink " + alias + " -> " + real);
  }
  ssize_t n = ::readlink(alias.c_str(), buf, sizeof buf - 1);
  if (n < 0) throw_errno("readlink " + alias);
  if (std::string(buf, static_cast<std::size_t>(n)) != real)
    throw Error("state root alias " + alias + " points to " + std::string(buf, static_cast<std::size_t>(n)) +
                ", not to --root " + real);
  return alias;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"agentshim: an OCI runtime that sandboxes untrusted AI agents and records what they did"};
  app.set_version_flag("-v,--version", version_text());
  app.require_subcommand(1);
  app.allow_windows_style_options(false);

  container::Global g;
  std::string log_format = "text";
  app.add_option("--root", g.root, "root directory for container state")->capture_default_str();
  app.add_option("--log", g.log_file, "log file (default: stderr only)");
  app.add_option("--log-format", log_format, "log format: text or json")
      ->check(CLI::IsMember({"text", "json"}));
  app.add_flag("--debug", g.debug, "enable debug logging");
  app.add_flag("--systemd-cgroup", g.systemd_cgroup, "cgroupsPath is slice:prefix:name (systemd notation)");
  app.add_option("--policy", g.policy_path,
                 "policy file (default /etc/agentshim/policy.json, else built-in)");
  app.add_option("--audit-dir", g.audit_dir, "where run records are written (default /var/lib/agentshim)");
  app.add_option("--signing-key", g.signing_key,
                 "sign run records with this PKCS#8 PEM key (default: the policy's audit.signing_key, else "
                 "the host key)");
  app.add_option("--key-type", g.key_type,
                 "the signing key's type, checked against the key: ed25519 or ecdsa-p256")
      ->check(CLI::IsMember({"ed25519", "ecdsa-p256"}));
  std::string rootless, criu;
  app.add_option("--rootless", rootless, "accepted for runc compatibility (auto|true|false)");
  app.add_option("--criu", criu, "accepted for runc compatibility (checkpointing is not supported)");

  cli::Commands cmds(app, g);
  cli::PolicyCommand policy_cmd(app, g);
  cli::InstallCommand install(app);

  int code = 0;
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    std::cout << version_text();
    return 0;
  } catch (const CLI::ParseError& e) {
    std::cerr << "agentshim: " << e.what() << "\n";
    return e.get_exit_code() == 0 ? 0 : 1;
  }
  g.log_json = log_format == "json";
  log::configure({g.log_file, g.log_json, g.debug});
  if (!g.log_file.empty() && log::fd() < 0) {
    // As runc: a --log that cannot be opened is an error, not silence.
    const int err = errno;
    std::cerr << "agentshim: open " << g.log_file << ": " << std::strerror(err) << std::endl;
    return 1;
  }
  try {
    if (install.parsed()) {
      code = install.run();
    } else {
      g.root = usable_root(g.root);
      code = policy_cmd.parsed() ? policy_cmd.run() : cmds.run();
    }
  } catch (const std::exception& e) {
    log::error(e.what());
    std::cerr << "agentshim: " << e.what() << std::endl;
    code = 1;
  }
  return code;
}
