#include "sandbox/bpf_host.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <set>

#include "attest/hash.h"
#include "common/util.h"

namespace agentshim::bpfhost {
namespace {

constexpr const char* kBpffs = "/sys/fs/bpf";
constexpr const char* kTop = "/sys/fs/bpf/agentshim";
constexpr const char* kLock = "/run/agentshim.bpf.lock";
constexpr const char* kSlots = "slots";
constexpr uint32_t kSlotsMax = 4096;

// libbpf's messages while a load runs (its last warning explains a refusal).
thread_local std::string* t_libbpf_log = nullptr;

int libbpf_print(enum libbpf_print_level level, const char* fmt, va_list ap) {
  if (!t_libbpf_log || level == LIBBPF_DEBUG) return 0;
  char buf[512];
  int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
  if (n > 0) {
    std::string line(buf, std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1));
    while (!line.empty() && line.back() == '\n') line.pop_back();
    *t_libbpf_log = line;  // the last one
  }
  return 0;
}

std::string failed(const std::string& what, int err, const std::string& log = {}) {
  std::string e = what + ": " + std::strerror(err < 0 ? -err : err);
  if (!log.empty()) e += " (libbpf: " + log + ")";
  return e;
}

using Object = std::unique_ptr<bpf_object, Host::ObjectClose>;
using Link = std::unique_ptr<bpf_link, Host::LinkDestroy>;

bool own_pidns(uint32_t& inum, std::string& error) {
  struct stat st {};
  if (::stat("/proc/self/ns/pid", &st) < 0) {
    error = failed("stat /proc/self/ns/pid", errno);
    return false;
  }
  inum = static_cast<uint32_t>(st.st_ino);
  return true;
}

// Field 22 of /proc/PID/stat (after the command's closing parenthesis).
bool start_time(pid_t pid, uint64_t& start) {
  auto s = try_read_file("/proc/" + std::to_string(pid) + "/stat");
  auto p = s ? s->rfind(')') : std::string::npos;
  if (p == std::string::npos) return false;
  auto f = split(std::string_view(*s).substr(p + 2), ' ');
  if (f.size() < 20) return false;
  auto v = parse_uint(f[19]);  // fields 3.. follow: 22 is the 20th
  if (!v) return false;
  start = *v;
  return true;
}

// A directory only root can use: created 0700, refused when it is not
// root's or others may enter it (its pins would not be ours).
bool private_dir(const std::string& path, std::string& error) {
  if (::mkdir(path.c_str(), 0700) < 0 && errno != EEXIST) {
    error = failed("mkdir " + path, errno);
    return false;
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) < 0) {
    error = failed("stat " + path, errno);
    return false;
  }
  if (!S_ISDIR(st.st_mode) || st.st_uid != 0 || (st.st_mode & 077)) {
    error = path + ": not a directory of root's with mode 0700";
    return false;
  }
  return true;
}

bool ensure_bpffs(std::string& error) {
  struct statfs fs {};
  if (::statfs(kBpffs, &fs) == 0 && fs.f_type == BPF_FS_MAGIC) return true;
  if (::geteuid() != 0) {
    error = std::string(kBpffs) + ": not bpffs, and mounting it needs root";
    return false;
  }
  if (::mount("bpf", kBpffs, "bpf", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700") < 0) {
    error = failed(std::string("mount bpf ") + kBpffs, errno);
    return false;
  }
  return true;
}

std::vector<std::vector<unsigned char>> keys_of(int fd, uint32_t key_size) {
  std::vector<std::vector<unsigned char>> keys;
  std::vector<unsigned char> k(key_size), next(key_size);
  const void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, next.data()) == 0) {
    keys.push_back(next);
    k = next;
    prev = k.data();
  }
  return keys;
}

bool map_sizes(int fd, uint32_t& key, uint32_t& value) {
  bpf_map_info info{};
  uint32_t len = sizeof info;
  if (bpf_obj_get_info_by_fd(fd, &info, &len) < 0) return false;
  key = info.key_size;
  value = info.value_size;
  return true;
}

bool same(const agentshim_bpf_slot& a, const void* b) {
  return std::memcmp(&a, b, sizeof a) == 0;
}

// Deletes the entries of slot-keyed and slot-valued maps whose slot `keep`
// rejects.
void delete_entries(int fd, bool keyed, const std::function<bool(const void* slot)>& keep) {
  uint32_t ks = 0, vs = 0;
  if (!map_sizes(fd, ks, vs) || (keyed ? ks : vs) < sizeof(agentshim_bpf_slot)) return;
  std::vector<unsigned char> v(vs);
  for (const auto& k : keys_of(fd, ks)) {
    if (keyed) {
      if (!keep(k.data())) bpf_map_delete_elem(fd, k.data());
    } else if (bpf_map_lookup_elem(fd, k.data(), v.data()) == 0 && !keep(v.data())) {
      bpf_map_delete_elem(fd, k.data());
    }
  }
}

// Live slots of a `slots` map; the dead ones are deleted from it.
std::set<std::vector<unsigned char>> sweep_slots(int fd, uint32_t own_ns) {
  std::set<std::vector<unsigned char>> live;
  for (const auto& k : keys_of(fd, sizeof(agentshim_bpf_slot))) {
    agentshim_bpf_slot s{};
    std::memcpy(&s, k.data(), sizeof s);
    if (slot_alive(s, own_ns))
      live.insert(k);
    else
      bpf_map_delete_elem(fd, k.data());
  }
  return live;
}

// Opens and loads the object; libbpf's last message goes to `log`.
Object load(const Spec& spec, std::string& log, std::string& error) {
  t_libbpf_log = &log;
  libbpf_set_print(libbpf_print);
  struct Reset {
    ~Reset() { t_libbpf_log = nullptr; }
  } reset;
  LIBBPF_OPTS(bpf_object_open_opts, oo, .object_name = spec.name.c_str());
  Object obj(bpf_object__open_mem(spec.object.data(), spec.object.size(), &oo));
  if (!obj) {
    error = failed("bpf_object__open_mem", errno, log);
    return nullptr;
  }
  if (spec.prepare && !spec.prepare(obj.get(), error)) return nullptr;
  if (int r = bpf_object__load(obj.get()); r < 0) {
    error = failed("bpf_object__load", r, log);
    return nullptr;
  }
  return obj;
}

}  // namespace

std::string object_hash(std::span<const unsigned char> object) {
  auto d = attest::sha256(std::string_view(reinterpret_cast<const char*>(object.data()), object.size()));
  return attest::hex(d).substr(0, 16);
}

bool slot_of(pid_t pid, agentshim_bpf_slot& slot, std::string& error) {
  uint32_t ns = 0;
  if (!own_pidns(ns, error)) return false;
  uint64_t start = 0;
  if (!start_time(pid, start)) {
    error = "/proc/" + std::to_string(pid) + "/stat: no start time";
    return false;
  }
  slot = {};
  slot.pidns_inum = ns;
  slot.pid = static_cast<uint32_t>(pid);
  slot.start = start;
  return true;
}

bool slot_alive(const agentshim_bpf_slot& slot, uint32_t own_ns) {
  if (slot.pidns_inum != own_ns) return true;
  uint64_t start = 0;
  return start_time(static_cast<pid_t>(slot.pid), start) && start == slot.start;
}

void Host::ObjectClose::operator()(bpf_object* o) const {
  bpf_object__close(o);
}
void Host::LinkDestroy::operator()(bpf_link* l) const {
  bpf_link__destroy(l);
}

int Host::map_fd(const std::string& name) const {
  auto it = maps_.find(name);
  return it == maps_.end() ? -1 : it->second.get();
}

bool Host::open_pinned(const Spec& spec, bool& load_failed, std::string& error) {
  if (!ensure_bpffs(error) || !private_dir(kTop, error)) return false;
  UniqueFd lock(::open(kLock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!lock || ::flock(lock.get(), LOCK_EX) < 0) {
    error = failed(std::string(lock ? "flock " : "open ") + kLock, errno);
    return false;
  }
  const std::string prefix = spec.name + "-";
  dir_ = std::string(kTop) + "/" + prefix + object_hash(spec.object);
  const std::string slots_pin = dir_ + "/" + kSlots;

  // Other builds' directories that no live supervisor uses: their programs
  // would stay attached for nothing. One without `slots` is a load that
  // was cut off (loads run under the lock).
  if (auto* d = ::opendir(kTop)) {
    std::vector<std::string> stale;
    while (auto* e = ::readdir(d)) {
      std::string n = e->d_name;
      std::string path = std::string(kTop) + "/" + n;
      if (!starts_with(n, prefix) || path == dir_) continue;
      UniqueFd s(bpf_obj_get((path + "/" + kSlots).c_str()));
      if (!s || sweep_slots(s.get(), slot_.pidns_inum).empty()) stale.push_back(path);
    }
    ::closedir(d);
    for (const auto& p : stale) {
      try {
        remove_tree(p);
      } catch (const std::exception&) {
        // Left for the next supervisor; this one's load does not depend on it.
      }
    }
  }

  slots_.reset(bpf_obj_get(slots_pin.c_str()));
  if (slots_) {
    for (const auto& m : spec.maps) {
      UniqueFd fd(bpf_obj_get((dir_ + "/" + m).c_str()));
      if (!fd) {
        error = failed("bpf_obj_get " + dir_ + "/" + m, errno);
        return false;
      }
      maps_[m] = std::move(fd);
    }
  } else {
    try {
      remove_tree(dir_);  // cut off before `slots` was pinned
    } catch (const std::exception& e) {
      error = e.what();
      return false;
    }
    std::string log;
    Object obj = load(spec, log, error);
    if (!obj) {
      load_failed = true;
      return false;
    }
    if (!private_dir(dir_, error)) return false;
    struct Undo {
      std::string dir;
      ~Undo() {
        if (dir.empty()) return;
        try {
          remove_tree(dir);
        } catch (const std::exception&) {
        }
      }
    } undo{dir_};
    bpf_program* prog = nullptr;
    bpf_object__for_each_program(prog, obj.get()) {
      Link link(bpf_program__attach(prog));
      if (!link) {
        error = failed(std::string("bpf_program__attach ") + bpf_program__section_name(prog), errno, log);
        return false;
      }
      std::string pin = dir_ + "/link_" + bpf_program__name(prog);
      if (int r = bpf_link__pin(link.get(), pin.c_str()); r < 0) {
        error = failed("bpf_link__pin " + pin, r, log);
        return false;
      }
      bpf_link__disconnect(link.get());  // the pin keeps it attached
    }
    for (const auto& m : spec.maps) {
      bpf_map* map = bpf_object__find_map_by_name(obj.get(), m.c_str());
      if (!map) {
        error = "BPF object " + spec.name + ": no map " + m;
        return false;
      }
      std::string pin = dir_ + "/" + m;
      if (int r = bpf_map__pin(map, pin.c_str()); r < 0) {
        error = failed("bpf_map__pin " + pin, r, log);
        return false;
      }
      UniqueFd fd(::fcntl(bpf_map__fd(map), F_DUPFD_CLOEXEC, 3));
      if (!fd) {
        error = failed("dup map fd", errno);
        return false;
      }
      maps_[m] = std::move(fd);
    }
    LIBBPF_OPTS(bpf_map_create_opts, mo);
    slots_.reset(bpf_map_create(BPF_MAP_TYPE_HASH, "agentshim_slots", sizeof(agentshim_bpf_slot),
                                sizeof(uint64_t), kSlotsMax, &mo));
    if (!slots_) {
      error = failed("bpf_map_create slots", errno);
      return false;
    }
    if (bpf_obj_pin(slots_.get(), slots_pin.c_str()) < 0) {  // last: the directory is complete
      error = failed("bpf_obj_pin " + slots_pin, errno);
      return false;
    }
    undo.dir.clear();
    loaded_ = true;
  }

  // The dead supervisors' slots and entries; then this one's slot.
  auto live = sweep_slots(slots_.get(), slot_.pidns_inum);
  auto keep = [&live](const void* s) {
    const auto* b = static_cast<const unsigned char*>(s);
    return live.count(std::vector<unsigned char>(b, b + sizeof(agentshim_bpf_slot))) > 0;
  };
  for (const auto& m : spec.slot_keyed) delete_entries(map_fd(m), true, keep);
  for (const auto& m : spec.slot_valued) delete_entries(map_fd(m), false, keep);
  uint64_t since = 0;
  if (bpf_map_update_elem(slots_.get(), &slot_, &since, BPF_ANY) < 0) {
    error = failed("bpf_map_update_elem " + slots_pin, errno);
    return false;
  }
  return true;
}

std::unique_ptr<Host> Host::open(const Spec& spec, std::string& error) {
  std::unique_ptr<Host> h(new Host);
  h->spec_ = spec;
  if (!slot_of(::getpid(), h->slot_, error)) return nullptr;
  bool load_failed = false;
  std::string why = spec.no_pin;
  if (why.empty() && h->open_pinned(spec, load_failed, why)) return h;
  if (load_failed) {
    error = why;
    return nullptr;
  }
  // bpffs cannot be used: this supervisor's own load, gone with it.
  h->pin_error_ = why;
  h->maps_.clear();
  h->slots_.reset();
  h->dir_.clear();
  std::string log;
  h->obj_ = load(spec, log, error);
  if (!h->obj_) return nullptr;
  bpf_program* prog = nullptr;
  bpf_object__for_each_program(prog, h->obj_.get()) {
    bpf_link* link = bpf_program__attach(prog);
    if (!link) {
      error = failed(std::string("bpf_program__attach ") + bpf_program__section_name(prog), errno, log);
      return nullptr;
    }
    h->links_.emplace_back(link);
  }
  for (const auto& m : spec.maps) {
    bpf_map* map = bpf_object__find_map_by_name(h->obj_.get(), m.c_str());
    UniqueFd fd(map ? ::fcntl(bpf_map__fd(map), F_DUPFD_CLOEXEC, 3) : -1);
    if (!fd) {
      error = "BPF object " + spec.name + ": no map " + m;
      return nullptr;
    }
    h->maps_[m] = std::move(fd);
  }
  return h;
}

Host::~Host() {
  if (!slots_) return;
  const agentshim_bpf_slot mine = slot_;
  auto keep = [&mine](const void* s) { return !same(mine, s); };
  for (const auto& m : spec_.slot_keyed) bpf_map_delete_elem(map_fd(m), &slot_);
  for (const auto& m : spec_.slot_valued) delete_entries(map_fd(m), false, keep);
  bpf_map_delete_elem(slots_.get(), &slot_);
}

}  // namespace agentshim::bpfhost
