// Subcommand registration and dispatch for the agentshim CLI.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

#include "sandbox/container.h"

namespace agentshim::cli {

class Commands {
 public:
  Commands(CLI::App& app, container::Global& g);
  // Runs the parsed subcommand; returns the process exit status.
  int run();

 private:
  void add_runc_commands();
  void add_agentshim_commands();

  CLI::App& app_;
  container::Global& g_;
  std::vector<std::pair<CLI::App*, std::function<int()>>> handlers_;

  // Option storage shared by subcommands.
  container::CreateOptions create_;
  std::string id_;
  bool flag_a_ = false, flag_b_ = false;
  std::string format_ = "table";
  std::string str_a_, str_b_, str_c_, str_d_;
  std::vector<std::string> vec_a_, vec_b_, vec_c_;
  int int_a_ = 0;
  std::vector<std::string> rest_;
  bool quiet_ = false;
  bool tty_ = false;
  bool nnp_ = false;
  std::string user_;
  // update flags
  std::string mem_, memswap_, memres_, cpu_shares_, cpu_quota_, cpu_period_, cpus_, mems_, pids_, blkio_;
};

int parse_duration_ms(const std::string& s);

}  // namespace agentshim::cli
