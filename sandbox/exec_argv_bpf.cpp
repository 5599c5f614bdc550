#include "sandbox/exec_argv_bpf.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "attest/canonical.h"
#include "sandbox/embedded.h"

extern "C" {
#include "sandbox/bpf/exec_argv.h"
}

namespace agentshim::observer {
namespace {

constexpr std::size_t kMaxArgs = 256;
constexpr std::size_t kMaxArg = 4096;
constexpr std::size_t kMaxArgBytes = 64 * 1024;
static_assert(AGENTSHIM_ARGV_COPY_MAX >= kMaxArgBytes + kMaxArgs);

// An announcement per exec in flight: one supervisor cannot fill the
// host-wide map.
constexpr std::size_t kMaxExpected = 4096;
static_assert(kMaxExpected * 8 <= AGENTSHIM_ARGV_EXPECT_MAX);

std::string failed(const std::string& what, int err) {
  return what + ": " + std::strerror(err < 0 ? -err : err);
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

void ExecArgvBpf::RingFree::operator()(ring_buffer* r) const {
  ring_buffer__free(r);
}

std::unique_ptr<ExecArgvBpf> ExecArgvBpf::open(std::string& error) {
  const char* env = ::getenv("AGENTSHIM_EXEC_ARGV_BPF");
  if (env && std::strcmp(env, "off") == 0) {
    error = "disabled (AGENTSHIM_EXEC_ARGV_BPF=off)";
    return nullptr;
  }
  bpfhost::Spec spec;
  if (env && std::strcmp(env, "private") == 0) spec.no_pin = "not pinned (AGENTSHIM_EXEC_ARGV_BPF=private)";
  spec.name = "exec_argv";
  spec.object = {embedded::exec_argv_bpf_obj, embedded::exec_argv_bpf_obj_size};
  spec.maps = {"expect", "rings", "ring_owner", "stats"};
  spec.slot_keyed = {"stats"};
  spec.slot_valued = {"expect", "ring_owner"};
  spec.prepare = [](bpf_object* obj, std::string& err) {
    bpf_map* scratch = bpf_object__find_map_by_name(obj, "scratch");
    int cpus = libbpf_num_possible_cpus();
    if (!scratch || cpus <= 0) {
      err = failed("possible CPUs", cpus < 0 ? cpus : ENOENT);
      return false;
    }
    if (int r = bpf_map__set_max_entries(scratch, static_cast<uint32_t>(cpus)); r < 0) {
      err = failed("bpf_map__set_max_entries scratch", r);
      return false;
    }
    return true;
  };
  std::unique_ptr<ExecArgvBpf> b(new ExecArgvBpf);
  b->host_ = bpfhost::Host::open(spec, error);
  if (!b->host_) return nullptr;
  b->expect_fd_ = b->host_->map_fd("expect");
  b->stats_fd_ = b->host_->map_fd("stats");
  // This supervisor's ring buffer: a free one of the pool (claimed by
  // putting its slot into `ring_owner`, which only one claimant can), or a
  // new one when all are taken.
  const agentshim_bpf_slot& slot = b->host_->slot();
  const int owner_fd = b->host_->map_fd("ring_owner"), rings_fd = b->host_->map_fd("rings");
  bool claimed = false;
  for (uint32_t i = 0; i < AGENTSHIM_ARGV_RINGS_MAX && !claimed; i++) {
    if (bpf_map_update_elem(owner_fd, &i, &slot, BPF_NOEXIST) == 0) {
      b->ring_index_ = i;
      claimed = true;
    }
  }
  if (!claimed) {
    error = "no free BPF ring buffer (" + std::to_string(AGENTSHIM_ARGV_RINGS_MAX) + " in use)";
    return nullptr;
  }
  if (uint32_t id = 0; bpf_map_lookup_elem(rings_fd, &b->ring_index_, &id) == 0) {
    b->ring_fd_.reset(bpf_map_get_fd_by_id(id));
    if (!b->ring_fd_) {
      error = failed("bpf_map_get_fd_by_id ring buffer " + std::to_string(id), errno);
      return nullptr;
    }
  } else {
    b->ring_fd_.reset(
        bpf_map_create(BPF_MAP_TYPE_RINGBUF, "agentshim_argv", 0, 0, AGENTSHIM_ARGV_RING_BYTES, nullptr));
    int fd = b->ring_fd_.get();
    if (!b->ring_fd_ || bpf_map_update_elem(rings_fd, &b->ring_index_, &fd, BPF_ANY) < 0) {
      error = failed("BPF ring buffer " + std::to_string(b->ring_index_), errno);
      return nullptr;
    }
  }
  agentshim_argv_stats zero{};
  if (bpf_map_update_elem(b->stats_fd_, &slot, &zero, BPF_ANY) < 0) {
    error = failed("bpf_map_update_elem stats", errno);
    return nullptr;
  }
  int ring_fd = b->ring_fd_.get();
  b->ring_.reset(ring_buffer__new(
      ring_fd,
      [](void* ctx, void* data, size_t size) -> int {
        auto* self = static_cast<ExecArgvBpf*>(ctx);
        constexpr std::size_t hdr = offsetof(struct agentshim_argv_record, data);
        if (size < hdr || !self->cb_) return 0;
        struct agentshim_argv_record h {};
        std::memcpy(&h, data, hdr);
        // A record for the ring buffer's earlier owner (its program run
        // was under way when that owner left): not ours.
        if (std::memcmp(&h.slot, &self->host_->slot(), sizeof h.slot) != 0) return 0;
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
    error = failed("ring_buffer__new", errno);
    return nullptr;
  }
  ring_buffer__consume(b->ring_.get());  // an earlier owner's records: dropped (no callback)
  return b;
}

ExecArgvBpf::~ExecArgvBpf() = default;

const char* ExecArgvBpf::obtained() const {
  return host_->obtained();
}

const std::string& ExecArgvBpf::pin_error() const {
  return host_->pin_error();
}

bool ExecArgvBpf::expect(pid_t tgid, uint64_t seq) {
  if (!expected_.count(tgid) && expected_.size() >= kMaxExpected) return false;
  agentshim_argv_key k{};
  k.pidns_inum = host_->slot().pidns_inum;
  k.tgid = static_cast<uint32_t>(tgid);
  agentshim_argv_expect v{};
  v.slot = host_->slot();
  v.ring = ring_index_;
  v.seq = seq;
  if (bpf_map_update_elem(expect_fd_, &k, &v, BPF_ANY) < 0) return false;
  expected_.insert(tgid);
  return true;
}

void ExecArgvBpf::forget(pid_t tgid) {
  agentshim_argv_key k{};
  k.pidns_inum = host_->slot().pidns_inum;
  k.tgid = static_cast<uint32_t>(tgid);
  // Only this supervisor's announcement: the program takes it at the exec,
  // and the pid may have been announced again since by a supervisor of the
  // same pid namespace (the exec's process gone, its pid reused: the check
  // and the delete are microseconds apart, a pid comes back after a cycle).
  agentshim_argv_expect v{};
  if (bpf_map_lookup_elem(expect_fd_, &k, &v) == 0 &&
      std::memcmp(&v.slot, &host_->slot(), sizeof v.slot) == 0)
    bpf_map_delete_elem(expect_fd_, &k);
  expected_.erase(tgid);
}

int ExecArgvBpf::fd() const {
  return ring_buffer__epoll_fd(ring_.get());
}

void ExecArgvBpf::drain(const std::function<void(const Record&)>& f) {
  cb_ = &f;
  ring_buffer__consume(ring_.get());
  cb_ = nullptr;
}

agentshim_argv_stats ExecArgvBpf::stats() const {
  agentshim_argv_stats v{};
  bpf_map_lookup_elem(stats_fd_, &host_->slot(), &v);
  return v;
}

uint64_t ExecArgvBpf::lost() const {
  return stats().lost;
}

uint64_t ExecArgvBpf::sent() const {
  return stats().sent;
}

}  // namespace agentshim::observer
