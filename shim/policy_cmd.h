// `agentshim policy check [--bundle DIR] [--json]`: what the policy would
// change in a bundle's config and why, without starting anything.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "sandbox/container.h"

namespace agentshim::cli {

class PolicyCommand {
 public:
  PolicyCommand(CLI::App& app, container::Global& g);
  bool parsed() const;
  // 0: the config would be accepted (decisions printed); 1: it would be refused.
  int run();

 private:
  container::Global& g_;
  CLI::App* policy_ = nullptr;
  CLI::App* check_ = nullptr;
  std::string bundle_;
  bool json_ = false;
};

}  // namespace agentshim::cli
