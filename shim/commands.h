// Subcommand registration and dispatch for the agentshim CLI. Each command
// has its own flags struct (owned by the handler that reads it) and its own
// add_* function; runc's commands are in commands.cpp, agentshim's record
// commands in records.cpp.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "sandbox/container.h"

namespace agentshim::cli {

class Commands {
 public:
  Commands(CLI::App& app, container::Global& g);
  // Runs the parsed subcommand; returns the process exit status.
  int run();

  // For the add_* functions: the application, the global flags, and
  // registering what runs when `sub` was parsed.
  CLI::App& app() { return app_; }
  container::Global& global() { return g_; }
  void on(CLI::App* sub, std::function<int()> fn) { handlers_.push_back({sub, std::move(fn)}); }

 private:
  CLI::App& app_;
  container::Global& g_;
  std::vector<std::pair<CLI::App*, std::function<int()>>> handlers_;
};

void add_runc_commands(Commands& c);    // commands.cpp
void add_record_commands(Commands& c);  // records.cpp

int parse_duration_ms(const std::string& s);

}  // namespace agentshim::cli
