#include "shim/commands.h"

#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/spawn.h"
#include "common/util.h"
#include "sandbox/oci.h"

namespace agentshim::cli {

using json = nlohmann::json;

int parse_duration_ms(const std::string& s) {
  struct Unit {
    const char* suffix;
    double ms;
  };
  static const Unit units[] = {{"ms", 1},   {"us", 0.001}, {"ns", 0.000001},
                               {"s", 1000}, {"m", 60000},  {"h", 3600000}};
  for (const auto& u : units) {
    std::string suf = u.suffix;
    if (s.size() > suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0) {
      std::string num = s.substr(0, s.size() - suf.size());
      char* end = nullptr;
      double v = std::strtod(num.c_str(), &end);
      if (end && *end == 0 && v >= 0) return std::max(1, static_cast<int>(v * u.ms));
    }
  }
  if (auto v = parse_uint(s)) return static_cast<int>(*v * 1000);
  throw Error("invalid duration: " + s);
}

namespace {

void add_create_flags(CLI::App* c, container::CreateOptions& o) {
  c->add_option("-b,--bundle", o.bundle, "path to the bundle (default: current directory)");
  c->add_option("--console-socket", o.console_socket, "unix socket that receives the pty master");
  c->add_option("--pid-file", o.pid_file,
                "file to write the sentinel's pid to (it exits with the container's status)");
  c->add_flag("--no-pivot", o.no_pivot, "do not use pivot_root (MS_MOVE + chroot)");
  c->add_flag("--no-new-keyring", o.no_new_keyring, "do not create a new session keyring");
  c->add_option("--preserve-fds", o.preserve_fds, "pass N additional fds (3..3+N-1) to the container");
  static bool no_subreaper = false;
  c->add_flag("--no-subreaper", no_subreaper, "accepted for runc compatibility");
}

std::string require_id(const std::vector<std::string>& rest, const char* cmd) {
  if (rest.empty()) throw Error(std::string("\"") + cmd + "\" requires a container id");
  return rest[0];
}

// Text table with columns padded like Go's tabwriter (min width 12, padding 3).
void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> w;
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size(); i++) {
      if (w.size() <= i) w.push_back(0);
      w[i] = std::max(w[i], r[i].size());
    }
  for (const auto& r : rows) {
    std::string line;
    for (std::size_t i = 0; i < r.size(); i++) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(std::max<std::size_t>(w[i] + 3, 12) - r[i].size(), ' ');
    }
    std::cout << line << "\n";
  }
}

json read_json_arg(const std::string& path, const std::string& what) {
  std::string text = path == "-" ? read_all(0, "stdin") : read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(what + " (" + path + ") is not valid JSON: " + e.what());
  }
}

// Each command's flags live in a struct of their own, shared (shared_ptr)
// between CLI11, which fills them, and the handler, which reads them.

void add_create(Commands& c) {
  auto f = std::make_shared<container::CreateOptions>();
  auto* cmd = c.app().add_subcommand("create", "create a container");
  add_create_flags(cmd, *f);
  cmd->add_option("id", f->id, "container id")->required();
  c.on(cmd, [f, &g = c.global()] {
    container::create(g, *f);
    return 0;
  });
}

void add_run(Commands& c) {
  struct Flags {
    container::CreateOptions create;
    bool detach = false, keep = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = c.app().add_subcommand("run", "create and start a container, wait for it unless --detach");
  add_create_flags(cmd, f->create);
  cmd->add_flag("-d,--detach", f->detach, "detach from the container's process");
  cmd->add_flag("--keep", f->keep, "do not delete the container after it exits");
  cmd->add_option("id", f->create.id, "container id")->required();
  c.on(cmd, [f, &g = c.global()] { return container::run(g, f->create, f->detach, f->keep); });
}

// start, pause, resume, state: a container id and nothing else.
void add_id_command(Commands& c, const char* name, const char* help,
                    std::function<void(const container::Global&, const std::string&)> fn) {
  auto id = std::make_shared<std::string>();
  auto* cmd = c.app().add_subcommand(name, help);
  cmd->add_option("id", *id, "container id")->required();
  c.on(cmd, [id, fn = std::move(fn), &g = c.global()] {
    fn(g, *id);
    return 0;
  });
}

void add_list(Commands& c) {
  struct Flags {
    std::string format = "table";
    bool quiet = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = c.app().add_subcommand("list", "list containers");
  cmd->alias("ls");
  cmd->add_option("-f,--format", f->format, "table or json")->check(CLI::IsMember({"table", "json"}));
  cmd->add_flag("-q,--quiet", f->quiet, "print only container ids");
  c.on(cmd, [f, &g = c.global()] {
    auto all = container::list(g);
    if (f->quiet) {
      for (const auto& x : all) std::cout << x["id"].get<std::string>() << "\n";
    } else if (f->format == "json") {
      json arr = json::array();
      for (const auto& x : all) arr.push_back(x);
      std::cout << (all.empty() ? "null" : arr.dump()) << std::endl;
    } else {
      std::vector<std::vector<std::string>> rows = {{"ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"}};
      for (const auto& x : all)
        rows.push_back({x["id"], std::to_string(x["pid"].get<long>()), x["status"], x["bundle"], x["created"],
                        x["owner"].get<std::string>().empty() ? "root" : x["owner"]});
      print_table(rows);
    }
    return 0;
  });
}

void add_kill(Commands& c) {
  struct Flags {
    std::string id, signal;
    bool all = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = c.app().add_subcommand("kill", "send a signal to the container's init (default SIGTERM)");
  cmd->add_flag("-a,--all", f->all, "send to every process in the container");
  cmd->add_option("id", f->id, "container id")->required();
  cmd->add_option("signal", f->signal, "signal name or number");
  c.on(cmd, [f, &g = c.global()] {
    container::kill(g, f->id, oci::parse_signal(f->signal.empty() ? "SIGTERM" : f->signal), f->all);
    return 0;
  });
}

void add_delete(Commands& c) {
  struct Flags {
    std::string id;
    bool force = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = c.app().add_subcommand("delete", "delete a container and its resources");
  cmd->alias("rm");
  cmd->add_flag("-f,--force", f->force, "kill the container first if it is running");
  cmd->add_option("id", f->id, "container id")->required();
  c.on(cmd, [f, &g = c.global()] {
    container::remove(g, f->id, f->force);
    return 0;
  });
}

// The rows of ps(1)'s output whose PID column is one of `pids`, with its header.
std::string filter_ps_output(const std::string& out, const std::vector<int>& pids) {
  auto lines = split(out, '\n');
  if (lines.empty()) return "";
  std::vector<std::string> cols;
  for (auto& h : split(lines[0], ' '))
    if (!h.empty()) cols.push_back(h);
  std::size_t pidcol = cols.size();
  for (std::size_t i = 0; i < cols.size(); i++)
    if (cols[i] == "PID") pidcol = i;
  if (pidcol == cols.size()) throw Error("couldn't find PID field in ps output");
  std::set<long> want(pids.begin(), pids.end());
  std::string kept = lines[0] + "\n";
  for (std::size_t i = 1; i < lines.size(); i++) {
    std::vector<std::string> f;
    for (auto& x : split(lines[i], ' '))
      if (!x.empty()) f.push_back(x);
    if (f.size() > pidcol)
      if (auto v = parse_int(f[pidcol]); v && want.count(*v)) kept += lines[i] + "\n";
  }
  return kept;
}

void add_ps(Commands& c) {
  struct Flags {
    std::string format = "table";
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = c.app().add_subcommand("ps", "list the processes running in a container");
  cmd->add_option("-f,--format", f->format, "table or json")->check(CLI::IsMember({"table", "json"}));
  cmd->prefix_command();
  c.on(cmd, [f, cmd, &g = c.global()] {
    auto rest = cmd->remaining();
    if (!rest.empty() && rest[0] == "--") rest.erase(rest.begin());
    std::string id = require_id(rest, "ps");
    auto pids = container::pids(g, id);
    if (f->format == "json") {
      std::cout << json(pids).dump() << std::endl;
      return 0;
    }
    // Table: run ps(1) with the given options and keep the container's rows.
    SpawnSpec s;
    s.argv = {"ps"};
    if (rest.size() > 1)
      s.argv.insert(s.argv.end(), rest.begin() + 1, rest.end());
    else
      s.argv.push_back("-ef");
    s.max_output = 64 << 20;
    SpawnResult r = spawn_and_wait(s);
    if (!r.succeeded()) throw Error("ps failed (" + r.describe() + "): " + r.out + r.err);
    std::cerr << r.err;
    std::cout << filter_ps_output(r.out, pids);
    return 0;
  });
}

void add_events(Commands& c) {
  struct Flags {
    std::string id, interval;
    bool stats = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = c.app().add_subcommand("events", "print container events (stats, oom) as JSON lines");
  cmd->add_flag("--stats", f->stats, "print stats once and exit");
  cmd->add_option("--interval", f->interval, "stats interval (default 5s)");
  cmd->add_option("id", f->id, "container id")->required();
  c.on(cmd, [f, &g = c.global()] {
    container::events(g, f->id, f->stats, f->interval.empty() ? 5000 : parse_duration_ms(f->interval));
    return 0;
  });
}

void add_update(Commands& c) {
  struct Flags {
    std::string id, resources;
    std::string memory, memory_swap, memory_reservation, cpu_shares, cpu_quota, cpu_period, cpus, mems, pids,
        blkio;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = c.app().add_subcommand("update", "update a running container's resource limits");
  cmd->add_option("-r,--resources", f->resources, "OCI linux.resources JSON file, or - for stdin");
  cmd->add_option("--memory", f->memory, "memory limit in bytes");
  cmd->add_option("--memory-swap", f->memory_swap, "memory+swap limit in bytes (-1 unlimited)");
  cmd->add_option("--memory-reservation", f->memory_reservation, "memory soft limit in bytes");
  cmd->add_option("--cpu-share,--cpu-shares", f->cpu_shares, "CPU shares (runc spells it --cpu-share)");
  cmd->add_option("--cpu-quota", f->cpu_quota, "CFS quota in microseconds");
  cmd->add_option("--cpu-period", f->cpu_period, "CFS period in microseconds");
  cmd->add_option("--cpuset-cpus", f->cpus, "CPUs allowed");
  cmd->add_option("--cpuset-mems", f->mems, "memory nodes allowed");
  cmd->add_option("--pids-limit", f->pids, "maximum number of pids");
  cmd->add_option("--blkio-weight", f->blkio, "block IO weight (10-1000)");
  cmd->add_option("id", f->id, "container id")->required();
  c.on(cmd, [f, &g = c.global()] {
    // runc's update: the file's fields, then each flag given over them; the
    // rest stays unset (left as the container has it).
    oci::Resources r;
    if (!f->resources.empty())
      r = oci::parse_resources(read_json_arg(f->resources, "update --resources"),
                               "update --resources: linux.resources");
    auto num = [](const std::string& flag, const std::string& v) -> long long {
      if (auto n = parse_int(v)) return *n;
      throw Error("update " + flag + ": \"" + v + "\" is not a number");
    };
    // An unsigned field: runc parses these flags as uint64.
    auto unum = [&](const std::string& flag, const std::string& v) -> std::uint64_t {
      const long long n = num(flag, v);
      if (n < 0) throw Error("update " + flag + ": \"" + v + "\" is negative");
      return static_cast<std::uint64_t>(n);
    };
    if (!f->memory.empty()) r.memory.limit = num("--memory", f->memory);
    if (!f->memory_swap.empty()) r.memory.swap = num("--memory-swap", f->memory_swap);
    if (!f->memory_reservation.empty())
      r.memory.reservation = num("--memory-reservation", f->memory_reservation);
    if (!f->cpu_shares.empty()) r.cpu.shares = unum("--cpu-shares", f->cpu_shares);
    if (!f->cpu_quota.empty()) r.cpu.quota = num("--cpu-quota", f->cpu_quota);
    if (!f->cpu_period.empty()) r.cpu.period = unum("--cpu-period", f->cpu_period);
    if (!f->cpus.empty()) r.cpu.cpus = f->cpus;
    if (!f->mems.empty()) r.cpu.mems = f->mems;
    if (!f->pids.empty()) r.pids.limit = num("--pids-limit", f->pids);
    if (!f->blkio.empty()) {
      const std::uint64_t w = unum("--blkio-weight", f->blkio);
      if (w > UINT16_MAX) throw Error("update --blkio-weight: \"" + f->blkio + "\" is out of range");
      r.block_io.weight = static_cast<std::uint16_t>(w);
    }
    container::update(g, f->id, r);
    return 0;
  });
}

void add_exec(Commands& c) {
  struct Flags {
    std::string process, console_socket, pid_file, cwd, user;
    std::vector<std::string> env, additional_gids, caps;
    bool detach = false, tty = false, no_new_privs = false;
    int preserve_fds = 0;
    // Accepted for runc compatibility, not used.
    std::string process_label, apparmor, cgroup;
    bool ignore_paused = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = c.app().add_subcommand("exec", "run a new process inside a container");
  cmd->add_option("-p,--process", f->process, "OCI process JSON file (- for stdin)");
  cmd->add_flag("-d,--detach", f->detach, "detach from the process");
  cmd->add_flag("-t,--tty", f->tty, "allocate a pseudo-TTY");
  cmd->add_option("--console-socket", f->console_socket, "unix socket that receives the pty master");
  cmd->add_option("--pid-file", f->pid_file, "file to write the process pid to");
  cmd->add_option("--cwd", f->cwd, "working directory in the container");
  cmd->add_option("-e,--env", f->env, "set an environment variable (repeatable)")->allow_extra_args(false);
  cmd->add_option("-u,--user", f->user, "UID[:GID]");
  cmd->add_option("-g,--additional-gids", f->additional_gids, "additional gids (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("-c,--cap", f->caps, "add a capability (repeatable)")->allow_extra_args(false);
  cmd->add_flag("--no-new-privs", f->no_new_privs, "set no_new_privs");
  cmd->add_option("--preserve-fds", f->preserve_fds, "pass N additional fds to the process");
  cmd->add_option("--process-label", f->process_label, "accepted for runc compatibility (no SELinux here)");
  cmd->add_option("--apparmor", f->apparmor, "accepted for runc compatibility (no AppArmor here)");
  cmd->add_option("--cgroup", f->cgroup, "accepted for runc compatibility");
  cmd->add_flag("--ignore-paused", f->ignore_paused, "accepted for runc compatibility");
  cmd->prefix_command();
  c.on(cmd, [f, cmd, &g = c.global()] {
    auto rest = cmd->remaining();
    if (!rest.empty() && rest[0] == "--") rest.erase(rest.begin());
    container::ExecOptions o;
    o.id = require_id(rest, "exec");
    std::vector<std::string> args(rest.begin() + 1, rest.end());
    if (!args.empty() && args[0] == "--") args.erase(args.begin());
    if (!f->process.empty()) {
      o.process = read_json_arg(f->process, "exec --process");
    } else {
      o.process = container::exec_process_from_args(g, o.id, args, f->cwd, f->env, f->user, f->tty,
                                                    f->additional_gids, f->caps, f->no_new_privs);
    }
    o.detach = f->detach;
    o.pid_file = f->pid_file;
    o.console_socket = f->console_socket;
    o.preserve_fds = f->preserve_fds;
    return container::exec(g, o);
  });
}

void add_spec(Commands& c) {
  struct Flags {
    std::string bundle;
    bool rootless = false;
  };
  auto f = std::make_shared<Flags>();
  auto* cmd = c.app().add_subcommand("spec", "write a hardened default config.json");
  cmd->add_option("-b,--bundle", f->bundle, "bundle directory (default: current directory)");
  cmd->add_flag("--rootless", f->rootless, "a spec for a rootless container");
  c.on(cmd, [f] {
    std::string path = (f->bundle.empty() ? "." : f->bundle) + "/config.json";
    if (path_exists(path)) throw Error("File " + path + " exists. Remove it first");
    write_file(path, container::default_spec(f->rootless).dump(2) + "\n", 0666 & ~0022);
    return 0;
  });
}

}  // namespace

Commands::Commands(CLI::App& app, container::Global& g) : app_(app), g_(g) {
  add_runc_commands(*this);
  add_record_commands(*this);
}

int Commands::run() {
  for (auto& [sub, fn] : handlers_)
    if (sub->parsed()) return fn();
  throw Error("no command given");
}

void add_runc_commands(Commands& c) {
  add_create(c);
  add_run(c);
  add_id_command(c, "start", "start a created container", container::start);
  add_id_command(c, "state", "print the state of a container",
                 [](const container::Global& g, const std::string& id) {
                   std::cout << container::state(g, id).dump(2) << std::endl;
                 });
  add_list(c);
  add_kill(c);
  add_delete(c);
  add_id_command(c, "pause", "freeze every process in the container", container::pause);
  add_id_command(c, "resume", "thaw a paused container", container::resume);
  add_ps(c);
  add_events(c);
  add_update(c);
  add_exec(c);
  add_spec(c);
  auto* features = c.app().add_subcommand("features", "print what this runtime supports (JSON)");
  c.on(features, [] {
    std::cout << container::features().dump(4) << std::endl;
    return 0;
  });
}

}  // namespace agentshim::cli
