#include "sandbox/exec_argv_bpf.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "attest/canonical.h"
#include "common/util.h"

extern "C" {
#include "sandbox/bpf/exec_argv.h"
}

namespace agentshim::embedded {
extern const unsigned char exec_argv_bpf_obj[];
extern const std::size_t exec_argv_bpf_obj_size;
}  // namespace agentshim::embedded

namespace agentshim::observer {
namespace {

constexpr std::size_t kMaxArgs = 256;
constexpr std::size_t kMaxArg = 4096;
constexpr std::size_t kMaxArgBytes = 64 * 1024;
static_assert(AGENTSHIM_ARGV_COPY_MAX >= kMaxArgBytes + kMaxArgs);

// libbpf's messages while open() runs (its last warning explains a refusal).
thread_local std::string* t_libbpf_log = nullptr;

int libbpf_print(enum libbpf_print_level level, const char* fmt, va_list ap) {
  if (!t_libbpf_log || level == LIBBPF_DEBUG) return 0;
  char buf[512];
  int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
  if (n > 0) {
    std::string line(buf, std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1));
    while (!line.empty() && line.back() == '\n') line.pop_back();
    if (t_libbpf_log->size() < 2048) *t_libbpf_log = line;  // the last one
  }
  return 0;
}

std::string failed(const std::string& what, int err, const std::string& log) {
  std::string e = what + ": " + std::strerror(err < 0 ? -err : err);
  if (!log.empty()) e += " (libbpf: " + log + ")";
  return e;
}

// This process's pid namespace: its depth below the initial one (the
// number of NSpid fields minus one) and its inode.
bool pidns_of_self(uint32_t& level, uint32_t& inum, std::string& error) {
  struct stat st {};
  if (::stat("/proc/self/ns/pid", &st) < 0) {
    error = std::string("stat /proc/self/ns/pid: ") + std::strerror(errno);
    return false;
  }
  inum = static_cast<uint32_t>(st.st_ino);
  auto s = try_read_file("/proc/self/status");
  auto i = s ? s->find("\nNSpid:") : std::string::npos;
  if (i == std::string::npos) {
    error = "/proc/self/status: no NSpid";
    return false;
  }
  std::istringstream in(s->substr(i + 7, s->find('\n', i + 1) - (i + 7)));
  long v = 0;
  uint32_t n = 0;
  while (in >> v) n++;
  if (n == 0 || n > 32) {
    error = "/proc/self/status: bad NSpid";
    return false;
  }
  level = n - 1;
  return true;
}

}  // namespace

bool parse_argv_area(std::string_view all, nlohmann::json& argv, bool& truncated) {
  if (all.empty()) return false;
  argv = nlohmann::json::array();
  truncated = false;
  std::size_t total = 0, i = 0;
  while (i < all.size()) {
    std::size_t j = all.find('\0', i);
    if (j == std::string_view::npos) j = all.size();
    std::string_view a = all.substr(i, j - i);
    if (argv.size() >= kMaxArgs || total >= kMaxArgBytes) {
      truncated = true;
      break;
    }
    if (a.size() > kMaxArg || total + a.size() > kMaxArgBytes) {
      a = a.substr(0, std::min<std::size_t>(kMaxArg, kMaxArgBytes - total));
      truncated = true;
    }
    total += a.size();
    argv.push_back(attest::pct_encode(a));
    if (truncated) break;
    i = j + 1;
  }
  return true;
}

void ExecArgvBpf::ObjectClose::operator()(bpf_object* o) const {
  bpf_object__close(o);
}
void ExecArgvBpf::LinkDestroy::operator()(bpf_link* l) const {
  bpf_link__destroy(l);
}
void ExecArgvBpf::RingFree::operator()(ring_buffer* r) const {
  ring_buffer__free(r);
}

std::unique_ptr<ExecArgvBpf> ExecArgvBpf::open(std::string& error) {
  if (const char* e = ::getenv("AGENTSHIM_EXEC_ARGV_BPF"); e && std::strcmp(e, "off") == 0) {
    error = "disabled (AGENTSHIM_EXEC_ARGV_BPF=off)";
    return nullptr;
  }
  uint32_t level = 0, inum = 0;
  if (!pidns_of_self(level, inum, error)) return nullptr;
  std::string log;
  t_libbpf_log = &log;
  libbpf_set_print(libbpf_print);
  struct Reset {
    ~Reset() { t_libbpf_log = nullptr; }
  } reset;
  std::unique_ptr<ExecArgvBpf> b(new ExecArgvBpf);
  LIBBPF_OPTS(bpf_object_open_opts, oo, .object_name = "agentshim_argv");
  b->obj_.reset(bpf_object__open_mem(embedded::exec_argv_bpf_obj, embedded::exec_argv_bpf_obj_size, &oo));
  if (!b->obj_) {
    error = failed("bpf_object__open_mem", errno, log);
    return nullptr;
  }
  bpf_map* scratch = bpf_object__find_map_by_name(b->obj_.get(), "scratch");
  int cpus = libbpf_num_possible_cpus();
  if (!scratch || cpus <= 0) {
    error = failed("possible CPUs", cpus < 0 ? cpus : ENOENT, log);
    return nullptr;
  }
  if (int r = bpf_map__set_max_entries(scratch, static_cast<uint32_t>(cpus)); r < 0) {
    error = failed("bpf_map__set_max_entries scratch", r, log);
    return nullptr;
  }
  if (int r = bpf_object__load(b->obj_.get()); r < 0) {
    error = failed("bpf_object__load", r, log);
    return nullptr;
  }
  bpf_map* config = bpf_object__find_map_by_name(b->obj_.get(), "config");
  bpf_map* expect = bpf_object__find_map_by_name(b->obj_.get(), "expect");
  bpf_map* stats = bpf_object__find_map_by_name(b->obj_.get(), "stats");
  bpf_map* ring = bpf_object__find_map_by_name(b->obj_.get(), "ring");
  bpf_program* prog = bpf_object__find_program_by_name(b->obj_.get(), "exec_argv");
  if (!config || !expect || !stats || !ring || !prog) {
    error = "BPF object: a map or the program is missing";
    return nullptr;
  }
  struct agentshim_argv_config c {};
  c.pidns_level = level;
  c.pidns_inum = inum;
  uint32_t zero = 0;
  if (int r = bpf_map__update_elem(config, &zero, sizeof zero, &c, sizeof c, BPF_ANY); r < 0) {
    error = failed("bpf_map_update_elem config", r, log);
    return nullptr;
  }
  b->expect_fd_ = bpf_map__fd(expect);
  b->stats_fd_ = bpf_map__fd(stats);
  b->ring_.reset(ring_buffer__new(
      bpf_map__fd(ring),
      [](void* ctx, void* data, size_t size) -> int {
        auto* self = static_cast<ExecArgvBpf*>(ctx);
        constexpr std::size_t hdr = offsetof(struct agentshim_argv_record, data);
        if (size < hdr || !self->cb_) return 0;
        struct agentshim_argv_record h {};
        std::memcpy(&h, data, hdr);
        Record r;
        r.tgid = static_cast<pid_t>(h.tgid);
        r.seq = h.seq;
        r.truncated = h.flags & AGENTSHIM_ARGV_TRUNCATED;
        r.fault = h.flags & AGENTSHIM_ARGV_FAULT;
        r.area =
            std::string_view(static_cast<const char*>(data) + hdr, std::min<std::size_t>(h.len, size - hdr));
        (*self->cb_)(r);
        return 0;
      },
      b.get(), nullptr));
  if (!b->ring_) {
    error = failed("ring_buffer__new", errno, log);
    return nullptr;
  }
  b->link_.reset(bpf_program__attach(prog));
  if (!b->link_) {
    error = failed("bpf_program__attach tp_btf/sched_process_exec", errno, log);
    return nullptr;
  }
  return b;
}

ExecArgvBpf::~ExecArgvBpf() = default;

bool ExecArgvBpf::expect(pid_t tgid, uint64_t seq) {
  uint32_t k = static_cast<uint32_t>(tgid);
  return bpf_map_update_elem(expect_fd_, &k, &seq, BPF_ANY) == 0;
}

void ExecArgvBpf::forget(pid_t tgid) {
  uint32_t k = static_cast<uint32_t>(tgid);
  bpf_map_delete_elem(expect_fd_, &k);
}

int ExecArgvBpf::fd() const {
  return ring_buffer__epoll_fd(ring_.get());
}

void ExecArgvBpf::drain(const std::function<void(const Record&)>& f) {
  cb_ = &f;
  ring_buffer__consume(ring_.get());
  cb_ = nullptr;
}

uint64_t ExecArgvBpf::stat(uint32_t i) const {
  uint64_t v = 0;
  if (bpf_map_lookup_elem(stats_fd_, &i, &v) < 0) return 0;
  return v;
}

uint64_t ExecArgvBpf::lost() const {
  return stat(0);
}

uint64_t ExecArgvBpf::sent() const {
  return stat(1);
}

}  // namespace agentshim::observer
