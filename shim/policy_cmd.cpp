#include "shim/policy_cmd.h"

#include <limits.h>
#include <stdlib.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/util.h"
#include "sandbox/oci.h"
#include "sandbox/policy.h"

namespace agentshim::cli {

using json = nlohmann::json;

PolicyCommand::PolicyCommand(CLI::App& app, container::Global& g) : g_(g) {
  policy_ = app.add_subcommand("policy", "inspect what the policy does to a config");
  policy_->require_subcommand(1);
  check_ = policy_->add_subcommand(
      "check",
      "print what the policy would change in a bundle's config and why (exit 1: it would be refused)");
  check_->add_option("-b,--bundle", bundle_, "path to the bundle (default: current directory)");
  check_->add_flag("--json", json_, "print the decisions as JSON");
}

bool PolicyCommand::parsed() const {
  return check_ && check_->parsed();
}

int PolicyCommand::run() {
  std::string dir = bundle_.empty() ? "." : bundle_;
  char buf[PATH_MAX];
  if (!::realpath(dir.c_str(), buf)) throw_errno("resolve bundle " + dir);
  json caller = oci::load_config(buf);
  const policy::Policy pol = policy::parse(policy::load(g_.policy_path));
  policy::ApplyContext ctx;
  ctx.policy_name = policy::source_name(g_.policy_path);
  ctx.bundle = buf;
  ctx.owned = policy::runtime_owned(pol, g_.root, policy::audit_dir(pol, g_.audit_dir), g_.policy_path);
  policy::Result r = policy::evaluate(pol, caller, ctx);
  const bool refused = !r.violations.empty();
  if (json_) {
    json out = r.summary();
    out["policy"] = ctx.policy_name;
    out["accepted"] = !refused;
    std::cout << out.dump(2) << std::endl;
  } else {
    std::cout << ctx.policy_name << ", mode " << r.mode << ": " << r.decisions.size() << " decision"
              << (r.decisions.size() == 1 ? "" : "s") << "\n";
    for (const auto& d : r.decisions)
      std::cout << d["action"].get<std::string>() << "\t" << d["path"].get<std::string>() << "\t"
                << d["detail"].get<std::string>() << "\n";
    if (refused)
      std::cout << "REFUSED: " << r.violations.size() << " violation" << (r.violations.size() == 1 ? "" : "s")
                << "; `create` would reject this config\n";
    else
      std::cout << "ACCEPTED\n";
  }
  std::cout.flush();
  return refused ? 1 : 0;
}

}  // namespace agentshim::cli
