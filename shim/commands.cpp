#include "shim/commands.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/fd.h"
#include "common/util.h"
#include "sandbox/oci.h"

namespace agentshim::cli {

using json = nlohmann::json;

int parse_duration_ms(const std::string& s) {
  struct Unit {
    const char* suffix;
    double ms;
  };
  static const Unit units[] = {{"ms", 1}, {"us", 0.001}, {"ns", 0.000001}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
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
  c->add_option("--pid-file", o.pid_file, "file to write the sentinel's pid to (it exits with the container's status)");
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

}  // namespace

Commands::Commands(CLI::App& app, container::Global& g) : app_(app), g_(g) {
  add_runc_commands();
  add_agentshim_commands();
}

int Commands::run() {
  for (auto& [sub, fn] : handlers_)
    if (sub->parsed()) return fn();
  throw Error("no command given");
}

void Commands::add_runc_commands() {
  auto* create = app_.add_subcommand("create", "create a container");
  add_create_flags(create, create_);
  create->add_option("id", create_.id, "container id")->required();
  handlers_.push_back({create, [this] {
                         container::create(g_, create_);
                         return 0;
                       }});

  auto* run = app_.add_subcommand("run", "create and start a container, wait for it unless --detach");
  add_create_flags(run, create_);
  run->add_flag("-d,--detach", flag_a_, "detach from the container's process");
  run->add_flag("--keep", flag_b_, "do not delete the container after it exits");
  run->add_option("id", create_.id, "container id")->required();
  handlers_.push_back({run, [this] { return container::run(g_, create_, flag_a_, flag_b_); }});

  auto* start = app_.add_subcommand("start", "start a created container");
  start->add_option("id", id_, "container id")->required();
  handlers_.push_back({start, [this] {
                         container::start(g_, id_);
                         return 0;
                       }});

  auto* st = app_.add_subcommand("state", "print the state of a container");
  st->add_option("id", id_, "container id")->required();
  handlers_.push_back({st, [this] {
                         std::cout << container::state(g_, id_).dump(2) << std::endl;
                         return 0;
                       }});

  auto* list = app_.add_subcommand("list", "list containers");
  list->alias("ls");
  list->add_option("-f,--format", format_, "table or json")->check(CLI::IsMember({"table", "json"}));
  list->add_flag("-q,--quiet", quiet_, "print only container ids");
  handlers_.push_back({list, [this] {
                         auto all = container::list(g_);
                         if (quiet_) {
                           for (const auto& c : all) std::cout << c["id"].get<std::string>() << "\n";
                         } else if (format_ == "json") {
                           json arr = json::array();
                           for (const auto& c : all) arr.push_back(c);
                           std::cout << (all.empty() ? "null" : arr.dump()) << std::endl;
                         } else {
                           std::vector<std::vector<std::string>> rows = {
                               {"ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"}};
                           for (const auto& c : all)
                             rows.push_back({c["id"], std::to_string(c["pid"].get<long>()), c["status"], c["bundle"],
                                             c["created"], c["owner"].get<std::string>().empty() ? "root" : c["owner"]});
                           print_table(rows);
                         }
                         return 0;
                       }});

  auto* kill = app_.add_subcommand("kill", "send a signal to the container's init (default SIGTERM)");
  kill->add_flag("-a,--all", flag_a_, "send to every process in the container");
  kill->add_option("id", id_, "container id")->required();
  kill->add_option("signal", str_a_, "signal name or number");
  handlers_.push_back({kill, [this] {
                         int sig = oci::parse_signal(str_a_.empty() ? "SIGTERM" : str_a_);
                         container::kill(g_, id_, sig, flag_a_);
                         return 0;
                       }});

  auto* del = app_.add_subcommand("delete", "delete a container and its resources");
  del->alias("rm");
  del->add_flag("-f,--force", flag_a_, "kill the container first if it is running");
  del->add_option("id", id_, "container id")->required();
  handlers_.push_back({del, [this] {
                         container::remove(g_, id_, flag_a_);
                         return 0;
                       }});

  auto* pause = app_.add_subcommand("pause", "freeze every process in the container");
  pause->add_option("id", id_, "container id")->required();
  handlers_.push_back({pause, [this] {
                         container::pause(g_, id_);
                         return 0;
                       }});
  auto* resume = app_.add_subcommand("resume", "thaw a paused container");
  resume->add_option("id", id_, "container id")->required();
  handlers_.push_back({resume, [this] {
                         container::resume(g_, id_);
                         return 0;
                       }});

  auto* ps = app_.add_subcommand("ps", "list the processes running in a container");
  ps->add_option("-f,--format", format_, "table or json")->check(CLI::IsMember({"table", "json"}));
  ps->prefix_command();
  handlers_.push_back({ps, [this, ps] {
                         auto rest = ps->remaining();
                         if (!rest.empty() && rest[0] == "--") rest.erase(rest.begin());
                         std::string id = require_id(rest, "ps");
                         auto pids = container::pids(g_, id);
                         if (format_ == "json") {
                           std::cout << json(pids).dump() << std::endl;
                           return 0;
                         }
                         // Table: run ps(1) with the given options and keep the container's rows.
                         std::vector<std::string> args = {"ps"};
                         if (rest.size() > 1)
                           args.insert(args.end(), rest.begin() + 1, rest.end());
                         else
                           args.push_back("-ef");
                         auto p = make_pipe(O_CLOEXEC);
                         pid_t child = ::fork();
                         if (child == 0) {
                           ::dup2(p.second.get(), 1);
                           std::vector<char*> av;
                           for (auto& a : args) av.push_back(a.data());
                           av.push_back(nullptr);
                           ::execvp("ps", av.data());
                           ::_exit(127);
                         }
                         p.second.reset();
                         std::string out = read_all(p.first.get(), "ps output");
                         int st = 0;
                         ::waitpid(child, &st, 0);
                         if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) throw Error("ps failed: " + out);
                         auto lines = split(out, '\n');
                         if (lines.empty()) return 0;
                         auto header = split(lines[0], ' ');
                         std::vector<std::string> cols;
                         for (auto& h : header)
                           if (!h.empty()) cols.push_back(h);
                         std::size_t pidcol = cols.size();
                         for (std::size_t i = 0; i < cols.size(); i++)
                           if (cols[i] == "PID") pidcol = i;
                         if (pidcol == cols.size()) throw Error("couldn't find PID field in ps output");
                         std::set<long> want(pids.begin(), pids.end());
                         std::cout << lines[0] << "\n";
                         for (std::size_t i = 1; i < lines.size(); i++) {
                           std::vector<std::string> f;
                           for (auto& x : split(lines[i], ' '))
                             if (!x.empty()) f.push_back(x);
                           if (f.size() > pidcol)
                             if (auto v = parse_int(f[pidcol]); v && want.count(*v)) std::cout << lines[i] << "\n";
                         }
                         return 0;
                       }});

  auto* events = app_.add_subcommand("events", "print container events (stats, oom) as JSON lines");
  events->add_flag("--stats", flag_a_, "print stats once and exit");
  events->add_option("--interval", str_a_, "stats interval (default 5s)");
  events->add_option("id", id_, "container id")->required();
  handlers_.push_back({events, [this] {
                         container::events(g_, id_, flag_a_, str_a_.empty() ? 5000 : parse_duration_ms(str_a_));
                         return 0;
                       }});

  auto* update = app_.add_subcommand("update", "update a running container's resource limits");
  update->add_option("-r,--resources", str_a_, "OCI linux.resources JSON file, or - for stdin");
  update->add_option("--memory", mem_, "memory limit in bytes");
  update->add_option("--memory-swap", memswap_, "memory+swap limit in bytes (-1 unlimited)");
  update->add_option("--memory-reservation", memres_, "memory soft limit in bytes");
  update->add_option("--cpu-share,--cpu-shares", cpu_shares_, "CPU shares (runc spells it --cpu-share)");
  update->add_option("--cpu-quota", cpu_quota_, "CFS quota in microseconds");
  update->add_option("--cpu-period", cpu_period_, "CFS period in microseconds");
  update->add_option("--cpuset-cpus", cpus_, "CPUs allowed");
  update->add_option("--cpuset-mems", mems_, "memory nodes allowed");
  update->add_option("--pids-limit", pids_, "maximum number of pids");
  update->add_option("--blkio-weight", blkio_, "block IO weight (10-1000)");
  update->add_option("id", id_, "container id")->required();
  handlers_.push_back({update, [this] {
                         json r = json::object();
                         if (!str_a_.empty()) r = read_json_arg(str_a_, "update --resources");
                         auto num = [](const std::string& flag, const std::string& v) -> json {
                           if (auto n = parse_int(v)) return *n;
                           throw Error("update " + flag + ": \"" + v + "\" is not a number");
                         };
                         if (!mem_.empty()) r["memory"]["limit"] = num("--memory", mem_);
                         if (!memswap_.empty()) r["memory"]["swap"] = num("--memory-swap", memswap_);
                         if (!memres_.empty()) r["memory"]["reservation"] = num("--memory-reservation", memres_);
                         if (!cpu_shares_.empty()) r["cpu"]["shares"] = num("--cpu-shares", cpu_shares_);
                         if (!cpu_quota_.empty()) r["cpu"]["quota"] = num("--cpu-quota", cpu_quota_);
                         if (!cpu_period_.empty()) r["cpu"]["period"] = num("--cpu-period", cpu_period_);
                         if (!cpus_.empty()) r["cpu"]["cpus"] = cpus_;
                         if (!mems_.empty()) r["cpu"]["mems"] = mems_;
                         if (!pids_.empty()) r["pids"]["limit"] = num("--pids-limit", pids_);
                         if (!blkio_.empty()) r["blockIO"]["weight"] = num("--blkio-weight", blkio_);
                         container::update(g_, id_, r);
                         return 0;
                       }});

  auto* exec = app_.add_subcommand("exec", "run a new process inside a container");
  exec->add_option("-p,--process", str_a_, "OCI process JSON file (- for stdin)");
  exec->add_flag("-d,--detach", flag_a_, "detach from the process");
  exec->add_flag("-t,--tty", tty_, "allocate a pseudo-TTY");
  exec->add_option("--console-socket", str_b_, "unix socket that receives the pty master");
  exec->add_option("--pid-file", str_c_, "file to write the process pid to");
  exec->add_option("--cwd", str_d_, "working directory in the container");
  exec->add_option("-e,--env", vec_a_, "set an environment variable (repeatable)")->allow_extra_args(false);
  exec->add_option("-u,--user", user_, "UID[:GID]");
  exec->add_option("-g,--additional-gids", vec_b_, "additional gids (repeatable)")->allow_extra_args(false);
  exec->add_option("-c,--cap", vec_c_, "add a capability (repeatable)")->allow_extra_args(false);
  exec->add_flag("--no-new-privs", nnp_, "set no_new_privs");
  exec->add_option("--preserve-fds", int_a_, "pass N additional fds to the process");
  static std::string label, apparmor, cgroup;
  static bool ignore_paused = false;
  exec->add_option("--process-label", label, "accepted for runc compatibility (no SELinux here)");
  exec->add_option("--apparmor", apparmor, "accepted for runc compatibility (no AppArmor here)");
  exec->add_option("--cgroup", cgroup, "accepted for runc compatibility");
  exec->add_flag("--ignore-paused", ignore_paused, "accepted for runc compatibility");
  exec->prefix_command();
  handlers_.push_back({exec, [this, exec] {
                         auto rest = exec->remaining();
                         if (!rest.empty() && rest[0] == "--") rest.erase(rest.begin());
                         container::ExecOptions o;
                         o.id = require_id(rest, "exec");
                         std::vector<std::string> args(rest.begin() + 1, rest.end());
                         if (!args.empty() && args[0] == "--") args.erase(args.begin());
                         if (!str_a_.empty()) {
                           o.process = read_json_arg(str_a_, "exec --process");
                         } else {
                           o.process = container::exec_process_from_args(g_, o.id, args, str_d_, vec_a_, user_, tty_,
                                                                        vec_b_, vec_c_, nnp_);
                         }
                         o.detach = flag_a_;
                         o.pid_file = str_c_;
                         o.console_socket = str_b_;
                         o.preserve_fds = int_a_;
                         return container::exec(g_, o);
                       }});

  auto* spec = app_.add_subcommand("spec", "write a hardened default config.json");
  spec->add_option("-b,--bundle", str_a_, "bundle directory (default: current directory)");
  spec->add_flag("--rootless", flag_a_, "a spec for a rootless container");
  handlers_.push_back({spec, [this] {
                         std::string dir = str_a_.empty() ? "." : str_a_;
                         std::string path = dir + "/config.json";
                         if (path_exists(path)) throw Error("File " + path + " exists. Remove it first");
                         write_file(path, container::default_spec(flag_a_).dump(2) + "\n", 0666 & ~0022);
                         return 0;
                       }});

  auto* features = app_.add_subcommand("features", "print what this runtime supports (JSON)");
  handlers_.push_back({features, [] {
                         std::cout << container::features().dump(4) << std::endl;
                         return 0;
                       }});
}



}  // namespace agentshim::cli
