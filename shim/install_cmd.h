// `agentshim install docker|containerd [--config PATH] [--dry-run]`: registers
// agentshim with a client's daemon configuration, safely: the file is backed
// up, the entry merged, other runtimes never touched, and an existing
// agentshim entry that differs from ours is left alone with an error.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace agentshim::cli {

// Pure merges (no I/O), exposed for tests. `existing` is the file's text
// (empty when the file does not exist). They return the new text, equal to
// `existing` when nothing needs to change, or throw agentshim::Error when the
// file cannot be merged safely (not parseable, an agentshim entry that differs).
std::string merge_docker_config(const std::string& existing, const std::string& binary,
                                const std::string& policy_dir);
std::string merge_containerd_config(const std::string& existing, const std::string& binary);
// The block appended to config.toml, with its BEGIN/END delimiters.
std::string containerd_block(const std::string& binary);

class InstallCommand {
 public:
  explicit InstallCommand(CLI::App& app);
  bool parsed() const;
  int run();

 private:
  CLI::App* docker_ = nullptr;
  CLI::App* containerd_ = nullptr;
  std::string config_, binary_, policy_dir_ = "/etc/agentshim";
  bool dry_run_ = false;
};

}  // namespace agentshim::cli
