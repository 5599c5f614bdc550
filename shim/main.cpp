// agentshim: the command-line front end. Parses runc-compatible flags,
// calls the libraries, prints results. Errors go to stderr and, with --log,
// to the log file in the requested format; exit status 1 as runc.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "common/util.h"
#include "sandbox/container.h"
#include "sandbox/oci.h"
#include "shim/commands.h"
#include "shim/policy_cmd.h"

using namespace agentshim;
using json = nlohmann::json;

namespace {

std::string version_text() {
  return std::string("agentshim version ") + AGENTSHIM_VERSION + "\ncommit: " + AGENTSHIM_COMMIT +
         "\nspec: " + oci::kOciVersion + "\n";
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
  app.add_option("--log-format", log_format, "log format: text or json")->check(CLI::IsMember({"text", "json"}));
  app.add_flag("--debug", g.debug, "enable debug logging");
  app.add_flag("--systemd-cgroup", g.systemd_cgroup, "cgroupsPath is slice:prefix:name (systemd notation)");
  app.add_option("--policy", g.policy_path, "policy file (default /etc/agentshim/policy.json, else built-in)");
  app.add_option("--audit-dir", g.audit_dir, "where run records are written (default /var/lib/agentshim)");
  std::string rootless, criu;
  app.add_option("--rootless", rootless, "accepted for runc compatibility (auto|true|false)");
  app.add_option("--criu", criu, "accepted for runc compatibility (checkpointing is not supported)");

  cli::Commands cmds(app, g);
  cli::PolicyCommand policy_cmd(app, g);

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
  try {
    code = policy_cmd.parsed() ? policy_cmd.run() : cmds.run();
  } catch (const std::exception& e) {
    log::error(e.what());
    std::cerr << "agentshim: " << e.what() << std::endl;
    code = 1;
  }
  return code;
}
