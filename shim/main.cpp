// agentshim: the command-line front end. Parses runc-compatible flags,
// calls the libraries, prints results. Errors go to stderr and, with --log,
// to the log file in the requested format; exit status 1 as runc.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "common/version.h"
#include "sandbox/container.h"
#include "sandbox/oci.h"
#include "sandbox/runtime_config.h"
#include "sandbox/state.h"
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

// The container id a command on an existing container names (its positional
// "id"); empty for create/run and commands without one.
std::string existing_container_id(const CLI::App& app) {
  for (const CLI::App* sub : app.get_subcommands()) {
    const std::string name = sub->get_name();
    if (name == "create" || name == "run") return "";
    if (const CLI::Option* o = sub->get_option_no_throw("id"); o && o->count() == 1)
      return o->as<std::string>();
  }
  return "";
}

// Settings that arrive without flags (docs/OPERATIONS.md, "Configuration"):
// a flag given on the command line > the config file chosen by argv[0] >
// built-in defaults. Then a command on an existing container that is not under
// the root it was given (podman's cleanup passes its own default --root, not
// the run's --runtime-flag root=) finds it through the id -> root index.
void apply_config_file(const CLI::App& app, const char* argv0, container::Global& g) {
  auto given = [&](const char* flag) { return app.get_option(flag)->count() > 0; };
  const auto c = runtime_config::load_for(argv0 ? argv0 : "agentshim");
  if (c.policy && !given("--policy")) g.policy_path = *c.policy;
  if (c.audit_dir && !given("--audit-dir")) g.audit_dir = *c.audit_dir;
  if (c.root && !given("--root")) g.root = *c.root;
  if (c.systemd_cgroup && !given("--systemd-cgroup")) g.systemd_cgroup = *c.systemd_cgroup;
  if (c.signing_key && !given("--signing-key")) g.signing_key = *c.signing_key;
  if (c.key_type && !given("--key-type")) g.key_type = *c.key_type;
  if (!c.path.empty()) log::debug("settings from config file " + c.path);
  if (std::string id = existing_container_id(app); !id.empty())
    g.root = runtime_config::resolve_root(g.root, id);
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
      apply_config_file(app, argv[0], g);
      g.root = state::usable_root(g.root);
      code = policy_cmd.parsed() ? policy_cmd.run() : cmds.run();
    }
  } catch (const std::exception& e) {
    log::error(e.what());
    std::cerr << "agentshim: " << e.what() << std::endl;
    code = 1;
  }
  return code;
}
