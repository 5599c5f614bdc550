#include "sandbox/dirent_bpf.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/error.h"
#include "common/util.h"
#include "sandbox/bpf_host.h"
#include "sandbox/embedded.h"

extern "C" {
#include "sandbox/bpf/dirent.h"
}

namespace agentshim::observer {
namespace {

std::string failed(const std::string& what, int err) {
  return what + ": " + std::strerror(err < 0 ? -err : err);
}

// The programs of sandbox/bpf/dirent.bpf.c, attached in this order.
constexpr const char* kPrograms[] = {"dirent_mknod",  "dirent_mkdir", "dirent_symlink", "dirent_link",
                                     "dirent_unlink", "dirent_rmdir", "dirent_rename"};

// A kernel that refused the programs once refuses them until it reboots:
// the refusal is kept in /run (a tmpfs: gone at reboot) under the
// object's hash, and later supervisors report it without the 15-20 ms a
// load attempt costs (libbpf's BTF parse before the kernel says no).
// Errors that may pass (ENOMEM, EAGAIN...) are not kept.
std::string refusal_path() {
  return "/run/agentshim.dirent-bpf-" +
         bpfhost::object_hash({embedded::dirent_bpf_obj, embedded::dirent_bpf_obj_size}) + ".refused";
}

bool kernel_refusal(int err) {
  err = err < 0 ? -err : err;
  return err == EPERM || err == EACCES || err == EINVAL || err == EOPNOTSUPP || err == 524 /* ENOTSUPP */ ||
         err == ENOENT || err == ESRCH || err == E2BIG;
}

}  // namespace

uint64_t cgroup_v2_id(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) < 0) throw_errno("stat " + dir);
  return static_cast<uint64_t>(st.st_ino);
}

void DirentBpf::ObjectClose::operator()(bpf_object* o) const {
  bpf_object__close(o);
}
void DirentBpf::LinkDestroy::operator()(bpf_link* l) const {
  bpf_link__destroy(l);
}
void DirentBpf::RingFree::operator()(ring_buffer* r) const {
  ring_buffer__free(r);
}

std::unique_ptr<DirentBpf> DirentBpf::open(uint64_t cgroup_id, std::string& error) {
  if (const char* e = ::getenv("AGENTSHIM_DIRENT_BPF"); e && std::strcmp(e, "off") == 0) {
    error = "disabled (AGENTSHIM_DIRENT_BPF=off)";
    return nullptr;
  }
  const std::string refused = refusal_path();
  if (auto why = try_read_file(refused); why && !why->empty()) {
    error = "refused by this kernel earlier since boot (" + refused + "): " + why->substr(0, 512);
    return nullptr;
  }
  std::unique_ptr<DirentBpf> b(new DirentBpf);
  LIBBPF_OPTS(bpf_object_open_opts, oo, .object_name = "agentshim_dirent");
  b->obj_.reset(bpf_object__open_mem(embedded::dirent_bpf_obj, embedded::dirent_bpf_obj_size, &oo));
  if (!b->obj_) {
    error = failed("bpf_object__open_mem", errno);
    return nullptr;
  }
  if (int r = bpf_object__load(b->obj_.get()); r < 0) {
    error = failed("bpf_object__load", r);
    if (kernel_refusal(r) && ::geteuid() == 0) try {
        write_file_atomic(refused, error, 0600, false);
      } catch (const std::exception&) {
        // (Not kept: the next supervisor tries again.)
      }
    return nullptr;
  }
  bpf_map* config = bpf_object__find_map_by_name(b->obj_.get(), "config");
  bpf_map* stats = bpf_object__find_map_by_name(b->obj_.get(), "stats");
  bpf_map* ring = bpf_object__find_map_by_name(b->obj_.get(), "ring");
  if (!config || !stats || !ring) {
    error = "BPF object: a map is missing";
    return nullptr;
  }
  struct agentshim_dirent_config c {};
  c.cgroup_id = cgroup_id;
  uint32_t zero = 0;
  if (int r = bpf_map__update_elem(config, &zero, sizeof zero, &c, sizeof c, BPF_ANY); r < 0) {
    error = failed("bpf_map_update_elem config", r);
    return nullptr;
  }
  b->stats_fd_ = bpf_map__fd(stats);
  b->ring_.reset(ring_buffer__new(
      bpf_map__fd(ring),
      [](void* ctx, void* data, size_t size) -> int {
        auto* self = static_cast<DirentBpf*>(ctx);
        if (!self->cb_) return 0;
        // libbpf has consumed the record already: it is read, then the
        // consume stops when the drain's share is used up.
        const int more = --self->left_ == 0 ? -EAGAIN : 0;
        if (size < sizeof(struct agentshim_dirent_record)) return more;
        const auto* h = static_cast<const struct agentshim_dirent_record*>(data);
        Record r;
        switch (h->op) {
          case AGENTSHIM_DIRENT_CREATED:
            r.op = Op::created;
            break;
          case AGENTSHIM_DIRENT_REMOVED:
            r.op = Op::removed;
            break;
          case AGENTSHIM_DIRENT_MOVED_FROM:
            r.op = Op::moved_from;
            break;
          case AGENTSHIM_DIRENT_MOVED_TO:
            r.op = Op::moved_to;
            break;
          default:
            return more;
        }
        r.dir = h->flags & AGENTSHIM_DIRENT_DIR;
        r.exchange = h->flags & AGENTSHIM_DIRENT_EXCHANGE;
        r.pid = static_cast<pid_t>(h->pid);
        r.mount_id = static_cast<uint64_t>(static_cast<uint32_t>(h->mnt_id));
        r.dev = ::makedev(h->dev >> 20, h->dev & 0xfffff);
        if (!(h->flags & AGENTSHIM_DIRENT_NO_PATH))
          r.path = std::string_view(h->path, ::strnlen(h->path, sizeof h->path));
        r.name = std::string_view(h->name, ::strnlen(h->name, sizeof h->name));
        (*self->cb_)(r);
        return more;
      },
      b.get(), nullptr));
  if (!b->ring_) {
    error = failed("ring_buffer__new", errno);
    return nullptr;
  }
  for (const char* name : kPrograms) {
    bpf_program* prog = bpf_object__find_program_by_name(b->obj_.get(), name);
    if (!prog) {
      error = std::string("BPF object: no program ") + name;
      return nullptr;
    }
    b->links_.emplace_back(bpf_program__attach_lsm(prog));
    if (!b->links_.back()) {
      error = failed(std::string("bpf_program__attach_lsm ") + bpf_program__section_name(prog), errno);
      return nullptr;
    }
  }
  return b;
}

DirentBpf::~DirentBpf() = default;

int DirentBpf::fd() const {
  return ring_buffer__epoll_fd(ring_.get());
}

bool DirentBpf::drain(const std::function<void(const Record&)>& f, std::size_t max) {
  if (max == 0) return false;
  cb_ = &f;
  left_ = max;
  int r = ring_buffer__consume(ring_.get());
  cb_ = nullptr;
  return r != -EAGAIN;
}

uint64_t DirentBpf::stat(uint32_t i) const {
  uint64_t v = 0;
  if (bpf_map_lookup_elem(stats_fd_, &i, &v) < 0) return 0;
  return v;
}

uint64_t DirentBpf::lost() const {
  return stat(0);
}

uint64_t DirentBpf::sent() const {
  return stat(1);
}

}  // namespace agentshim::observer
